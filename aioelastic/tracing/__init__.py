"""Execution trace: the event bus, its sinks, and the search over the trace tables.

- :class:`TraceBus` — ``bus.post(event)`` (synchronous, never blocks, never raises) and
  ``await bus.start(exit_stack)``; bounded queue per sink, batching, retry, overflow journal,
  flush on shutdown (queue and journal backlog) within ``grace_period``.
- Sinks: :class:`PostgresSink`, :class:`SqliteSink`, :class:`MemorySink` (``events``),
  :class:`LoggingSink`, or any object with ``async def write(batch)`` (``TraceSink``).
- :func:`create_sink` / :func:`open_trace_store` build them from a tracing URL;
  :class:`TraceSearch` queries ``JOB_EXECUTION_LOG`` and ``JOB_STATUS_TRACE_LOG``.

Tracing URLs: ``postgresql://user:password@host:5432/db`` (asyncpg DSN; tables created on first
use), ``sqlite:///relative.db`` or ``sqlite:////absolute.db``, ``memory://``, ``log://``.

Nothing lost: each sink's queue holds ``max_queue`` events; beyond that, and for whatever is not
written within ``grace_period`` at shutdown, events go to the sink's journal, an append-only
JSON-lines file replayed into the sink once it accepts writes (also by the next process).
Default journal: ``$XDG_CACHE_HOME/aioelastic/trace-<hash of the URL>.journal`` (``~/.cache``
when unset), overridable with ``create_sink(url, journal_path=...)``. Lines reach the OS as they
are appended and are fsync'd every ``journal_fsync_interval`` (1 s) and at shutdown. While a sink
fails (a write raised, or has been pending for ``journal_window``, 0.1 s), its queue goes to the
journal at once and new events go straight there (fsync'd every 0.1 s): a kill -9 during a
database outage loses at most 0.1 s of events. A journal that cannot be written logs one ERROR,
counts ``SinkStats.journal_errors`` and keeps events in memory (up to ``max_queue``).

Existing tables (ElasticJob's) are used as they are: see ``_schema`` for widths and columns.
"""

from __future__ import annotations

from ._bus import ClosableSink, SinkStats, TraceBus
from ._events import TraceSink
from ._factory import TraceStore, create_sink, default_journal_path, open_trace_store
from ._postgres import PostgresSearch, PostgresSink
from ._schema import EXECUTION_TABLE, STATUS_TABLE
from ._search import (
    ExecutionRecord,
    FireRecord,
    JobStats,
    Page,
    PurgeResult,
    SortOrder,
    StatusTraceRecord,
    TraceSearch,
)
from ._sinks import LoggingSink, MemorySink
from ._sqlite import SqliteSearch, SqliteSink

__all__ = [
    "EXECUTION_TABLE",
    "STATUS_TABLE",
    "ClosableSink",
    "ExecutionRecord",
    "FireRecord",
    "JobStats",
    "LoggingSink",
    "MemorySink",
    "Page",
    "PostgresSearch",
    "PostgresSink",
    "PurgeResult",
    "SinkStats",
    "SortOrder",
    "SqliteSearch",
    "SqliteSink",
    "StatusTraceRecord",
    "TraceBus",
    "TraceSearch",
    "TraceSink",
    "TraceStore",
    "create_sink",
    "default_journal_path",
    "open_trace_store",
]
