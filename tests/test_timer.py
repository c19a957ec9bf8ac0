"""The one timer for every job's cron (``_timer.py``), alone and inside a scheduler."""

from __future__ import annotations

import asyncio
import gc
import time
import types
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic._cron import CronTrigger
from aioelastic._timer import Timer
from aioelastic.registry import MemoryStore
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio

EVERY_SECOND = CronTrigger("* * * * * ?")


async def test_entries_due_the_same_second_fire_in_one_pass() -> None:
    timer = Timer()
    fired: list[tuple[str, datetime]] = []

    def recorder(name: str) -> Callable[[datetime], None]:
        return lambda at: fired.append((name, at))

    for name in "abc":
        timer.add(lambda: EVERY_SECOND, recorder(name))
    async with anyio.create_task_group() as tg:
        await tg.start(timer.run)
        await eventually(lambda: len(fired) >= 3, 5, what="the first fires")
        tg.cancel_scope.cancel()
    first = fired[:3]
    assert sorted(name for name, _ in first) == ["a", "b", "c"]
    assert len({at for _, at in first}) == 1  # the same scheduled second
    assert all(at.microsecond == 0 and at.tzinfo is not None for _, at in first)
    assert len(timer) == 3  # each has its next fire time queued


async def test_a_busy_second_lets_its_first_fires_run_before_starting_the_last() -> None:
    # 300 fires due the same second: the first ones' tasks run (up to their bodies) before
    # the timer has started the last ones, instead of every prelude going first.
    timer = Timer()
    events: list[str] = []
    loop_tasks: set[asyncio.Task[None]] = set()

    async def body(i: int) -> None:
        events.append(f"ran {i}")

    def fire(i: int) -> Callable[[datetime], None]:
        def start(at: datetime) -> None:
            events.append(f"started {i}")
            task = asyncio.get_running_loop().create_task(body(i))
            loop_tasks.add(task)
            task.add_done_callback(loop_tasks.discard)

        return start

    for i in range(300):
        timer.add(lambda: EVERY_SECOND, fire(i))
    async with anyio.create_task_group() as tg:
        await tg.start(timer.run)
        await eventually(lambda: "ran 299" in events, 5, what="the last fire's body")
        tg.cancel_scope.cancel()
    started = [e for e in events if e.startswith("started")][:300]
    assert sorted(started) == sorted(f"started {i}" for i in range(300))  # each once
    assert events.index("ran 0") < events.index("started 299")


async def test_fires_are_not_early_and_each_second_fires_once() -> None:
    timer = Timer()
    seen: list[tuple[datetime, datetime]] = []
    timer.add(lambda: EVERY_SECOND, lambda at: seen.append((at, datetime.now(UTC))))
    async with anyio.create_task_group() as tg:
        await tg.start(timer.run)
        await eventually(lambda: len(seen) >= 3, 8, what="three fires")
        tg.cancel_scope.cancel()
    assert all(now >= at for at, now in seen)
    scheduled = [at for at, _ in seen]
    assert scheduled == sorted(set(scheduled))


async def test_remove_stops_and_reschedule_reads_the_trigger_again() -> None:
    timer = Timer()
    trigger: list[CronTrigger | None] = [EVERY_SECOND]
    fired: list[datetime] = []
    removed: list[datetime] = []
    entry = timer.add(lambda: trigger[0], fired.append)
    gone = timer.add(lambda: EVERY_SECOND, removed.append)
    gone.remove()
    assert gone.next is None and len(timer) == 1
    trigger[0] = None  # e.g. the cron was removed from the config: a one-off job now
    entry.reschedule()
    assert entry.next is None and len(timer) == 0
    async with anyio.create_task_group() as tg:
        await tg.start(timer.run)
        trigger[0] = EVERY_SECOND
        entry.reschedule()  # wakes the sleeping timer
        await eventually(lambda: fired, 5, what="a fire after the reschedule")
        tg.cancel_scope.cancel()
    assert removed == []


async def test_a_far_fire_sleeps_and_cancellation_ends_the_timer() -> None:
    timer = Timer()
    fired: list[datetime] = []
    timer.add(lambda: CronTrigger("0 0 0 1 1 ? 2099"), fired.append)
    with anyio.move_on_after(0.2) as scope:
        await timer.run()
    assert scope.cancelled_caught and fired == []


async def test_stale_slots_are_compacted() -> None:
    timer = Timer()
    entries = [timer.add(lambda: EVERY_SECOND, lambda at: None) for _ in range(100)]
    for entry in entries:
        entry.reschedule()
        entry.reschedule()
    assert len(timer) == 100
    timer._fire_due()  # nothing due yet: only the compaction
    assert len(timer._heap) == 100


async def test_scheduler_jobs_share_one_timer_and_stop_leaves_it_empty() -> None:
    MemoryStore.reset("timer-one")
    scheduler = Scheduler(settings=Settings(registry_url="memory://timer-one/ns"))
    runs: list[str] = []

    async def job(ctx: ShardingContext) -> None:
        runs.append(ctx.job_name)

    for i in range(20):
        scheduler.add_job(job, name=f"j{i}", cron="* * * * * ?")
    scheduler.add_job(job, name="oneoff")
    async with scheduler:
        timers = {id(r._timer) for r in scheduler._runners.values()}
        timer = next(iter(scheduler._runners.values()))._timer
        assert len(timers) == 1 and timer is not None
        assert len(timer) == 20  # the one-off job has no fire time
        assert gc.get_freeze_count() > 0  # what lives as long as the scheduler is frozen
        await eventually(lambda: len(set(runs)) == 20, 10, what="every cron job fired")
        scheduler._runners["j0"].request_stop()
        await eventually(lambda: len(timer) == 19, 5, what="the stopped job's entry removed")
    assert len(timer) == 0
    assert gc.get_freeze_count() == 0  # undone on exit


async def test_objects_frozen_by_someone_else_stay_frozen() -> None:
    MemoryStore.reset("timer-frozen")
    gc.freeze()  # e.g. the application's own start-up
    try:
        frozen = gc.get_freeze_count()
        scheduler = Scheduler(settings=Settings(registry_url="memory://timer-frozen/ns"))

        async def job(ctx: ShardingContext) -> None:
            pass

        scheduler.add_job(job, name="j", cron="* * * * * ?")
        async with scheduler:
            pass
        assert gc.get_freeze_count() > frozen // 2  # not unfrozen (some were freed since)
    finally:
        gc.unfreeze()


async def test_a_wall_clock_step_forward_fires_what_became_due_without_waiting_out_the_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The timer sleeps on the monotonic clock; cron times are wall-clock. A step forward (NTP
    # correcting a drifted clock, a VM resumed after a suspend) made a fire due an hour ahead
    # wait the whole hour more: the sleep is bounded so the wall clock is looked at again.
    import aioelastic._timer as timer_module

    at = datetime.fromtimestamp(int(time.time()) + 3600, UTC)
    once = CronTrigger(f"{at.second} {at.minute} {at.hour} {at.day} {at.month} ? {at.year}")
    timer, fired = Timer(), anyio.Event()
    timer.add(lambda: once, lambda scheduled: fired.set())
    async with anyio.create_task_group() as tg:
        await tg.start(timer.run)
        await anyio.sleep(0.1)  # asleep until the fire, an hour ahead
        offset = 3601.0
        fake = types.SimpleNamespace(time=lambda: time.time() + offset)
        monkeypatch.setattr(timer_module, "time", fake)
        with anyio.fail_after(5):
            await fired.wait()
        tg.cancel_scope.cancel()
