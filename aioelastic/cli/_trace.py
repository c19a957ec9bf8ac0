"""Trace commands: executions, status, fires, stats, purge (over ``open_trace_store``).

No trace command creates anything: a SQLite path that does not exist, or a database without the
trace tables, is a one-line error (exit 2). ``purge`` without ``--yes`` only prints how many rows
it would delete and exits 1 (nothing deleted). Bad values (unknown ``--state``, out-of-range
numbers and dates) are one-line errors with exit 2; a query the database still refuses is a
one-line error with exit 1.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import anyio
import asyncpg

from .._config import load_settings
from .._errors import ConfigError, TraceQueryError, TraceUnreachableError
from .._urls import TracingURL, parse_tracing_url
from ..tracing import TraceSearch, open_trace_store
from ..tracing._events import State
from ..tracing._search import ExecutionRecord, FireRecord, SqlTraceSearch, StatusTraceRecord
from ..tracing._sqlite import sqlite_path
from ._format import (
    cause_line,
    format_duration,
    parse_time,
    short_source,
    short_task_id,
    short_time,
    table_width,
    to_jsonable,
    write_json,
    write_table,
)

__all__ = [
    "fires_json",
    "fires_table",
    "open_search",
    "optional_tracing_url",
    "outcome_text",
    "run_trace_command",
]

#: Exit code of ``trace purge`` without ``--yes`` (nothing deleted).
EXIT_NOT_CONFIRMED = 1


def tracing_url(args: argparse.Namespace) -> TracingURL:
    url = optional_tracing_url(args)
    if url is None:
        raise ConfigError("tracing_url", None, "give --tracing URL or set AIOELASTIC_TRACING_URL")
    return url


def optional_tracing_url(args: argparse.Namespace) -> TracingURL | None:
    """``--tracing`` or ``AIOELASTIC_TRACING_URL`` (None if neither is given)."""
    settings = load_settings(tracing_url=getattr(args, "tracing", None))
    if settings.tracing_url is None:
        return None
    url = parse_tracing_url(settings.tracing_url.get_secret_value())
    if url.scheme not in ("postgresql", "sqlite"):
        raise ConfigError("tracing_url", str(url), "only postgresql:// and sqlite:/// search")
    return url


def _check_sqlite_file(url: TracingURL) -> None:
    """A typo'd path must not become an empty database (sqlite3 creates missing files)."""
    if url.scheme != "sqlite":
        return
    path = sqlite_path(url)
    if path == ":memory:" or not Path(path).is_file():
        raise ConfigError("tracing_url", str(url), f"no SQLite trace database at {path}")


async def open_search(stack: AsyncExitStack, url: TracingURL, timeout: float) -> TraceSearch:
    _check_sqlite_file(url)
    try:
        store = await stack.enter_async_context(
            open_trace_store(url, connect_timeout=timeout, create_schema=False)
        )
        if isinstance(store.search, SqlTraceSearch):
            with anyio.fail_after(timeout):
                await store.search.check()
    except ConfigError:
        raise
    except Exception as exc:  # the driver's connection errors vary; none carries the password
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceUnreachableError(f"cannot reach the trace database at {url}: {reason}") from exc
    return store.search


