"""Pause fencing: notice that this process was frozen (SIGSTOP, a VM pause, a blocked loop).

A process frozen for longer than its registry session can survive must not resume its items as
if it still owned them: survivors may already be running them. Two detectors feed one check:
a SIGCONT handler (asyncio runs signal callbacks before the timers that came due during the
pause, so items are cancelled before they take another step) and a monotonic-clock watchdog
for pauses that send no signal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

__all__ = ["PauseDetector"]

log = logging.getLogger("aioelastic.pause")


class PauseDetector:
    """Calls ``on_pause(seconds)`` when the loop was not running for more than ``threshold``."""

    def __init__(
        self, threshold: float, on_pause: Callable[[float], None], tick: float = 0.1
    ) -> None:
        self.threshold = threshold
        self._on_pause = on_pause
        self._tick = tick
        self._last = time.monotonic()

    def check(self) -> None:
        now = time.monotonic()
        gap, self._last = now - self._last, now
        if gap > self.threshold:
            log.warning("this process was paused for %.1fs (limit %.1fs)", gap, self.threshold)
            self._on_pause(gap)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGCONT, self.check)
            installed = True
        except (RuntimeError, ValueError):  # NotImplementedError included
            installed = False  # not the main thread, or no signals here: the watchdog remains
        self._last = time.monotonic()
        task_status.started()
        try:
            while True:
                await anyio.sleep(self._tick)
                self.check()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGCONT)
