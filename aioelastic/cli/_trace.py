"""Trace commands: executions, status, stats, purge (over ``open_trace_store``).

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

import anyio
import asyncpg

from .._config import load_settings
from .._errors import ConfigError, TraceQueryError, TraceUnreachableError
from .._urls import TracingURL, parse_tracing_url
from ..tracing import TraceSearch, open_trace_store
from ..tracing._events import State
from ..tracing._search import SqlTraceSearch
from ..tracing._sqlite import sqlite_path
from ._format import parse_time, write_json, write_table

__all__ = ["run_trace_command"]

#: Exit code of ``trace purge`` without ``--yes`` (nothing deleted).
EXIT_NOT_CONFIRMED = 1


def tracing_url(args: argparse.Namespace) -> TracingURL:
    settings = load_settings(tracing_url=getattr(args, "tracing", None))
    if settings.tracing_url is None:
        raise ConfigError("tracing_url", None, "give --tracing URL or set AIOELASTIC_TRACING_URL")
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


async def _open_search(stack: AsyncExitStack, url: TracingURL, timeout: float) -> TraceSearch:
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
        search = await _open_search(stack, tracing_url(args), args.timeout)
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
            write_table(
                out,
                ["START", "COMPLETE", "JOB", "ITEM", "SUCCESS", "SOURCE", "HOSTNAME", "TASK"],
                [
                    (
                        e.start_time,
                        e.complete_time,
                        e.job_name,
                        e.sharding_item,
                        None if e.complete_time is None else e.is_success,
                        e.execution_source,
                        e.hostname,
                        e.task_id,
                    )
                    for e in page.items
                ],
            )
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
            write_table(
                out,
                ["TIME", "JOB", "STATE", "ITEMS", "TYPE", "TASK", "MESSAGE"],
                [
                    (
                        s.creation_time,
                        s.job_name,
                        s.state,
                        s.sharding_item,
                        s.execution_type,
                        s.task_id,
                        s.message,
                    )
                    for s in status_page.items
                ],
            )
            out.write(_footer(status_page.total, len(status_page.items), status_page.offset) + "\n")
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
