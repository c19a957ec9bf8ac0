"""Sharding parameters: one job split into items, each with its own parameter, plus a job-wide
parameter and free-form props — and how the items are spread over instances.

    python examples/sharding_parameters.py               # embedded; every 2 s until Ctrl-C
    python examples/sharding_parameters.py --seconds 3

Run it with ``AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo`` in two or three terminals:
the four regions are spread over the processes (``AVG_ALLOCATION``: 2+2 with two instances,
2+1+1 with three) and move when one stops.
"""

from __future__ import annotations

import argparse

import anyio

from aioelastic import Scheduler, ShardingContext, ShardingStrategy

scheduler = Scheduler()


@scheduler.job(
    cron="0/2 * * * * ?",
    sharding_total_count=4,
    sharding_item_parameters={0: "eu-west", 1: "eu-central", 2: "us-east", 3: "ap-south"},
    job_parameter="2024-Q2",
    props={"currency": "EUR"},
    sharding_strategy=ShardingStrategy.AVG_ALLOCATION,
)
async def invoice(ctx: ShardingContext) -> None:
    print(
        f"{scheduler.instance_id[-6:]} item {ctx.sharding_item}/{ctx.sharding_total_count}: "
        f"region={ctx.sharding_parameter} period={ctx.job_parameter} "
        f"currency={ctx.props['currency']}",
        flush=True,
    )


async def main(seconds: float | None) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)  # Ctrl-C / SIGTERM: graceful stop, no traceback
        if seconds is not None:
            await anyio.sleep(seconds)
            scheduler.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    anyio.run(main, parser.parse_args().seconds)
