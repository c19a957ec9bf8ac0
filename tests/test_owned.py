"""Owned tasks (``_owned.py``): the plain tasks that hold the job runners and the fires."""

from __future__ import annotations

import asyncio

import anyio
import pytest
from anyio.abc import TaskStatus

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic._owned import OwnedTasks
from aioelastic.registry import MemoryStore

pytestmark = pytest.mark.anyio


async def test_start_returns_once_the_task_reports_started_and_the_task_runs_on() -> None:
    owned = OwnedTasks(lambda: None)
    steps: list[str] = []
    go_on = anyio.Event()

    async def work(*, task_status: TaskStatus[None]) -> None:
        steps.append("starting")
        await anyio.sleep(0.01)
        task_status.started()
        await go_on.wait()
        steps.append("done")

    with anyio.fail_after(5):
        await owned.start(work)
        assert steps == ["starting"]
        go_on.set()
        assert await owned.wait(5)
    assert steps == ["starting", "done"]
    assert owned.error is None


async def test_a_failure_before_started_is_raised_to_the_starter() -> None:
    failed: list[bool] = []
    owned = OwnedTasks(lambda: failed.append(True))

    async def work(*, task_status: TaskStatus[None]) -> None:
        await anyio.sleep(0)
        raise ValueError("no registry")

    with anyio.fail_after(5), pytest.raises(ValueError, match="no registry"):
        await owned.start(work)
    assert failed == [True]
    assert not owned.tasks


async def test_a_task_ending_without_starting_fails_its_start() -> None:
    owned = OwnedTasks(lambda: None)

    async def work(*, task_status: TaskStatus[None]) -> None:
        return

    with anyio.fail_after(5), pytest.raises(RuntimeError, match="ended before it started"):
        await owned.start(work)


async def test_a_failing_task_cancels_the_others_keeps_its_error_and_tells_the_owner() -> None:
    told = anyio.Event()
    owned = OwnedTasks(told.set)
    cancelled = anyio.Event()

    async def sibling() -> None:
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    async def failing() -> None:
        await anyio.sleep(0.01)
        raise KeyError("bug")

    owned.start_soon(sibling())
    owned.start_soon(failing())
    with anyio.fail_after(5):
        await told.wait()
        await cancelled.wait()
        assert await owned.wait(5)
    assert isinstance(owned.error, KeyError)


async def test_cancel_goes_through_each_task_scope_so_shielded_cleanups_complete() -> None:
    owned = OwnedTasks(lambda: None)
    cleaned: list[str] = []
    inside = anyio.Event()

    async def work() -> None:
        try:
            inside.set()
            await anyio.sleep(60)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.05)  # a native Task.cancel() would cut this short
                cleaned.append("marks cleared")

    task = owned.start_soon(work())
    with anyio.fail_after(5):
        await inside.wait()
        owned.cancel()
        assert await owned.wait(5)
    assert cleaned == ["marks cleared"]
    assert not task.cancelled()  # the scope absorbed its own cancellation
    assert owned.error is None


async def test_wait_times_out_while_a_task_runs() -> None:
    owned = OwnedTasks(lambda: None)
    release = asyncio.Event()

    async def work() -> None:
        await release.wait()

    owned.start_soon(work())
    assert not await owned.wait(0.05)
    release.set()
    with anyio.fail_after(5):
        assert await owned.wait(5)


async def test_a_job_that_fails_after_starting_stops_the_scheduler_with_its_error() -> None:
    """The scheduler holds its job runners as owned tasks: a runner's own bug (here its
    stop raising) ends ``run`` with that error, and the other jobs stop too."""
    MemoryStore.reset("owned-fail")
    scheduler = Scheduler(settings=Settings(registry_url="memory://owned-fail/ns"))

    async def job(ctx: ShardingContext) -> None:
        pass

    scheduler.add_job(job, name="a", cron="0 0 0 1 1 ? 2099")
    scheduler.add_job(job, name="b", cron="0 0 0 1 1 ? 2099")
    errors: list[BaseException] = []

    async def run(*, task_status: TaskStatus[None]) -> None:
        try:
            await scheduler.run(task_status=task_status)
        except RuntimeError as exc:
            errors.append(exc)

    async def broken() -> None:
        raise RuntimeError("broken deregistration")

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(run)
            scheduler._runners["a"].coordinator.deregister = broken  # type: ignore[method-assign]
            scheduler.stop()
    assert [str(e) for e in errors] == ["broken deregistration"]
    assert not scheduler._runners
