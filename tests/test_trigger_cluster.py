"""Manual triggers across instances on a real ZooKeeper (three schedulers, three sessions)."""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from aioelastic import ExecutionSource, Scheduler, Settings, ShardingContext
from tests.harness.helpers import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper]


async def test_trigger_runs_every_live_instances_items_once_and_queues_during_a_run(
    zk_url: str,
) -> None:
    runs: list[tuple[str, int, ExecutionSource]] = []
    release = anyio.Event()
    schedulers = []
    for k in range(3):
        s = Scheduler(settings=Settings(registry_url=zk_url, instance_id=f"inst-{k}"))

        def make_job(name: str):  # type: ignore[no-untyped-def]
            async def oneoff(ctx: ShardingContext) -> None:
                runs.append((name, ctx.sharding_item, ctx.execution_source))
                if len(runs) <= 6:
                    await release.wait()

            return oneoff

        s.add_job(make_job(f"inst-{k}"), name="oneoff", sharding_total_count=6)
        schedulers.append(s)
    async with AsyncExitStack() as stack:
        for s in schedulers:
            await stack.enter_async_context(s)
        coord = schedulers[0]._runners["oneoff"].coordinator
        await eventually(
            lambda: (
                not coord.reshard_pending()
                and len({coord.owner(i) for i in range(6)} - {None}) == 3
            ),
            timeout=15,
        )
        await schedulers[0].trigger("oneoff")
        await eventually(lambda: len(runs) == 6, timeout=10)
        # Every item ran once, each on its owner.
        assert sorted(i for _, i, _ in runs) == list(range(6))
        assert all(coord.owner(i) == who for who, i, _ in runs)
        # A trigger while the items run is queued (as a misfire), not dropped.
        await schedulers[1].trigger("oneoff")
        await eventually(lambda: all(coord.is_misfired(i) for i in range(6)), timeout=10)
        release.set()
        await eventually(lambda: len(runs) >= 12, timeout=10)
        # A third fire is the marker: a duplicate run of the first two comes before it.
        await schedulers[2].trigger("oneoff")
        await eventually(lambda: len(runs) >= 18, timeout=10)
    assert len(runs) == 18
    assert Counter(i for _, i, _ in runs[:12]) == {i: 2 for i in range(6)}
    assert [src for _, _, src in runs[6:12]] == [ExecutionSource.MISFIRE] * 6
    assert Counter(i for _, i, _ in runs[12:]) == {i: 1 for i in range(6)}


async def test_run_finishing_while_the_server_is_down_leaves_no_running_mark(
    zk_restartable_server: Any,
) -> None:
    url = zk_restartable_server.url("suspended", session_timeout=10)
    scheduler = Scheduler(settings=Settings(registry_url=url, instance_id="solo"))
    started, release = anyio.Event(), anyio.Event()
    runs: list[ExecutionSource] = []

    @scheduler.job(sharding_total_count=1)
    async def slow(ctx: ShardingContext) -> None:
        runs.append(ctx.execution_source)
        started.set()
        await release.wait()

    async with scheduler:
        coord = scheduler._runners["slow"].coordinator
        await eventually(lambda: coord.owner(0) == "solo", timeout=10)
        await scheduler.trigger("slow")
        await started.wait()
        await anyio.to_thread.run_sync(zk_restartable_server.stop)
        release.set()  # the run completes while the session is suspended
        await anyio.sleep(0.5)
        await anyio.to_thread.run_sync(zk_restartable_server.start)
        # Same session after the restart: the mark must be deleted, not left to block item 0.
        await eventually(lambda: coord.view.fresh and not coord.is_running(0), timeout=15)
        await scheduler.trigger("slow")
        await eventually(lambda: len(runs) == 2, timeout=10)
    assert runs == [ExecutionSource.NORMAL_TRIGGER, ExecutionSource.NORMAL_TRIGGER]
