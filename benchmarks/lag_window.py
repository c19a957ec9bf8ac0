"""Fire lag over a window of whole seconds, the same way for every scheduler measured.

Shared by the aioelastic workloads and the baseline scripts (it needs only anyio, so it runs in
both virtual environments). Every run records (scheduled fire time, lag = start - scheduled). A
window covers the fires scheduled at ``seconds`` whole seconds from the next whole second on;
after it closes, runs get ``drain`` more seconds to start. ``runs / (jobs * seconds)`` then says
what fraction of the fires due in the window ran at all within the drain: a scheduler that drops
or postpones fires under load shows less than 1 instead of a flattering lag.

The window also measures the process's CPU time per run (everything the process did in the
window, divided by the runs in it), and ``Footprint`` the memory per job (RSS and objects tracked
by the garbage collector, grown from before the jobs existed to after they started). Each
contender runs in a fresh process of its own, so these figures are its alone.
"""

from __future__ import annotations

import gc
import math
import os
import time
import tracemalloc
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
        """Wait out the window and the drain; the lags (ms) of fires scheduled in the window,
        and the process's CPU time per run over the window and drain."""
        t0 = math.ceil(time.time() + 0.01)
        self.samples.clear()
        self.unscheduled = 0
        await anyio.sleep(t0 - time.time())
        collector = _CollectorClock()
        cpu0 = time.process_time()
        gc.callbacks.append(collector)
        try:
            await anyio.sleep(t0 + seconds + drain - time.time())
        finally:
            gc.callbacks.remove(collector)
        cpu = time.process_time() - cpu0
        lags = [lag for at, lag in self.samples if t0 <= at < t0 + seconds]
        runs = len(self.samples) + self.unscheduled
        return {
            "window_s": seconds,
            "lags_ms": [round(x, 3) for x in lags],
            "unscheduled_runs": self.unscheduled,
            "cpu_ms_per_run": round(1000 * cpu / max(runs, 1), 4),
            "gc_ms_per_run": round(1000 * collector.seconds / max(runs, 1), 4),
            "gc_full_collections": collector.full,
            "gc_ms_by_generation": [round(1000 * t, 1) for t in collector.by_generation],
            "gc_collected": collector.collected,
        }


class _CollectorClock:
    """Time spent in the garbage collector (a ``gc.callbacks`` entry)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self.by_generation = [0.0, 0.0, 0.0]
        self.collected = 0
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        self.seconds += took
        generation = info.get("generation", 0)
        self.by_generation[generation] += took
        self.full += generation == 2
        self.collected += info.get("collected", 0)


def _rss_kib() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return math.nan
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024


class Footprint:
    """Memory per job: RSS and gc-tracked objects, from ``Footprint()`` (before the jobs exist)
    to ``per_job(jobs)`` (after they started)."""

    def __init__(self) -> None:
        # With BENCH_TRACEMALLOC=1 (``core_embedded.py lag --tracemalloc``), also the Python
        # heap per job as tracemalloc sees it; tracing stops at ``per_job`` (it slows the start
        # and adds its own RSS: use that run for this figure only).
        self._traced = os.environ.get("BENCH_TRACEMALLOC") == "1"
        if self._traced:
            tracemalloc.start()
        gc.collect()
        self._rss = _rss_kib()
        self._objects = len(gc.get_objects())
        self._heap = tracemalloc.get_traced_memory()[0] if self._traced else 0

    def per_job(self, jobs: int) -> dict[str, float]:
        gc.collect()
        frozen = gc.get_freeze_count()
        objects = len(gc.get_objects()) + frozen
        out = {
            "rss_kib_per_job": round((_rss_kib() - self._rss) / max(jobs, 1), 2),
            "objects_per_job": round((objects - self._objects) / max(jobs, 1), 1),
            "frozen_objects": frozen,
        }
        if self._traced:
            heap = tracemalloc.get_traced_memory()[0] - self._heap
            out["traced_kib_per_job"] = round(heap / 1024 / max(jobs, 1), 2)
            tracemalloc.stop()
        return out
