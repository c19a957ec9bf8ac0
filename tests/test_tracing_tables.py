"""Trace tables as they are, on PostgreSQL and SQLite: ElasticJob 3.0.5's exact DDL (no
``source``, bounded widths, ``TIMESTAMP``), completions written by another process (a survivor
completing a dead instance's run), the ``is_success`` / ``finished`` filters and stats, hostile
strings in every text filter, and out-of-range numbers and dates."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aioelastic._errors import ConfigError
from aioelastic._executor import make_task_id as reexported
from aioelastic._task_id import TASK_ID_LIMIT, make_task_id, parse_task_id
from aioelastic.tracing import TraceStore, open_trace_store
from aioelastic.tracing._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    State,
)

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC).replace(microsecond=0)

# ElasticJob 3.0.5, ecosystem/tracing/rdb/src/main/resources/META-INF/sql/PostgreSQL.properties
ELASTICJOB_305_DDL = (
    "CREATE TABLE JOB_EXECUTION_LOG (id VARCHAR(40) NOT NULL, job_name VARCHAR(100) NOT NULL,"
    " task_id VARCHAR(255) NOT NULL, hostname VARCHAR(255) NOT NULL, ip VARCHAR(50) NOT NULL,"
    " sharding_item INT NOT NULL, execution_source VARCHAR(20) NOT NULL, failure_cause"
    " VARCHAR(4000) NULL, is_success BOOLEAN NOT NULL, start_time TIMESTAMP NULL, complete_time"
    " TIMESTAMP NULL, PRIMARY KEY (id))",
    "CREATE TABLE JOB_STATUS_TRACE_LOG (id VARCHAR(40) NOT NULL, job_name VARCHAR(100) NOT NULL,"
    " original_task_id VARCHAR(255) NOT NULL, task_id VARCHAR(255) NOT NULL, slave_id"
    " VARCHAR(50) NOT NULL, execution_type VARCHAR(20) NOT NULL, sharding_item VARCHAR(100) NOT"
    " NULL, state VARCHAR(20) NOT NULL, message VARCHAR(4000) NULL, creation_time TIMESTAMP"
    " NULL, PRIMARY KEY (id))",
    "CREATE INDEX TASK_ID_STATE_INDEX ON JOB_STATUS_TRACE_LOG (task_id, state)",
)

# ElasticJob 3.0.0-3.0.4: the same, with ``source VARCHAR(50) NOT NULL`` in the status table
ELASTICJOB_304_DDL = (
    ELASTICJOB_305_DDL[0],
    ELASTICJOB_305_DDL[1].replace(
        "slave_id VARCHAR(50) NOT NULL,",
        "slave_id VARCHAR(50) NOT NULL, source VARCHAR(50) NOT NULL,",
    ),
    ELASTICJOB_305_DDL[2],
)

INJECTIONS = [
    'x\'; DROP TABLE "JOB_EXECUTION_LOG"; --',
    "x'); DROP TABLE JOB_STATUS_TRACE_LOG; --",
    "' OR '1'='1",
    'x" OR 1=1 --',
]


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def trace_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path}/trace.db"


async def create_elasticjob_tables(url: str, ddl: tuple[str, ...]) -> None:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        for statement in ddl:
            conn.execute(statement)
        conn.commit()
        conn.close()
        return
    pg = await asyncpg.connect(url)
    try:
        for statement in ddl:
            await pg.execute(statement)
    finally:
        await pg.close()


@pytest.fixture
async def store(trace_url: str, tmp_path: Path) -> AsyncIterator[TraceStore]:
    async with open_trace_store(trace_url, journal_path=tmp_path / "a.journal") as opened:
        yield opened


def started(item: int, *, host: str = "host-dead", at: datetime = NOW) -> JobExecutionEvent:
    return JobExecutionEvent(
        job_name="billing",
        task_id=f"billing@-@{item}@-@READY@-@{host}@-@run1",
        hostname=host,
        ip="10.0.0.9",
        sharding_item=item,
        execution_source=ExecutionSource.NORMAL_TRIGGER,
        start_time=at,
    )


def lost(
    run: JobExecutionEvent, *, ok: bool = False, cause: str | None = None
) -> JobExecutionEvent:
    """The completion a survivor posts for a dead instance's run: same id, its own host."""
    return JobExecutionEvent(
        id=run.id,
        job_name=run.job_name,
        task_id=f"billing@-@{run.sharding_item}@-@FAILOVER@-@host-taker@-@run2",
        hostname="host-taker",
        ip="10.0.0.2",
        sharding_item=run.sharding_item,
        execution_source=ExecutionSource.FAILOVER,
        start_time=NOW + timedelta(minutes=5),
        complete_time=NOW + timedelta(minutes=5),
        is_success=ok,
        failure_cause=cause
        or "instance host-dead was lost; item taken over by host-taker (failover)",
    )


