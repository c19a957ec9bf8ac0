"""An instance process whose items record what ``ctx.lost`` said when they ended.

Same command line as ``cluster_instance``; each item waits ``duration`` seconds and writes
``start`` and ``end`` (with ``cancelled``, ``lost_at_cancel``, ``reason``) to the history file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from typing import Any

import anyio

from aioelastic import Scheduler, Settings, ShardingContext
from tests.harness.cluster_instance import History


async def main(args: argparse.Namespace) -> None:
    settings = Settings(
        registry_url=args.registry, instance_id=args.instance_id, shutdown_grace_period=args.grace
    )
    scheduler = Scheduler(settings=settings)
    history = History(args.log, scheduler.instance_id)
    options: dict[str, Any] = json.loads(args.job_options)
    duration = float(options.pop("duration", 0.2))

    async def work(ctx: ShardingContext) -> None:
        history.write("start", job=ctx.job_name, item=ctx.sharding_item, task_id=ctx.task_id)
        fields: dict[str, Any] = {"cancelled": False}
        try:
            await anyio.sleep(duration)
        except anyio.get_cancelled_exc_class():
            fields = {"cancelled": True, "lost_at_cancel": ctx.lost.is_set()}
            raise
        finally:
            history.write(
                "end",
                job=ctx.job_name,
                item=ctx.sharding_item,
                task_id=ctx.task_id,
                reason=ctx.lost.reason,
                **fields,
            )

    for name in args.jobs.split(","):
        scheduler.add_job(work, name=name, **options)
    async with anyio.create_task_group() as tg:
        async with scheduler:
            history.write("ready", pid=os.getpid())
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    break
        tg.cancel_scope.cancel()
    history.write("stopped")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--registry", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--instance-id", required=True)
    parser.add_argument("--jobs", default="cluster_job")
    parser.add_argument("--job-options", default="{}")
    parser.add_argument("--grace", type=float, default=2.0)
    anyio.run(main, parser.parse_args())
