"""The two trace tables (ElasticJob's names and columns) and their indexes, per database.

Names are written unquoted, exactly as ElasticJob's DDL: PostgreSQL folds them to lower case
(``job_execution_log``), so ElasticJob's console and ``SELECT * FROM JOB_EXECUTION_LOG`` both
work, and tables ElasticJob already created are reused as they are.

Types differ from ElasticJob's on purpose: strings are unbounded ``VARCHAR`` (a row that can
never be written would block the trace), times are ``TIMESTAMPTZ`` (events carry UTC times).

Tables that already exist (ElasticJob's own, any version) are used as they are: the sinks and
the search read the table's columns at start (:class:`TableLayout`) and write only the columns
it has (ElasticJob 3.0.5 has no ``source``), within their widths: messages and failure causes
are cut to 4,000 characters as ElasticJob does (head and tail kept), task ids never exceed 255
(see ``aioelastic._task_id``), the status table's item list is abbreviated to ranges when it
exceeds its column (``[0-69]``), any other text is cut to its column's width. Times go into
``TIMESTAMP`` (without time zone) columns as UTC.

Indexes: ElasticJob's ``TASK_ID_STATE_INDEX`` on the status table (also serves the
``original_task_id`` lookup), ``(job_name, time)`` on both tables for the search, ``task_id`` on
executions, and BRIN indexes on the times (time-range search and retention purge; almost free to
maintain on append-mostly tables).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .._errors import ConfigError

__all__ = [
    "EXECUTION_COLUMNS",
    "EXECUTION_TABLE",
    "POSTGRES_DDL",
    "SQLITE_DDL",
    "STATUS_COLUMNS",
    "STATUS_TABLE",
    "Column",
    "TableLayout",
    "check_layouts",
    "default_layout",
    "postgres_column",
    "sqlite_column",
    "upsert_clause",
]

EXECUTION_TABLE = "JOB_EXECUTION_LOG"
STATUS_TABLE = "JOB_STATUS_TRACE_LOG"

EXECUTION_COLUMNS = (
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
)
STATUS_COLUMNS = (
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
)

POSTGRES_DDL = (
    """CREATE TABLE IF NOT EXISTS JOB_EXECUTION_LOG (
        id               VARCHAR     NOT NULL PRIMARY KEY,
        job_name         VARCHAR     NOT NULL,
        task_id          VARCHAR     NOT NULL,
        hostname         VARCHAR     NOT NULL,
        ip               VARCHAR     NOT NULL,
        sharding_item    INTEGER     NOT NULL,
        execution_source VARCHAR     NOT NULL,
        failure_cause    VARCHAR     NULL,
        is_success       BOOLEAN     NOT NULL,
        start_time       TIMESTAMPTZ NULL,
        complete_time    TIMESTAMPTZ NULL
    )""",
    """CREATE TABLE IF NOT EXISTS JOB_STATUS_TRACE_LOG (
        id               VARCHAR     NOT NULL PRIMARY KEY,
        job_name         VARCHAR     NOT NULL,
        original_task_id VARCHAR     NOT NULL,
        task_id          VARCHAR     NOT NULL,
        slave_id         VARCHAR     NOT NULL,
        source           VARCHAR     NOT NULL,
        execution_type   VARCHAR     NOT NULL,
        sharding_item    VARCHAR     NOT NULL,
        state            VARCHAR     NOT NULL,
        message          VARCHAR     NULL,
        creation_time    TIMESTAMPTZ NULL
    )""",
    "CREATE INDEX IF NOT EXISTS TASK_ID_STATE_INDEX ON JOB_STATUS_TRACE_LOG (task_id, state)",
    "CREATE INDEX IF NOT EXISTS JOB_STATUS_TRACE_LOG_JOB_TIME_INDEX"
    " ON JOB_STATUS_TRACE_LOG (job_name, creation_time)",
    "CREATE INDEX IF NOT EXISTS JOB_STATUS_TRACE_LOG_TIME_INDEX"
    " ON JOB_STATUS_TRACE_LOG USING BRIN (creation_time)",
    "CREATE INDEX IF NOT EXISTS JOB_EXECUTION_LOG_JOB_TIME_INDEX"
    " ON JOB_EXECUTION_LOG (job_name, start_time)",
    "CREATE INDEX IF NOT EXISTS JOB_EXECUTION_LOG_TASK_ID_INDEX ON JOB_EXECUTION_LOG (task_id)",
    "CREATE INDEX IF NOT EXISTS JOB_EXECUTION_LOG_TIME_INDEX"
    " ON JOB_EXECUTION_LOG USING BRIN (start_time)",
)

# SQLite: times are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (sorts as time), booleans 0/1.
SQLITE_DDL = (
    """CREATE TABLE IF NOT EXISTS JOB_EXECUTION_LOG (
        id               TEXT    NOT NULL PRIMARY KEY,
        job_name         TEXT    NOT NULL,
        task_id          TEXT    NOT NULL,
        hostname         TEXT    NOT NULL,
        ip               TEXT    NOT NULL,
        sharding_item    INTEGER NOT NULL,
        execution_source TEXT    NOT NULL,
        failure_cause    TEXT    NULL,
        is_success       INTEGER NOT NULL,
        start_time       TEXT    NULL,
        complete_time    TEXT    NULL
    )""",
    """CREATE TABLE IF NOT EXISTS JOB_STATUS_TRACE_LOG (
        id               TEXT NOT NULL PRIMARY KEY,
        job_name         TEXT NOT NULL,
        original_task_id TEXT NOT NULL,
        task_id          TEXT NOT NULL,
        slave_id         TEXT NOT NULL,
        source           TEXT NOT NULL,
        execution_type   TEXT NOT NULL,
        sharding_item    TEXT NOT NULL,
        state            TEXT NOT NULL,
        message          TEXT NULL,
        creation_time    TEXT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS TASK_ID_STATE_INDEX ON JOB_STATUS_TRACE_LOG (task_id, state)",
    "CREATE INDEX IF NOT EXISTS JOB_STATUS_TRACE_LOG_JOB_TIME_INDEX"
    " ON JOB_STATUS_TRACE_LOG (job_name, creation_time)",
    "CREATE INDEX IF NOT EXISTS JOB_STATUS_TRACE_LOG_TIME_INDEX"
    " ON JOB_STATUS_TRACE_LOG (creation_time)",
    "CREATE INDEX IF NOT EXISTS JOB_EXECUTION_LOG_JOB_TIME_INDEX"
    " ON JOB_EXECUTION_LOG (job_name, start_time)",
    "CREATE INDEX IF NOT EXISTS JOB_EXECUTION_LOG_TASK_ID_INDEX ON JOB_EXECUTION_LOG (task_id)",
    "CREATE INDEX IF NOT EXISTS JOB_EXECUTION_LOG_TIME_INDEX ON JOB_EXECUTION_LOG (start_time)",
)


