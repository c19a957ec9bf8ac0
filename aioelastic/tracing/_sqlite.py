"""SQLite (stdlib ``sqlite3`` in worker threads): the embedded trace sink and its search.

Same tables, same upsert rules and the same search as PostgreSQL. Times are stored as UTC text
``YYYY-MM-DD HH:MM:SS.ffffff`` (sorts as time), booleans as 0/1. One connection per database
object, used by one thread call at a time; WAL mode so readers do not block the writer.
URLs follow SQLAlchemy: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``.
Needs SQLite >= 3.30 (upsert, ``NULLS LAST``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .._errors import ConfigError
from .._urls import TracingURL, parse_tracing_url
from ._events import State, TraceEvent
from ._rows import OriginalTaskIds, WrittenColumns, execution_values, prepare_batch, status_values
from ._schema import (
    EXECUTION_TABLE,
    SQLITE_DDL,
    STATUS_TABLE,
    Column,
    TableLayout,
    sqlite_column,
    upsert_clause,
)
from ._search import SqlTraceSearch

__all__ = [
    "SqliteDatabase",
    "SqliteDialect",
    "SqliteSearch",
    "SqliteSink",
    "read_layouts",
    "sqlite_path",
]

T = TypeVar("T")

_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
_PURGE_CHUNK = 10_000

_BACKFILL_ORIGINAL = """
UPDATE JOB_STATUS_TRACE_LOG SET original_task_id = ?
WHERE task_id = ? AND original_task_id = '' AND state <> ?
"""


def sqlite_path(url: TracingURL) -> str:
    """The file of a ``sqlite:///`` URL (``:memory:`` allowed)."""
    raw = url.dsn.get_secret_value()
    path = raw[len("sqlite:///") :].split("?", 1)[0]
    if not path:
        raise ConfigError("tracing_url", str(url), "sqlite URLs need a file: sqlite:///trace.db")
    return path


