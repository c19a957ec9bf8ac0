"""Small test utilities: polling with a deadline, event filtering."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import anyio

from aioelastic import JobExecutionEvent, JobStatusTraceEvent, TraceEvent


async def eventually(
    predicate: Callable[[], object], timeout: float = 5.0, step: float = 0.01
) -> None:
    """Poll ``predicate`` (plain, or returning an awaitable) until it is truthy; fail the test
    after ``timeout`` seconds. To show that something did *not* happen, wait for a later
    positive marker instead of sleeping."""
    with anyio.move_on_after(timeout):
        while not await _holds(predicate):
            await anyio.sleep(step)
        return
    raise AssertionError(f"condition not met within {timeout}s: {predicate}")


async def _holds(predicate: Callable[[], object]) -> bool:
    value = predicate()
    if inspect.isawaitable(value):
        value = await value
    return bool(value)


def statuses(events: Sequence[TraceEvent], job: str | None = None) -> list[JobStatusTraceEvent]:
    return [e for e in events if isinstance(e, JobStatusTraceEvent) and job in (None, e.job_name)]


def executions(events: Sequence[TraceEvent], job: str | None = None) -> list[JobExecutionEvent]:
    return [e for e in events if isinstance(e, JobExecutionEvent) and job in (None, e.job_name)]


def completions(events: Sequence[TraceEvent], job: str | None = None) -> list[JobExecutionEvent]:
    return [e for e in executions(events, job) if e.is_completion]
