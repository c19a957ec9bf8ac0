"""The PostgreSQL sink against a real server: schema, rows per event kind, out-of-order and
retried batches, original task ids, hostile text, an outage mid-run, a leftover journal."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from aioelastic.tracing import PostgresSink, TraceBus, create_sink, open_trace_store
from aioelastic.tracing._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    State,
    TraceEvent,
    format_failure,
)
from aioelastic.tracing._postgres import EarlierBatchFailed
from tests.harness.helpers import eventually
from tests.harness.postgres import PostgresServer

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

T0 = datetime(2024, 3, 1, 2, 0, tzinfo=UTC)
INJECTIONS = [
    'x\'; DROP TABLE "JOB_EXECUTION_LOG"; --',
    "x'); DROP TABLE JOB_EXECUTION_LOG; --",
    'x" OR 1=1 --',
]


def task_id(job: str, items: Sequence[int], run: int, kind: str = "READY") -> str:
    return f"{job}@-@{','.join(map(str, items))}@-@{kind}@-@host-a@-@run{run}"


def start(
    job: str, task: str, item: int, source: ExecutionSource, at: datetime
) -> JobExecutionEvent:
    return JobExecutionEvent(
        job_name=job,
        task_id=task,
        hostname="host-a",
        ip="10.0.0.1",
        sharding_item=item,
        execution_source=source,
        start_time=at,
    )


def complete(event: JobExecutionEvent, ok: bool, cause: str | None = None) -> JobExecutionEvent:
    return replace(
        event,
        complete_time=event.start_time + timedelta(seconds=3),
        is_success=ok,
        failure_cause=cause,
    )


def state(
    job: str,
    task: str,
    new_state: State,
    items: Sequence[int] = (0, 1),
    kind: ExecutionType = ExecutionType.READY,
    original: str = "",
) -> JobStatusTraceEvent:
    return JobStatusTraceEvent(
        job_name=job,
        task_id=task,
        slave_id="host-a",
        execution_type=kind,
        sharding_items=tuple(items),
        state=new_state,
        message=f"{new_state} of {job}",
        original_task_id=original,
    )


def run_events(job: str, run: int, items: Sequence[int] = (0, 1)) -> list[TraceEvent]:
    """The events of one successful fire: staging, running, items start/complete, finished."""
    task = task_id(job, items, run)
    starts = [start(job, task, i, ExecutionSource.NORMAL_TRIGGER, T0) for i in items]
    return [
        state(job, task, State.TASK_STAGING, items),
        state(job, task, State.TASK_RUNNING, items),
        *starts,
        *[complete(s, ok=True) for s in starts],
        state(job, task, State.TASK_FINISHED, items),
    ]


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def executions(url: str) -> dict[str, dict[str, Any]]:
    rows = await fetch(url, "SELECT * FROM JOB_EXECUTION_LOG")
    return {row["id"]: dict(row) for row in rows}


async def statuses(url: str) -> dict[str, dict[str, Any]]:
    rows = await fetch(url, "SELECT * FROM JOB_STATUS_TRACE_LOG")
    return {row["id"]: dict(row) for row in rows}


async def write(url: str, *batches: Sequence[TraceEvent]) -> None:
    sink = PostgresSink(url)
    try:
        for batch in batches:
            await sink.write(batch)
    finally:
        await sink.aclose()


async def test_schema_is_created_on_first_write_with_elasticjob_columns(postgres_url: str) -> None:
    await write(postgres_url, [state("job", "t", State.TASK_STAGING)])
    columns = await fetch(
        postgres_url,
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
    )
    by_table: dict[str, list[str]] = {}
    for row in columns:
        by_table.setdefault(row["table_name"], []).append(row["column_name"])
    assert by_table == {
        "job_execution_log": [
            "id",
            "job_name",
            "task_id",
            "hostname",
            "ip",
            "sharding_item",
            "execution_source",
            "failure_cause",
            "is_success",
            "start_time",
            "complete_time",
        ],
        "job_status_trace_log": [
            "id",
            "job_name",
            "original_task_id",
            "task_id",
            "slave_id",
            "source",
            "execution_type",
            "sharding_item",
            "state",
            "message",
            "creation_time",
        ],
    }
    indexes = await fetch(postgres_url, "SELECT indexname, indexdef FROM pg_indexes")
    definitions = {row["indexname"]: row["indexdef"] for row in indexes}
    assert "(task_id, state)" in definitions["task_id_state_index"]
    assert "(job_name, start_time)" in definitions["job_execution_log_job_time_index"]
    assert "(job_name, creation_time)" in definitions["job_status_trace_log_job_time_index"]
    # ElasticJob's unquoted spelling works, as for its console
    assert await fetch(postgres_url, "SELECT count(*) FROM JOB_STATUS_TRACE_LOG") != []


async def test_concurrent_first_starts_create_the_schema_once(postgres_url: str) -> None:
    async def open_one() -> None:
        async with open_trace_store(postgres_url):
            pass

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_one)
    tables = await fetch(postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")
    assert sorted(row["tablename"] for row in tables) == [
        "job_execution_log",
        "job_status_trace_log",
    ]


async def test_rows_for_success_failure_misfire_and_failover(postgres_url: str) -> None:
    task = task_id("settle", [0, 1, 2], 1)
    ok = start("settle", task, 0, ExecutionSource.NORMAL_TRIGGER, T0)
    try:
        raise ValueError("ledger 3 does not balance")
    except ValueError as exc:
        cause = format_failure(exc)
    bad = start("settle", task, 1, ExecutionSource.NORMAL_TRIGGER, T0)
    misfire = start("settle", task_id("settle", [2], 2), 2, ExecutionSource.MISFIRE, T0)
    failover_task = task_id("settle", [2], 3, "FAILOVER")
    failover = start("settle", failover_task, 2, ExecutionSource.FAILOVER, T0)
    stagings = [
        state("settle", task, State.TASK_STAGING, [0, 1, 2]),
        state("settle", failover_task, State.TASK_STAGING, [2], ExecutionType.FAILOVER),
    ]
    finals = [
        state("settle", task, State.TASK_ERROR, [0, 1, 2]),
        state("settle", failover_task, State.TASK_FINISHED, [2], ExecutionType.FAILOVER),
    ]
    await write(
        postgres_url,
        [*stagings, ok, bad, misfire, failover],
        [complete(ok, True), complete(bad, False, cause), complete(misfire, True), *finals],
        [complete(failover, True)],
    )
    rows = await executions(postgres_url)
    assert rows[ok.id]["is_success"] is True and rows[ok.id]["failure_cause"] is None
    assert rows[ok.id]["complete_time"] == T0 + timedelta(seconds=3)
    assert rows[bad.id]["is_success"] is False
    assert "ledger 3 does not balance" in rows[bad.id]["failure_cause"]
    assert rows[misfire.id]["execution_source"] == "MISFIRE"
    assert rows[failover.id]["execution_source"] == "FAILOVER"
    assert rows[failover.id]["task_id"] == failover_task
    status_rows = await statuses(postgres_url)
    error = status_rows[finals[0].id]
    assert (error["state"], error["sharding_item"], error["source"]) == (
        "TASK_ERROR",
        "[0, 1, 2]",
        "LITE_EXECUTOR",
    )
    assert status_rows[finals[1].id]["execution_type"] == "FAILOVER"


@pytest.mark.parametrize("same_batch", [False, True])
async def test_completion_arriving_before_its_start_is_kept(
    postgres_url: str, same_batch: bool
) -> None:
    begun = start("job", "t1", 0, ExecutionSource.NORMAL_TRIGGER, T0)
    done = complete(begun, ok=False, cause="boom")
    batches = [[done, begun]] if same_batch else [[done], [begun]]
    await write(postgres_url, *batches)
    row = (await executions(postgres_url))[begun.id]
    assert (row["is_success"], row["failure_cause"]) == (False, "boom")
    assert row["complete_time"] == done.complete_time and row["start_time"] == T0


async def test_a_retried_batch_creates_no_duplicates(postgres_url: str) -> None:
    batch = run_events("job", 1) + run_events("job", 2)
    await write(postgres_url, batch, batch, list(reversed(batch)))
    assert len(await executions(postgres_url)) == 4
    assert len(await statuses(postgres_url)) == 6
    assert all(row["complete_time"] for row in (await executions(postgres_url)).values())


async def test_original_task_id_comes_from_the_staging_row(postgres_url: str) -> None:
    staging = state("job", "t-failover", State.TASK_STAGING, original="t-original")
    running = state("job", "t-failover", State.TASK_RUNNING)
    finished = state("job", "t-failover", State.TASK_FINISHED)
    orphan = state("job", "t-without-staging", State.TASK_FINISHED)
    await write(postgres_url, [running, staging])  # same batch, staging posted later
    await write(postgres_url, [finished, orphan])  # a new sink: resolved by the database
    early = state("job", "t-replayed", State.TASK_RUNNING)
    late_staging = state("job", "t-replayed", State.TASK_STAGING, original="t-first")
    await write(postgres_url, [early])  # e.g. the staging was in a journal, replayed later
    await write(postgres_url, [late_staging])
    rows = await statuses(postgres_url)
    assert rows[staging.id]["original_task_id"] == "t-original"
    assert rows[running.id]["original_task_id"] == "t-original"
    assert rows[finished.id]["original_task_id"] == "t-original"
    assert rows[orphan.id]["original_task_id"] == ""
    assert rows[early.id]["original_task_id"] == "t-first"


async def test_hostile_text_is_stored_as_plain_data(postgres_url: str) -> None:
    events: list[TraceEvent] = []
    for text in [*INJECTIONS, "nul\x00byte", "lone \udc80 surrogate", "ünïcödé ✓"]:
        begun = start(text, text, 0, ExecutionSource.NORMAL_TRIGGER, T0)
        events += [begun, complete(begun, False, text), state(text, text, State.TASK_STAGING)]
    await write(postgres_url, events)
    rows = await executions(postgres_url)
    names = sorted(row["job_name"] for row in rows.values())
    assert names == sorted([*INJECTIONS, "nul\ufffdbyte", "lone \ufffd surrogate", "ünïcödé ✓"])
    assert sorted(r["job_name"] for r in (await statuses(postgres_url)).values()) == names


async def test_an_outage_mid_run_loses_nothing_and_duplicates_nothing(
    postgres_server: PostgresServer,
    postgres_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "aioelastic")
    runs = 400
    posted: list[TraceEvent] = []
    progress = {"runs": 0}

    async def produce(bus: TraceBus) -> None:
        for run in range(runs):
            for event in run_events("nightly", run):
                bus.post(event)
                posted.append(event)
            progress["runs"] = run + 1
            await anyio.sleep(0.002)

    async def outage() -> None:
        await eventually(lambda: progress["runs"] >= 80, 20)
        await anyio.to_thread.run_sync(postgres_server.stop)
        await eventually(lambda: progress["runs"] >= 250, 20)
        await anyio.to_thread.run_sync(postgres_server.start)

    sink = create_sink(postgres_url, journal_path=tmp_path / "trace.journal")
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], max_queue=300, batch_size=100, retry_initial=0.05, retry_max=0.3)
        await bus.start(stack)
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce, bus)
            tg.start_soon(outage)
        with anyio.fail_after(60):
            await bus.flush()
        stats = bus.stats()[0]
    assert stats.failed_writes > 0 and stats.journaled > 0 and stats.dropped == 0
    rows = await executions(postgres_url)
    expected_executions = {e.id for e in posted if isinstance(e, JobExecutionEvent)}
    assert set(rows) == expected_executions and len(rows) == runs * 2
    assert all(row["complete_time"] and row["is_success"] for row in rows.values())
    status_rows = await statuses(postgres_url)
    assert set(status_rows) == {e.id for e in posted if isinstance(e, JobStatusTraceEvent)}
    assert postgres_server.password not in caplog.text
    assert "***" in caplog.text  # the sink is named with its password masked


async def test_a_journal_left_by_a_previous_process_is_replayed(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    journal = tmp_path / "trace.journal"
    posted = [event for run in range(30) for event in run_events("leftover", run)]
    await anyio.to_thread.run_sync(postgres_server.stop)
    try:
        async with AsyncExitStack() as stack:  # database down for this whole "process"
            bus = TraceBus([create_sink(postgres_url, journal_path=journal)], grace_period=0.3)
            await bus.start(stack)
            for event in posted:
                bus.post(event)
    finally:
        await anyio.to_thread.run_sync(postgres_server.start)
    assert journal.read_text().count("\n") == len(posted)

    async with AsyncExitStack() as stack:  # the next process
        bus = TraceBus([create_sink(postgres_url, journal_path=journal)])
        await bus.start(stack)
        with anyio.fail_after(30):
            await bus.flush()
        assert bus.stats()[0].replayed == len(posted)
    assert len(await executions(postgres_url)) == 60
    assert len(await statuses(postgres_url)) == 90
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")]


class SetBasedSink(PostgresSink):
    """Writes every batch with the set-based statements alone (the fallback of ``COPY``)."""

    async def _write_rows(self, conn: Any, sql: Any, split: Any, *order: Any) -> None:
        self._copy_works = False
        await super()._write_rows(conn, sql, split, *order)


def mixed_stream() -> list[list[TraceEvent]]:
    """Batches as a live lane cuts them: runs split across batches, a completion before its
    start, a failover with its original task, stagings replayed late, a retried batch."""
    batches: list[list[TraceEvent]] = []
    events: list[TraceEvent] = []
    for run in range(30):
        events += run_events("job", run, items=(0, 1, 2))
    batches += [events[i : i + 7] for i in range(0, len(events), 7)]  # cuts through runs
    begun = start("job", "t-late", 0, ExecutionSource.FAILOVER, T0)
    staging = state("job", "t-fo", State.TASK_STAGING, original="t-orig")
    finished = state("job", "t-fo", State.TASK_FINISHED)
    batches += [[complete(begun, False, "boom")], [begun, finished], [staging]]
    batches += [batches[3], batches[4] + batches[5]]  # retried / replayed batches
    return batches


async def table_rows(url: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    execution_rows = await fetch(url, "SELECT * FROM JOB_EXECUTION_LOG ORDER BY id")
    status_rows = await fetch(url, "SELECT * FROM JOB_STATUS_TRACE_LOG ORDER BY id")
    return [tuple(r) for r in execution_rows], [tuple(r) for r in status_rows]


async def test_copy_and_the_set_based_statements_write_the_same_rows(
    postgres_url: str, postgres_server: PostgresServer
) -> None:
    batches = mixed_stream()
    other_url = await anyio.to_thread.run_sync(postgres_server.create_database)
    for sink in (PostgresSink(postgres_url), SetBasedSink(other_url)):
        try:
            for batch in batches:
                await sink.write(batch)
        finally:
            await sink.aclose()
    copied, set_based = await table_rows(postgres_url), await table_rows(other_url)
    assert copied == set_based
    assert len(copied[0]) == 91 and len(copied[1]) == 92


async def test_an_id_already_present_falls_back_to_the_set_based_statements(
    postgres_url: str,
) -> None:
    """A batch meeting an id already present is written by the set-based statements; after a
    lone conflict (a retry) the next batch tries COPY again, after conflicts in a row (a
    replayed journal) the next batches skip the COPY attempt (1, 2, 4, up to 8)."""
    runs = {n: run_events("job", n) for n in range(1, 16)}
    sink = PostgresSink(postgres_url)
    try:
        await sink.write(runs[1])
        await sink.write(runs[1][:3] + runs[2])  # a retry with new events
        assert sink._conflicts == 1 and sink._set_based_left == 0
        await sink.write(runs[3])
        assert sink._conflicts == 0  # COPY again
        for n in range(4, 8):  # a replay: every batch meets ids already present
            await sink.write(runs[n - 3][:3] + runs[n])
        # conflicts at 4 and 5 (then one batch skips COPY: 6), again at 7: the next two skip it
        assert sink._conflicts == 3 and sink._set_based_left == 2
        for n in range(8, 16):
            await sink.write(runs[n])
        assert sink._set_based_left == 0 and sink._conflicts == 0 and sink._copy_works
    finally:
        await sink.aclose()
    assert len(await executions(postgres_url)) == 2 * 15
    assert len(await statuses(postgres_url)) == 3 * 15


class CopyRefusedSink(PostgresSink):
    """A database whose tables take INSERT but not this COPY (say, an odd column type)."""

    @staticmethod
    async def _copy(conn: Any, sql: Any, split: Any) -> None:
        raise asyncpg.DataError("invalid input for binary COPY")


async def test_a_copy_the_tables_refuse_is_written_by_insert_from_then_on(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    sink = CopyRefusedSink(postgres_url)
    try:
        await sink.write(run_events("job", 1))
        assert not sink._copy_works
        await sink.write(run_events("job", 2))
    finally:
        await sink.aclose()
    assert len(await executions(postgres_url)) == 4
    assert "writing with INSERT from now on" in caplog.text


class LostAfterCopySink(PostgresSink):
    """The connection of the first write is lost once its new rows are copied."""

    lose = True

    async def _dependent(self, *args: Any) -> None:
        if self.lose:
            self.lose = False
            raise ConnectionResetError("connection lost")
        await super()._dependent(*args)


async def test_overlapping_writes_commit_in_order_and_a_failure_fails_the_later_one(
    postgres_url: str,
) -> None:
    first = run_events("job", 1)
    starts, completions = first[:4], first[4:]  # staging, running, 2 starts | 2 completions...
    sink = LostAfterCopySink(postgres_url)
    failures: list[BaseException] = []

    async def write(batch: Sequence[TraceEvent]) -> None:
        try:
            await sink.write(batch)
        except Exception as exc:
            failures.append(exc)

    try:
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(write, starts)
                tg.start_soon(write, completions)  # begins while the first is in progress
        assert [type(exc) for exc in failures] == [ConnectionResetError, EarlierBatchFailed]
        # The completions were not applied without their starts; nothing was committed.
        assert await executions(postgres_url) == {} and await statuses(postgres_url) == {}
        await sink.write(starts)  # the bus retries them in order
        await sink.write(completions)
    finally:
        await sink.aclose()
    rows = await executions(postgres_url)
    assert len(rows) == 2 and all(row["complete_time"] is not None for row in rows.values())
    assert len(await statuses(postgres_url)) == 3


async def test_overlapping_writes_through_the_bus_write_every_row(
    postgres_url: str, tmp_path: Path
) -> None:
    posted = [event for run in range(300) for event in run_events("job", run)]  # 9 per run
    sink = PostgresSink(postgres_url)
    written: list[int] = []
    most = [0, 0]  # writes in progress, the most at once
    original = sink.write

    async def counting(batch: Sequence[TraceEvent]) -> None:
        most[0] += 1
        most[1] = max(most)
        try:
            await original(batch)
            written.append(len(batch))
        finally:
            most[0] -= 1

    await original([])  # connected, so that no write is pending past the journal window...
    sink.write = counting  # type: ignore[method-assign]
    async with AsyncExitStack() as stack:
        bus = TraceBus(  # ... on a loaded machine either (that journals, and pipelining stops)
            [sink], batch_size=100, journal_path=tmp_path / "trace.journal", journal_window=5.0
        )
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        with anyio.fail_after(60):
            await bus.flush()
    assert most[1] == 2 and sum(written) == len(posted) and bus.stats()[0].journaled == 0
    rows = await executions(postgres_url)
    assert len(rows) == 600 and all(row["complete_time"] is not None for row in rows.values())
    assert len(await statuses(postgres_url)) == 900