async def one(store: TraceStore, run_id: str) -> object:
    page = await store.search.executions(job_name="billing", limit=100)
    return next(r for r in page.items if r.id == run_id)


# -- completions from another process -----------------------------------------------------------


async def test_a_completion_from_another_process_completes_the_row_started_elsewhere(
    trace_url: str, tmp_path: Path
) -> None:
    run = started(0)
    async with open_trace_store(trace_url, journal_path=tmp_path / "dead.journal") as dead:
        await dead.sink.write([run])
    async with open_trace_store(trace_url, journal_path=tmp_path / "taker.journal") as taker:
        await taker.sink.write([lost(run)])
        row = await one(taker, run.id)
    assert row.complete_time == NOW + timedelta(minutes=5)  # type: ignore[attr-defined]
    assert row.is_success is False  # type: ignore[attr-defined]
    assert "host-dead" in row.failure_cause and "host-taker" in row.failure_cause  # type: ignore[attr-defined]
    # the row still describes the dead run: its host, task and start time
    assert (row.hostname, row.start_time) == ("host-dead", NOW)  # type: ignore[attr-defined]
    assert row.task_id == run.task_id  # type: ignore[attr-defined]


async def test_a_completion_before_its_start_and_a_late_start_never_undoes_it(
    store: TraceStore,
) -> None:
    run = started(1)
    await store.sink.write([lost(run)])
    await store.sink.write([run])  # the dead runner's start, replayed late from its journal
    row = await one(store, run.id)
    assert row.complete_time is not None and row.is_success is False  # type: ignore[attr-defined]
    assert row.failure_cause and "lost" in row.failure_cause  # type: ignore[attr-defined]
    assert (row.hostname, row.start_time) == ("host-dead", NOW)  # type: ignore[attr-defined]
    # the same start and completion in one batch, in either order, give the same row
    other = started(2)
    await store.sink.write([lost(other), other])
    row2 = await one(store, other.id)
    assert (row2.hostname, row2.complete_time is not None) == ("host-dead", True)  # type: ignore[attr-defined]


async def test_the_first_completion_wins(store: TraceStore) -> None:
    run = started(3)
    await store.sink.write([run, lost(run)])
    await store.sink.write([lost(run, ok=True, cause="later")])
    row = await one(store, run.id)
    assert row.is_success is False and "lost" in (row.failure_cause or "")  # type: ignore[attr-defined]