def _time(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(_TIME_FORMAT)


class SqliteDatabase:
    """One sqlite3 connection, used from worker threads one call at a time (``create=False``:
    the file must exist, and no table or index is created)."""

    def __init__(self, path: str, *, create: bool = True) -> None:
        self.path = path
        self._create = create
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in a worker thread (opening the database first if needed)."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = self._connect()
        return fn(self._conn)

    def _connect(self) -> sqlite3.Connection:
        if not self._create:  # an existing file only, as it is (``mode=rw`` never creates one)
            uri = "file:" + urllib.parse.quote(self.path) + "?mode=rw"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            return conn
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        with _transaction(conn):
            for statement in SQLITE_DDL:
                conn.execute(statement)
        return conn

    async def aclose(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def read_layouts(conn: sqlite3.Connection) -> tuple[TableLayout, TableLayout]:
    """The columns the two trace tables have (empty layouts for missing tables)."""
    layouts = []
    for table in (EXECUTION_TABLE, STATUS_TABLE):
        rows = conn.execute(f"PRAGMA table_info({table})").fetchall()
        layouts.append(TableLayout(table, tuple(sqlite_column(r[1], r[2] or "") for r in rows)))
    return layouts[0], layouts[1]


def _bind(value: object) -> object:
    if isinstance(value, datetime):
        return _time(value)
    if isinstance(value, bool):
        return int(value)
    return value


class _Statements(WrittenColumns):
    """The sink's statements for the tables as they are."""

    def __init__(self, executions: TableLayout, statuses: TableLayout) -> None:
        super().__init__(executions, statuses)
        marks = ", ".join("?" for _ in self.execution_columns)
        self.upsert = (
            f"INSERT INTO {EXECUTION_TABLE} ({', '.join(self.execution_columns)})"  # noqa: S608
            f" VALUES ({marks}) "
            + upsert_clause(self.execution_columns, EXECUTION_TABLE, "excluded")
        )
        values = [
            "COALESCE(?, (SELECT s.original_task_id FROM JOB_STATUS_TRACE_LOG s"
            " WHERE s.task_id = ? AND s.state = ? LIMIT 1), '')"
            if name == "original_task_id"
            else "?"
            for name in self.status_columns
        ]
        self.insert_status = (
            f"INSERT INTO {STATUS_TABLE} ({', '.join(self.status_columns)})"  # noqa: S608
            f" VALUES ({', '.join(values)}) ON CONFLICT (id) DO NOTHING"
        )
        self.backfill = "original_task_id" in statuses

    def execution_row(self, values: dict[str, object]) -> tuple[object, ...]:
        return tuple(_bind(values[name]) for name in self.execution_columns)

    def status_row(self, values: dict[str, object]) -> tuple[object, ...]:
        row: list[object] = []
        for name in self.status_columns:
            row.append(_bind(values[name]))
            if name == "original_task_id":
                row += [values["task_id"], State.TASK_STAGING.value]
        return tuple(row)


class SqliteSink:
    """Writes trace batches to a SQLite file, one transaction per batch (idempotent by id)."""

    def __init__(
        self,
        url: str | TracingURL,
        *,
        database: SqliteDatabase | None = None,
        journal_path: Path | None = None,
    ) -> None:
        self.url = parse_tracing_url(url) if isinstance(url, str) else url
        self.name = str(self.url)
        self.journal_path = journal_path
        self._db = database or SqliteDatabase(sqlite_path(self.url))
        self._owns_db = database is None
        self._originals = OriginalTaskIds()
        self._statements: _Statements | None = None

    def __repr__(self) -> str:
        return f"SqliteSink({self.name!r})"

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        """Write ``batch`` in one transaction."""
        prepared = prepare_batch(batch, self._originals)
        staging = State.TASK_STAGING.value

        def write(conn: sqlite3.Connection) -> None:
            if self._statements is None:
                self._statements = _Statements(*read_layouts(conn))
            sql = self._statements
            executions = [
                sql.execution_row(execution_values(e, sql.executions)) for e in prepared.executions
            ]
            statuses = [
                sql.status_row(status_values(e, original, sql.statuses))
                for e, original in prepared.statuses
            ]
            backfill = [(original, task, staging) for task, original in prepared.backfill]
            with _transaction(conn):
                conn.executemany(sql.upsert, executions)
                conn.executemany(sql.insert_status, statuses)
                if sql.backfill:
                    conn.executemany(_BACKFILL_ORIGINAL, backfill)

        await self._db.run(write)

    async def aclose(self) -> None:
        """Close the database if this sink opened it."""
        if self._owns_db:
            await self._db.aclose()


class SqliteDialect:
    """``?`` parameters; times as UTC text, booleans as 0/1."""

    def placeholder(self, index: int) -> str:
        return "?"

    def encode(self, value: object, column: Column | None = None) -> object:
        return _bind(value)

    def decode_time(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        try:
            return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
        except (TypeError, ValueError):  # a time written by another tool
            parsed = datetime.fromisoformat(str(value))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

    def truth(self, column: Column | None) -> str:
        return "is_success <> 0"


class SqliteSearch(SqlTraceSearch):
    """:class:`TraceSearch` over a SQLite database (page and total read in one transaction)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self.dialect = SqliteDialect()
        self._db = database

    async def _read_layouts(self) -> tuple[TableLayout, TableLayout]:
        return await self._db.run(read_layouts)

    async def _page(
        self, count_sql: str, rows_sql: str, params: Sequence[object], paging: Sequence[object]
    ) -> tuple[int, list[Sequence[Any]]]:
        def page(conn: sqlite3.Connection) -> tuple[int, list[Sequence[Any]]]:
            with _transaction(conn, "DEFERRED"):
                total = conn.execute(count_sql, params).fetchone()[0]
                rows = conn.execute(rows_sql, [*params, *paging]).fetchall()
            return int(total), rows

        return await self._db.run(page)

    async def _rows(self, sql: str, params: Sequence[object]) -> list[Sequence[Any]]:
        return await self._db.run(lambda conn: list(conn.execute(sql, params).fetchall()))

    async def _delete_some(self, table: str, time_column: str, cutoff: object, limit: int) -> int:
        """Delete at most ``limit`` rows older than ``cutoff``; how many were deleted."""
        sql = (
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"  # noqa: S608
            f" WHERE {time_column} < ? LIMIT ?)"
        )
        return await self._db.run(lambda conn: conn.execute(sql, (cutoff, limit)).rowcount)

    async def _purge(self, table: str, time_column: str, cutoff: object) -> int:
        sql = (
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table}"  # noqa: S608
            f" WHERE {time_column} < ? LIMIT {_PURGE_CHUNK})"
        )
        deleted = 0
        while True:
            count = await self._db.run(lambda conn: conn.execute(sql, (cutoff,)).rowcount)
            deleted += count
            if count < _PURGE_CHUNK:
                return deleted
