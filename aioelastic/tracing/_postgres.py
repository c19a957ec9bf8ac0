"""PostgreSQL (asyncpg): the trace sink and the search.

A batch is one transaction. Rows are built once, as tuples in the tables' column order (text
cleaned and fitted, times bound), and most go in by binary ``COPY`` (asyncpg encodes them):

- execution rows whose start is in the batch (a start, or a start merged with its completion)
  and status rows whose ``original_task_id`` is known: rows the batch creates, so ``COPY``;
- completions of runs started in an earlier batch (or by another process): an upsert keyed by
  event id (``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT``), where a completion updates
  the row and a start never overwrites one (so a completion may arrive first);
- status rows whose ``original_task_id`` must be looked up (their staging is not in this
  process's memory): an insert that looks it up through ``TASK_ID_STATE_INDEX``.

``COPY`` cannot ignore an id already present, so a batch that meets one (a retried batch, a
replayed journal, a start arriving after its completion) is rolled back and written again with
the set-based statements for every row: the upsert, and an insert of status rows that ignores
ids already present (a retried batch adds nothing). After conflicts in a row, the next few
batches (1, 2, 4, up to 8) skip the ``COPY`` attempt. Both ways give the same rows. A late
staging back-fills ``original_task_id`` with a further statement, only when it names an
original task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._urls import TracingURL, parse_tracing_url
from ._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    Source,
    State,
    TraceEvent,
)
from ._rows import (
    FittedTexts,
    OriginalTaskIds,
    PreparedBatch,
    WrittenColumns,
    items_text,
    long_text_fitter,
    prepare_batch,
    text_fitter,
)
from ._schema import (
    BOOLEAN,
    EXECUTION_COLUMNS,
    EXECUTION_TABLE,
    INTEGER,
    POSTGRES_DDL,
    STATUS_COLUMNS,
    STATUS_TABLE,
    TEXT,
    TIMESTAMP,
    TIMESTAMPTZ,
    Column,
    TableLayout,
    postgres_column,
    upsert_clause,
)
from ._search import SqlTraceSearch

__all__ = [
    "PostgresDialect",
    "PostgresSearch",
    "PostgresSink",
    "create_pool",
    "ensure_schema",
    "read_layouts",
]

log = logging.getLogger("aioelastic.tracing")

#: Arbitrary constant key of the advisory lock that serialises concurrent schema creation.
_SCHEMA_LOCK_KEY = 0x61696F656C617374
_PURGE_CHUNK = 10_000
#: Most batches written with the set-based statements alone after one met an id already
#: present: after consecutive conflicts the run doubles (0, 1, 2, 4, ...) up to this (a replayed
#: journal meets ids in runs), a lone conflict (a start replayed after its completion went
#: live) costs the one batch.
_SET_BASED_AFTER_CONFLICT = 8

_BACKFILL_ORIGINALS = """
UPDATE JOB_STATUS_TRACE_LOG AS s SET original_task_id = u.original_task_id
FROM unnest($1::varchar[], $2::varchar[]) AS u(task_id, original_task_id)
WHERE s.task_id = u.task_id AND s.original_task_id = '' AND s.state <> $3
"""


async def create_pool(
    url: TracingURL, *, max_size: int = 4, connect_timeout: float = 10.0
) -> asyncpg.Pool:
    """A lazy asyncpg pool (no connection until first use, no background task).

    A released connection has an open transaction rolled back, no more: asyncpg's default reset
    (``RESET ALL``, ``UNLISTEN *``...) costs a round trip per release, and nothing here sets
    session state (locks and settings are transaction-scoped).
    """
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn=url.connect_dsn,  # credentials apart: asyncpg's DSN errors cannot echo them
        user=url.username,
        password=url.password.get_secret_value() if url.password else None,
        min_size=0,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=60,
        reset=_keep_session,
    )
    return pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset beyond rolling back a transaction: none."""


