"""An instance process whose items record what ``ctx.lost`` said when they ended.

Same command line as ``cluster_instance`` (``tests/harness/instance_main.py``); each item waits
``duration`` seconds and writes ``start`` and ``end`` (with ``cancelled``, ``lost_at_cancel``,
``reason``) to the history file.
"""

from __future__ import annotations

import argparse
from typing import Any

import anyio

from aioelastic import Scheduler, ShardingContext
from tests.harness.instance_main import History, item_seconds, run


def add_jobs(
    scheduler: Scheduler, history: History, options: dict[str, Any], args: argparse.Namespace
) -> None:
    seconds_of = item_seconds(options)

    async def work(ctx: ShardingContext) -> None:
        history.start(ctx)
        fields: dict[str, Any] = {"cancelled": False}
        try:
            await anyio.sleep(seconds_of(ctx.sharding_item))
        except anyio.get_cancelled_exc_class():
            fields = {"cancelled": True, "lost_at_cancel": ctx.lost.is_set()}
            raise
        finally:
            history.end(ctx, reason=ctx.lost.reason, **fields)

    for name in args.jobs.split(","):
        scheduler.add_job(work, name=name, **options)


if __name__ == "__main__":
    run(add_jobs)
