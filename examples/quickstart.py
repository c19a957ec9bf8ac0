"""Quickstart: a sharded job firing every 2 seconds, embedded (no ZooKeeper needed).

    python examples/quickstart.py             # runs until Ctrl-C
    python examples/quickstart.py --seconds 7 # stops by itself, gracefully

Run it with ``AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo`` in several terminals and
the three items are spread over the running processes.
"""

from __future__ import annotations

import argparse
import logging
from datetime import datetime

import anyio

from aioelastic import Scheduler, ShardingContext

scheduler = Scheduler()  # embedded default: registry "memory://", one process


@scheduler.job(
    cron="0/2 * * * * ?",
    sharding_total_count=3,
    sharding_item_parameters="0=Beijing,1=Shanghai,2=Guangzhou",
    job_parameter="settlement",
)
async def settle(ctx: ShardingContext) -> None:
    now = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    print(
        f"{now} {ctx.job_name} item {ctx.sharding_item}/{ctx.sharding_total_count} "
        f"({ctx.sharding_parameter}) param={ctx.job_parameter} "
        f"task={ctx.task_id.split('@-@')[-1][:8]}",
        flush=True,
    )
    await anyio.sleep(0.1)  # the work


async def main(seconds: float | None) -> None:
    if seconds is None:
        await scheduler.run()  # until Ctrl-C/SIGTERM: graceful stop (twice: cancel items)
        return
    async with scheduler:  # the FastAPI-lifespan style: runs in the background
        await anyio.sleep(seconds)
    print("stopped cleanly")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    logging.basicConfig(level=logging.WARNING)
    anyio.run(main, parser.parse_args().seconds)
