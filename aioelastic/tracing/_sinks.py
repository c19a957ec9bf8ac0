"""Sinks without storage: in memory (tests, embedded inspection) and to the log."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ._events import TraceEvent

__all__ = ["LoggingSink", "MemorySink"]


class MemorySink:
    """Keeps every event in ``events``, in the order written (tests, embedded inspection)."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        self.events.extend(batch)


class LoggingSink:
    """Logs every event at DEBUG on the ``aioelastic.trace`` logger."""

    def __init__(self) -> None:
        self._log = logging.getLogger("aioelastic.trace")

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        for event in batch:
            self._log.debug("%r", event)
