"""Issue 17, embedded side: what an idle job costs (tasks, signalling) with many jobs."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import anyio
import pytest

from aioelastic import Scheduler, Settings, ShardingContext, _runner
from aioelastic.registry import MemoryStore
from aioelastic.registry._view import Subscription

pytestmark = pytest.mark.anyio

JOBS = 200


async def _tasks_with(jobs: int, name: str, **job: object) -> int:
    """Tasks alive once a scheduler with ``jobs`` idle jobs has started."""
    MemoryStore.reset(name)
    scheduler = Scheduler(settings=Settings(registry_url=f"memory://{name}/ns"))
    for i in range(jobs):

        async def noop(ctx: ShardingContext) -> None: ...

        scheduler.job(name=f"job-{i}", cron="0 0 0 1 1 ? 2099", **job)(noop)
    async with scheduler:
        await anyio.sleep(0.2)  # let start-up steps settle
        return len(asyncio.all_tasks())


async def _heap_kib_per_job(jobs: int, name: str) -> float:
    """The Python heap (tracemalloc) that ``jobs`` idle jobs hold once their scheduler started."""
    await _tasks_with(1, f"{name}-warm")  # imports and caches of a first start: not per job
    MemoryStore.reset(name)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        scheduler = Scheduler(settings=Settings(registry_url=f"memory://{name}/ns"))
        for i in range(jobs):

            async def noop(ctx: ShardingContext) -> None: ...

            scheduler.job(name=f"job-{i}", cron="0 0 0 1 1 ? 2099")(noop)
        async with scheduler:
            await anyio.sleep(0.2)
            gc.collect()
            return (tracemalloc.get_traced_memory()[0] - before) / 1024 / jobs
    finally:
        tracemalloc.stop()


async def test_an_idle_job_holds_at_most_30_kib_of_heap() -> None:
    # Issue 17 asks for 20 KiB per job; 44 KiB before the embedded view read the store itself
    # (no copy), leaves lost their children sets and jobs their unused task groups.
    kib = await _heap_kib_per_job(JOBS, "scale-heap")
    assert kib <= 30, f"{kib:.1f} KiB of heap per idle job"


async def test_an_idle_job_costs_at_most_one_task() -> None:
    base = await _tasks_with(0, "scale-tasks-0")
    many = await _tasks_with(JOBS, "scale-tasks-n")
    assert (many - base) / JOBS <= 1.0, f"{many - base} tasks for {JOBS} idle jobs"


async def test_jobs_without_after_or_catchup_start_no_loops_for_them() -> None:
    base = await _tasks_with(JOBS, "scale-loops-a")
    with_catchup = await _tasks_with(JOBS, "scale-loops-b", catchup_window=60)
    assert with_catchup - base == JOBS  # the catch-up loop only where it is configured


async def test_subscription_is_a_flag_until_someone_waits() -> None:
    woken: list[int] = []
    sub = Subscription(lambda path: path.startswith("/a"), lambda: woken.append(1))
    assert not sub.pending
    sub.notify()
    assert sub.pending and woken == [1]
    assert await sub.wait(10)  # a change since the last wait: no waiting
    assert not await sub.wait(0.01)
    async with anyio.create_task_group() as tg:

        async def later() -> None:
            await anyio.sleep(0.01)
            sub.notify()

        tg.start_soon(later)
        with anyio.fail_after(10):
            assert await sub.wait(30)


async def test_stop_cancels_a_fire_again_when_its_job_swallows_the_first_cancellation() -> None:
    # Fires are plain asyncio tasks now, not a task group's: a job that catches the first
    # CancelledError is cancelled again, as anyio's cancel scopes keep doing.
    MemoryStore.reset("scale-swallow")
    scheduler = Scheduler(
        settings=Settings(registry_url="memory://scale-swallow/ns", shutdown_grace_period=0.2)
    )
    started, cancelled = anyio.Event(), []

    @scheduler.job(cron="0 0 0 1 1 ? 2099")
    async def stubborn(ctx: ShardingContext) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(1)
        await anyio.sleep(60)  # cancelled again

    with anyio.fail_after(20):
        async with scheduler:
            await scheduler.trigger("stubborn")
            await started.wait()
    assert cancelled == [1]


async def test_a_job_that_never_ends_once_cancelled_delays_the_stop_once_then_is_left_behind(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Job code that catches every CancelledError: the stop waits the grace period, cancels it
    # and waits _CANCELLED_WAIT once (it waited twice: 61 s instead of 31 s by default), then
    # gives up on it with one ERROR, so a pod's terminationGracePeriodSeconds can bound it.
    monkeypatch.setattr(_runner, "_CANCELLED_WAIT", 1.0)
    MemoryStore.reset("scale-never")
    scheduler = Scheduler(
        settings=Settings(registry_url="memory://scale-never/ns", shutdown_grace_period=0.1)
    )
    started, release = anyio.Event(), anyio.Event()

    @scheduler.job(cron="0 0 0 1 1 ? 2099")
    async def stubborn(ctx: ShardingContext) -> None:
        started.set()
        while not release.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass  # (anyio's scope cancels each next await again)

    with anyio.fail_after(20):
        async with scheduler:
            await scheduler.trigger("stubborn")
            await started.wait()
    try:
        left = [r for r in caplog.records if "left behind" in r.getMessage()]
        assert [r.levelname for r in left] == ["ERROR"]
        assert "stubborn: 1 fire(s) still running" in left[0].getMessage()
    finally:
        release.set()  # the task left behind ends with the test
        with anyio.fail_after(5):
            while any("stubborn" in repr(t.get_coro()) for t in asyncio.all_tasks()):
                await anyio.sleep(0.02)