#: Column kinds the sinks and the search know how to bind.
TEXT, INTEGER, BOOLEAN, TIMESTAMP, TIMESTAMPTZ = "text", "integer", "boolean", "timestamp", "tz"

_OUTCOME = ("complete_time", "is_success", "failure_cause")
_NEEDED_EXECUTION = ("id", "job_name", "sharding_item", "start_time", "complete_time")
_NEEDED_STATUS = ("id", "job_name", "task_id", "state")

_OUR_KINDS = {
    "sharding_item": INTEGER,
    "is_success": BOOLEAN,
    "start_time": TIMESTAMPTZ,
    "complete_time": TIMESTAMPTZ,
    "creation_time": TIMESTAMPTZ,
}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an existing table: its kind and, for bounded text, its width."""

    name: str
    kind: str = TEXT
    width: int | None = None


@dataclass(frozen=True, slots=True)
class TableLayout:
    """The columns a trace table really has (read from the database at start)."""

    table: str
    columns: tuple[Column, ...]
    _by_name: dict[str, Column] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {c.name: c for c in self.columns})

    def get(self, name: str) -> Column | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def present(self, names: Iterable[str]) -> list[str]:
        """``names`` that the table has, in the given order."""
        return [name for name in names if name in self._by_name]


def default_layout(table: str) -> TableLayout:
    """The layout of a table as this package's DDL creates it (PostgreSQL flavour)."""
    names = EXECUTION_COLUMNS if table == EXECUTION_TABLE else STATUS_COLUMNS
    if table == STATUS_TABLE:
        kinds = {**_OUR_KINDS, "sharding_item": TEXT}
    else:
        kinds = _OUR_KINDS
    return TableLayout(table, tuple(Column(n, kinds.get(n, TEXT)) for n in names))


def postgres_column(name: str, formatted: str) -> Column:
    """A column from ``format_type(atttypid, atttypmod)``: ``character varying(255)``, ..."""
    kind = {
        "integer": INTEGER,
        "smallint": INTEGER,
        "bigint": INTEGER,
        "boolean": BOOLEAN,
        "timestamp without time zone": TIMESTAMP,
        "timestamp with time zone": TIMESTAMPTZ,
    }.get(re.sub(r"\(\d+\)", "", formatted).strip(), TEXT)
    match = _WIDTH.search(formatted)
    width = int(match[1]) if match and kind == TEXT else None
    return Column(name.lower(), kind, width)


_WIDTH = re.compile(r"\(\s*(\d+)\s*\)")


def upsert_clause(columns: Iterable[str], target: str, excluded: str) -> str:
    """``ON CONFLICT`` of the execution upsert: a start sets the row's identity columns, the first
    completion its outcome; nothing else changes a row (a retried batch is a no-op)."""
    sets = []
    for column in columns:
        if column == "id":
            continue
        if column in _OUTCOME:
            cond = f"{excluded}.complete_time IS NOT NULL AND {target}.complete_time IS NULL"
        else:
            cond = f"{excluded}.complete_time IS NULL"
        new, old = f"{excluded}.{column}", f"{target}.{column}"
        sets.append(f"{column} = CASE WHEN {cond} THEN {new} ELSE {old} END")
    return "ON CONFLICT (id) DO UPDATE SET " + ", ".join(sets)


def check_layouts(execution: TableLayout, status: TableLayout) -> None:
    """Refuse tables missing the columns every row needs (``ConfigError``)."""
    for layout, needed in ((execution, _NEEDED_EXECUTION), (status, _NEEDED_STATUS)):
        if not layout.columns:
            raise ConfigError("tracing_url", layout.table, "the trace table does not exist")
        missing = [name for name in needed if name not in layout]
        if missing:
            raise ConfigError(layout.table, missing, "the trace table lacks these columns")


def sqlite_column(name: str, declared: str) -> Column:
    """A column from ``PRAGMA table_info`` (SQLite keeps the declared type, e.g. ``VARCHAR(255)``).

    SQLite does not enforce widths, but a table made from ElasticJob's DDL declares them, and
    other tools reading it may rely on them, so they are honoured too.
    """
    kind = _OUR_KINDS.get(name.lower(), TEXT)
    if name.lower() == "sharding_item" and "INT" not in declared.upper():
        kind = TEXT
    match = _WIDTH.search(declared)
    width = int(match[1]) if match and kind == TEXT else None
    return Column(name.lower(), kind, width)
