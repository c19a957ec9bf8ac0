"""Trace commands: executions, status, stats, purge (over ``open_trace_store``)."""

from __future__ import annotations

import argparse
import sys
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

from .._config import load_settings
from .._errors import ConfigError
from .._urls import TracingURL, parse_tracing_url
from ..tracing import TraceSearch, open_trace_store
from ._format import parse_time, write_json, write_table

__all__ = ["TraceUnreachableError", "run_trace_command"]


class TraceUnreachableError(Exception):
    """The trace database could not be reached (exit code 4)."""


def tracing_url(args: argparse.Namespace) -> TracingURL:
    settings = load_settings(tracing_url=getattr(args, "tracing", None))
    if settings.tracing_url is None:
        raise ConfigError("tracing_url", None, "give --tracing URL or set AIOELASTIC_TRACING_URL")
    url = parse_tracing_url(settings.tracing_url.get_secret_value())
    if url.scheme not in ("postgresql", "sqlite"):
        raise ConfigError("tracing_url", str(url), "only postgresql:// and sqlite:/// search")
    return url


async def _open_search(stack: AsyncExitStack, url: TracingURL, timeout: float) -> TraceSearch:
    try:
        store = await stack.enter_async_context(open_trace_store(url, connect_timeout=timeout))
    except ConfigError:
        raise
    except Exception as exc:  # the driver's connection errors vary; none carries the password
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraceUnreachableError(f"cannot reach the trace database at {url}: {reason}") from exc
    return store.search


def _since_until(args: argparse.Namespace) -> tuple[datetime | None, datetime | None]:
    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    return since, until


def _footer(total: int, shown: int, offset: int) -> str:
    if not shown:
        return f"(none of {total})"
    return f"({offset + 1}-{offset + shown} of {total})"


async def run_trace_command(args: argparse.Namespace) -> int:
    as_json: bool = getattr(args, "json", False)
    out = sys.stdout
    async with AsyncExitStack() as stack:
        search = await _open_search(stack, tracing_url(args), args.timeout)
        if args.action == "executions":
            since, until = _since_until(args)
            page = await search.executions(
                job_name=args.job,
                task_id=args.task_id,
                sharding_item=args.item,
                is_success=args.success,
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
                state=args.state,
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
            since, until = _since_until(args)
            since = since or datetime.now(UTC) - timedelta(days=1)
            stats = await search.job_stats(since=since, until=until, job_name=args.job)
            if as_json:
                write_json(out, stats)
                return 0
            write_table(
                out,
                ["JOB", "TOTAL", "SUCCEEDED", "FAILED", "RUNNING"],
                [(s.job_name, s.total, s.succeeded, s.failed, s.running) for s in stats],
            )
        else:  # purge
            result = await search.purge(args.older_than_days)
            if as_json:
                write_json(out, result)
            else:
                out.write(
                    f"purged {result.executions} execution row(s) and "
                    f"{result.status_traces} status row(s)\n"
                )
    return 0