def _time_arg(name: str, value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parse_time(value)
    except (OverflowError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(name, value, "out of range") from None


def _since_until(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    return _time_arg("since", args.since), _time_arg("until", args.until)


def _state(value: str | None) -> str | None:
    if value is None:
        return None
    if value.upper() not in State.__members__:
        raise ConfigError("state", value, f"must be one of {', '.join(State.__members__)}")
    return value.upper()


def _success(args: argparse.Namespace) -> tuple[bool | None, bool | None]:
    """``(is_success, finished)`` from ``--success`` / ``--failure`` / ``--running``."""
    if getattr(args, "running", False):
        return None, False
    return args.success, None


def _footer(total: int, shown: int, offset: int) -> str:
    if not shown:
        return f"(none of {total})"
    return f"({offset + 1}-{offset + shown} of {total})"


async def run_trace_command(args: argparse.Namespace) -> int:
    """Run one ``aioelastic trace`` action; returns the exit code."""
    try:
        return await _run(args)
    except (asyncpg.PostgresError, sqlite3.Error) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceQueryError(f"the trace database refused the query: {reason}") from exc


async def _run(args: argparse.Namespace) -> int:
    as_json: bool = getattr(args, "json", False)
    out = sys.stdout
    state = _state(getattr(args, "state", None))
    async with AsyncExitStack() as stack:
        search = await open_search(stack, tracing_url(args), args.timeout)
        if args.action == "executions":
            since, until = _since_until(args)
            is_success, finished = _success(args)
            page = await search.executions(
                job_name=args.job,
                task_id=args.task_id,
                sharding_item=args.item,
                is_success=is_success,
                finished=finished,
                since=since,
                until=until,
                offset=args.offset,
                limit=args.limit,
            )
            if as_json:
                write_json(out, {"total": page.total, "items": page.items})
                return 0
            _executions_table(page.items, wide=args.wide, one_job=args.job is not None)
            out.write(_footer(page.total, len(page.items), page.offset) + "\n")
        elif args.action == "status":
            since, until = _since_until(args)
            status_page = await search.status_traces(
                job_name=args.job,
                task_id=args.task_id,
                state=state,
                since=since,
                until=until,
                offset=args.offset,
                limit=args.limit,
            )
            if as_json:
                write_json(out, {"total": status_page.total, "items": status_page.items})
                return 0
            _status_table(status_page.items, wide=args.wide)
            out.write(_footer(status_page.total, len(status_page.items), status_page.offset) + "\n")
        elif args.action == "fires":
            since, until = _since_until(args)
            fire_page = await search.fires(
                job_name=args.job, since=since, until=until, offset=args.offset, limit=args.limit
            )
            if as_json:
                write_json(out, {"total": fire_page.total, "items": fires_json(fire_page.items)})
                return 0
            fires_table(out, fire_page.items, wide=args.wide, one_job=args.job is not None)
            out.write(_footer(fire_page.total, len(fire_page.items), fire_page.offset) + "\n")
        elif args.action == "stats":
            since, until = _since_until(args)  # since: the last day by default (job_stats's)
            stats = await search.job_stats(since=since, until=until, job_name=args.job)
            if as_json:
                write_json(out, stats)
                return 0
            write_table(
                out,
                ["JOB", "TOTAL", "SUCCEEDED", "FAILED", "RUNNING"],
                [(s.job_name, s.total, s.succeeded, s.failed, s.running) for s in stats],
            )
        else:
            return await _purge(search, args, as_json)
    return 0


async def _purge(search: TraceSearch, args: argparse.Namespace, as_json: bool) -> int:
    out = sys.stdout
    days: float = args.older_than_days
    if not getattr(args, "yes", False):
        count = await search.count_older(days)
        if as_json:
            write_json(out, {"deleted": False, "would_delete": count})
        else:
            out.write(
                f"would delete {count.executions} execution row(s) and {count.status_traces}"
                f" status row(s) older than {days:g} day(s); nothing deleted: add --yes\n"
            )
        return EXIT_NOT_CONFIRMED
    result = await search.purge(days)
    if as_json:
        write_json(out, result)
    else:
        out.write(
            f"purged {result.executions} execution row(s) and {result.status_traces}"
            " status row(s)\n"
        )
    return 0


def _task(task_id: str, wide: bool) -> str:
    return task_id if wide else short_task_id(task_id)


def _result(record: ExecutionRecord) -> str:
    if record.complete_time is None:
        return "running"
    return "ok" if record.is_success else "FAILED"


def _narrow_table(
    out: TextIO, headers: list[str], rows: list[tuple[Any, ...]], *, one_job: bool
) -> None:
    """``write_table`` within the terminal's width, without the JOB column for one job."""
    if one_job and "JOB" in headers:
        at = headers.index("JOB")
        headers = headers[:at] + headers[at + 1 :]
        rows = [row[:at] + row[at + 1 :] for row in rows]
    write_table(out, headers, rows, width=table_width())


def _executions_table(
    items: tuple[ExecutionRecord, ...], *, wide: bool, one_job: bool = False
) -> None:
    out = sys.stdout
    if wide:
        write_table(
            out,
            ["START", "COMPLETE", "JOB", "ITEM", "RESULT", "SOURCE", "HOSTNAME", "TASK", "CAUSE"],
            [
                (
                    e.start_time,
                    e.complete_time,
                    e.job_name,
                    e.sharding_item,
                    _result(e),
                    e.execution_source,
                    e.hostname,
                    e.task_id,
                    cause_line(e.failure_cause),
                )
                for e in items
            ],
        )
        return
    _narrow_table(
        out,
        ["START", "JOB", "ITEM", "RESULT", "TOOK", "SOURCE", "TASK", "CAUSE"],
        [
            (
                short_time(e.start_time),
                e.job_name,
                e.sharding_item,
                _result(e),
                format_duration(
                    None
                    if e.complete_time is None or e.start_time is None
                    else e.complete_time - e.start_time
                ),
                short_source(e.execution_source),
                short_task_id(e.task_id),
                cause_line(e.failure_cause),
            )
            for e in items
        ],
        one_job=one_job,
    )


def _status_table(items: tuple[StatusTraceRecord, ...], *, wide: bool) -> None:
    write_table(
        sys.stdout,
        ["TIME", "JOB", "STATE", "ITEMS", "TYPE", "TASK", "MESSAGE"],
        [
            (
                s.creation_time if wide else short_time(s.creation_time),
                s.job_name,
                s.state,
                s.sharding_item,
                s.execution_type,
                _task(s.task_id, wide),
                s.message if wide else cause_line(s.message),
            )
            for s in items
        ],
        width=None if wide else table_width(),
    )


def outcome_text(fire: FireRecord) -> str:
    """``succeeded``, ``running`` or ``failed 1/3`` (failed items of all)."""
    if fire.outcome == "failed":
        return f"failed {fire.failed}/{fire.items}"
    return fire.outcome


def fires_json(fires: tuple[FireRecord, ...]) -> list[dict[str, object]]:
    """Fires as JSON objects, with their outcome and duration (seconds)."""
    rows = []
    for fire in fires:
        row: dict[str, object] = to_jsonable(fire)
        duration = fire.duration
        row["outcome"] = fire.outcome
        row["duration"] = None if duration is None else duration.total_seconds()
        rows.append(row)
    return rows


def fires_table(
    out: TextIO, fires: tuple[FireRecord, ...], *, wide: bool, one_job: bool = False
) -> None:
    """One row per fire: start, job, items, source, duration, outcome, a failure's cause
    (narrow: within the terminal's width, without the job's name when ``one_job``)."""
    headers = ["START", "JOB", "ITEMS", "SOURCE", "TOOK", "OUTCOME", "TASK", "CAUSE"]
    rows = [
        (
            f.start_time if wide else short_time(f.start_time),
            f.job_name,
            f.items,
            short_source(f.execution_source),
            format_duration(f.duration),
            outcome_text(f),
            _task(f.task_id, wide),
            f.failure_cause if wide else cause_line(f.failure_cause),
        )
        for f in fires
    ]
    if wide:
        write_table(out, headers, rows)
    else:
        _narrow_table(out, headers, rows, one_job=one_job)
