"""Hooks for metrics and monitoring: what the scheduler reports beyond the trace events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

__all__ = ["Observer"]


class Observer:
    """Subclass and override what you need; pass instances as ``Scheduler(observers=[...])``.

    Methods are called synchronously on the event loop and must not block. Trace events (item
    runs, fire states) reach observers that also implement ``write(batch)`` (a ``TraceSink``)
    when they are passed as sinks too.
    """

    def fire_started(self, job: str, scheduled: datetime | None, started: datetime) -> None:
        """A fire of ``job`` began (``scheduled`` is None for manual/misfire/failover runs)."""

    def reshard_committed(self, job: str, instances: int, items: int) -> None:
        """This instance, as leader, committed a new assignment of ``items`` over ``instances``."""

    def failover_claimed(self, job: str, items: Sequence[int]) -> None:
        """This instance took over ``items`` of a dead instance."""

    def session_state_changed(self, state: str) -> None:
        """The registry session is now ``CONNECTED``, ``SUSPENDED`` or ``LOST``."""
