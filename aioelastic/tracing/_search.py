"""Searching the trace (what ElasticJob's console offered): one protocol, shared SQL building.

Every value reaches the database as a bound parameter; column names and sort directions come
only from the whitelists below, never from the caller's strings. Numbers and times out of the
range the databases store (offsets beyond 64 bits, items beyond 32 bits, dates before year 1 or
after 9999, non-finite day counts) are ``ConfigError``s, never a driver error.

Tables are searched as they are (see ``_schema``): a column the table lacks (``source`` in
ElasticJob 3.0.5) reads as empty, and filtering or sorting on it is a ``ConfigError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Literal, Protocol, TypeVar

import anyio

from .._errors import ConfigError
from ._schema import (
    EXECUTION_COLUMNS,
    EXECUTION_TABLE,
    STATUS_COLUMNS,
    STATUS_TABLE,
    Column,
    TableLayout,
    default_layout,
)

__all__ = [
    "DEFAULT_STATS_WINDOW",
    "EXECUTION_SORT_COLUMNS",
    "JOBS_PER_QUERY",
    "MAX_OFFSET",
    "MAX_PAGE_SIZE",
    "STATUS_SORT_COLUMNS",
    "Dialect",
    "ExecutionRecord",
    "FireRecord",
    "JobStats",
    "Page",
    "PurgeResult",
    "SortOrder",
    "SqlTraceSearch",
    "StatusTraceRecord",
    "TraceSearch",
]

T = TypeVar("T")
SortOrder = Literal["asc", "desc"]

MAX_PAGE_SIZE = 1000
#: Largest ``offset`` (PostgreSQL's OFFSET is a 64-bit integer).
MAX_OFFSET = 2**63 - 1
_MAX_ITEM = 2**31 - 1
#: ``job_stats()`` and ``aioelastic trace stats`` count runs of the last day by default.
DEFAULT_STATS_WINDOW = timedelta(days=1)
#: Job names per statement of the many-jobs queries (an ``IN`` list of parameters; SQLite
#: takes at most 32,766 per statement, PostgreSQL 32,767).
JOBS_PER_QUERY = 500
EXECUTION_SORT_COLUMNS = frozenset(EXECUTION_COLUMNS) - {"failure_cause"}
STATUS_SORT_COLUMNS = frozenset(STATUS_COLUMNS) - {"message"}


@dataclass(frozen=True, slots=True)
class ExecutionRecord:
    """A row of ``JOB_EXECUTION_LOG``: one sharding item's run (``complete_time`` None: running)."""

    id: str
    job_name: str
    task_id: str
    hostname: str
    ip: str
    sharding_item: int
    execution_source: str
    failure_cause: str | None
    is_success: bool
    start_time: datetime | None
    complete_time: datetime | None

    @property
    def finished(self) -> bool:
        """Whether the run completed (``is_success`` is final only then)."""
        return self.complete_time is not None


@dataclass(frozen=True, slots=True)
class FireRecord:
    """One fire as one instance ran it: the execution rows of one task id, summed up."""

    job_name: str
    task_id: str
    execution_source: str
    items: int
    succeeded: int
    failed: int
    running: int
    start_time: datetime | None
    complete_time: datetime | None
    """The last item's completion (None while an item is still running)."""
    failure_cause: str | None
    """One failed item's cause (the first in sort order), or None."""

    @property
    def outcome(self) -> Literal["running", "failed", "succeeded"]:
        if self.running:
            return "running"
        return "failed" if self.failed else "succeeded"

    @property
    def duration(self) -> timedelta | None:
        if self.start_time is None or self.complete_time is None:
            return None
        return self.complete_time - self.start_time


