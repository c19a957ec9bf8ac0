"""The scheduler writing its trace to PostgreSQL and SQLite, read back through the search API."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore
from aioelastic.tracing import open_trace_store
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres), "sqlite"])
def tracing_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'trace.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def test_runs_leave_execution_and_status_rows(tracing_url: str, tmp_path: Path) -> None:
    MemoryStore.reset("trace-e2e")
    settings = Settings(
        registry_url="memory://trace-e2e/ns",
        tracing_url=tracing_url,
        trace_journal_path=tmp_path / "trace.journal",
    )
    scheduler = Scheduler(settings=settings)
    release = anyio.Event()
    started = 0

    @scheduler.job(sharding_total_count=3)
    async def settlement(ctx: ShardingContext) -> None:
        nonlocal started
        started += 1
        if started <= 3:
            await release.wait()
        if ctx.sharding_item == 2:
            raise RuntimeError("item 2 failed")

    async with scheduler:
        await scheduler.trigger("settlement")
        await eventually(lambda: started >= 3)
        await scheduler.trigger("settlement")  # finds items running: misfire
        runner = scheduler._runners["settlement"]
        await eventually(lambda: runner.coordinator.is_misfired(0))
        release.set()
        await eventually(lambda: started >= 6)
    # Leaving `async with` flushed the trace.

    async with open_trace_store(tracing_url) as store:
        assert store.search is not None
        page = await store.search.executions(job_name="settlement", limit=100)
        assert page.total == 6
        rows = page.items
        assert {r.execution_source for r in rows} == {"NORMAL_TRIGGER", "MISFIRE"}
        assert all(r.complete_time is not None for r in rows)
        failed = [r for r in rows if not r.is_success]
        assert [r.sharding_item for r in failed] == [2, 2]
        assert "item 2 failed" in (failed[0].failure_cause or "")
        assert all(r.hostname == scheduler.identity.hostname for r in rows)

        misfire_runs = await store.search.executions(
            job_name="settlement", execution_source="MISFIRE"
        )
        assert misfire_runs.total == 3

        statuses = await store.search.status_traces(job_name="settlement", limit=100, order="asc")
        states = [s.state for s in statuses.items]
        assert states.count("TASK_STAGING") == 2
        assert states.count("TASK_ERROR") == 2  # the first run and the misfire re-run
        assert any("still running" in (s.message or "") for s in statuses.items)
        assert all(s.slave_id == scheduler.instance_id for s in statuses.items)

        stats = await store.search.job_stats(since=rows[0].start_time.replace(year=2000))  # type: ignore[union-attr]
        by_job = {s.job_name: s for s in stats}
        assert by_job["settlement"].succeeded == 4 and by_job["settlement"].failed == 2


@pytest.mark.postgres
async def test_database_outage_mid_run_loses_nothing(
    postgres_server: Any, postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL stops while jobs keep firing, comes back, and every run is there once."""
    MemoryStore.reset("trace-outage")
    settings = Settings(
        registry_url="memory://trace-outage/ns",
        tracing_url=postgres_url,
        trace_journal_path=tmp_path / "outage.journal",
    )
    scheduler = Scheduler(settings=settings)
    runs: list[str] = []

    @scheduler.job(cron="* * * * * ?", sharding_total_count=2)
    async def ticking(ctx: ShardingContext) -> None:
        runs.append(f"{ctx.task_id}#{ctx.sharding_item}")

    async with scheduler:
        await eventually(lambda: len(runs) >= 2, 10, 0.05)
        await anyio.to_thread.run_sync(postgres_server.stop)
        during = len(runs)
        # jobs keep running with the database down
        await eventually(lambda: len(runs) >= during + 4, 10, 0.05)
        await anyio.to_thread.run_sync(postgres_server.start)
        await eventually(lambda: len(runs) >= during + 6, 10, 0.05)
    # Stopped: once the database was back, shutdown wrote the backlog the outage journaled.
    async with open_trace_store(postgres_url, journal_path=tmp_path / "outage.journal") as store:
        assert store.search is not None
        page = await eventually(
            partial(store.search.executions, job_name="ticking", limit=1000),
            20,
            0.2,
            until=lambda page: page.total >= len(runs),
        )
        found = [f"{r.task_id}#{r.sharding_item}" for r in page.items]
        assert sorted(found) == sorted(runs)  # every run, exactly once
        assert all(r.complete_time is not None for r in page.items)
