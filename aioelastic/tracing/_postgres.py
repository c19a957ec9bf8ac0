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
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .._events import JobExecutionEvent, JobStatusTraceEvent, State, TraceEvent
from .._urls import TracingURL, parse_tracing_url
from ._rows import OriginalTaskIds, clean_text, items_text, prepare_batch
from ._schema import POSTGRES_DDL
from ._search import SqlTraceSearch

__all__ = ["PostgresDialect", "PostgresSearch", "PostgresSink", "create_pool", "ensure_schema"]

log = logging.getLogger("aioelastic.tracing")

#: Arbitrary constant key of the advisory lock that serialises concurrent schema creation.
_SCHEMA_LOCK_KEY = 0x61696F656C617374
_PURGE_CHUNK = 10_000

_UPSERT_EXECUTIONS = """
INSERT INTO JOB_EXECUTION_LOG AS t (id, job_name, task_id, hostname, ip, sharding_item,
    execution_source, failure_cause, is_success, start_time, complete_time)
SELECT * FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[],
    $6::integer[], $7::varchar[], $8::varchar[], $9::boolean[], $10::timestamptz[],
    $11::timestamptz[])
ON CONFLICT (id) DO UPDATE SET
    job_name = EXCLUDED.job_name, task_id = EXCLUDED.task_id, hostname = EXCLUDED.hostname,
    ip = EXCLUDED.ip, sharding_item = EXCLUDED.sharding_item,
    execution_source = EXCLUDED.execution_source, failure_cause = EXCLUDED.failure_cause,
    is_success = EXCLUDED.is_success, start_time = COALESCE(t.start_time, EXCLUDED.start_time),
    complete_time = EXCLUDED.complete_time
WHERE EXCLUDED.complete_time IS NOT NULL
"""

_INSERT_STATUSES = """
INSERT INTO JOB_STATUS_TRACE_LOG (id, job_name, original_task_id, task_id, slave_id, source,
    execution_type, sharding_item, state, message, creation_time)
SELECT u.id, u.job_name,
    COALESCE(u.original_task_id,
        (SELECT s.original_task_id FROM JOB_STATUS_TRACE_LOG s
         WHERE s.task_id = u.task_id AND s.state = $12 LIMIT 1),
        ''),
    u.task_id, u.slave_id, u.source, u.execution_type, u.sharding_item, u.state, u.message,
    u.creation_time
FROM unnest($1::varchar[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[],
    $6::varchar[], $7::varchar[], $8::varchar[], $9::varchar[], $10::varchar[],
    $11::timestamptz[])
    AS u(id, job_name, original_task_id, task_id, slave_id, source, execution_type,
         sharding_item, state, message, creation_time)
ON CONFLICT (id) DO NOTHING
"""

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


def _execution_columns(events: Sequence[JobExecutionEvent]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(11)]
    for e in events:
        row = (
            clean_text(e.id),
            clean_text(e.job_name),
            clean_text(e.task_id),
            clean_text(e.hostname),
            clean_text(e.ip),
            e.sharding_item,
            e.execution_source.value,
            None if e.failure_cause is None else clean_text(e.failure_cause),
            e.is_success,
            e.start_time,
            e.complete_time,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


def _status_columns(rows: Sequence[tuple[JobStatusTraceEvent, str | None]]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(11)]
    for e, original in rows:
        row = (
            clean_text(e.id),
            clean_text(e.job_name),
            None if original is None else clean_text(original),
            clean_text(e.task_id),
            clean_text(e.slave_id),
            e.source.value,
            e.execution_type.value,
            items_text(e.sharding_items),
            e.state.value,
            clean_text(e.message),
            e.creation_time,
        )
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    return columns


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
            async with conn.transaction():
                if prepared.executions:
                    await conn.execute(_UPSERT_EXECUTIONS, *_execution_columns(prepared.executions))
                if prepared.statuses:
                    columns = _status_columns(prepared.statuses)
                    await conn.execute(_INSERT_STATUSES, *columns, State.TASK_STAGING.value)
                if prepared.backfill:
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
    """``$n`` parameters; asyncpg passes datetimes and booleans natively."""

    def placeholder(self, index: int) -> str:
        return f"${index}"

    def encode(self, value: object) -> object:
        return value

    def decode_time(self, value: Any) -> datetime | None:
        return value if value is None or isinstance(value, datetime) else None


class PostgresSearch(SqlTraceSearch):
    """:class:`TraceSearch` over a PostgreSQL pool (page and total read in one snapshot)."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 30.0) -> None:
        self.dialect = PostgresDialect()
        self._pool = pool
        self._timeout = timeout

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