@dataclass(frozen=True, slots=True)
class StatusTraceRecord:
    """A row of ``JOB_STATUS_TRACE_LOG``: one state change of a task (``sharding_item`` as text)."""

    id: str
    job_name: str
    original_task_id: str
    task_id: str
    slave_id: str
    source: str
    execution_type: str
    sharding_item: str
    state: str
    message: str | None
    creation_time: datetime | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a search and the number of rows matching it in all."""

    items: tuple[T, ...]
    total: int
    offset: int
    limit: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


@dataclass(frozen=True, slots=True)
class JobStats:
    """Item runs of one job that started in a period."""

    job_name: str
    total: int
    succeeded: int
    failed: int
    running: int


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """Rows deleted by a retention purge."""

    executions: int
    status_traces: int


class TraceSearch(Protocol):
    """Queries over the two trace tables (PostgreSQL and SQLite implement it).

    Filters are exact matches and combine with AND; ``since`` is inclusive and ``until``
    exclusive (on ``start_time`` / ``creation_time``; naive datetimes are taken as UTC).
    ``sort`` must name a column of the table; ties are broken by ``id``.

    ``is_success`` matches *completed* runs only (``is_success=False``: runs that failed, not
    runs still going); ``finished=False`` gives the unfinished ones (no ``complete_time``).
    """

    async def executions(
        self,
        *,
        job_name: str | None = None,
        task_id: str | None = None,
        hostname: str | None = None,
        ip: str | None = None,
        sharding_item: int | None = None,
        is_success: bool | None = None,
        execution_source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        sort: str = "start_time",
        order: SortOrder = "desc",
        offset: int = 0,
        limit: int = 50,
        finished: bool | None = None,
    ) -> Page[ExecutionRecord]:
        """Item runs matching the filters, one page of them, and their total."""
        ...

    async def status_traces(
        self,
        *,
        job_name: str | None = None,
        task_id: str | None = None,
        original_task_id: str | None = None,
        slave_id: str | None = None,
        source: str | None = None,
        execution_type: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        sort: str = "creation_time",
        order: SortOrder = "desc",
        offset: int = 0,
        limit: int = 50,
    ) -> Page[StatusTraceRecord]:
        """Task state changes matching the filters, one page of them, and their total."""
        ...

    async def job_stats(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        job_name: str | None = None,
    ) -> list[JobStats]:
        """Per job (sorted by name): item runs started in ``[since, until)`` by outcome
        (``since`` defaults to :data:`DEFAULT_STATS_WINDOW` ago, as the CLI's)."""
        ...

    async def fires(
        self,
        *,
        job_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Page[FireRecord]:
        """Fires (execution rows grouped by task id), newest first by their first item's start."""
        ...

    async def fire_spans(
        self, *, job_name: str, since: datetime, until: datetime
    ) -> list[tuple[datetime, datetime | None]]:
        """Every fire of the job started in ``[since, until)``: (start, completion or None)."""
        ...

    async def fire_spans_of(
        self, job_names: Sequence[str], *, since: datetime, until: datetime
    ) -> dict[str, list[tuple[datetime, datetime | None]]]:
        """:meth:`fire_spans` of many jobs at once (every name a key, maybe with no spans)."""
        ...

    async def last_fires(self, job_names: Sequence[str]) -> dict[str, FireRecord]:
        """Each job's newest fire (as ``fires(job_name=..., limit=1)`` gives it); jobs without
        any are left out."""
        ...

    async def count_older(self, older_than_days: float) -> PurgeResult:
        """How many rows :meth:`purge` with the same argument would delete now."""
        ...

    async def purge(self, older_than_days: float) -> PurgeResult:
        """Delete executions started and status rows created more than N days ago."""
        ...


class Dialect(Protocol):
    """How one database spells parameters and stores times and booleans."""

    def placeholder(self, index: int) -> str: ...

    def encode(self, value: object, column: Column | None = None) -> object: ...

    def decode_time(self, value: Any) -> datetime | None: ...

    def truth(self, column: Column | None) -> str: ...


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Where:
    """Collects ``column op $n`` clauses and their parameters."""

    def __init__(self, dialect: Dialect, layout: TableLayout) -> None:
        self.dialect = dialect
        self.layout = layout
        self.clauses: list[str] = []
        self.params: list[object] = []

    def add(self, column: str, op: str, value: object) -> None:
        if value is None:
            return
        if column not in self.layout:
            raise ConfigError(column, value, f"{self.layout.table} has no such column")
        if isinstance(value, datetime):
            value = _utc(value)
        self.params.append(self.dialect.encode(value, self.layout.get(column)))
        self.clauses.append(f"{column} {op} {self.dialect.placeholder(len(self.params))}")

    def add_in(self, column: str, values: Sequence[object]) -> None:
        """``column IN (...)``, one parameter per value (at least one value)."""
        if column not in self.layout:
            raise ConfigError(column, values, f"{self.layout.table} has no such column")
        marks = []
        for value in values:
            self.params.append(self.dialect.encode(value, self.layout.get(column)))
            marks.append(self.dialect.placeholder(len(self.params)))
        self.clauses.append(f"{column} IN ({', '.join(marks)})")

    def raw(self, clause: str) -> None:
        self.clauses.append(clause)

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


def _chunks(names: Sequence[str]) -> list[list[str]]:
    """``names`` without repeats, in lists of at most :data:`JOBS_PER_QUERY`."""
    unique = list(dict.fromkeys(names))
    return [unique[i : i + JOBS_PER_QUERY] for i in range(0, len(unique), JOBS_PER_QUERY)]


def _check_page(
    sort: str, allowed: frozenset[str], layout: TableLayout, order: str, offset: int, limit: int
) -> None:
    if sort not in allowed or sort not in layout:
        raise ConfigError("sort", sort, f"must be one of {sorted(layout.present(allowed))}")
    if order not in ("asc", "desc"):
        raise ConfigError("order", order, "must be 'asc' or 'desc'")
    if not 0 <= offset <= MAX_OFFSET:
        raise ConfigError("offset", offset, f"must be between 0 and {MAX_OFFSET}")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ConfigError("limit", limit, f"must be between 1 and {MAX_PAGE_SIZE}")


def _check_item(item: int | None) -> None:
    if item is not None and not 0 <= item <= _MAX_ITEM:
        raise ConfigError("sharding_item", item, f"must be between 0 and {_MAX_ITEM}")


def _check_time(name: str, value: datetime | None) -> None:
    """Times the databases store: UTC between years 1 and 9999 (aware ones are converted)."""
    if value is None:
        return
    try:
        _utc(value)
    except OverflowError:
        raise ConfigError(name, value.isoformat(), "out of range") from None


def _cutoff(older_than_days: float) -> datetime:
    if not math.isfinite(older_than_days) or older_than_days < 0:
        raise ConfigError("older_than_days", older_than_days, "must be a finite number >= 0")
    try:
        return datetime.now(UTC) - timedelta(days=older_than_days)
    except OverflowError:
        raise ConfigError("older_than_days", older_than_days, "reaches before year 1") from None


def _stats_sql(truth: str) -> str:
    return (
        "SELECT job_name, count(*),"  # noqa: S608 - truth is one of two fixed expressions
        f" sum(CASE WHEN complete_time IS NOT NULL AND {truth} THEN 1 ELSE 0 END),"
        f" sum(CASE WHEN complete_time IS NOT NULL AND NOT ({truth}) THEN 1 ELSE 0 END),"
        " sum(CASE WHEN complete_time IS NULL THEN 1 ELSE 0 END)"
        " FROM JOB_EXECUTION_LOG"
    )


class SqlTraceSearch:
    """The search over SQL; subclasses run the statements (``_page``, ``_rows``, ``_purge``)
    and read the tables' columns (``_read_layouts``, once, before the first query)."""

    dialect: Dialect
    _layouts: tuple[TableLayout, TableLayout] | None = None

    async def _page(
        self, count_sql: str, rows_sql: str, params: Sequence[object], paging: Sequence[object]
    ) -> tuple[int, list[Sequence[Any]]]:
        raise NotImplementedError

    async def _rows(self, sql: str, params: Sequence[object]) -> list[Sequence[Any]]:
        raise NotImplementedError

    async def _purge(self, table: str, time_column: str, cutoff: object) -> int:
        raise NotImplementedError

    async def _delete_some(self, table: str, time_column: str, cutoff: object, limit: int) -> int:
        raise NotImplementedError

    async def _read_layouts(self) -> tuple[TableLayout, TableLayout]:
        return default_layout(EXECUTION_TABLE), default_layout(STATUS_TABLE)

    async def check(self) -> None:
        """Connect and read the tables' columns (``ConfigError`` if a table is missing)."""
        await self._tables()

    async def _tables(self) -> tuple[TableLayout, TableLayout]:
        if self._layouts is None:
            executions, statuses = await self._read_layouts()
            for layout in (executions, statuses):
                if not layout.columns:
                    raise ConfigError("tracing_url", layout.table, "the trace table does not exist")
            self._layouts = executions, statuses
        return self._layouts

    async def _select(
        self,
        layout: TableLayout,
        columns: Sequence[str],
        where: _Where,
        sort: str,
        order: str,
        offset: int,
        limit: int,
    ) -> tuple[int, list[Sequence[Any]]]:
        table = layout.table
        condition = where.sql()
        count_sql = f"SELECT count(*) FROM {table}{condition}"  # noqa: S608 - whitelisted names
        n = len(where.params)
        placeholders = self.dialect.placeholder(n + 1), self.dialect.placeholder(n + 2)
        selected = ", ".join(c if c in layout else f"NULL AS {c}" for c in columns)
        rows_sql = (
            f"SELECT {selected} FROM {table}{condition}"  # noqa: S608 - whitelisted
            f" ORDER BY {sort} {order.upper()} NULLS LAST, id {order.upper()}"
            f" LIMIT {placeholders[0]} OFFSET {placeholders[1]}"
        )
        return await self._page(count_sql, rows_sql, where.params, (limit, offset))

    async def executions(
        self,
        *,
        job_name: str | None = None,
        task_id: str | None = None,
        hostname: str | None = None,
        ip: str | None = None,
        sharding_item: int | None = None,
        is_success: bool | None = None,
        execution_source: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        sort: str = "start_time",
        order: SortOrder = "desc",
        offset: int = 0,
        limit: int = 50,
        finished: bool | None = None,
    ) -> Page[ExecutionRecord]:
        """Item runs matching the filters, one page of them, and their total.

        ``is_success`` matches completed runs only; ``finished=False`` the unfinished ones.
        """
        layout, _ = await self._tables()
        _check_page(sort, EXECUTION_SORT_COLUMNS, layout, order, offset, limit)
        _check_item(sharding_item)
        _check_time("since", since)
        _check_time("until", until)
        where = _Where(self.dialect, layout)
        for column, value in (
            ("job_name", job_name),
            ("task_id", task_id),
            ("hostname", hostname),
            ("ip", ip),
            ("sharding_item", sharding_item),
            ("is_success", is_success),
            ("execution_source", execution_source),
        ):
            where.add(column, "=", value)
        if is_success is not None or finished is True:
            where.raw("complete_time IS NOT NULL")
        elif finished is False:
            where.raw("complete_time IS NULL")
        if is_success is not None and finished is False:
            raise ConfigError("finished", finished, "unfinished runs have no outcome yet")
        where.add("start_time", ">=", since)
        where.add("start_time", "<", until)
        total, rows = await self._select(
            layout, EXECUTION_COLUMNS, where, sort, order, offset, limit
        )
        return Page(tuple(self._execution(row) for row in rows), total, offset, limit)

    async def status_traces(
        self,
        *,
        job_name: str | None = None,
        task_id: str | None = None,
        original_task_id: str | None = None,
        slave_id: str | None = None,
        source: str | None = None,
        execution_type: str | None = None,
        state: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        sort: str = "creation_time",
        order: SortOrder = "desc",
        offset: int = 0,
        limit: int = 50,
    ) -> Page[StatusTraceRecord]:
        """Task state changes matching the filters, one page of them, and their total."""
        _, layout = await self._tables()
        _check_page(sort, STATUS_SORT_COLUMNS, layout, order, offset, limit)
        _check_time("since", since)
        _check_time("until", until)
        where = _Where(self.dialect, layout)
        for column, value in (
            ("job_name", job_name),
            ("task_id", task_id),
            ("original_task_id", original_task_id),
            ("slave_id", slave_id),
            ("source", source),
            ("execution_type", execution_type),
            ("state", state),
        ):
            where.add(column, "=", value)
        where.add("creation_time", ">=", since)
        where.add("creation_time", "<", until)
        total, rows = await self._select(layout, STATUS_COLUMNS, where, sort, order, offset, limit)
        return Page(tuple(self._status(row) for row in rows), total, offset, limit)

    async def job_stats(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        job_name: str | None = None,
    ) -> list[JobStats]:
        """Per job (sorted by name): item runs started in ``[since, until)`` by outcome
        (``since`` defaults to :data:`DEFAULT_STATS_WINDOW` ago, as the CLI's)."""
        layout, _ = await self._tables()
        _check_time("since", since)
        _check_time("until", until)
        if since is None:
            since = datetime.now(UTC) - DEFAULT_STATS_WINDOW
        where = _Where(self.dialect, layout)
        where.add("start_time", ">=", since)
        where.add("start_time", "<", until)
        where.add("job_name", "=", job_name)
        sql = (
            _stats_sql(self.dialect.truth(layout.get("is_success")))
            + where.sql()
            + " GROUP BY job_name ORDER BY job_name"
        )
        rows = await self._rows(sql, where.params)
        return [JobStats(str(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    async def fires(
        self,
        *,
        job_name: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Page[FireRecord]:
        """Fires (execution rows grouped by task id), newest first by their first item's start."""
        layout, _ = await self._tables()
        _check_page("start_time", EXECUTION_SORT_COLUMNS, layout, "desc", offset, limit)
        _check_time("since", since)
        _check_time("until", until)
        where = _Where(self.dialect, layout)
        where.add("job_name", "=", job_name)
        where.add("start_time", ">=", since)
        where.add("start_time", "<", until)
        group = f" FROM {EXECUTION_TABLE}{where.sql()} GROUP BY job_name, task_id"
        n = len(where.params)
        rows_sql = (
            f"SELECT {self._fire_columns(layout)}"
            f"{group} ORDER BY min(start_time) DESC, task_id DESC"
            f" LIMIT {self.dialect.placeholder(n + 1)} OFFSET {self.dialect.placeholder(n + 2)}"
        )
        count_sql = f"SELECT count(*) FROM (SELECT task_id{group}) AS fires"  # noqa: S608
        total, rows = await self._page(count_sql, rows_sql, where.params, (limit, offset))
        return Page(tuple(self._fire(row) for row in rows), total, offset, limit)

    def _fire_columns(self, layout: TableLayout) -> str:
        """A fire's columns over its rows grouped by ``job_name, task_id`` (see ``_fire``)."""
        truth = self.dialect.truth(layout.get("is_success"))
        return (
            "job_name, task_id, min(execution_source), count(*),"
            f" sum(CASE WHEN complete_time IS NOT NULL AND {truth} THEN 1 ELSE 0 END),"
            f" sum(CASE WHEN complete_time IS NOT NULL AND NOT ({truth}) THEN 1 ELSE 0 END),"
            " sum(CASE WHEN complete_time IS NULL THEN 1 ELSE 0 END),"
            " min(start_time), max(complete_time), min(failure_cause)"
        )

    async def last_fires(self, job_names: Sequence[str]) -> dict[str, FireRecord]:
        """Each job's newest fire, by its first item's start (ties: the greater task id, as
        :meth:`fires` orders them); one statement per :data:`JOBS_PER_QUERY` jobs."""
        layout, _ = await self._tables()
        out: dict[str, FireRecord] = {}
        for chunk in _chunks(job_names):
            where = _Where(self.dialect, layout)
            where.add_in("job_name", chunk)
            sql = (
                "SELECT * FROM (SELECT "  # noqa: S608 - fixed names
                f"{self._fire_columns(layout)}, row_number() OVER (PARTITION BY job_name"
                " ORDER BY min(start_time) DESC, task_id DESC) AS newest"
                f" FROM {EXECUTION_TABLE}{where.sql()} GROUP BY job_name, task_id) AS fires"
                " WHERE newest = 1"
            )
            for row in await self._rows(sql, where.params):
                fire = self._fire(row)
                out[fire.job_name] = fire
        return out

    async def count_older(self, older_than_days: float) -> PurgeResult:
        """How many rows :meth:`purge` with the same argument would delete now."""
        executions, statuses = await self._tables()
        cutoff = _cutoff(older_than_days)
        counts = []
        for layout, column in ((executions, "start_time"), (statuses, "creation_time")):
            where = _Where(self.dialect, layout)
            where.add(column, "<", cutoff)
            sql = f"SELECT count(*) FROM {layout.table}{where.sql()}"  # noqa: S608
            counts.append(int((await self._rows(sql, where.params))[0][0]))
        return PurgeResult(executions=counts[0], status_traces=counts[1])

    async def purge(self, older_than_days: float) -> PurgeResult:
        """Delete executions started and status rows created more than N days ago."""
        executions_layout, statuses_layout = await self._tables()
        cutoff = _cutoff(older_than_days)
        executions = await self._purge(
            EXECUTION_TABLE,
            "start_time",
            self.dialect.encode(cutoff, executions_layout.get("start_time")),
        )
        statuses = await self._purge(
            STATUS_TABLE,
            "creation_time",
            self.dialect.encode(cutoff, statuses_layout.get("creation_time")),
        )
        return PurgeResult(executions=executions, status_traces=statuses)

    async def fire_spans(
        self, *, job_name: str, since: datetime, until: datetime
    ) -> list[tuple[datetime, datetime | None]]:
        """Every fire of ``job_name`` that started in ``[since, until)`` as (first item's start,
        last item's completion or None while one runs), unsorted; one query, no paging (what
        the missed-fire check reads: a day of a per-second cron is 86,400 small rows)."""
        layout, _ = await self._tables()
        _check_time("since", since)
        _check_time("until", until)
        where = _Where(self.dialect, layout)
        where.add("job_name", "=", job_name)
        where.add("start_time", ">=", since)
        where.add("start_time", "<", until)
        sql = (
            "SELECT min(start_time), max(complete_time),"  # noqa: S608 - fixed names
            " sum(CASE WHEN complete_time IS NULL THEN 1 ELSE 0 END)"
            f" FROM {EXECUTION_TABLE}{where.sql()} GROUP BY task_id"
        )
        out = []
        for row in await self._rows(sql, where.params):
            start = self.dialect.decode_time(row[0])
            if start is not None:
                out.append((start, None if int(row[2]) else self.dialect.decode_time(row[1])))
        return out

    async def fire_spans_of(
        self, job_names: Sequence[str], *, since: datetime, until: datetime
    ) -> dict[str, list[tuple[datetime, datetime | None]]]:
        """:meth:`fire_spans` of every job in ``job_names``, one statement per
        :data:`JOBS_PER_QUERY` jobs instead of one per job."""
        layout, _ = await self._tables()
        _check_time("since", since)
        _check_time("until", until)
        out: dict[str, list[tuple[datetime, datetime | None]]] = {n: [] for n in job_names}
        for chunk in _chunks(job_names):
            where = _Where(self.dialect, layout)
            where.add_in("job_name", chunk)
            where.add("start_time", ">=", since)
            where.add("start_time", "<", until)
            sql = (
                "SELECT job_name, min(start_time), max(complete_time),"  # noqa: S608
                " sum(CASE WHEN complete_time IS NULL THEN 1 ELSE 0 END)"
                f" FROM {EXECUTION_TABLE}{where.sql()} GROUP BY job_name, task_id"
            )
            for row in await self._rows(sql, where.params):
                start = self.dialect.decode_time(row[1])
                if start is not None and row[0] in out:
                    end = None if int(row[3]) else self.dialect.decode_time(row[2])
                    out[row[0]].append((start, end))
        return out

    async def purge_in_batches(
        self, older_than_days: float, *, batch_size: int = 1000, pause: float = 0.1
    ) -> PurgeResult:
        """:meth:`purge`, ``batch_size`` rows per statement with ``pause`` seconds between
        statements (no long lock, no burst of I/O next to the sinks' writes)."""
        if not 1 <= batch_size <= 1_000_000:
            raise ConfigError("batch_size", batch_size, "must be between 1 and 1000000")
        executions_layout, statuses_layout = await self._tables()
        cutoff = _cutoff(older_than_days)
        deleted = []
        for table, column, layout in (
            (EXECUTION_TABLE, "start_time", executions_layout),
            (STATUS_TABLE, "creation_time", statuses_layout),
        ):
            encoded = self.dialect.encode(cutoff, layout.get(column))
            total = 0
            while True:
                count = await self._delete_some(table, column, encoded, batch_size)
                total += count
                if count < batch_size:
                    break
                await anyio.sleep(pause)
            deleted.append(total)
        return PurgeResult(executions=deleted[0], status_traces=deleted[1])

    def _execution(self, row: Sequence[Any]) -> ExecutionRecord:
        return ExecutionRecord(
            id=row[0],
            job_name=row[1],
            task_id=row[2],
            hostname=row[3],
            ip=row[4],
            sharding_item=int(row[5]),
            execution_source=row[6],
            failure_cause=row[7],
            is_success=bool(row[8]),
            start_time=self.dialect.decode_time(row[9]),
            complete_time=self.dialect.decode_time(row[10]),
        )

    def _fire(self, row: Sequence[Any]) -> FireRecord:
        running = int(row[6])
        return FireRecord(
            job_name=row[0],
            task_id=row[1],
            execution_source=row[2] or "",
            items=int(row[3]),
            succeeded=int(row[4]),
            failed=int(row[5]),
            running=running,
            start_time=self.dialect.decode_time(row[7]),
            complete_time=None if running else self.dialect.decode_time(row[8]),
            failure_cause=row[9],
        )

    def _status(self, row: Sequence[Any]) -> StatusTraceRecord:
        return StatusTraceRecord(
            id=row[0],
            job_name=row[1],
            original_task_id=row[2],
            task_id=row[3],
            slave_id=row[4],
            source=row[5] or "",
            execution_type=row[6],
            sharding_item=row[7],
            state=row[8],
            message=row[9],
            creation_time=self.dialect.decode_time(row[10]),
        )
