"""Loop watchdog: a thread that notices a blocked event loop.

Nothing can pre-empt code that holds the event loop (``time.sleep`` or a sync driver call in an
``async def`` job, a CPU loop). While it holds it no ping reaches ZooKeeper, and once the server
expires the session a survivor fails this process's items over, while the blocked code is
still inside one of them. Only another thread can notice. The loop bumps a heartbeat every
``interval``; the thread checks it every ``interval`` and

* logs a WARNING with the blocking code's stack once a stall passes ``warn_after`` (~1 s);
* calls ``on_limit`` once a stall passes ``limit`` (``safe_stall_limit``: before the server can
  expire the session). The scheduler's action is to end the process (``os._exit``).

A frozen process (SIGSTOP, a VM pause) stops this thread too: it sees its own sleep overshoot
while the process used no CPU, and leaves that case to ``PauseDetector``, which gives the session
up and rejoins when the loop runs again. (A C extension that sleeps while holding the GIL looks
the same; one that computes while holding it uses CPU and counts as a stall.)
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

__all__ = ["STALL_EXIT_STATUS", "LoopWatchdog", "safe_stall_limit"]

log = logging.getLogger("aioelastic.watchdog")

#: Exit status of a process ended by the watchdog (``loop_stall_action="exit"``).
STALL_EXIT_STATUS = 70

#: A check that overshoots its sleep by more than this, with little CPU used, is a freeze.
_FREEZE_SLACK = 0.5


def safe_stall_limit(session_timeout: float) -> float:
    """The longest loop stall that cannot outlive a ZooKeeper session of ``session_timeout`` T.

    The registry pings when nothing was sent for T/4, so a stall begins at most T/3 after the
    server last heard from us (T/4 plus slack for a late keepalive); the server expires the
    session no sooner than T after that, i.e. 2T/3 into the stall. Keep a margin of
    max(0.25 s, T/10) for detection, the exit itself and the heartbeat period:
    ``limit = 2T/3 - max(0.25, T/10)`` (1.7 s for T = 3 s, 5.67 s for the default 10 s).
    """
    return max(0.1, session_timeout * 2 / 3 - max(0.25, session_timeout / 10))


def loop_stack(thread_id: int) -> str:
    """The current stack of thread ``thread_id`` (empty if it is gone)."""
    frame = sys._current_frames().get(thread_id)
    return "".join(traceback.format_stack(frame)) if frame is not None else ""


class LoopWatchdog:
    """Watches the event loop it runs on from a daemon thread (see the module docstring)."""

    def __init__(
        self,
        *,
        limit: float | None,
        on_limit: Callable[[float, str], None],
        warn_after: float | None = 1.0,
        interval: float = 0.1,
    ) -> None:
        self.limit = limit
        self.warn_after = warn_after
        self._on_limit = on_limit
        self._interval = interval
        self._beat = time.monotonic()
        self._floor = 0.0  # stalls are counted from here at the earliest (set after a freeze)
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self.freezes = 0
        self._last_wake, self._last_cpu = time.monotonic(), time.process_time()
        self._stall_of: float | None = None  # the heartbeat value of the stall seen last
        self._warned = self._acted = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Beat the heartbeat until cancelled; the thread lives exactly as long as this."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._stop.clear()
        thread = threading.Thread(target=self._watch, name="aioelastic-loop-watchdog", daemon=True)
        thread.start()
        try:
            task_status.started()
            while True:
                self.beat()
                await anyio.sleep(self._interval)
        finally:
            self._stop.set()
            thread.join(timeout=5)  # it wakes at once on the event

    def heartbeat_age(self) -> float:
        """Seconds since the loop last beat (read from any thread)."""
        return max(0.0, time.monotonic() - self._beat)

    def beat(self, at: float | None = None) -> None:
        """The loop is alive (at monotonic time ``at``, default now)."""
        self._beat = time.monotonic() if at is None else at

    def _watch(self) -> None:
        self._last_wake, self._last_cpu = time.monotonic(), time.process_time()
        while not self._stop.wait(self._interval):
            self.check(time.monotonic(), time.process_time())

    def check(self, now: float, cpu: float) -> None:
        """One look at the heartbeat at monotonic time ``now``, process CPU time ``cpu``."""
        overshoot = now - self._last_wake - self._interval
        frozen = overshoot > _FREEZE_SLACK and cpu - self._last_cpu < overshoot / 2
        self._last_wake, self._last_cpu = now, cpu
        if frozen:  # the whole process stood still: not the loop's doing
            self.freezes += 1
            self._floor = now
            log.debug("watchdog: process frozen for %.1fs; not a loop stall", overshoot)
            return
        beat = self._beat
        if beat != self._stall_of:
            self._stall_of, self._warned, self._acted = beat, False, False
        stalled = now - max(beat, self._floor)
        if self.warn_after is not None and not self._warned and stalled >= self.warn_after:
            self._warned = True
            log.warning(
                "event loop blocked for %.1fs: no other job, timer or registry ping runs "
                "meanwhile (use 'await anyio.to_thread.run_sync(...)' for blocking calls); "
                "it is running:\n%s",
                stalled,
                loop_stack(self._loop_thread),
            )
        if self.limit is not None and not self._acted and stalled >= self.limit:
            self._acted = True
            self._on_limit(stalled, loop_stack(self._loop_thread))