async def test_failure_filter_and_stats_count_completed_rows_only(store: TraceStore) -> None:
    running, failed, done = started(0), started(1), started(2)
    succeeded = JobExecutionEvent(
        **{**_fields(done), "complete_time": NOW + timedelta(seconds=1), "is_success": True}
    )
    await store.sink.write([running, failed, lost(failed), done, succeeded])
    search = store.search
    failures = await search.executions(job_name="billing", is_success=False)
    assert [r.id for r in failures.items] == [failed.id]
    unfinished = await search.executions(job_name="billing", finished=False)
    assert [r.id for r in unfinished.items] == [running.id]
    assert not unfinished.items[0].finished
    assert (await search.executions(job_name="billing", finished=True)).total == 2
    with pytest.raises(ConfigError):
        await search.executions(is_success=False, finished=False)
    (stats,) = await search.job_stats(since=NOW - timedelta(hours=1))
    assert (stats.total, stats.succeeded, stats.failed, stats.running) == (3, 1, 1, 1)
    # job_stats() has the CLI's default window (the last day)
    assert await search.job_stats() == [stats]


def _fields(e: JobExecutionEvent) -> dict[str, Any]:
    return {name: getattr(e, name) for name in JobExecutionEvent.__dataclass_fields__}


# -- ElasticJob 3.0.5's tables, as they are --------------------------------------------------------


@pytest.mark.parametrize("version", ["3.0.5", "3.0.4"])
async def test_elasticjob_tables_are_written_and_searched(
    trace_url: str, tmp_path: Path, version: str
) -> None:
    await create_elasticjob_tables(
        trace_url, ELASTICJOB_305_DDL if version == "3.0.5" else ELASTICJOB_304_DDL
    )
    items = list(range(70))
    instance = "10.0.0.1@-@12345" + "x" * 60  # longer than slave_id's 50 characters
    task = make_task_id("billing", items, ExecutionType.READY, instance)
    assert len(task) <= TASK_ID_LIMIT and parse_task_id(task).items == tuple(items)
    runs = [
        JobExecutionEvent(
            job_name="billing",
            task_id=task,
            hostname="host-a",
            ip="10.0.0.1",
            sharding_item=i,
            execution_source=ExecutionSource.NORMAL_TRIGGER,
            start_time=NOW,
        )
        for i in items
    ]
    done = JobExecutionEvent(
        **{
            **_fields(runs[0]),
            "complete_time": NOW + timedelta(seconds=2),
            "failure_cause": "E" * 9000,
        }
    )
    statuses = [
        JobStatusTraceEvent(
            job_name="billing",
            task_id=task,
            slave_id=instance,
            execution_type=ExecutionType.READY,
            sharding_items=tuple(items),
            state=state,
            message="M" * 6000,
            original_task_id=task if state is State.TASK_STAGING else "",
            creation_time=NOW + timedelta(seconds=n),
        )
        for n, state in enumerate((State.TASK_STAGING, State.TASK_RUNNING, State.TASK_ERROR))
    ]
    async with open_trace_store(trace_url, journal_path=tmp_path / "j.journal") as store:
        await store.sink.write([*runs, done, *statuses])
        page = await store.search.executions(job_name="billing", limit=100)
        assert page.total == 70 and {r.task_id for r in page.items} == {task}
        (failed,) = (await store.search.executions(job_name="billing", is_success=False)).items
        assert failed.failure_cause is not None and len(failed.failure_cause) == 4000
        assert failed.failure_cause.startswith("EEE") and failed.failure_cause.endswith("EEE")
        assert failed.start_time == NOW and failed.complete_time == NOW + timedelta(seconds=2)
        window = await store.search.executions(since=NOW, until=NOW + timedelta(seconds=1))
        assert window.total == 70
        trace = await store.search.status_traces(task_id=task)
        assert trace.total == 3
        for record in trace.items:
            # 3.0.5 has no source column
            assert record.source == ("" if version == "3.0.5" else "LITE_EXECUTOR")
            assert record.message is not None and len(record.message) == 4000
            assert len(record.slave_id) == 50
            assert record.original_task_id == task
            assert record.sharding_item == "[0-69]"  # "[0, 1, ..., 69]" exceeds VARCHAR(100)
        error = await store.search.status_traces(state="TASK_ERROR")
        assert error.total == 1 and error.items[0].creation_time == NOW + timedelta(seconds=2)
        if version == "3.0.5":
            with pytest.raises(ConfigError, match="no such column"):
                await store.search.status_traces(source="LITE_EXECUTOR")
            with pytest.raises(ConfigError):
                await store.search.status_traces(sort="source")
        else:
            assert (await store.search.status_traces(source="LITE_EXECUTOR")).total == 3
        (stats,) = await store.search.job_stats(since=NOW - timedelta(hours=1))
        assert (stats.total, stats.failed, stats.running) == (70, 1, 69)
        assert (await store.search.count_older(0)).executions == 70
        assert (await store.search.purge(0)).executions == 70


