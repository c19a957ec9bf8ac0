"""Trace retention (issue 13 part 7): with ``trace_retention_days`` one instance per namespace
(the holder of an ephemeral lock node) deletes rows older than N days in bounded batches; newer
rows stay; a second instance does not purge too, and takes over once the holder is gone. On
SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from aioelastic import Operations, Scheduler, Settings, ShardingContext
from aioelastic._retention import LOCK_NODE, TraceRetention, store_opener
from aioelastic._urls import parse_registry_url
from aioelastic.registry import MemoryRegistry, MemoryStore
from aioelastic.tracing import open_trace_store
from aioelastic.tracing._events import ExecutionSource, JobExecutionEvent, TraceEvent
from aioelastic.tracing._search import PurgeResult, SqlTraceSearch
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def trace_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/trace.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


def run(job: str, days_ago: float, n: int) -> JobExecutionEvent:
    start = NOW - timedelta(days=days_ago)
    return JobExecutionEvent(
        job_name=job,
        task_id=f"{job}@-@0@-@READY@-@i@-@{n:032x}",
        hostname="h",
        ip="127.0.0.1",
        sharding_item=0,
        execution_source=ExecutionSource.NORMAL_TRIGGER,
        start_time=start,
        complete_time=start + timedelta(seconds=1),
        is_success=True,
    )


async def seed(url: str, tmp_path: Path, old: int = 7, new: int = 3) -> None:
    events: list[TraceEvent] = [run("old", 10, n) for n in range(old)]
    events += [run("new", 1, old + n) for n in range(new)]
    async with open_trace_store(url, journal_path=tmp_path / "seed.journal") as store:
        await store.sink.write(events)


async def counts(url: str) -> dict[str, int]:
    async with open_trace_store(url, create_schema=False) as store:
        stats = await store.search.job_stats(since=NOW - timedelta(days=30))
    return {s.job_name: s.total for s in stats}


async def test_batches_delete_only_what_is_older(trace_url: str, tmp_path: Path) -> None:
    await seed(trace_url, tmp_path)
    async with open_trace_store(trace_url, create_schema=False) as store:
        assert isinstance(store.search, SqlTraceSearch)
        result = await store.search.purge_in_batches(5, batch_size=2, pause=0)
    assert result == PurgeResult(executions=7, status_traces=0)
    assert await counts(trace_url) == {"new": 3}


@asynccontextmanager
async def session(store: str) -> AsyncIterator[MemoryRegistry]:
    registry = MemoryRegistry(parse_registry_url(f"memory://{store}/ns"))
    async with AsyncExitStack() as stack:
        await registry.start(stack)
        yield registry


async def test_one_instance_per_namespace_purges(trace_url: str, tmp_path: Path) -> None:
    await seed(trace_url, tmp_path)
    name = f"ret{uuid.uuid4().hex[:6]}"
    MemoryStore.reset(name)
    opener = store_opener(trace_url)
    stacks = {who: AsyncExitStack() for who in ("first", "second")}
    watchers: dict[str, TraceRetention] = {}
    for who, stack in stacks.items():
        registry = await stack.enter_async_context(session(name))
        watchers[who] = TraceRetention(registry, "ns", who, opener, days=5)
    try:
        results: dict[str, PurgeResult | None] = {}

        async def purge(who: str) -> None:
            results[who] = await watchers[who].purge_once()

        async with anyio.create_task_group() as tg:  # both at once: one purges
            for who in watchers:
                tg.start_soon(purge, who)
        done = [who for who, result in results.items() if result is not None]
        assert len(done) == 1, results
        assert results[done[0]] == PurgeResult(executions=7, status_traces=0)
        holder = done[0]
        other = "second" if holder == "first" else "first"
        assert await watchers[other].purge_once() is None  # still not the holder
        assert await watchers[holder].purge_once() == PurgeResult(0, 0)
        data, _ = await watchers[other].registry.get(f"/ns/{LOCK_NODE}")
        assert data == holder.encode()
        assert await Operations.for_registry(watchers[other].registry, "ns").jobs() == []

        await stacks[holder].aclose()  # the holder's session ends: the other one takes over
        await seed(trace_url, tmp_path, old=2, new=0)
        assert await watchers[other].purge_once() == PurgeResult(2, 0)
        assert watchers[other].purges == 1
    finally:
        for stack in stacks.values():
            await stack.aclose()
    assert await counts(trace_url) == {"new": 3}


async def test_the_scheduler_purges_at_start_when_configured(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/trace.db"
    await seed(url, tmp_path)
    name = f"ret{uuid.uuid4().hex[:6]}"
    MemoryStore.reset(name)

    def scheduler(days: float | None) -> Scheduler:
        s = Scheduler(
            settings=Settings(
                registry_url=f"memory://{name}/ns",
                tracing_url=url,
                trace_journal_path=tmp_path / f"{uuid.uuid4().hex}.journal",
                trace_retention_days=days,
            )
        )
        s.add_job(_noop, "noop")
        return s

    async with scheduler(None):  # off by default: nothing deleted
        pass
    assert await counts(url) == {"new": 3, "old": 7}
    async with scheduler(5):
        await eventually(lambda: counts(url), 20, until=lambda c: "old" not in c, what="purge")
    assert await counts(url) == {"new": 3}


async def _noop(ctx: ShardingContext) -> None:
    pass
