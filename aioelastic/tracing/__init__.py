"""Execution trace: the event bus and its sinks.

PLACEHOLDER CONTRACT (the tracing work replaces the internals, keeping these names/signatures):

- ``TraceBus(sinks, *, max_queue=10_000, batch_size=500, flush_interval=0.2, grace_period=5.0,
  journal_path=None)``; ``await bus.start(exit_stack)`` starts its writer; on exit of the stack
  the queue is flushed within ``grace_period``. ``bus.post(event)`` never blocks and never raises.
- ``MemorySink`` keeps ``events`` (a list) for tests; ``LoggingSink`` logs each event.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from .._events import TraceEvent, TraceSink

__all__ = ["LoggingSink", "MemorySink", "TraceBus"]

log = logging.getLogger("aioelastic.tracing")


class MemorySink:
    """Keeps every event in ``events``, in order (tests, embedded inspection)."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        self.events.extend(batch)


class LoggingSink:
    """Logs every event at DEBUG on ``aioelastic.trace``."""

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        for event in batch:
            logging.getLogger("aioelastic.trace").debug("%r", event)


class TraceBus:
    def __init__(
        self,
        sinks: Sequence[TraceSink],
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.2,
        grace_period: float = 5.0,
        journal_path: Path | None = None,
    ) -> None:
        self.sinks = list(sinks)
        self._send, self._receive = anyio.create_memory_object_stream[TraceEvent](max_queue)
        self._batch_size = batch_size
        self._grace = grace_period

    def post(self, event: TraceEvent) -> None:
        try:
            self._send.send_nowait(event)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.warning("trace queue full; event dropped: %r", event)

    async def start(self, exit_stack: AsyncExitStack) -> None:
        tg = await exit_stack.enter_async_context(anyio.create_task_group())
        await tg.start(self._run)
        exit_stack.push_async_callback(self._send.aclose)

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async with self._receive:
            async for event in self._receive:
                batch = [event]
                while len(batch) < self._batch_size:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except anyio.WouldBlock:
                        break
                for sink in self.sinks:
                    try:
                        await sink.write(batch)
                    except Exception:
                        log.exception("trace sink %r failed", sink)
