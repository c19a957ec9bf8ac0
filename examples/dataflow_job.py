"""A streaming dataflow job: each item fetches its share of pending orders and processes them
in batches, until nothing is left (ElasticJob's DataflowJob with ``streaming.process=true``).

    python examples/dataflow_job.py               # embedded; runs until Ctrl-C
    python examples/dataflow_job.py --seconds 4   # stops by itself, gracefully

With ``AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo`` in several terminals, each
process handles the items (here: order-id remainders) it owns.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import anyio

from aioelastic import DataflowJob, Scheduler, ShardingContext

ITEMS = 3
pending: set[int] = set(range(1, 31))  # order ids waiting to be settled (the "database")


async def fetch_data(ctx: ShardingContext) -> Sequence[int]:
    """Up to 4 pending orders of this item's share (order id modulo the item count)."""
    mine = sorted(o for o in pending if o % ctx.sharding_total_count == ctx.sharding_item)
    return mine[:4]


async def process_data(ctx: ShardingContext, orders: Sequence[int]) -> None:
    await anyio.sleep(0.05)  # the work
    pending.difference_update(orders)
    print(f"item {ctx.sharding_item}: settled {list(orders)}; {len(pending)} left", flush=True)


scheduler = Scheduler()
scheduler.add_job(
    DataflowJob(fetch_data, process_data, streaming=True),
    name="settle_orders",
    cron="0/2 * * * * ?",
    sharding_total_count=ITEMS,
)


async def main(seconds: float | None) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)  # Ctrl-C / SIGTERM: graceful stop, no traceback
        await scheduler.trigger("settle_orders")  # once now, then every 2 s
        if seconds is not None:
            await anyio.sleep(seconds)
            scheduler.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    anyio.run(main, parser.parse_args().seconds)