async def ensure_schema(conn: PoolConnectionProxy[Any]) -> None:
    """Create the tables and indexes if missing (safe when several processes race)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK_KEY)
        for statement in POSTGRES_DDL:
            await conn.execute(statement)


_ARRAY_TYPES = {
    TEXT: "varchar[]",
    INTEGER: "integer[]",
    BOOLEAN: "boolean[]",
    TIMESTAMP: "timestamp[]",
    TIMESTAMPTZ: "timestamptz[]",
}

_READ_LAYOUT = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


async def read_layouts(conn: PoolConnectionProxy[Any]) -> tuple[TableLayout, TableLayout]:
    """The columns the two trace tables have (empty layouts for missing tables)."""
    layouts = []
    for table in (EXECUTION_TABLE, STATUS_TABLE):
        rows = await conn.fetch(_READ_LAYOUT, table.lower())
        layouts.append(TableLayout(table, tuple(postgres_column(r[0], r[1]) for r in rows)))
    return layouts[0], layouts[1]


def bind(column: Column | None, value: object) -> object:
    """A Python value as the column takes it (UTC wall time for ``TIMESTAMP``, 0/1 for ints)."""
    if column is None or value is None:
        return value
    if isinstance(value, datetime) and column.kind == TIMESTAMP:
        return to_utc(value).replace(tzinfo=None)
    if isinstance(value, bool) and column.kind == INTEGER:
        return int(value)
    return value


def to_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _unnest(layout: TableLayout, columns: Sequence[str]) -> str:
    types = []
    for i, name in enumerate(columns, start=1):
        column = layout.get(name)
        types.append(f"${i}::{_ARRAY_TYPES[column.kind if column else TEXT]}")
    return "unnest(" + ", ".join(types) + ")"


Row = tuple[object, ...]


def _naive_utc(layout: TableLayout, name: str) -> bool:
    """Whether the column is ``TIMESTAMP`` (times go in as naive UTC), not ``TIMESTAMPTZ``."""
    column = layout.get(name)
    return column is not None and column.kind == TIMESTAMP


def _naive(value: datetime | None) -> datetime | None:
    return None if value is None else to_utc(value).replace(tzinfo=None)


class _Rows:
    """Rows of the tables as they are: tuples in their column order, text cleaned and fitted,
    values bound (``bind``) once. ``status_original`` is the position of ``original_task_id``
    (None: the table has none).

    Built for every event the sink writes, so per row it makes as few Python calls as it can:
    the texts that repeat (job names, hosts, task ids, messages) are fitted once and looked up
    (``FittedTexts``), an event id is fitted only if it is not plain ASCII within its width.
    """

    def __init__(self, written: WrittenColumns) -> None:
        ex, st = written.executions, written.statuses
        self._ex_id = _IdFitter(ex)
        self._ex_job, self._ex_task, self._ex_host, self._ex_ip = (
            FittedTexts(text_fitter(ex, n)) for n in ("job_name", "task_id", "hostname", "ip")
        )
        self._ex_source = _enum_texts(ex, "execution_source", ExecutionSource)
        self._ex_cause = long_text_fitter(ex, "failure_cause")
        self._ex_naive_start, self._ex_naive_complete = (
            _naive_utc(ex, n) for n in _EXECUTION_TIMES
        )
        success = ex.get("is_success")
        self._success_as_int = success is not None and success.kind == INTEGER
        self._st_id = _IdFitter(st)
        self._st_job, self._st_original, self._st_task, self._st_slave = (
            FittedTexts(text_fitter(st, n))
            for n in ("job_name", "original_task_id", "task_id", "slave_id")
        )
        self._st_source = _enum_texts(st, "source", Source)
        self._st_type = _enum_texts(st, "execution_type", ExecutionType)
        self._st_state = _enum_texts(st, "state", State)
        fit_message = long_text_fitter(st, "message")
        self._st_message = FittedTexts(lambda text: fit_message(text) or "")
        self._st_naive_created = _naive_utc(st, "creation_time")
        items = st.get("sharding_item")
        self._items_width = items.width if items is not None else None
        self._items: dict[tuple[int, ...], str] = {}
        self._ex_pick = _picker(written.execution_columns, EXECUTION_COLUMNS)
        self._st_pick = _picker(written.status_columns, STATUS_COLUMNS)
        columns = written.status_columns
        self.status_original = (
            columns.index("original_task_id") if "original_task_id" in columns else None
        )

    def execution(self, e: JobExecutionEvent) -> Row:
        cause = e.failure_cause
        start, complete = e.start_time, e.complete_time
        row = (
            self._ex_id(e.id),
            self._ex_job[e.job_name],
            self._ex_task[e.task_id],
            self._ex_host[e.hostname],
            self._ex_ip[e.ip],
            e.sharding_item,
            self._ex_source[e.execution_source],
            None if cause is None else self._ex_cause(cause),
            int(e.is_success) if self._success_as_int else e.is_success,
            _naive(start) if self._ex_naive_start else start,
            _naive(complete) if self._ex_naive_complete else complete,
        )
        return row if self._ex_pick is None else self._ex_pick(row)

    def status(self, e: JobStatusTraceEvent, original: str | None) -> Row:
        message, created = e.message, e.creation_time
        items = self._items.get(e.sharding_items)
        row = (
            self._st_id(e.id),
            self._st_job[e.job_name],
            None if original is None else self._st_original[original],
            self._st_task[e.task_id],
            self._st_slave[e.slave_id],
            self._st_source[e.source],
            self._st_type[e.execution_type],
            self._items_text(e.sharding_items) if items is None else items,
            self._st_state[e.state],
            None if message is None else self._st_message[message],
            _naive(created) if self._st_naive_created else created,
        )
        return row if self._st_pick is None else self._st_pick(row)

    def _items_text(self, items: tuple[int, ...]) -> str:
        if len(self._items) >= 1024:  # the item sets of a process's jobs: few
            self._items.clear()
        text = self._items[items] = items_text(items, self._items_width)
        return text


class _IdFitter:
    """An event id as its column takes it: as it is when plain ASCII within the width (ids are
    unique, so not worth remembering), else cleaned and cut."""

    __slots__ = ("_fit", "_width")

    def __init__(self, layout: TableLayout) -> None:
        self._fit = text_fitter(layout, "id")
        column = layout.get("id")
        self._width = column.width if column is not None and column.width is not None else -1

    def __call__(self, value: str) -> str:
        fits = self._width < 0 or len(value) <= self._width
        return value if fits and value.isascii() and "\x00" not in value else self._fit(value)


_EXECUTION_TIMES = ("start_time", "complete_time")


def _enum_texts(layout: TableLayout, column: str, kind: type[StrEnum]) -> dict[Any, str]:
    """Every member's text as the column takes it (looked up per row, not fitted per row)."""
    fit = text_fitter(layout, column)
    return {member: fit(member.value) for member in kind}


