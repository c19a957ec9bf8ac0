"""Distributed-once listeners: hooks that run once per fire for the whole cluster."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from aioelastic import (
    DistributedOnceListener,
    DistributedOnceTimeoutError,
    Scheduler,
    Settings,
    ShardingContext,
    ShardingContexts,
)
from aioelastic._layout import JobPaths
from aioelastic.registry import MemoryStore
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


class Counting(DistributedOnceListener):
    def __init__(self, calls: list[tuple[str, str, list[int]]], name: str, timeout: float) -> None:
        super().__init__(started_timeout=timeout, completed_timeout=timeout)
        self.calls = calls
        self.name = name

    async def before_all_started(self, contexts: ShardingContexts) -> None:
        self.calls.append(("before", self.name, contexts.items))

    async def after_all_completed(self, contexts: ShardingContexts) -> None:
        self.calls.append(("after", self.name, contexts.items))


def make(
    url: str,
    name: str,
    calls: list[tuple[str, str, list[int]]],
    timeout: float = 10,
    errors: list[BaseException] | None = None,
    total: int = 4,
) -> Scheduler:
    scheduler = Scheduler(settings=Settings(registry_url=url, instance_id=name))

    async def handler(job: str, exc: BaseException) -> None:
        if errors is not None:
            errors.append(exc)

    @scheduler.job(
        name="once",
        sharding_total_count=total,
        error_handler=handler,
        listeners=[Counting(calls, name, timeout)],
    )
    async def work(ctx: ShardingContext) -> None:
        await anyio.sleep(0.05)

    return scheduler


@pytest.mark.zookeeper
async def test_hooks_run_once_across_three_instances(zk_url: str) -> None:
    calls: list[tuple[str, str, list[int]]] = []
    schedulers = [make(zk_url, f"inst-{k}", calls) for k in range(3)]
    async with AsyncExitStack() as stack:
        for s in schedulers:
            await stack.enter_async_context(s)
        runner = schedulers[0]._runners["once"]
        await eventually(
            lambda: (
                not runner.coordinator.reshard_pending()
                and all(runner.coordinator.owner(i) for i in range(4))
                and len({runner.coordinator.owner(i) for i in range(4)}) == 3
            ),
            timeout=15,
        )
        # Each fire is the later positive marker for the one before: a duplicate hook of a fire
        # is recorded before the next fire's hooks (the whole list is checked after the loop).
        rounds = 3
        for _round in range(rounds):
            n = len(calls)
            await schedulers[0].trigger("once")
            await eventually(lambda: len(calls) >= n + 2, timeout=15)  # noqa: B023 - awaited in this iteration
            assert [c[0] for c in calls[n : n + 2]] == ["before", "after"]
            # The hook got the claiming instance's own items.
            assert all(c[2] for c in calls[n:])
        assert [c[0] for c in calls] == ["before", "after"] * rounds


async def test_timeout_raises_a_clear_error() -> None:
    MemoryStore.reset("once-timeout")
    calls: list[tuple[str, str, list[int]]] = []
    errors: list[BaseException] = []
    scheduler = make("memory://once-timeout/ns", "solo", calls, timeout=0.3, errors=errors, total=2)
    async with scheduler:
        runner = scheduler._runners["once"]
        await eventually(lambda: runner.coordinator.owner(1) is not None)
        await scheduler.registry.create(JobPaths("ns", "once").item_disabled(1))
        await eventually(lambda: runner.coordinator.local_items() == [0])
        await scheduler.trigger("once")
        await eventually(lambda: len(errors) == 2, timeout=5)
    assert calls == []
    assert all(isinstance(e, DistributedOnceTimeoutError) for e in errors)
    assert "only 1/2 items started" in str(errors[0])
    assert "only 1/2 items completed" in str(errors[1])


async def test_single_instance_runs_hooks_once_per_fire() -> None:
    MemoryStore.reset("once-solo")
    calls: list[tuple[str, str, list[int]]] = []
    scheduler = make("memory://once-solo/ns", "solo", calls)
    async with scheduler:
        for n in (2, 4):
            await scheduler.trigger("once")
            await eventually(lambda: len(calls) == n)  # noqa: B023 - awaited in this iteration
    assert calls == [("before", "solo", [0, 1, 2, 3]), ("after", "solo", [0, 1, 2, 3])] * 2
