"""Health of a running scheduler, for probes (Kubernetes liveness and readiness).

* **live**: the scheduler runs (starting, started or stopping) and its event loop answers: the
  loop watchdog's heartbeat is recent (a loop blocked past the watchdog's limit is not live;
  the watchdog then ends the process anyway unless ``loop_stall_action="warn"``).
* **ready**: started (not starting, not stopping), the registry session is connected, every
  job is registered, and every trace sink's queue is below its bound.

Each answer carries a reason: the first failed check, or ``"ok"``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .registry._protocol import SessionState

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["DEFAULT_STALL_LIMIT", "Health", "scheduler_health"]

#: A heartbeat older than this is a stalled loop when the watchdog has no limit of its own.
DEFAULT_STALL_LIMIT = 5.0


@dataclass(frozen=True, slots=True)
class Health:
    """``Scheduler.health()``'s answer: liveness and readiness, each with its reason."""

    live: bool
    live_reason: str
    ready: bool
    ready_reason: str
    state: str
    """The scheduler's ``RunState`` value."""
    session: str | None
    """The registry session's state (None while there is no session)."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    def body(self, probe: str) -> dict[str, Any]:
        """A probe's JSON body: ``{"status": "ok"|"fail", "reason": ..., ...}``."""
        ok, reason = (
            (self.live, self.live_reason)
            if probe == "livez"
            else (
                self.ready,
                self.ready_reason,
            )
        )
        return {"status": "ok" if ok else "fail", "reason": reason, **asdict(self)}


def _liveness(scheduler: Scheduler) -> tuple[bool, str]:
    from ._scheduler import RunState

    if scheduler.state is RunState.STOPPED:
        return False, "the scheduler is not running"
    watchdog = scheduler.loop_watchdog
    if watchdog is None:
        return True, "ok"  # starting: the watchdog is not up yet
    limit = watchdog.limit or DEFAULT_STALL_LIMIT
    age = watchdog.heartbeat_age()
    if age > limit:
        return False, f"event loop heartbeat {age:.1f}s old (limit {limit:.1f}s)"
    return True, "ok"


def _readiness(scheduler: Scheduler, session: SessionState | None) -> tuple[bool, str]:
    from ._scheduler import RunState

    state = scheduler.state
    if state is not RunState.STARTED:
        return False, f"scheduler {state.value}"
    if session is not SessionState.CONNECTED:
        return False, f"registry session {session.value if session else 'absent'}"
    missing = sorted(set(scheduler.jobs) - set(scheduler.registered_jobs))
    if missing:
        return False, f"job(s) not registered: {', '.join(missing[:5])}"
    try:
        stats, bound = scheduler.trace_bus.stats(), scheduler.trace_bus.max_queue
    except RuntimeError:
        return False, "the trace bus is not running"
    for s in stats:
        if s.queued >= bound:
            return False, f"trace sink {s.sink}: {s.queued} event(s) queued (bound {bound})"
    return True, "ok"


def scheduler_health(scheduler: Scheduler) -> Health:
    """The scheduler's health now (cheap: reads in-memory state only)."""
    try:
        session: SessionState | None = scheduler.registry.session_state
    except RuntimeError:
        session = None
    live, live_reason = _liveness(scheduler)
    ready, ready_reason = _readiness(scheduler, session)
    if not live:
        ready, ready_reason = False, live_reason
    return Health(
        live=live,
        live_reason=live_reason,
        ready=ready,
        ready_reason=ready_reason,
        state=scheduler.state.value,
        session=None if session is None else session.value,
    )
