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
import contextlib
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import anyio
from anyio.abc import TaskStatus

from ._config import JobConfig
from ._cron import CronTrigger, NextFireMemo, next_fire_time
from ._errors import ConfigError, JobNotFoundError
from ._layout import DISABLED
from ._observer import Observer, notify_observers

if TYPE_CHECKING:
    from ._coordination import JobCoordinator
    from ._operations import JobSchedule, Operations
    from .tracing._search import TraceSearch

__all__ = [
    "DEFAULT_TOLERANCE",
    "DEFAULT_WINDOW",
    "MAX_DUE_TIMES",
    "MissedFire",
    "MissedFireWatch",
    "RecentStarts",
    "due_times",
    "missed_fires",
    "missed_fires_of",
]

log = logging.getLogger("aioelastic.missed")

#: How long after its due time a fire may start and still count as on time.
DEFAULT_TOLERANCE = timedelta(seconds=30)
#: ``missed_fires`` looks this far back by default (``aioelastic jobs`` too).
DEFAULT_WINDOW = timedelta(hours=24)
#: Due times judged by one ``missed_fires`` call at most (a narrower window for more).
MAX_DUE_TIMES = 100_000
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


class _Coverage:
    """Answers "did a fire start near, or run through, this due time?" in O(log n)."""

    def __init__(self, spans: Iterable[tuple[datetime, datetime | None]], now: datetime) -> None:
        ordered = sorted((start, end or now) for start, end in spans)
        self.starts = [start for start, _ in ordered]
        self.reach: list[datetime] = []  # the latest end among the fires started so far
        for _, end in ordered:
            self.reach.append(max(end, self.reach[-1]) if self.reach else end)

    def covers(
        self,
        due: datetime,
        tolerance: timedelta,
        previous: datetime | None = None,
        following: datetime | None = None,
    ) -> bool:
        """A fire started within ``[due - 1 s, due + tolerance]``, clipped halfway to the
        neighbouring due times (a fire belongs to one due time), or one ran through ``due``."""
        low, high = due - _SKEW, due + tolerance
        if previous is not None:
            low = max(low, due - (due - previous) / 2)
        if following is not None:
            high = min(high, due + (following - due) / 2)
        first = bisect.bisect_left(self.starts, low)
        if first < len(self.starts) and self.starts[first] <= high:
            return True
        before = bisect.bisect_left(self.starts, due) - 1
        return before >= 0 and self.reach[before] >= due  # busy: a misfire, not a miss