def _picker(present: Sequence[str], full: Sequence[str]) -> Callable[[Row], Row] | None:
    """Projection of a full row onto the columns a table has (None: it has them all)."""
    if list(present) == list(full):
        return None
    indexes = [full.index(name) for name in present]
    return lambda row: tuple(row[i] for i in indexes)


def _columns(rows: Sequence[Row]) -> list[Sequence[object]]:
    """Rows as column arrays (the parameters of the ``unnest`` statements)."""
    return list(zip(*rows, strict=True))


class _Statements(WrittenColumns):
    """The sink's statements for the tables as they are."""

    def __init__(self, executions: TableLayout, statuses: TableLayout) -> None:
        super().__init__(executions, statuses)
        names = ", ".join(self.execution_columns)
        self.upsert = (
            f"INSERT INTO {EXECUTION_TABLE} AS t ({names})"  # noqa: S608 - whitelisted names
            f" SELECT * FROM {_unnest(executions, self.execution_columns)}"
            f" {upsert_clause(self.execution_columns, 't', 'EXCLUDED')}"
        )
        staging = f"${len(self.status_columns) + 1}"
        selected = [
            (
                "COALESCE(u.original_task_id, (SELECT s.original_task_id FROM"  # noqa: S608
                f" {STATUS_TABLE} s WHERE s.task_id = u.task_id AND s.state = {staging}"
                " LIMIT 1), '')"
                if name == "original_task_id"
                else f"u.{name}"
            )
            for name in self.status_columns
        ]
        self.insert_statuses = (
            f"INSERT INTO {STATUS_TABLE} ({', '.join(self.status_columns)})"  # noqa: S608
            f" SELECT {', '.join(selected)}"
            f" FROM {_unnest(statuses, self.status_columns)}"
            f" AS u({', '.join(self.status_columns)}) ON CONFLICT (id) DO NOTHING"
        )
        self.backfill = "original_task_id" in statuses
        self.rows = _Rows(self)
        self.copy_executions = (EXECUTION_TABLE.lower(), self.execution_columns)
        self.copy_statuses = (STATUS_TABLE.lower(), self.status_columns)


