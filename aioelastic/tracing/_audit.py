"""The operator audit log: who did what, when, and with what result, in the trace database.

One table beside ElasticJob's two, ``AIOELASTIC_AUDIT_LOG`` (created on first use, PostgreSQL
and SQLite), written by the console for every operator action. Every value is a bound
parameter. Without a trace database the log is kept in memory (:class:`MemoryAuditLog`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import asyncpg

from .._errors import ConfigError
from .._urls import TracingURL, parse_tracing_url
from ._postgres import create_pool
from ._search import MAX_PAGE_SIZE, Page
from ._sqlite import SqliteDatabase, sqlite_path

__all__ = [
    "AUDIT_TABLE",
    "AuditEntry",
    "AuditLog",
    "MemoryAuditLog",
    "PostgresAuditLog",
    "SqliteAuditLog",
    "open_audit_log",
]

AUDIT_TABLE = "AIOELASTIC_AUDIT_LOG"
_COLUMNS = ("id", "time", "who", "role", "action", "job_name", "target", "result", "detail")
#: Longest text kept per column (a detail can hold an error message).
_WIDTH = 4000

_POSTGRES_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
        id       VARCHAR     NOT NULL PRIMARY KEY,
        time     TIMESTAMPTZ NOT NULL,
        who      VARCHAR     NOT NULL,
        role     VARCHAR     NOT NULL,
        action   VARCHAR     NOT NULL,
        job_name VARCHAR     NOT NULL,
        target   VARCHAR     NOT NULL,
        result   VARCHAR     NOT NULL,
        detail   VARCHAR     NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {AUDIT_TABLE}_TIME_INDEX ON {AUDIT_TABLE} (time)",
)
_SQLITE_DDL = tuple(d.replace("TIMESTAMPTZ", "TEXT       ") for d in _POSTGRES_DDL)
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action. ``result`` is ``ok``, ``refused`` or ``failed``; ``detail`` what
    it changed or why it did not."""

    who: str
    role: str
    action: str
    job_name: str
    target: str
    result: str
    detail: str = ""
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def row(self) -> tuple[object, ...]:
        values = [getattr(self, c) for c in _COLUMNS]
        return tuple(v[:_WIDTH] if isinstance(v, str) else v for v in values)


