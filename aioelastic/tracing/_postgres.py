"""PostgreSQL (asyncpg): the trace sink and the search.

A batch is one transaction of at most two set-based statements (``INSERT ... SELECT FROM
unnest(arrays)``): an upsert of execution rows keyed by event id, where a completion updates the
row and a start never overwrites one (so a completion may arrive first), and an insert of status
rows that ignores ids already present (a retried batch adds nothing). ``original_task_id`` misses
are looked up inside that insert, through ``TASK_ID_STATE_INDEX`` (and a late staging back-fills
them with a third statement, only when it names an original task).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._urls import TracingURL, parse_tracing_url
from ._events import State, TraceEvent
from ._rows import OriginalTaskIds, WrittenColumns, execution_values, prepare_batch, status_values
from ._schema import (
    BOOLEAN,
    EXECUTION_TABLE,
    INTEGER,
    POSTGRES_DDL,
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

_BACKFILL_ORIGINALS = """
UPDATE JOB_STATUS_TRACE_LOG AS s SET original_task_id = u.original_task_id
FROM unnest($1::varchar[], $2::varchar[]) AS u(task_id, original_task_id)
WHERE s.task_id = u.task_id AND s.original_task_id = '' AND s.state <> $3
"""


async def create_pool(
    url: TracingURL, *, max_size: int = 4, connect_timeout: float = 10.0
) -> asyncpg.Pool:
    """A lazy asyncpg pool (no connection until first use, no background task)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn=url.connect_dsn,  # credentials apart: asyncpg's DSN errors cannot echo them
        user=url.username,
        password=url.password.get_secret_value() if url.password else None,
        min_size=0,
        max_size=max_size,
        timeout=connect_timeout,
        command_timeout=60,
    )
    return pool


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


def _columns_of(
    layout: TableLayout, columns: Sequence[str], rows: Sequence[dict[str, object]]
) -> list[list[object]]:
    specs = [layout.get(name) for name in columns]
    return [
        [bind(spec, row[name]) for row in rows] for name, spec in zip(columns, specs, strict=True)
    ]


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


class PostgresSink:
    """Writes trace batches to PostgreSQL; creates the schema on its first connection.

    Args:
        url: ``postgresql://user:password@host:port/db`` (string or parsed).
        pool: an existing pool to share (then ``aclose()`` leaves it open); by default the sink
            creates its own lazily, so a database that is down at start is not an error.
        journal_path: overflow journal used by :class:`TraceBus` for this sink.
        create_schema: create missing tables/indexes on the first write.
    """

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
        """Write ``batch`` in one transaction (idempotent by event id)."""
        prepared = prepare_batch(batch, self._originals)
        pool = await self._get_pool()
        async with pool.acquire(timeout=self._connect_timeout) as conn:
            if not self._schema_ready:
                await ensure_schema(conn)
                self._schema_ready = True
            if self._statements is None:
                self._statements = _Statements(*await read_layouts(conn))
            sql = self._statements
            async with conn.transaction():
                if prepared.executions:
                    rows = [execution_values(e, sql.executions) for e in prepared.executions]
                    columns = _columns_of(sql.executions, sql.execution_columns, rows)
                    await conn.execute(sql.upsert, *columns)
                if prepared.statuses:
                    status_rows = [
                        status_values(e, original, sql.statuses)
                        for e, original in prepared.statuses
                    ]
                    columns = _columns_of(sql.statuses, sql.status_columns, status_rows)
                    await conn.execute(sql.insert_statuses, *columns, State.TASK_STAGING.value)
                if prepared.backfill and sql.backfill:
                    tasks, originals = zip(*prepared.backfill, strict=True)
                    await conn.execute(
                        _BACKFILL_ORIGINALS, tasks, originals, State.TASK_STAGING.value
                    )

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
