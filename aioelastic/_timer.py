"""One timer for every job's cron on an instance: a heap of next fire times, one task.

Replaces a sleeping task per job: the timer sleeps until the earliest fire time, then starts
every fire due by now in one pass (the fires of one second start together), and computes each
job's next fire time. Fire times are wall-clock instants; the sleep (monotonic, at most
``_WALL_RECHECK``) is re-checked against the wall clock on waking, so an early wake-up only
sleeps again and a clock step either way is followed.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._cron import CronTrigger, NextFireMemo, next_fire_time

__all__ = ["CronEntry", "Timer"]

#: Fires one timer pass starts before it lets them run (the rest start in the next passes).
_PASS_FIRES = 64

#: The longest the timer sleeps before looking at the wall clock again: the sleep runs on the
#: monotonic clock, so a wall-clock step forward (NTP, a VM resumed) is seen within this much
#: (under the missed-fire watch's tolerance), not after the whole sleep.
_WALL_RECHECK = 1.0


class CronEntry:
    """One job's place in the timer: its trigger, last fire and what a fire calls."""

    __slots__ = ("_fire", "_generation", "_queued", "_timer", "_trigger", "last", "next")

    def __init__(
        self,
        timer: Timer,
        trigger: Callable[[], CronTrigger | None],
        fire: Callable[[datetime], None],
    ) -> None:
        self._timer = timer
        self._trigger = trigger
        self._fire = fire
        self._generation = 0  # bumped on every reschedule: older heap entries are stale
        self._queued = False  # a current (not stale) heap entry exists
        self.last: datetime | None = None
        """The scheduled time of the last fire started."""
        self.next: datetime | None = None
        """The next scheduled fire time (None: one-off job, or removed)."""

    def reschedule(self) -> None:
        """Compute the next fire time again (the trigger changed, e.g. a new cron)."""
        self._timer._schedule(self)

    def remove(self) -> None:
        """No more fires for this entry (its job stops)."""
        self._timer._unqueue(self)
        self._generation += 1
        self.next = None


class Timer:
    """The heap of next fire times of all entries; ``run`` starts the fires."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, CronEntry]] = []  # (at, order, generation, entry)
        self._order = itertools.count()
        self._wake = anyio.Event()
        self._stale = 0  # heap entries left behind by reschedules and removals

    def add(
        self, trigger: Callable[[], CronTrigger | None], fire: Callable[[datetime], None]
    ) -> CronEntry:
        """Schedule ``fire(scheduled)`` at each time of ``trigger()`` (read again on
        ``reschedule``) from now on."""
        entry = CronEntry(self, trigger, fire)
        self._schedule(entry)
        return entry

    def __len__(self) -> int:
        """Entries with a next fire time."""
        return len(self._heap) - self._stale

    def _unqueue(self, entry: CronEntry) -> None:
        if entry._queued:
            entry._queued = False
            self._stale += 1

    def _schedule(
        self,
        entry: CronEntry,
        now: datetime | None = None,
        memo: NextFireMemo | None = None,
    ) -> None:
        """Queue ``entry``'s next fire time; ``memo`` shares results between the entries of one
        pass (jobs on the same trigger and last fire time: one computation for all)."""
        self._unqueue(entry)
        entry._generation += 1
        trigger = entry._trigger()
        now = now or datetime.now(UTC)
        after = max(now, entry.last) if entry.last else now
        entry.next = None if trigger is None else next_fire_time(trigger, after, memo)
        if entry.next is None:
            return
        at = entry.next.timestamp()
        if not self._heap or at < self._heap[0][0]:
            self._wake.set()  # earlier than what the timer sleeps for
        heapq.heappush(self._heap, (at, next(self._order), entry._generation, entry))
        entry._queued = True

    def _fire_due(self, limit: int | None = None) -> bool:
        """Start the fires due by now (at most ``limit``), then compute those entries' next
        fire times; whether more are due."""
        heap, now = self._heap, time.time()
        due: list[CronEntry] = []
        while heap and heap[0][0] <= now and (limit is None or len(due) < limit):
            _, _, generation, entry = heapq.heappop(heap)
            if generation == entry._generation:
                entry._queued = False
                due.append(entry)
            else:
                self._stale -= 1
        for entry in due:
            scheduled = entry.next
            assert scheduled is not None
            entry.last = scheduled
            entry._fire(scheduled)
        wall = datetime.now(UTC)
        memo: NextFireMemo = {}
        for entry in due:
            if entry.next is entry.last:  # neither removed nor rescheduled by the fire
                self._schedule(entry, wall, memo)
        if self._stale > 64 and self._stale > len(heap) // 2:
            self._heap = [slot for slot in heap if slot[2] == slot[3]._generation]
            heapq.heapify(self._heap)
            self._stale = 0
        return bool(self._heap) and self._heap[0][0] <= now

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start fires until cancelled."""
        task_status.started()
        while True:
            self._wake = anyio.Event()
            while self._fire_due(_PASS_FIRES):
                # Let the fires started so far run up to their bodies before starting more:
                # the first jobs of a busy second start without waiting for the last ones'
                # preludes (and their running marks are still written together).
                await anyio.lowlevel.checkpoint()
            delay = self._heap[0][0] - time.time() if self._heap else math.inf
            if delay > 0:
                with anyio.move_on_after(min(delay, _WALL_RECHECK)):
                    await self._wake.wait()