class AuditLog(Protocol):
    """Where the console records operator actions."""

    async def record(self, entry: AuditEntry) -> None:
        """Store one entry (raises when the database cannot be written)."""
        ...

    async def entries(
        self, *, job_name: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page[AuditEntry]:
        """Newest first, one page of them and the total."""
        ...


def _check_page(offset: int, limit: int) -> None:
    if not 0 <= offset <= 2**63 - 1:
        raise ConfigError("offset", offset, "must be >= 0")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ConfigError("limit", limit, f"must be between 1 and {MAX_PAGE_SIZE}")


class MemoryAuditLog:
    """The audit log of a console without a trace database (lost when the process ends)."""

    def __init__(self) -> None:
        self._entries: list[AuditEntry] = []

    async def record(self, entry: AuditEntry) -> None:
        self._entries.append(entry)

    async def entries(
        self, *, job_name: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page[AuditEntry]:
        _check_page(offset, limit)
        rows = [e for e in reversed(self._entries) if job_name in (None, e.job_name)]
        return Page(tuple(rows[offset : offset + limit]), len(rows), offset, limit)


def _entry(row: Sequence[Any], time: datetime) -> AuditEntry:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["time"] = time
    return AuditEntry(**values)


class PostgresAuditLog:
    """The audit table in PostgreSQL (created on first use)."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float = 10.0) -> None:
        self._pool = pool
        self._timeout = timeout
        self._ready = False

    async def _conn_ready(self, conn: Any) -> None:
        if not self._ready:
            for statement in _POSTGRES_DDL:
                await conn.execute(statement)
            self._ready = True

    async def record(self, entry: AuditEntry) -> None:
        marks = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
        sql = f"INSERT INTO {AUDIT_TABLE} ({', '.join(_COLUMNS)}) VALUES ({marks})"  # noqa: S608
        with anyio.fail_after(self._timeout):
            async with self._pool.acquire() as conn:
                await self._conn_ready(conn)
                await conn.execute(sql, *entry.row())

    async def entries(
        self, *, job_name: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page[AuditEntry]:
        _check_page(offset, limit)
        where, params = ("WHERE job_name = $1", [job_name]) if job_name is not None else ("", [])
        n = len(params)
        cols = ", ".join(_COLUMNS)
        rows_sql = (
            f"SELECT {cols} FROM {AUDIT_TABLE} {where}"  # noqa: S608 - fixed names
            f" ORDER BY time DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}"
        )
        count_sql = f"SELECT count(*) FROM {AUDIT_TABLE} {where}"  # noqa: S608
        with anyio.fail_after(self._timeout):
            async with self._pool.acquire() as conn:
                await self._conn_ready(conn)
                total = await conn.fetchval(count_sql, *params)
                rows = await conn.fetch(rows_sql, *params, limit, offset)
        items = tuple(_entry(tuple(r), r["time"].astimezone(UTC)) for r in rows)
        return Page(items, int(total), offset, limit)


class SqliteAuditLog:
    """The audit table in SQLite (created on first use; times as UTC text)."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._db = database
        self._ready = False

    def _ensure(self, conn: sqlite3.Connection) -> None:
        if not self._ready:
            for statement in _SQLITE_DDL:
                conn.execute(statement)
            self._ready = True

    async def record(self, entry: AuditEntry) -> None:
        row = list(entry.row())
        row[1] = entry.time.astimezone(UTC).strftime(_TIME_FORMAT)
        marks = ", ".join("?" for _ in _COLUMNS)
        sql = f"INSERT INTO {AUDIT_TABLE} ({', '.join(_COLUMNS)}) VALUES ({marks})"  # noqa: S608

        def insert(conn: sqlite3.Connection) -> None:
            self._ensure(conn)
            conn.execute(sql, row)

        await self._db.run(insert)

    async def entries(
        self, *, job_name: str | None = None, offset: int = 0, limit: int = 50
    ) -> Page[AuditEntry]:
        _check_page(offset, limit)
        where, params = ("WHERE job_name = ?", [job_name]) if job_name is not None else ("", [])
        cols = ", ".join(_COLUMNS)
        rows_sql = (
            f"SELECT {cols} FROM {AUDIT_TABLE} {where}"  # noqa: S608 - fixed names
            " ORDER BY time DESC, id DESC LIMIT ? OFFSET ?"
        )
        count_sql = f"SELECT count(*) FROM {AUDIT_TABLE} {where}"  # noqa: S608

        def read(conn: sqlite3.Connection) -> tuple[int, list[Any]]:
            self._ensure(conn)
            total = conn.execute(count_sql, params).fetchone()[0]
            return int(total), conn.execute(rows_sql, [*params, limit, offset]).fetchall()

        total, rows = await self._db.run(read)
        items = tuple(
            _entry(r, datetime.strptime(r[1], _TIME_FORMAT).replace(tzinfo=UTC)) for r in rows
        )
        return Page(items, total, offset, limit)


@contextlib.asynccontextmanager
async def open_audit_log(
    url: str | TracingURL | None, *, timeout: float = 10.0
) -> AsyncIterator[AuditLog]:
    """The audit log in the trace database at ``url`` (its own small pool or connection; the
    table is created on first use), or in memory for ``None``, ``memory://`` and ``log://``.
    Nothing connects before the first record or read."""
    parsed = parse_tracing_url(url) if isinstance(url, str) else url
    if parsed is None or parsed.scheme not in ("postgresql", "sqlite"):
        yield MemoryAuditLog()
    elif parsed.scheme == "postgresql":
        pool = await create_pool(parsed, max_size=2, connect_timeout=timeout)
        try:
            yield PostgresAuditLog(pool, timeout=timeout)
        finally:
            with anyio.move_on_after(5, shield=True) as scope:
                await pool.close()
            if scope.cancelled_caught:
                pool.terminate()
    else:
        database = SqliteDatabase(sqlite_path(parsed), create=False)
        try:
            yield SqliteAuditLog(database)
        finally:
            await database.aclose()