class _Split:
    """A prepared batch as rows: those ``COPY`` can create, and those needing a statement."""

    def __init__(self, prepared: PreparedBatch, sql: _Statements) -> None:
        rows, started = sql.rows, prepared.started
        self.new_executions: list[Row] = []
        self.completions: list[Row] = []
        for e in prepared.executions:
            (self.new_executions if e.id in started else self.completions).append(rows.execution(e))
        self.new_statuses: list[Row] = []
        self.looked_up: list[Row] = []  # original_task_id to be found by the database
        lookup = sql.rows.status_original is not None
        for status, original in prepared.statuses:
            row = rows.status(status, original)
            (self.looked_up if lookup and original is None else self.new_statuses).append(row)
        self.backfill = prepared.backfill if sql.backfill else []

    @property
    def ids(self) -> set[str]:
        """Ids of the rows ``COPY`` creates (the first column of both tables)."""
        found = {str(row[0]) for row in self.new_executions}
        found.update(str(row[0]) for row in self.new_statuses)
        return found


class EarlierBatchFailed(Exception):
    """A batch not written because the batch written before it failed (they commit in order)."""


class _Turn:
    """One write's place in the order of writes (the next write waits on it)."""

    def __init__(self, prepared: PreparedBatch) -> None:
        self.sent = anyio.Event()  # its statements are all sent (or it ended)
        self.done = anyio.Event()
        self.ok = False
        #: ids of the rows it writes
        self.ids = {e.id for e in prepared.executions}
        self.ids.update(status.id for status, _ in prepared.statuses)

    @staticmethod
    async def clear_of(turn: _Turn | None, split: _Split | None) -> None:
        """Wait until creating ``split``'s rows cannot block ``turn``'s statements: those rows
        share no id with ``turn``'s (else, and before the statements are known, until all of
        ``turn``'s statements are sent). A later write never holds up an earlier one."""
        if turn is None or turn.sent.is_set():
            return
        if split is None or not split.ids.isdisjoint(turn.ids):
            await turn.sent.wait()

    @staticmethod
    async def committed(turn: _Turn | None) -> None:
        """Wait for ``turn``'s write to end; raise ``EarlierBatchFailed`` unless it committed."""
        if turn is not None:
            await turn.done.wait()
            if not turn.ok:
                raise EarlierBatchFailed("the trace batch written before this one failed")