async def missed_fires(
    ops: Operations,
    search: TraceSearch,
    job: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> list[MissedFire]:
    """Due times of ``job``'s stored cron in ``[since, until)`` with no fire started within
    ``tolerance`` in the trace (oldest first). ``until`` defaults to now; due times less than
    ``tolerance`` ago are not judged yet, nor those before the config was last written.
    A job without a cron (or with an invalid one) has none; ``since`` defaults to
    :data:`DEFAULT_WINDOW` ago."""
    now = datetime.now(UTC)
    since = since if since is not None else now - DEFAULT_WINDOW
    window = _Window.of(job, await ops.schedule(job), since, until, tolerance, now)
    if window is None:
        return []
    spans = await search.fire_spans(job_name=job, since=window.low, until=window.high)
    return window.missed(spans, now)


async def missed_fires_of(
    ops: Operations,
    search: TraceSearch,
    jobs: Sequence[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> dict[str, list[MissedFire]]:
    """:func:`missed_fires` of each of ``jobs`` (a job that is gone has none), with one trace
    query per :data:`~aioelastic.tracing._search.JOBS_PER_QUERY` jobs rather than one per job;
    the stored crons are read a few at a time."""
    now = datetime.now(UTC)
    since = since if since is not None else now - DEFAULT_WINDOW
    schedules: dict[str, JobSchedule] = {}

    async def read(job: str, limiter: anyio.CapacityLimiter) -> None:
        async with limiter:
            with contextlib.suppress(JobNotFoundError):
                schedules[job] = await ops.schedule(job)

    try:
        async with anyio.create_task_group() as tg:
            limiter = anyio.CapacityLimiter(_CONCURRENT_READS)
            for job in dict.fromkeys(jobs):
                tg.start_soon(read, job, limiter)
    except ExceptionGroup as group:  # a registry error, as a sequential read would raise it
        raise group.exceptions[0] from None
    windows = {
        job: window
        for job in dict.fromkeys(jobs)
        if job in schedules
        and (window := _Window.of(job, schedules[job], since, until, tolerance, now)) is not None
    }
    out: dict[str, list[MissedFire]] = {job: [] for job in jobs}
    if not windows:
        return out
    low = min(w.low for w in windows.values())
    high = max(w.high for w in windows.values())
    many = getattr(search, "fire_spans_of", None)
    if many is not None:
        spans = await many(list(windows), since=low, until=high)
    else:  # a search of another make: one query per job
        spans = {
            job: await search.fire_spans(job_name=job, since=w.low, until=w.high)
            for job, w in windows.items()
        }
    for job, window in windows.items():
        # Only the job's own window, so that the answer is missed_fires' exactly.
        own = [span for span in spans.get(job, []) if window.low <= span[0] < window.high]
        out[job] = window.missed(own, now)
    return out


#: Stored crons ``missed_fires_of`` reads from the registry at once.
_CONCURRENT_READS = 16


@dataclass(frozen=True, slots=True)
class _Window:
    """The due times of one job to judge, and the span of the trace that judges them."""

    job: str
    trigger: CronTrigger
    due: list[datetime]
    tolerance: timedelta
    low: datetime
    high: datetime

    @classmethod
    def of(
        cls,
        job: str,
        schedule: JobSchedule,
        since: datetime,
        until: datetime | None,
        tolerance: timedelta,
        now: datetime,
    ) -> _Window | None:
        if schedule.cron is None:
            return None
        try:
            trigger = CronTrigger(schedule.cron, schedule.time_zone)
        except ConfigError:
            return None
        start = max(_aware(since), schedule.since) if schedule.since else _aware(since)
        end = min(_aware(until) if until is not None else now, now - tolerance)
        if end <= start:
            return None
        due = due_times(trigger, start, end)
        if not due:
            return None
        lookback = max(tolerance, timedelta(hours=1))
        return cls(job, trigger, due, tolerance, start - lookback, end + tolerance)

    def missed(
        self, spans: Iterable[tuple[datetime, datetime | None]], now: datetime
    ) -> list[MissedFire]:
        due, trigger, tolerance = self.due, self.trigger, self.tolerance
        coverage = _Coverage(spans, now)
        earlier = due_times(trigger, due[0] - timedelta(hours=1), due[0])  # None: >1 h apart
        bounds = [earlier[-1] if earlier else None, *due, trigger.next_fire_time(due[-1])]
        reason = f"no fire started within {tolerance.total_seconds():g}s of the due time"
        return [
            MissedFire(self.job, at, reason)
            for i, at in enumerate(due)
            if not coverage.covers(at, tolerance, bounds[i], bounds[i + 2])
        ]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RecentStarts:
    """Due time -> wall time of a job's recent cron fires that found items to run on this
    instance, oldest first; the missed-fire watch takes each once (``take``). At most ``kept``
    are remembered: a fire past that is judged from the view, as one that did not start here."""

    __slots__ = ("_kept", "_starts")

    def __init__(self, kept: int = 16) -> None:
        self._kept = kept
        self._starts: dict[datetime, datetime] = {}

    def add(self, due: datetime, wall: datetime) -> None:
        starts = self._starts
        starts.setdefault(due, wall)  # a fire's first start counts (not a later re-run)
        if len(starts) > self._kept:
            del starts[next(iter(starts))]

    def take(self, due: datetime) -> datetime | None:
        """When the fire due at ``due`` started here (None: not remembered), forgetting it and
        every earlier one."""
        starts = self._starts
        while starts:
            first = next(iter(starts))
            if first > due:
                break
            wall = starts.pop(first)
            if not starts:
                self._starts = {}  # an emptied dict keeps its table
            if first == due:
                return wall
        return None


class _Runner(Protocol):
    @property
    def coordinator(self) -> JobCoordinator: ...

    def take_start(self, due: datetime) -> datetime | None:
        """When the cron fire due at ``due`` found items to run here, if it is a recent one
        (it and earlier ones are forgotten)."""
        ...


#: A job is looked at again at least this often (a config change may bring its fires closer).
_RECHECK = 60.0
#: One WARNING line per job at most this often (the rest are counted in the next one).
_LOG_INTERVAL = 60.0


def blocker(coord: JobCoordinator) -> str | None:
    """What keeps the job's fires from running any item, from the registry view; None if
    nothing does."""
    if coord.config_problem:
        return "the job's config in the registry is invalid"
    paths, view = coord.paths, coord.view
    servers = view.children(paths.servers)
    if servers and all(view.get(paths.server(host)) == DISABLED for host in servers):
        return "every server of the job is disabled"
    available = set(coord.available_instances())
    if not available:
        return "no live instance on an enabled server"
    items = [
        i
        for i in range(coord.config.sharding_total_count)
        if not view.exists(paths.item_disabled(i))
    ]
    if not items:
        return "every item is disabled"
    if not any(coord.owner(i) in available for i in items):
        return "no live instance owns an item"
    return None


class MissedFireWatch:
    """On each job's leader: ``tolerance`` seconds after every cron due time, judge whether the
    fire could start anywhere (see the module docstring). One task for every job: a heap of
    the next checks."""

    def __init__(
        self,
        runners: Mapping[str, _Runner],
        observers: Sequence[Observer],
        *,
        tolerance: float,
        active: Callable[[], bool] = lambda: True,
    ) -> None:
        self._runners = runners
        self._observers = observers
        self._tolerance = tolerance
        self._active = active
        self._heap: list[tuple[float, str]] = []  # (monotonic check time, job)
        self._due: dict[str, tuple[JobConfig, datetime | None]] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # job -> (last line, misses since)
        self.missed = 0
        """Misses seen by this watch (all jobs)."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._schedule_new()
            wait = self._heap[0][0] - time.monotonic() if self._heap else 1.0
            await anyio.sleep(min(max(wait, 0.0), 1.0))  # new runners show within a second
            now, wall = time.monotonic(), datetime.now(UTC)
            memo: NextFireMemo = {}  # the jobs of one due time and trigger share one computation
            while self._heap and self._heap[0][0] <= now:
                _, job = heapq.heappop(self._heap)
                try:
                    self._check(job, wall, memo)
                except Exception:  # a watch must never stop the scheduler
                    log.exception("%s: missed-fire check failed; next one at its next fire", job)
                    self._plan(job, None)

    def _schedule_new(self) -> None:
        for job in self._runners:
            if job not in self._due:
                self._plan(job, None)

    def _plan(
        self,
        job: str,
        after: datetime | None,
        now: datetime | None = None,
        memo: NextFireMemo | None = None,
    ) -> None:
        """Push the job's next check: its next due time (after ``after``, else now) plus the
        tolerance, or sooner (``_RECHECK``) to notice config changes."""
        runner = self._runners.get(job)
        if runner is None:
            self._due.pop(job, None)
            return
        config = runner.coordinator.config
        trigger = _trigger(config)
        now = now or datetime.now(UTC)
        due: datetime | None = None
        if trigger is not None:
            # The checks of one due time share a computation (``after`` None: this job's now).
            due = next_fire_time(trigger, after, memo) if after else trigger.next_fire_time(now)
        self._due[job] = (config, due)
        wait = _RECHECK if due is None else (due - now).total_seconds() + self._tolerance
        heapq.heappush(self._heap, (time.monotonic() + min(max(wait, 0.0), _RECHECK), job))

    def _check(self, job: str, now: datetime, memo: NextFireMemo) -> None:
        runner = self._runners.get(job)
        config, due = self._due.get(job, (None, None))
        if runner is None or runner.coordinator.config is not config:
            self._plan(job, None)  # gone, or a new config: start over from now
            return
        tolerance = timedelta(seconds=self._tolerance)
        if due is None or now < due + tolerance:
            self._plan(job, due - timedelta(microseconds=1) if due is not None else None)
            return
        coord = runner.coordinator
        start = runner.take_start(due)
        if start is not None and start <= due + tolerance:
            pass  # started here on time: nothing to judge (the common case, no view reads)
        elif self._active() and coord.is_leader:
            late = (now - due).total_seconds() - self._tolerance
            reason = blocker(coord)
            if reason is None and late > self._tolerance:
                reason = f"this leader's event loop was stalled (checked {late:.1f}s late)"
            if reason is not None:
                self._report(job, due, reason)
        self._plan(job, due, now, memo)

    def _report(self, job: str, due: datetime, reason: str) -> None:
        self.missed += 1
        notify_observers(self._observers, "missed_fire", job, due, reason)
        now = time.monotonic()
        last, since = self._logged.get(job, (-math.inf, 0))
        if now - last < _LOG_INTERVAL:
            self._logged[job] = (last, since + 1)
            return
        self._logged[job] = (now, 0)
        more = f" ({since} more since the last line)" if since else ""
        log.warning(
            "%s: fire due at %s started on no instance: %s%s",
            job,
            due.astimezone(UTC).isoformat(timespec="seconds"),
            reason,
            more,
            extra={"job": job, "due": due.isoformat(), "reason": reason},
        )


def _trigger(config: JobConfig) -> CronTrigger | None:
    try:
        return config.trigger()
    except ConfigError:
        return None
