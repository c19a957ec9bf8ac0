"""Small test utilities: one wait helper, a trace sink that wakes its waiters, event filtering.

To show that something did *not* happen, wait for a later positive marker (the next fire, a
barrier) with these helpers; never sleep and hope.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, overload

import anyio

from aioelastic import JobExecutionEvent, JobStatusTraceEvent, TraceEvent
from aioelastic.tracing import MemorySink

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]],
    timeout: float = ...,
    step: float = ...,
    *,
    until: Callable[[T], object] = ...,
    what: str | None = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    timeout: float = ...,
    step: float = ...,
    *,
    until: Callable[[T], object] = ...,
    what: str | None = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    timeout: float = 5.0,
    step: float = 0.01,
    *,
    until: Callable[[Any], object] = bool,
    what: str | None = None,
    detail: Callable[[], object] | None = None,
) -> Any:
    """Poll ``probe`` (plain, or returning an awaitable) until ``until(value)`` holds (default:
    the value is truthy) and return that value; fail the test after ``timeout`` seconds, naming
    ``what`` and showing the last value (with ``until``) and ``detail()`` (e.g. the history or a
    process's stderr)."""
    value: Any = None
    with anyio.move_on_after(timeout):
        while True:
            value = await _value(probe)
            if until(value):
                return value
            await anyio.sleep(step)
    shown = f"; last: {value!r}" if until is not bool else ""
    shown += f"; {detail()}" if detail is not None else ""
    raise AssertionError(f"not within {timeout}s: {what or probe}{shown}")


async def _value(probe: Callable[[], object]) -> object:
    value = probe()
    return await value if inspect.isawaitable(value) else value


class CaptureSink(MemorySink):
    """A ``MemorySink`` whose waiters wake on every written batch instead of polling (the
    pattern of APScheduler's ``capture_events``)."""

    def __init__(self) -> None:
        super().__init__()
        self._written: anyio.Event | None = None

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        await super().write(batch)
        if self._written is not None:
            self._written.set()
            self._written = None

    async def wait_for(
        self,
        predicate: Callable[[list[TraceEvent]], object],
        timeout: float = 5.0,
        what: str | None = None,
    ) -> list[TraceEvent]:
        """Wait until ``predicate(events)`` holds; return the events. Fail after ``timeout``."""
        with anyio.move_on_after(timeout):
            while not predicate(self.events):
                if self._written is None:
                    self._written = anyio.Event()
                await self._written.wait()
            return self.events
        raise AssertionError(
            f"{what or predicate} not within {timeout}s; {len(self.events)} events: "
            f"{self.events[-10:]}"
        )


def statuses(events: Sequence[TraceEvent], job: str | None = None) -> list[JobStatusTraceEvent]:
    return [e for e in events if isinstance(e, JobStatusTraceEvent) and job in (None, e.job_name)]


def executions(events: Sequence[TraceEvent], job: str | None = None) -> list[JobExecutionEvent]:
    return [e for e in events if isinstance(e, JobExecutionEvent) and job in (None, e.job_name)]


def completions(events: Sequence[TraceEvent], job: str | None = None) -> list[JobExecutionEvent]:
    return [e for e in executions(events, job) if e.is_completion]
