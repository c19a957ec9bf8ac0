"""The two trace tables (ElasticJob's names and columns) and their indexes, per database.

Names are written unquoted, exactly as ElasticJob's DDL: PostgreSQL folds them to lower case
(``job_execution_log``), so ElasticJob's console and ``SELECT * FROM JOB_EXECUTION_LOG`` both
work, and tables ElasticJob already created are reused as they are.

Types differ from ElasticJob's on purpose: strings are unbounded ``VARCHAR`` (ElasticJob's
``VARCHAR(255)`` task id overflows for jobs with many items, and a row that can never be written
would block the trace), times are ``TIMESTAMPTZ`` (events carry UTC times).

Indexes: ElasticJob's ``TASK_ID_STATE_INDEX`` on the status table (also serves the
``original_task_id`` lookup), ``(job_name, time)`` on both tables for the search, ``task_id`` on
executions, and BRIN indexes on the times (time-range search and retention purge; almost free to
maintain on append-mostly tables).
"""

from __future__ import annotations

__all__ = [
    "EXECUTION_COLUMNS",
    "EXECUTION_TABLE",
    "POSTGRES_DDL",
    "SQLITE_DDL",
    "STATUS_COLUMNS",
    "STATUS_TABLE",
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
