"""Hooks for metrics and monitoring: what the scheduler reports beyond the trace events."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

__all__ = ["Observer", "hook_name", "notify_observers"]

log = logging.getLogger("aioelastic.observer")


class Observer:
    """Subclass and override what you need; pass instances as ``Scheduler(observers=[...])``.

    Methods are called synchronously on the event loop and must not block. An exception raised
    by a method is logged (with the observer's name) and otherwise ignored: it never fails a fire
    or stops a job. Trace events (item runs, fire states) reach observers that also implement
    ``write(batch)`` (a ``TraceSink``) when they are passed as sinks too.
    """

    def fire_started(self, job: str, scheduled: datetime | None, started: datetime) -> None:
        """A fire of ``job`` began (``scheduled`` is None for manual/misfire/failover runs)."""

    def reshard_committed(self, job: str, instances: int, items: int) -> None:
        """This instance, as leader, committed a new assignment of ``items`` over ``instances``."""

    def failover_claimed(self, job: str, items: Sequence[int]) -> None:
        """This instance took over ``items`` of a dead instance."""

    def session_state_changed(self, state: str) -> None:
        """The registry session is now ``CONNECTED``, ``SUSPENDED`` or ``LOST``."""

    def missed_fire(self, job: str, due: datetime, reason: str) -> None:
        """As the job's leader, this instance saw a cron fire due at ``due`` start nowhere."""


def hook_name(hook: object) -> str:
    """A readable name for a user hook (observer, listener, callable) in log lines."""
    target = getattr(hook, "__func__", hook)
    name = getattr(target, "__qualname__", None)
    if name is None or not callable(hook):
        kind = type(hook)
        return f"{kind.__module__}.{kind.__qualname__}"
    return f"{getattr(target, '__module__', '?')}.{name}"


def notify_observers(observers: Sequence[Observer], method: str, *args: object) -> None:
    """Call ``method`` on every observer, each on its own: one that raises is logged with its
    name and the others are still called (APScheduler 4's ``_deliver_event``)."""
    for observer in observers:
        try:
            getattr(observer, method)(*args)
        except Exception:
            log.exception("observer %s.%s raised; ignored", hook_name(observer), method)
