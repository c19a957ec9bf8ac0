"""An instance that falls behind its fires (more due than its loop can start) runs them late,
never not at all: a fire that arrives while the job's previous fire is still in progress here
misfires at once (ElasticJob: the job's one Quartz thread is busy, the trigger misfires), costs
no task and, once the misfire marks exist, no registry request; the fire in progress re-runs
the items once afterwards.

Before this, each overdue fire was a task of its own that went through the template up to its
running marks: at 3000 one-item jobs on a loaded 2-core machine, fires were created faster than
the loop could take them through, each conflicting with its predecessor's marks (a request, a
misfire write), and no job ran at all (benchmarks/RESULTS.md, "overload")."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import anyio
import pytest

from aioelastic import (
    ExecutionSource,
    JobListener,
    Scheduler,
    Settings,
    ShardingContext,
    ShardingContexts,
)
from tests.harness.helpers import CaptureSink, completions, eventually, statuses

from .conftest import Backend

pytestmark = pytest.mark.anyio

OVERDUE = 50


class HeldBefore(JobListener):
    """Holds the first fire in its before-listener (before any running mark) until released."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.release = anyio.Event()

    async def before_job_executed(self, contexts: ShardingContexts) -> None:
        self.calls.append(("before", contexts.execution_source.value))
        if len(self.calls) == 1:
            await self.release.wait()

    async def after_job_executed(self, contexts: ShardingContexts) -> None:
        self.calls.append(("after", contexts.execution_source.value))


def overdue(scheduler: Scheduler, job: str, n: int) -> None:
    """``n`` cron fires of ``job`` arrive at once, as from the instance's timer when it is far
    behind (the timer's own callback: the path a late cron fire takes)."""
    runner = scheduler._runners[job]
    for _ in range(n):
        runner._on_cron(datetime.now(UTC).replace(microsecond=0))


async def test_fires_arriving_before_the_previous_fire_marked_its_items_misfire_at_once(
    backend: Backend,
) -> None:
    sink = CaptureSink()
    scheduler = Scheduler(settings=Settings(registry_url=backend.url), sinks=[sink])
    listener = HeldBefore()
    runs: list[ExecutionSource] = []

    @scheduler.job(sharding_total_count=2, listeners=[listener])
    async def behind(ctx: ShardingContext) -> None:
        runs.append(ctx.execution_source)

    async with scheduler:
        coord = scheduler._runners["behind"].coordinator
        await eventually(lambda: coord.local_items() == [0, 1])
        overdue(scheduler, "behind", 1)
        await eventually(lambda: listener.calls == [("before", "NORMAL_TRIGGER")])
        tasks, requests = len(asyncio.all_tasks()), scheduler.registry.request_count
        overdue(scheduler, "behind", OVERDUE)  # while the first is before its running marks
        # No task per overdue fire: at most the one that writes the misfire marks.
        assert len(asyncio.all_tasks()) <= tasks + 1
        await eventually(lambda: coord.is_misfired(0) and coord.is_misfired(1))
        # The marks can be seen a loop step before their writer has returned.
        await eventually(lambda: len(asyncio.all_tasks()) <= tasks)
        overdue(scheduler, "behind", OVERDUE)  # the marks exist: nothing left to write
        assert len(asyncio.all_tasks()) <= tasks
        # one misfire multi-op (plus, on ZooKeeper, the view's reads of the new marks)
        assert scheduler.registry.request_count - requests <= (1 if backend.name == "memory" else 5)
        listener.release.set()
        await sink.wait_for(lambda events: len(completions(events, "behind")) == 2)
        await eventually(lambda: listener.calls[-1][0] == "after")
        assert not coord.is_misfired(0) and not coord.is_misfired(1)

    # The overdue fires came before the fire's items started: its run, which consumes their
    # misfire marks with its running marks, stands for them (no re-run), between one pair of
    # listener calls; each overdue fire is in the trace as misfired.
    assert runs == [ExecutionSource.NORMAL_TRIGGER] * 2
    assert listener.calls == [("before", "NORMAL_TRIGGER"), ("after", "NORMAL_TRIGGER")]
    misfired = [e for e in statuses(sink.events, "behind") if "still running" in e.message]
    assert len(misfired) == 2 * OVERDUE


@pytest.mark.parametrize("misfire", [True, False], ids=["misfire", "no-misfire"])
async def test_fires_arriving_while_the_items_run_cost_no_task_and_no_request(
    backend: Backend, misfire: bool
) -> None:
    sink = CaptureSink()
    scheduler = Scheduler(settings=Settings(registry_url=backend.url), sinks=[sink])
    release = anyio.Event()
    runs: list[ExecutionSource] = []

    @scheduler.job(misfire=misfire)
    async def slow(ctx: ShardingContext) -> None:
        runs.append(ctx.execution_source)
        if len(runs) == 1:
            await release.wait()

    async with scheduler:
        coord = scheduler._runners["slow"].coordinator
        await eventually(lambda: coord.local_items() == [0])
        overdue(scheduler, "slow", 1)
        await eventually(lambda: len(runs) == 1)
        overdue(scheduler, "slow", 1)
        if misfire:
            await eventually(lambda: coord.is_misfired(0))
        tasks, requests = len(asyncio.all_tasks()), scheduler.registry.request_count
        for _ in range(5):  # five seconds' worth of fires of a far-behind instance
            overdue(scheduler, "slow", OVERDUE)
            assert len(asyncio.all_tasks()) <= tasks
            await anyio.lowlevel.checkpoint()
        assert scheduler.registry.request_count == requests
        assert coord.is_misfired(0) is misfire  # without misfire: dropped, no marks
        release.set()
        await sink.wait_for(lambda events: len(completions(events, "slow")) == 1 + misfire)
        await eventually(lambda: not coord.is_misfired(0) and not coord.is_running(0))
    expected = [ExecutionSource.NORMAL_TRIGGER] + [ExecutionSource.MISFIRE] * misfire
    assert runs == expected
