"""A dependent-jobs pipeline: ``extract`` (4 items, every 3 s) → ``transform`` → ``load``.

Each downstream job has no cron of its own: it fires once per completed fire of its upstream
job, after every item of that fire completed across the cluster, and its context names the
upstream task ids. ``extract``'s items also fence their writes with ``ctx.still_owned()`` and
retry a flaky source with backoff.

    python examples/dependent_pipeline.py               # embedded; runs until Ctrl-C
    python examples/dependent_pipeline.py --seconds 5   # stops by itself, gracefully

With ``AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo`` in several terminals, the
items of each job spread over the processes, and each downstream fire still happens once.
"""

from __future__ import annotations

import argparse

import anyio

from aioelastic import Scheduler, ShardingContext

scheduler = Scheduler()
staged: dict[str, list[int]] = {}  # stands in for a staging table, keyed by upstream task id
attempts: dict[tuple[str, int], int] = {}


@scheduler.job(
    cron="0/3 * * * * ?",
    sharding_total_count=4,
    retries=2,
    retry_backoff={"initial": 0.1, "factor": 2, "max": 1},
)
async def extract(ctx: ShardingContext) -> None:
    await anyio.sleep(0.1)  # read this item's share of the source
    key = (ctx.task_id, ctx.sharding_item)
    attempts[key] = attempts.get(key, 0) + 1
    if ctx.sharding_item == 2 and attempts[key] == 1:
        raise ConnectionError("flaky source")  # retried on this instance, with backoff
    if ctx.still_owned():  # fencing: write only while this instance owns the item
        staged.setdefault(ctx.task_id, []).append(ctx.sharding_item)
    print(f"extract item {ctx.sharding_item} done (token {ctx.fencing_token[-8:]})", flush=True)


@scheduler.job(after="extract")
async def transform(ctx: ShardingContext) -> None:
    items = sorted(i for task in ctx.upstream_task_ids for i in staged.pop(task, []))
    print(f"transform after {len(ctx.upstream_task_ids)} extract run(s): items {items}", flush=True)


@scheduler.job(after="transform", after_policy="all_done")
async def load(ctx: ShardingContext) -> None:
    print(f"load after transform task {ctx.upstream_task_ids[0][:40]}...", flush=True)


async def main(seconds: float | None) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        if seconds is not None:
            await anyio.sleep(seconds)
            scheduler.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=None)
    anyio.run(main, parser.parse_args().seconds)
