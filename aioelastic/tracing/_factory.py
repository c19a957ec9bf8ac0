"""From a tracing URL to a sink (for the bus) and a search store (for the scheduler and CLI)."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from .._errors import ConfigError
from .._urls import TracingURL, parse_tracing_url
from ._events import TraceSink
from ._postgres import PostgresSearch, PostgresSink, create_pool, ensure_schema
from ._search import TraceSearch
from ._sinks import LoggingSink, MemorySink
from ._sqlite import SqliteDatabase, SqliteSearch, SqliteSink, sqlite_path

__all__ = ["TraceStore", "create_sink", "default_journal_path", "open_trace_store"]

log = logging.getLogger("aioelastic.tracing")


def _parse(url: str | TracingURL) -> TracingURL:
    return parse_tracing_url(url) if isinstance(url, str) else url


def default_journal_path(url: str | TracingURL) -> Path:
    """``$XDG_CACHE_HOME/aioelastic/trace-<hash>.journal`` (``~/.cache`` without XDG).

    The hash is of the URL with its password masked, so rotating a password keeps the journal.
    """
    shown = str(_parse(url))
    digest = hashlib.sha256(shown.encode("utf-8")).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "aioelastic" / f"trace-{digest}.journal"


def create_sink(url: str | TracingURL, *, journal_path: Path | None = None) -> TraceSink:
    """The sink for a tracing URL: ``postgresql://``, ``sqlite:///``, ``memory://``, ``log://``.

    Database sinks carry ``journal_path`` (default :func:`default_journal_path`) for the bus,
    and connect lazily, so a database that is down at start only delays the trace.
    """
    parsed = _parse(url)
    if parsed.scheme == "postgresql":
        return PostgresSink(parsed, journal_path=journal_path or default_journal_path(parsed))
    if parsed.scheme == "sqlite":
        return SqliteSink(parsed, journal_path=journal_path or default_journal_path(parsed))
    if parsed.scheme == "memory":
        return MemorySink()
    return LoggingSink()


@dataclass(frozen=True)
class TraceStore:
    """A database's sink and search, sharing one pool / connection."""

    url: TracingURL
    sink: TraceSink
    search: TraceSearch


@contextlib.asynccontextmanager
async def open_trace_store(
    url: str | TracingURL,
    *,
    journal_path: Path | None = None,
    create_schema: bool = True,
    pool_size: int = 4,
    connect_timeout: float = 10.0,
) -> AsyncIterator[TraceStore]:
    """Connect to a trace database (creating its tables unless told not to); close on exit.

    With ``create_schema=False`` nothing is created: a SQLite file must already exist.

    Raises ``ConfigError`` for ``memory://`` and ``log://`` (they have nothing to search) and
    the driver's error when the database cannot be reached.
    """
    parsed = _parse(url)
    journal = journal_path or default_journal_path(parsed)
    if parsed.scheme == "postgresql":
        async with _postgres_store(parsed, journal, create_schema, pool_size, connect_timeout) as s:
            yield s
    elif parsed.scheme == "sqlite":
        async with _sqlite_store(parsed, journal, create_schema) as store:
            yield store
    else:
        raise ConfigError("tracing_url", str(parsed), "only postgresql:// and sqlite:/// search")


@contextlib.asynccontextmanager
async def _postgres_store(
    url: TracingURL, journal: Path, create_schema: bool, pool_size: int, connect_timeout: float
) -> AsyncIterator[TraceStore]:
    pool = await create_pool(url, max_size=pool_size, connect_timeout=connect_timeout)
    try:
        if create_schema:
            async with pool.acquire(timeout=connect_timeout) as conn:
                await ensure_schema(conn)
        sink = PostgresSink(url, pool=pool, journal_path=journal, create_schema=False)
        yield TraceStore(url=url, sink=sink, search=PostgresSearch(pool))
    finally:
        with anyio.move_on_after(5, shield=True) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()


@contextlib.asynccontextmanager
async def _sqlite_store(
    url: TracingURL, journal: Path, create_schema: bool
) -> AsyncIterator[TraceStore]:
    database = SqliteDatabase(sqlite_path(url), create=create_schema)
    try:
        await database.run(lambda conn: None)  # open and create the schema now
        sink = SqliteSink(url, database=database, journal_path=journal)
        yield TraceStore(url=url, sink=sink, search=SqliteSearch(database))
    finally:
        with anyio.move_on_after(5, shield=True):
            await database.aclose()