def test_task_ids_never_exceed_255_and_give_their_items_back() -> None:
    assert reexported is make_task_id
    task = make_task_id("job", [0, 1, 2, 5, 7, 8, 9], ExecutionType.FAILOVER, "10.0.0.1@-@7")
    parsed = parse_task_id(task)
    assert task.split("@-@")[1] == "0,1,2,5,7,8,9"  # ElasticJob's form while it fits
    ranged = make_task_id("job", [*range(70), 75, *range(80, 90)], ExecutionType.READY, "i")
    assert ranged.split("@-@")[1] == "0-69,75,80-89"
    assert parse_task_id(ranged).items == (*range(70), 75, *range(80, 90))
    assert (parsed.job_name, parsed.items, parsed.execution_type) == (
        "job",
        (0, 1, 2, 5, 7, 8, 9),
        "FAILOVER",
    )
    assert parsed.instance_id == "10.0.0.1@-@7" and parsed.items_complete
    scattered = list(range(0, 2000, 2))
    long = make_task_id("job", scattered, ExecutionType.READY, "i")
    head = parse_task_id(long)
    assert len(long) <= TASK_ID_LIMIT and not head.items_complete
    assert head.items == tuple(scattered[: len(head.items)])
    assert long.split("@-@")[1].endswith(f",+{len(scattered) - len(head.items)}")
    huge = make_task_id("j" * 200, scattered, ExecutionType.READY, "i" * 200)
    assert len(huge) <= TASK_ID_LIMIT
    assert make_task_id("job", [], ExecutionType.READY, "i").split("@-@")[1] == ""


# -- hostile and out-of-range input ----------------------------------------------------------


async def test_injection_strings_in_every_text_filter_are_plain_values(store: TraceStore) -> None:
    await store.sink.write([started(0)])
    search = store.search
    for bad in INJECTIONS:
        for name in ("job_name", "task_id", "hostname", "ip", "execution_source"):
            assert (await search.executions(**{name: bad})).total == 0  # type: ignore[arg-type]
        for name in (
            "job_name",
            "task_id",
            "original_task_id",
            "slave_id",
            "source",
            "execution_type",
            "state",
        ):
            assert (await search.status_traces(**{name: bad})).total == 0  # type: ignore[arg-type]
        assert await search.job_stats(job_name=bad) == []
        for sort in (bad, "start_time; DROP TABLE JOB_EXECUTION_LOG"):
            with pytest.raises(ConfigError):
                await search.executions(sort=sort)
    assert (await search.executions(job_name="billing")).total == 1


async def test_out_of_range_numbers_and_dates_are_config_errors(store: TraceStore) -> None:
    search = store.search
    far = datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    for call in (
        search.executions(offset=99999999999999999999),
        search.executions(offset=-1),
        search.executions(limit=10**12),
        search.executions(sharding_item=99999999999),
        search.executions(since=far),
        search.status_traces(until=far),
        search.status_traces(offset=2**64),
        search.job_stats(since=far),
        search.purge(float("nan")),
        search.purge(float("inf")),
        search.purge(1e10),
        search.purge(-1),
        search.count_older(1e10),
    ):
        with pytest.raises(ConfigError):
            await call
    assert (await search.executions(offset=2**63 - 1)).items == ()
