"""One scheduler instance as its own OS process, for multi-instance tests.

    python -m tests.harness.cluster_instance --registry URL --log FILE [--job-options JSON]

Command line, history records and signals: ``tests/harness/instance_main.py``; each item run
writes ``start`` and ``end``. A file ``FILE.block`` holding a number makes its next item
block the event loop that many seconds (``tests/harness/chaos.py``); ``--tracing-url``/
``--journal`` set its trace (default: from the environment).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import anyio

from aioelastic import Scheduler, ShardingContext
from tests.harness.instance_main import History, item_seconds, run

__all__ = ["History", "add_jobs", "block_requested"]


def block_requested(flag: str) -> float:
    """Seconds to block the loop for, if the test wrote them to ``flag`` (taken once)."""
    try:
        seconds = float(Path(flag).read_text() or 0)
        os.unlink(flag)
    except (OSError, ValueError):
        return 0.0
    return seconds


def add_jobs(
    scheduler: Scheduler, history: History, options: dict[str, Any], args: argparse.Namespace
) -> None:
    seconds_of = item_seconds(options)
    # Blocked loop (issue 11.1): the first item run blocks the event loop this many seconds.
    block_loop = [float(options.pop("block_loop", 0))]

    async def work(ctx: ShardingContext) -> None:
        history.start(ctx)
        ok = False
        try:
            if block_loop[0]:
                seconds, block_loop[0] = block_loop[0], 0
                time.sleep(seconds)  # blocks the loop on purpose
            elif seconds := block_requested(args.log + ".block"):
                time.sleep(
                    seconds
                )  # asked for by the test (tests/harness/chaos.py): blocks the loop
            await anyio.sleep(seconds_of(ctx.sharding_item))
            ok = True
        finally:
            history.end(ctx, ok=ok)

    for name in args.jobs.split(","):
        scheduler.add_job(work, name=name, **options)


if __name__ == "__main__":
    run(add_jobs)
