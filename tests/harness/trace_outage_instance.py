"""A scheduler process for the trace-outage test: fires a many-item job every second, writes its
trace to PostgreSQL with a journal, and logs every item run (``time task item``) to a file.

Usage: ``python tests/harness/trace_outage_instance.py TRACING_URL JOURNAL RUNS_FILE``. Prints
``ready`` once started; runs until killed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio

from aioelastic import Scheduler, Settings, ShardingContext

ITEMS = 40


async def main(tracing_url: str, journal: str, runs_file: str) -> None:
    settings = Settings(
        registry_url="memory://trace-outage-child/ns",
        tracing_url=tracing_url,
        trace_journal_path=Path(journal),
    )
    scheduler = Scheduler(settings=settings)
    runs = open(runs_file, "a", buffering=1)  # line-buffered: each line reaches the OS at once

    @scheduler.job(cron="* * * * * ?", sharding_total_count=ITEMS)
    async def ticking(ctx: ShardingContext) -> None:
        runs.write(f"{time.time():.6f} {ctx.task_id} {ctx.sharding_item}\n")

    async with scheduler:
        print("ready", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
