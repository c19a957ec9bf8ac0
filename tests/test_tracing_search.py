"""The search API, the same tests on PostgreSQL and on SQLite: filters, sorting, pagination with
totals, per-job stats, retention purge, hostile parameters; and the SQLite sink's upsert rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from aioelastic._errors import ConfigError
from aioelastic.tracing import (
    ExecutionRecord,
    SqliteSink,
    TraceStore,
    create_sink,
    open_trace_store,
)
from aioelastic.tracing._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    State,
    TraceEvent,
)

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(hours=2)
OLD = NOW - timedelta(days=10)
HOSTILE = 'x\'; DROP TABLE "JOB_EXECUTION_LOG"; --'


def _execution(i: int, job: str, at: datetime) -> list[JobExecutionEvent]:
    host = ("host-a", "10.0.0.1") if i % 2 == 0 else ("host-b", "10.0.0.2")
    source = ExecutionSource.MISFIRE if i % 7 == 0 else ExecutionSource.NORMAL_TRIGGER
    begun = JobExecutionEvent(
        job_name=job,
        task_id=f"{job}@-@{i}@-@READY@-@{host[0]}@-@run{i // 5}",
        hostname=host[0],
        ip=host[1],
        sharding_item=i % 5,
        execution_source=source,
        start_time=at,
    )
    if i == 24:  # still running
        return [begun]
    ok = i % 5 != 3
    done = JobExecutionEvent(
        id=begun.id,
        job_name=job,
        task_id=begun.task_id,
        hostname=host[0],
        ip=host[1],
        sharding_item=begun.sharding_item,
        execution_source=source,
        start_time=at,
        complete_time=at + timedelta(seconds=i),
        is_success=ok,
        failure_cause=None if ok else f"item {i} failed",
    )
    return [begun, done]


def _status(i: int, job: str, at: datetime) -> JobStatusTraceEvent:
    states = [State.TASK_STAGING, State.TASK_RUNNING, State.TASK_FINISHED, State.TASK_ERROR]
    return JobStatusTraceEvent(
        job_name=job,
        task_id=f"{job}@-@0,1@-@READY@-@host-a@-@run{i // 4}",
        slave_id="host-a" if i % 3 else "host-b",
        execution_type=ExecutionType.FAILOVER if i % 6 == 5 else ExecutionType.READY,
        sharding_items=(0, 1),
        state=states[i % 4],
        message=f"status {i}",
        creation_time=at,
    )


def dataset() -> list[TraceEvent]:
    events: list[TraceEvent] = []
    for i in range(25):
        events += _execution(i, "settlement", T0 + timedelta(minutes=i))
        events.append(_status(i, "settlement", T0 + timedelta(minutes=i)))
    for i in range(5):
        events += _execution(i, "report", OLD + timedelta(minutes=i))
        events.append(_status(i, "report", OLD + timedelta(minutes=i)))
    events += _execution(0, HOSTILE, T0)
    return events


DATASET = dataset()


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def trace_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path}/trace.db"


@pytest.fixture
async def store(trace_url: str, tmp_path: Path) -> AsyncIterator[TraceStore]:
    async with open_trace_store(trace_url, journal_path=tmp_path / "j.journal") as opened:
        await opened.sink.write(DATASET)
        yield opened


def settlement_runs() -> list[JobExecutionEvent]:
    merged: dict[str, JobExecutionEvent] = {}
    for event in DATASET:
        if isinstance(event, JobExecutionEvent) and event.job_name == "settlement":
            merged[event.id] = event
    return list(merged.values())


async def test_filters_combine_and_match_exactly(store: TraceStore) -> None:
    search = store.search
    assert (await search.executions(job_name="settlement")).total == 25
    failed = await search.executions(job_name="settlement", is_success=False, limit=100)
    assert sorted(r.sharding_item for r in failed.items if r.complete_time) == [3] * 5
    assert {r.failure_cause for r in failed.items if r.complete_time} == {
        f"item {i} failed" for i in (3, 8, 13, 18, 23)
    }
    assert (await search.executions(hostname="host-b", job_name="settlement")).total == 12
    assert (await search.executions(ip="10.0.0.1", job_name="settlement")).total == 13
    misfired = await search.executions(execution_source=ExecutionSource.MISFIRE, limit=100)
    assert {r.sharding_item for r in misfired.items if r.job_name == "settlement"} == {0, 2, 4, 1}
    item3 = await search.executions(job_name="settlement", sharding_item=3)
    assert item3.total == 5
    window = await search.executions(
        job_name="settlement", since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=10)
    )
    assert sorted(r.start_time or NOW for r in window.items) == [
        T0 + timedelta(minutes=m) for m in range(5, 10)
    ]
    one_task = window.items[0].task_id
    assert all(r.task_id == one_task for r in (await search.executions(task_id=one_task)).items)
    naive = await search.executions(job_name="settlement", since=T0.replace(tzinfo=None))
    assert naive.total == 25  # naive datetimes are UTC


async def test_records_round_trip_the_written_values(store: TraceStore) -> None:
    expected = {e.id: e for e in settlement_runs()}
    page = await store.search.executions(job_name="settlement", limit=100)
    for record in page.items:
        event = expected[record.id]
        assert record == ExecutionRecord(
            id=event.id,
            job_name=event.job_name,
            task_id=event.task_id,
            hostname=event.hostname,
            ip=event.ip,
            sharding_item=event.sharding_item,
            execution_source=event.execution_source.value,
            failure_cause=event.failure_cause,
            is_success=event.is_success,
            start_time=event.start_time,
            complete_time=event.complete_time,
        )


async def test_sorting_and_pagination_with_totals(store: TraceStore) -> None:
    search = store.search
    newest_first = await search.executions(job_name="settlement", limit=100)
    times = [r.start_time or NOW for r in newest_first.items]
    assert times == sorted(times, reverse=True) and newest_first.total == 25
    pages = [
        await search.executions(
            job_name="settlement", sort="start_time", order="asc", offset=offset, limit=10
        )
        for offset in (0, 10, 20)
    ]
    assert [len(p.items) for p in pages] == [10, 10, 5]
    assert {p.total for p in pages} == {25}
    assert [p.has_more for p in pages] == [True, True, False]
    assert [r.start_time for p in pages for r in p.items] == sorted(times)
    by_host = await search.executions(job_name="settlement", sort="hostname", limit=100)
    assert [r.hostname for r in by_host.items] == ["host-b"] * 12 + ["host-a"] * 13
    by_completion = await search.executions(
        job_name="settlement", sort="complete_time", order="desc", limit=100
    )
    assert by_completion.items[-1].complete_time is None  # running rows sort last
    beyond = await search.executions(job_name="settlement", offset=100)
    assert beyond.items == () and beyond.total == 25


async def test_status_trace_search(store: TraceStore) -> None:
    search = store.search
    settlement = await search.status_traces(job_name="settlement", limit=100)
    assert settlement.total == 25
    errors = await search.status_traces(job_name="settlement", state=State.TASK_ERROR)
    assert errors.total == 6 and {r.state for r in errors.items} == {"TASK_ERROR"}
    failover = await search.status_traces(execution_type="FAILOVER", limit=100)
    assert failover.total == 4
    assert (await search.status_traces(slave_id="host-b", job_name="settlement")).total == 9
    ordered = await search.status_traces(
        job_name="settlement", sort="creation_time", order="asc", offset=20, limit=10
    )
    assert [r.message for r in ordered.items] == [f"status {i}" for i in range(20, 25)]
    first_task = ordered.items[0].task_id
    by_task = await search.status_traces(task_id=first_task)
    assert by_task.total == 4 and all(r.sharding_item == "[0, 1]" for r in by_task.items)
    recent = await search.status_traces(since=T0 - timedelta(days=1), limit=100)
    assert recent.total == 25


async def test_job_stats_over_a_period(store: TraceStore) -> None:
    stats = await store.search.job_stats(since=T0 - timedelta(days=1))
    by_job = {s.job_name: s for s in stats}
    settlement = by_job["settlement"]
    assert (settlement.total, settlement.succeeded, settlement.failed, settlement.running) == (
        25,
        19,
        5,
        1,
    )
    assert "report" not in by_job
    everything = await store.search.job_stats(since=OLD - timedelta(days=1))
    assert [s.job_name for s in everything] == sorted([HOSTILE, "report", "settlement"])
    one = await store.search.job_stats(since=OLD, until=T0, job_name="report")
    assert [(s.job_name, s.total, s.succeeded, s.failed) for s in one] == [("report", 5, 4, 1)]


async def test_purge_deletes_rows_older_than_the_retention(store: TraceStore) -> None:
    result = await store.search.purge(older_than_days=5)
    assert (result.executions, result.status_traces) == (5, 5)
    assert (await store.search.executions(job_name="report")).total == 0
    assert (await store.search.status_traces(job_name="report")).total == 0
    assert (await store.search.executions(job_name="settlement")).total == 25
    again = await store.search.purge(older_than_days=5)
    assert (again.executions, again.status_traces) == (0, 0)


async def test_hostile_search_parameters_are_data_or_rejected(store: TraceStore) -> None:
    search = store.search
    found = await search.executions(job_name=HOSTILE)
    assert found.total == 1 and found.items[0].job_name == HOSTILE
    assert (await search.executions(job_name="settlement' OR '1'='1")).total == 0
    assert (await search.status_traces(task_id="x' OR 1=1; --")).total == 0
    for bad in [
        {"sort": "start_time; DROP TABLE JOB_EXECUTION_LOG"},
        {"sort": "failure_cause"},
        {"order": "desc; --"},
        {"limit": 0},
        {"limit": 100_000},
        {"offset": -1},
    ]:
        with pytest.raises(ConfigError):
            await search.executions(**bad)  # type: ignore[arg-type]
    assert (await search.executions()).total == 25 + 5 + 1  # tables intact


async def test_sqlite_sink_upserts_like_postgres(tmp_path: Path) -> None:
    sink = create_sink(f"sqlite:///{tmp_path}/t.db", journal_path=tmp_path / "j")
    assert isinstance(sink, SqliteSink)
    runs = [e for e in DATASET if isinstance(e, JobExecutionEvent) and e.job_name == "report"]
    completions = [e for e in runs if e.is_completion]
    try:
        await sink.write(completions)  # completions first,
        await sink.write(runs)  # then the starts again, and a retry of everything
        await sink.write(runs)
    finally:
        await sink.aclose()
    async with open_trace_store(f"sqlite:///{tmp_path}/t.db") as store:
        page = await store.search.executions(limit=100)
    assert page.total == 5
    assert all(r.complete_time is not None for r in page.items)
    assert sorted(r.is_success for r in page.items) == [False, True, True, True, True]


async def test_memory_and_log_urls_have_no_search() -> None:
    for url in ("memory://", "log://"):
        with pytest.raises(ConfigError):
            async with open_trace_store(url):
                pass


async def test_sqlite_resolves_original_task_ids_in_any_order(tmp_path: Path) -> None:
    def traced(task: str, new_state: State, original: str = "") -> JobStatusTraceEvent:
        return JobStatusTraceEvent(
            job_name="job",
            task_id=task,
            slave_id="host-a",
            execution_type=ExecutionType.FAILOVER,
            sharding_items=(2,),
            state=new_state,
            message=str(new_state),
            original_task_id=original,
        )

    staging = traced("t1", State.TASK_STAGING, original="t0")
    running = traced("t1", State.TASK_RUNNING)
    early = traced("t2", State.TASK_RUNNING)
    late_staging = traced("t2", State.TASK_STAGING, original="t-first")
    url = f"sqlite:///{tmp_path}/t.db"
    for batch in ([staging], [running], [early], [late_staging]):
        sink = create_sink(url, journal_path=tmp_path / "j")  # a fresh sink: no cache
        try:
            await sink.write(batch)
        finally:
            assert isinstance(sink, SqliteSink)
            await sink.aclose()
    async with open_trace_store(url) as store:
        page = await store.search.status_traces(limit=10)
    originals = {record.id: record.original_task_id for record in page.items}
    assert originals == {
        staging.id: "t0",
        running.id: "t0",
        early.id: "t-first",
        late_staging.id: "t-first",
    }


def _fire_rows(task: str, start: datetime, outcomes: list[bool | None]) -> list[JobExecutionEvent]:
    rows = []
    for item, ok in enumerate(outcomes):
        begun = JobExecutionEvent(
            job_name="pipeline",
            task_id=task,
            hostname="host-a",
            ip="10.0.0.1",
            sharding_item=item,
            execution_source=ExecutionSource.FAILOVER,
            start_time=start + timedelta(seconds=item),
        )
        rows.append(begun)
        if ok is not None:
            rows.append(
                replace(  # the completion: the start's row, finished
                    begun,
                    complete_time=start + timedelta(seconds=10 + item),
                    is_success=ok,
                    failure_cause=None if ok else f"<b>item {item}</b> broke",
                )
            )
    return rows


async def test_fires_group_the_rows_of_one_task_id(store: TraceStore) -> None:
    done, going = "pipeline@-@0,1,2@-@READY@-@host-a@-@1", "pipeline@-@0,1@-@READY@-@host-a@-@1"
    await store.sink.write(_fire_rows(done, T0, [True, False, True]))
    await store.sink.write(_fire_rows(going, T0 + timedelta(minutes=1), [True, None]))
    page = await store.search.fires(job_name="pipeline")
    assert page.total == 2
    newest, older = page.items
    assert (newest.task_id, newest.items, newest.running) == (going, 2, 1)
    assert newest.outcome == "running"
    assert newest.complete_time is None and newest.duration is None
    assert (older.task_id, older.items, older.succeeded, older.failed) == (done, 3, 2, 1)
    assert older.outcome == "failed" and older.failure_cause == "<b>item 1</b> broke"
    assert older.execution_source == "FAILOVER"
    assert older.duration == timedelta(seconds=12)
    second = await store.search.fires(job_name="pipeline", offset=1, limit=1)
    assert [f.task_id for f in second.items] == [done] and second.total == 2
    window = await store.search.fires(since=T0 + timedelta(seconds=30), job_name="pipeline")
    assert [f.task_id for f in window.items] == [going]
    all_jobs = await store.search.fires(since=T0 - timedelta(minutes=1), limit=1000)
    assert all_jobs.total == 25 + 1 + 2  # settlement's rows have one task id each, plus HOSTILE's
    with pytest.raises(ConfigError):
        await store.search.fires(limit=0)
