"""A scheduler process whose job raises a BaseException (for tests/test_hostile_jobs.py).

    python -m tests.harness.hostile_instance EXCEPTION LOGFILE

Job ``hostile`` raises EXCEPTION (``SystemExit``, ``KeyboardInterrupt``, ...) every second;
job ``steady`` runs every second. Each run appends a JSON line to LOGFILE; SIGTERM stops it.
"""

from __future__ import annotations

import builtins
import json
import signal
import sys
import time

import anyio

from aioelastic import Scheduler, Settings, ShardingContext


def main(exception: str, path: str) -> None:
    error = getattr(builtins, exception)
    out = open(path, "a", buffering=1)

    def write(**record: object) -> None:
        out.write(json.dumps({"t": time.time(), **record}) + "\n")

    scheduler = Scheduler(
        settings=Settings(registry_url="memory://hostile/ns", shutdown_grace_period=1)
    )

    @scheduler.job(cron="* * * * * ?", sharding_total_count=2)
    async def hostile(ctx: ShardingContext) -> None:
        write(job="hostile", item=ctx.sharding_item)
        if ctx.sharding_item == 0:
            raise error("raised by the job")
        await anyio.sleep(0.2)
        write(job="hostile-sibling-done", item=ctx.sharding_item)

    @scheduler.job(cron="* * * * * ?")
    async def steady(ctx: ShardingContext) -> None:
        write(job="steady", item=ctx.sharding_item)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM) as signals:
                async with scheduler:
                    write(job="ready")
                    async for _ in signals:
                        break
            tg.cancel_scope.cancel()
        write(job="stopped")

    anyio.run(run)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
