"""Missed fires: a cron fire that was due and started on no instance (a dead-man switch).

Two detectors share the ``MissedFire`` record:

* :func:`missed_fires`, after the fact, from the stored cron and the trace: a due time with no
  fire of the job started within ``tolerance`` (and none running through it: a fire that is
  still busy makes the next one a misfire, not a miss). It catches every cause, a whole
  cluster down included, as long as the trace was written. Due times before the config node
  was last written are not judged (the cron may have been another one then).
* :class:`MissedFireWatch`, live, on the job's leader: ``tolerance`` after each due time it
  looks at the registry view for what keeps the fire from starting anywhere (every server
  disabled, every item disabled, no live instance owning an item, an invalid config) and at
  its own lateness (an event loop stuck past the due time). Each miss is logged at WARNING,
  reported to ``Observer.missed_fire`` and counted in ``aioelastic_missed_fires_total``.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from ._cron import CronTrigger
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._operations import Operations
    from .tracing._search import FireRecord, TraceSearch

__all__ = [
    "DEFAULT_TOLERANCE",
    "MAX_DUE_TIMES",
    "MissedFire",
    "due_times",
    "missed_fires",
]

log = logging.getLogger("aioelastic.missed")

#: How long after its due time a fire may start and still count as on time.
DEFAULT_TOLERANCE = timedelta(seconds=30)
#: Due times judged by one ``missed_fires`` call at most (a narrower window for more).
MAX_DUE_TIMES = 100_000
_PAGE = 1000
_SKEW = timedelta(seconds=1)  # a fire may start this much before its due time (clock skew)


@dataclass(frozen=True, slots=True)
class MissedFire:
    """A due fire of ``job`` (at ``due``, UTC) that started nowhere, and why if known."""

    job: str
    due: datetime
    reason: str


def due_times(trigger: CronTrigger, since: datetime, until: datetime) -> list[datetime]:
    """The trigger's fire times in ``[since, until)`` (UTC); ``ConfigError`` past
    :data:`MAX_DUE_TIMES`."""
    out: list[datetime] = []
    at = trigger.next_fire_time(since - timedelta(microseconds=1))
    while at is not None and at < until:
        if len(out) >= MAX_DUE_TIMES:
            raise ConfigError(
                "since", since.isoformat(), f"more than {MAX_DUE_TIMES} due times: narrow it"
            )
        out.append(at.astimezone(UTC))
        at = trigger.next_fire_time(at)
    return out


async def _fires(
    search: TraceSearch, job: str, since: datetime, until: datetime
) -> list[FireRecord]:
    out: list[FireRecord] = []
    offset = 0
    while True:
        page = await search.fires(
            job_name=job, since=since, until=until, offset=offset, limit=_PAGE
        )
        out.extend(page.items)
        offset += len(page.items)
        if not page.items or not page.has_more:
            return out


class _Coverage:
    """Answers "did a fire start near, or run through, this due time?" in O(log n)."""

    def __init__(self, fires: Iterable[FireRecord], now: datetime) -> None:
        spans = sorted(
            (f.start_time, f.complete_time or now) for f in fires if f.start_time is not None
        )
        self.starts = [start for start, _ in spans]
        self.reach: list[datetime] = []  # the latest end among the fires started so far
        for _, end in spans:
            self.reach.append(max(end, self.reach[-1]) if self.reach else end)

    def covers(self, due: datetime, tolerance: timedelta) -> bool:
        first = bisect.bisect_left(self.starts, due - _SKEW)
        if first < len(self.starts) and self.starts[first] <= due + tolerance:
            return True
        before = bisect.bisect_left(self.starts, due) - 1
        return before >= 0 and self.reach[before] >= due  # busy: a misfire, not a miss


async def missed_fires(
    ops: Operations,
    search: TraceSearch,
    job: str,
    *,
    since: datetime,
    until: datetime | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> list[MissedFire]:
    """Due times of ``job``'s stored cron in ``[since, until)`` with no fire started within
    ``tolerance`` in the trace (oldest first). ``until`` defaults to now; due times less than
    ``tolerance`` ago are not judged yet, nor those before the config was last written.
    A job without a cron (or with an invalid one) has none."""
    now = datetime.now(UTC)
    schedule = await ops.schedule(job)
    if schedule.cron is None:
        return []
    try:
        trigger = CronTrigger(schedule.cron, schedule.time_zone)
    except ConfigError:
        return []
    start = max(_aware(since), schedule.since) if schedule.since else _aware(since)
    end = min(_aware(until) if until is not None else now, now - tolerance)
    if end <= start:
        return []
    due = due_times(trigger, start, end)
    if not due:
        return []
    lookback = max(tolerance, timedelta(hours=1))
    coverage = _Coverage(await _fires(search, job, start - lookback, end + tolerance), now)
    reason = f"no fire started within {tolerance.total_seconds():g}s of the due time"
    return [MissedFire(job, at, reason) for at in due if not coverage.covers(at, tolerance)]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
