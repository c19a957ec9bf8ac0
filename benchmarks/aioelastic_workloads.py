"""aioelastic's side of the comparison workloads, for any registry URL (embedded or ZooKeeper).

- ``lag``: ``jobs`` one-item jobs on one instance, each firing every whole second; every run
  records (scheduled fire time, start inside the job) into a ``LagWindow``. Starting is bounded:
  if registering the jobs does not finish within ``start_timeout`` (the instance cannot keep up
  with the fires of the jobs registered so far), the result says so instead of a lag.
- ``fire_throughput``: ``jobs`` one-off one-item jobs fired all at once, ``rounds`` times: fires
  per second, each a whole fire (marks, trace events, one item). The unit APScheduler calls a job.
- item throughput is ``core_embedded.aioelastic_throughput`` (one job, many items per fire).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Any

import anyio
from lag_window import Footprint, LagWindow

from aioelastic import Observer, Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore


def _fresh(url: str) -> None:
    if url.startswith("memory://"):
        MemoryStore.reset(url.split("/")[2])


class Troubles(Observer):
    """Counts job errors (as the jobs' error handler) and session suspensions/losses."""

    def __init__(self) -> None:
        self.errors = 0
        self.session_events: list[tuple[str, float]] = []

    def __call__(self, job: str, exc: BaseException) -> None:
        self.errors += 1

    def session_state_changed(self, state: str) -> None:
        if state in ("SUSPENDED", "LOST"):
            self.session_events.append((state, time.monotonic()))

    def sessions(self, before: float = math.inf) -> dict[str, int]:
        """Suspensions and losses seen before ``before`` (a ``time.monotonic()`` instant)."""
        kinds = [state for state, at in self.session_events if at < before]
        return {"SUSPENDED": kinds.count("SUSPENDED"), "LOST": kinds.count("LOST")}

    def report(self) -> dict[str, Any]:
        return {"job_errors": self.errors, "session_troubles": self.sessions()}


async def lag(
    url: str, jobs: int, seconds: int, *, warmup: float, drain: float, start_timeout: float
) -> dict[str, Any]:
    _fresh(url)
    footprint = Footprint()
    troubles = Troubles()
    scheduler = Scheduler(
        settings=Settings(registry_url=url, instance_id="lag-bench", shutdown_grace_period=1),
        observers=[troubles],
    )
    window = LagWindow()

    async def probe(ctx: ShardingContext) -> None:
        window.record(ctx.scheduled_fire_time, datetime.now(UTC))

    for i in range(jobs):
        scheduler.add_job(probe, name=f"job{i:04d}", cron="* * * * * ?", error_handler=troubles)
    out: dict[str, Any] = {}
    begin = time.monotonic()
    async with anyio.create_task_group() as tg:
        with anyio.move_on_after(start_timeout):
            await tg.start(scheduler.run)
            out["start_s"] = round(time.monotonic() - begin, 2)
        if "start_s" not in out:
            sessions = troubles.sessions(before=begin + start_timeout)  # not the shutdown's
            out["error"] = (
                f"not started within {start_timeout:.0f} s: {len(scheduler._runners)}/{jobs} jobs "
                "registered while the registered ones kept firing (session suspended "
                f"{sessions['SUSPENDED']}x, lost {sessions['LOST']}x)"
            )
            return out
        await anyio.sleep(warmup)
        out.update(footprint.per_job(jobs))
        before = scheduler.registry.request_count
        out.update(await window.measure(seconds, drain))
        sent = scheduler.registry.request_count - before
        out["registry_requests_per_run"] = round(sent / max(len(window.samples), 1), 2)
        out.update(troubles.report())
        scheduler.stop()
    return out


async def fire_throughput(url: str, jobs: int, rounds: int, timeout: float = 120) -> float:
    _fresh(url)
    scheduler = Scheduler(settings=Settings(registry_url=url, shutdown_grace_period=1))

    async def noop(ctx: ShardingContext) -> None:
        pass

    for i in range(jobs):
        scheduler.add_job(noop, name=f"one{i:04d}")
    async with scheduler:
        runners = list(scheduler._runners.values())
        with anyio.fail_after(timeout):
            for r in runners:
                await r.coordinator.view.wait_for(lambda r=r: r.coordinator.local_items(), timeout)
            start = time.perf_counter()
            for _ in range(rounds):
                async with anyio.create_task_group() as tg:
                    for r in runners:
                        tg.start_soon(r.executor.fire)
        elapsed = time.perf_counter() - start
    return jobs * rounds / elapsed
