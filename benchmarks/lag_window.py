"""Fire lag over a window of whole seconds, the same way for every scheduler measured.

Shared by the aioelastic workloads and the baseline scripts (it needs only anyio, so it runs in
both virtual environments). Every run records (scheduled fire time, lag = start - scheduled). A
window covers the fires scheduled at ``seconds`` whole seconds from the next whole second on;
after it closes, runs get ``drain`` more seconds to start. ``runs / (jobs * seconds)`` then says
what fraction of the fires due in the window ran at all within the drain: a scheduler that drops
or postpones fires under load shows less than 1 instead of a flattering lag.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import anyio


class LagWindow:
    """Collects (scheduled, lag) samples; ``measure()`` returns the window's lags."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.unscheduled = 0

    def record(self, scheduled: datetime | None, started: datetime | None = None) -> None:
        """A run started; ``scheduled`` None = not a cron fire (e.g. a misfire re-run)."""
        if scheduled is None:
            self.unscheduled += 1
            return
        started = started or datetime.now(UTC)
        lag_ms = (started - scheduled).total_seconds() * 1000
        self.samples.append((scheduled.timestamp(), lag_ms))

    async def measure(self, seconds: int, drain: float) -> dict[str, Any]:
        """Wait out the window and the drain; the lags (ms) of fires scheduled in the window."""
        t0 = math.ceil(time.time() + 0.01)
        self.samples.clear()
        self.unscheduled = 0
        await anyio.sleep(t0 + seconds + drain - time.time())
        lags = [lag for at, lag in self.samples if t0 <= at < t0 + seconds]
        return {
            "window_s": seconds,
            "lags_ms": [round(x, 3) for x in lags],
            "unscheduled_runs": self.unscheduled,
        }
