"""The execution trace in PostgreSQL: run a job a few times, then read the trace back through
the search API (the same data ``aioelastic trace ...`` shows).

    python examples/tracing_postgres.py postgresql://user:password@127.0.0.1:5432/db
    python examples/tracing_postgres.py sqlite:///trace.db      # no server needed

(``AIOELASTIC_TRACING_URL`` works too.) The tables ``JOB_EXECUTION_LOG`` and
``JOB_STATUS_TRACE_LOG`` are created on first use.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta

import anyio

from aioelastic import Scheduler, ShardingContext
from aioelastic.tracing import open_trace_store


async def main(url: str) -> None:
    scheduler = Scheduler(tracing=url)
    done = anyio.Event()
    count = 0

    @scheduler.job(sharding_total_count=3, error_handler="ignore")  # failures: in the trace
    async def audit(ctx: ShardingContext) -> None:
        nonlocal count
        count += 1
        if count == 9:
            done.set()
        if ctx.sharding_item == 2:
            raise RuntimeError("item 2 always fails, to show failure causes")

    since = datetime.now(UTC) - timedelta(seconds=1)
    async with scheduler:  # leaving it flushes the trace
        for _ in range(3):
            await scheduler.trigger("audit")
            await anyio.sleep(0.2)
        with anyio.fail_after(10):
            await done.wait()

    async with open_trace_store(url) as store:
        page = await store.search.executions(job_name="audit", since=since, limit=20)
        print(f"{page.total} item runs of 'audit':")
        for run in page.items:
            cause = (run.failure_cause or "").splitlines()[-1:] or [""]
            print(f"  item {run.sharding_item} success={run.is_success} {cause[0]}")
        for stats in await store.search.job_stats(since=since):
            print(f"{stats.job_name}: {stats.succeeded} succeeded, {stats.failed} failed")


if __name__ == "__main__":
    trace_url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AIOELASTIC_TRACING_URL")
    if not trace_url:
        sys.exit(__doc__)
    anyio.run(main, trace_url)
