"""APScheduler 4 on the benchmark workloads; runs in the baselines venv, prints one JSON object.

    python baseline_apscheduler.py lag --store memory --jobs 100 --seconds 10
    python baseline_apscheduler.py throughput --store sqlalchemy --dsn postgresql://... --jobs 2000

``--store memory`` is APScheduler's ``MemoryDataStore`` + ``LocalEventBroker`` (one process);
``--store sqlalchemy`` is its distributed mode: ``SQLAlchemyDataStore`` on PostgreSQL through
asyncpg, with the ``AsyncpgEventBroker`` (LISTEN/NOTIFY).

lag: ``jobs`` schedules, each its own task, firing every whole second (``CronTrigger(second="*")``);
each run records ``now - current_job.scheduled_fire_time`` into a ``LagWindow`` (lag_window.py,
shared with the aioelastic side). ``max_concurrent_jobs`` is raised to the number of jobs so the
scheduler's default cap (100) does not queue them; each task keeps its default
``max_running_jobs=1`` and the schedule its default ``coalesce=latest`` (late fires are merged).
throughput: ``jobs`` no-op jobs added with ``add_job`` to a running scheduler; the clock runs from
the first ``add_job`` to the last ``JobReleased``.

lag also reports the process's CPU time per run and its memory per job (``lag_window.py``), the
same way as for aioelastic. Both also report the PostgreSQL work (SQL statements through
SQLAlchemy and NOTIFYs through the broker) per job run, the counterpart of aioelastic's ZooKeeper
requests per fire.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import anyio
from apscheduler import AsyncScheduler, JobReleased, current_job
from apscheduler.triggers.cron import CronTrigger
from lag_window import Footprint, LagWindow

WINDOW = LagWindow()


async def lag_probe() -> None:
    WINDOW.record(current_job.get().scheduled_fire_time, datetime.now(UTC))


async def noop() -> None:
    pass


class Counters:
    """SQL statements and broker notifications sent, for the coordination-cost figure."""

    def __init__(self) -> None:
        self.statements = 0
        self.notifications = 0

    def snapshot(self) -> tuple[int, int]:
        return self.statements, self.notifications


async def make_scheduler(
    stack: AsyncExitStack, store: str, dsn: str | None, max_jobs: int
) -> tuple[AsyncScheduler, Counters]:
    counters = Counters()
    if store == "memory":
        scheduler = AsyncScheduler(max_concurrent_jobs=max_jobs, cleanup_interval=None)
    else:
        from apscheduler.datastores.sqlalchemy import SQLAlchemyDataStore
        from apscheduler.eventbrokers.asyncpg import AsyncpgEventBroker
        from sqlalchemy import event
        from sqlalchemy.ext.asyncio import create_async_engine

        assert dsn is not None, "--dsn is needed for the sqlalchemy store"
        engine = create_async_engine(dsn.replace("postgresql://", "postgresql+asyncpg://", 1))
        stack.push_async_callback(engine.dispose)

        def count_statement(*_: Any) -> None:
            counters.statements += 1

        event.listen(engine.sync_engine, "before_cursor_execute", count_statement)
        broker = AsyncpgEventBroker.from_async_sqla_engine(engine)
        publish = broker.publish

        async def counted_publish(ev: Any) -> None:
            counters.notifications += 1
            await publish(ev)

        broker.publish = counted_publish  # type: ignore[method-assign]
        scheduler = AsyncScheduler(
            SQLAlchemyDataStore(engine),
            broker,
            max_concurrent_jobs=max_jobs,
            cleanup_interval=None,
        )
    await stack.enter_async_context(scheduler)
    return scheduler, counters


def per_run(counters: Counters, before: tuple[int, int], runs: int) -> dict[str, float]:
    statements, notifications = counters.snapshot()
    return {
        "sql_statements_per_run": round((statements - before[0]) / max(runs, 1), 2),
        "notifications_per_run": round((notifications - before[1]) / max(runs, 1), 2),
    }


async def lag(args: argparse.Namespace) -> dict[str, Any]:
    footprint = Footprint()
    async with AsyncExitStack() as stack:
        scheduler, counters = await make_scheduler(stack, args.store, args.dsn, max(100, args.jobs))
        for i in range(args.jobs):
            await scheduler.configure_task(f"job{i}", func=lag_probe)
            await scheduler.add_schedule(f"job{i}", CronTrigger(second="*"), id=f"s{i}")
        await scheduler.start_in_background()
        await anyio.sleep(args.warmup)
        memory = footprint.per_job(args.jobs)
        before = counters.snapshot()
        window = await WINDOW.measure(args.seconds, args.drain)
        cost = per_run(counters, before, len(WINDOW.samples))
        await scheduler.stop()
        with anyio.move_on_after(10):
            await scheduler.wait_until_stopped()
    return {**window, **cost, **memory}


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        scheduler, counters = await make_scheduler(stack, args.store, args.dsn, 100)
        await scheduler.configure_task("noop", func=noop, max_running_jobs=None)
        done = anyio.Event()
        released = 0

        def on_release(_: Any) -> None:
            nonlocal released
            released += 1
            if released == args.jobs:
                done.set()

        scheduler.subscribe(on_release, {JobReleased})
        await scheduler.start_in_background()
        before = counters.snapshot()
        start = time.perf_counter()
        for _ in range(args.jobs):
            await scheduler.add_job("noop")
        with anyio.fail_after(args.timeout):
            await done.wait()
        elapsed = time.perf_counter() - start
        cost = per_run(counters, before, args.jobs)
        await scheduler.stop()
    return {
        "runs": args.jobs,
        "seconds": round(elapsed, 4),
        "runs_per_s": round(args.jobs / elapsed, 1),
        **cost,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["lag", "throughput"])
    parser.add_argument("--store", choices=["memory", "sqlalchemy"], default="memory")
    parser.add_argument("--dsn", help="postgresql://user:password@host:port/db")
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drain", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    work = lag if args.workload == "lag" else throughput
    out = anyio.run(work, args)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
