"""An instance process running a two-job pipeline: ``extract`` (upstream, its options from
``--job-options``) and ``load`` (``after="extract"``, one item, failover on, running for
``load_duration`` seconds of those options, default 0).

Same command line and history records as ``cluster_instance`` (``tests/harness/instance_main.py``;
``start`` and ``end`` of every item run, for both jobs); a ``load`` start also names its
``upstream`` task ids, and a ``fire`` record names the upstream fire of each run of ``load``.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from aioelastic import JobListener, Scheduler, ShardingContext, ShardingContexts
from tests.harness.instance_main import History, item_seconds, run


def add_jobs(
    scheduler: Scheduler, history: History, options: dict[str, Any], args: argparse.Namespace
) -> None:
    seconds_of = item_seconds(options)
    load_duration = float(options.pop("load_duration", 0.0))

    async def work(ctx: ShardingContext) -> None:
        history.start(ctx, upstream=list(ctx.upstream_task_ids))
        ok = False
        try:
            if ctx.job_name == "extract":
                await anyio.sleep(seconds_of(ctx.sharding_item))
            elif load_duration:
                await anyio.sleep(load_duration)
            ok = True
        finally:
            history.end(ctx, ok=ok)

    scheduler.add_job(work, name="extract", **options)
    scheduler.add_job(
        work, name="load", after="extract", failover=True, listeners=(_Fires(history),)
    )


class _Fires(JobListener):
    """Records which upstream fire each run of ``load`` serves (a ``fire`` record: its task id
    and the fire's key)."""

    def __init__(self, history: History) -> None:
        self.history = history

    async def before_job_executed(self, contexts: ShardingContexts) -> None:
        self.history.write("fire", task_id=contexts.task_id, upstream_fire=contexts.upstream_fire)


if __name__ == "__main__":
    run(add_jobs, default_jobs="extract")