class PostgresSink:
    """Writes trace batches to PostgreSQL; creates the schema on its first connection.

    Args:
        url: ``postgresql://user:password@host:port/db`` (string or parsed).
        pool: an existing pool to share (then ``aclose()`` leaves it open); by default the sink
            creates its own lazily, so a database that is down at start is not an error.
        journal_path: overflow journal used by :class:`TraceBus` for this sink.
        create_schema: create missing tables/indexes on the first write.
    """

    #: the bus may write this many batches at once (they commit in order: see ``write``)
    concurrent_writes = 2
    #: with a backlog, the bus may send batches up to this size (each is one transaction, so
    #: one commit for more events; the bus sizes them to its recent write rate)
    max_batch_size = 5000

    def __init__(
        self,
        url: str | TracingURL,
        *,
        pool: asyncpg.Pool | None = None,
        journal_path: Path | None = None,
        create_schema: bool = True,
        pool_size: int = 2,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = parse_tracing_url(url) if isinstance(url, str) else url
        self.name = str(self.url)
        self.journal_path = journal_path
        self._pool = pool
        self._owns_pool = pool is None
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._schema_ready = not create_schema
        self._pool_lock = anyio.Lock()
        self._originals = OriginalTaskIds()
        self._statements: _Statements | None = None
        self._copy_works = True
        self._set_based_left = 0
        self._conflicts = 0  # COPY attempts in a row that met an id already present
        self._last_turn: _Turn | None = None  # of the latest write

    def __repr__(self) -> str:
        return f"PostgresSink({self.name!r})"

    async def _get_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await create_pool(
                    self.url, max_size=self._pool_size, connect_timeout=self._connect_timeout
                )
            return self._pool

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        """Write ``batch`` in one transaction (idempotent by event id).

        Writes may overlap (the bus pipelines them). One that begins while the previous one
        is in progress creates its rows alongside (after it, if they share an id), but applies
        completions, looks rows up and commits only once the previous one has committed; if
        that one fails, so does this one (``EarlierBatchFailed``). So batches commit in order.
        """
        prepared = prepare_batch(batch, self._originals)
        previous, turn = self._last_turn, _Turn(prepared)
        self._last_turn = turn
        if previous is not None and previous.done.is_set():
            previous = None  # ended before this write began: its caller knows how it went
        try:
            sql = self._statements
            split = None if sql is None else _Split(prepared, sql)
            await _Turn.clear_of(previous, split)
            pool = await self._get_pool()
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                try:
                    if not self._schema_ready:
                        await ensure_schema(conn)
                        self._schema_ready = True
                    if sql is None or split is None:
                        sql = self._statements = _Statements(*await read_layouts(conn))
                        split = _Split(prepared, sql)
                    await self._write_rows(conn, sql, split, previous, turn)
                    turn.ok = True
                    turn.done.set()  # committed: the next write need not wait for the release
                except BaseException as exc:
                    if not isinstance(exc, asyncpg.PostgresError | EarlierBatchFailed):
                        # Cut mid-operation (connection lost, the write cancelled): the
                        # protocol's state is unknown, so the pool must neither reset nor reuse
                        # it (a reset on it raises out of the pool's release, even into the
                        # event loop).
                        conn.terminate()
                    raise
        finally:
            turn.sent.set()
            turn.done.set()

    async def _write_rows(
        self,
        conn: PoolConnectionProxy[Any],
        sql: _Statements,
        split: _Split,
        previous: _Turn | None,
        turn: _Turn,
    ) -> None:
        copy_error: Exception | None = None
        if self._set_based_left > 0:
            self._set_based_left -= 1
        elif self._copy_works:
            try:
                async with conn.transaction():
                    await self._copy(conn, sql, split)
                    await _Turn.committed(previous)
                    await self._dependent(conn, sql, split)
                    turn.sent.set()
                self._conflicts = 0
                return
            except asyncpg.UniqueViolationError:
                self._conflicts += 1
                run = 0 if self._conflicts == 1 else 2 ** (self._conflicts - 2)
                self._set_based_left = min(run, _SET_BASED_AFTER_CONFLICT)
            except (asyncpg.PostgresError, asyncpg.DataError) as exc:
                copy_error = exc
        await _Turn.committed(previous)
        async with conn.transaction():
            await self._set_based(conn, sql, split)
            turn.sent.set()
        if copy_error is not None:  # what COPY could not write, INSERT did: stay with INSERT
            self._copy_works = False
            log.warning(
                "trace sink %s: COPY into the trace tables failed (%r) where INSERT works;"
                " writing with INSERT from now on",
                self.name,
                copy_error,
            )

    @staticmethod
    async def _copy(conn: PoolConnectionProxy[Any], sql: _Statements, split: _Split) -> None:
        """The rows the batch creates, by ``COPY`` (they depend on no earlier batch)."""
        if split.new_executions:
            table, columns = sql.copy_executions
            await conn.copy_records_to_table(table, records=split.new_executions, columns=columns)
        if split.new_statuses:
            table, columns = sql.copy_statuses
            await conn.copy_records_to_table(table, records=split.new_statuses, columns=columns)

    async def _dependent(
        self, conn: PoolConnectionProxy[Any], sql: _Statements, split: _Split
    ) -> None:
        """Completions, looked-up and back-filled statuses: rows of earlier batches."""
        if split.completions:
            await conn.execute(sql.upsert, *_columns(split.completions))
        await PostgresSink._finish_statuses(conn, sql, split.looked_up, split.backfill)

    @staticmethod
    async def _set_based(conn: PoolConnectionProxy[Any], sql: _Statements, split: _Split) -> None:
        """Every row by statement, ignoring (statuses) or merging (executions) ids present."""
        executions = split.new_executions + split.completions
        if executions:
            await conn.execute(sql.upsert, *_columns(executions))
        statuses = split.new_statuses + split.looked_up
        await PostgresSink._finish_statuses(conn, sql, statuses, split.backfill)

    @staticmethod
    async def _finish_statuses(
        conn: PoolConnectionProxy[Any],
        sql: _Statements,
        statuses: list[Row],
        backfill: list[tuple[str, str]],
    ) -> None:
        if statuses:
            await conn.execute(sql.insert_statuses, *_columns(statuses), State.TASK_STAGING.value)
        if backfill:
            tasks, originals = zip(*backfill, strict=True)
            await conn.execute(_BACKFILL_ORIGINALS, tasks, originals, State.TASK_STAGING.value)

    async def aclose(self) -> None:
        """Close the pool if this sink created it."""
        pool, self._pool = self._pool, None
        if pool is None or not self._owns_pool:
            return
        with anyio.move_on_after(5) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()


class PostgresDialect:
    """``$n`` parameters; asyncpg passes datetimes and booleans natively (naive UTC times for
    ``TIMESTAMP`` columns, 0/1 for an integer ``is_success``)."""

    def placeholder(self, index: int) -> str:
        return f"${index}"

    def encode(self, value: object, column: Column | None = None) -> object:
        return bind(column, value)

    def decode_time(self, value: Any) -> datetime | None:
        return to_utc(value) if isinstance(value, datetime) else None

    def truth(self, column: Column | None) -> str:
        return "is_success" if column is None or column.kind == BOOLEAN else "is_success <> 0"


class PostgresSearch(SqlTraceSearch):
    """:class:`TraceSearch` over a PostgreSQL pool (page and total read in one snapshot)."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 30.0) -> None:
        self.dialect = PostgresDialect()
        self._pool = pool
        self._timeout = timeout

    async def _read_layouts(self) -> tuple[TableLayout, TableLayout]:
        with anyio.fail_after(self._timeout):
            async with self._pool.acquire() as conn:
                return await read_layouts(conn)

    async def _page(
        self, count_sql: str, rows_sql: str, params: Sequence[object], paging: Sequence[object]
    ) -> tuple[int, list[Sequence[Any]]]:
        with anyio.fail_after(self._timeout):
            async with self._pool.acquire() as conn:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    total = await conn.fetchval(count_sql, *params)
                    rows = await conn.fetch(rows_sql, *params, *paging)
        return int(total), [tuple(row) for row in rows]

    async def _rows(self, sql: str, params: Sequence[object]) -> list[Sequence[Any]]:
        with anyio.fail_after(self._timeout):
            async with self._pool.acquire() as conn:
                return [tuple(row) for row in await conn.fetch(sql, *params)]

    async def _delete_some(self, table: str, time_column: str, cutoff: object, limit: int) -> int:
        """Delete at most ``limit`` rows older than ``cutoff``; how many were deleted."""
        sql = (
            f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}"  # noqa: S608
            f" WHERE {time_column} < $1 LIMIT $2)"
        )
        with anyio.fail_after(self._timeout):
            async with self._pool.acquire() as conn:
                status = await conn.execute(sql, cutoff, limit)
        return int(status.split()[-1])

    async def _purge(self, table: str, time_column: str, cutoff: object) -> int:
        """Delete in chunks, so a large purge neither holds long locks nor bloats one commit."""
        sql = (
            f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table}"  # noqa: S608
            f" WHERE {time_column} < $1 LIMIT {_PURGE_CHUNK})"
        )
        deleted = 0
        while True:
            with anyio.fail_after(self._timeout):
                async with self._pool.acquire() as conn:
                    status = await conn.execute(sql, cutoff)
            count = int(status.split()[-1])
            deleted += count
            if count < _PURGE_CHUNK:
                return deleted
