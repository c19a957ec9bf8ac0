"""Several schedulers in one process sharing one registry (one session each; ``backend``: the
embedded one and ZooKeeper): sharding rules that do not need separate processes — static
sharding, disabled servers, IPv6 hosts and instance ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic._errors import InstanceIdConflictError
from aioelastic._layout import JobPaths
from aioelastic._sharding import ShardingStrategy, shard
from tests.conftest import Backend
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


def make(backend: Backend, instance_id: str, host: str, **job: Any) -> Scheduler:
    scheduler = Scheduler(
        settings=Settings(registry_url=backend.url, instance_id=instance_id, host=host)
    )

    async def work(ctx: ShardingContext) -> None: ...

    scheduler.add_job(work, name="job", sharding_total_count=6, **job)
    return scheduler


@asynccontextmanager
async def running(*schedulers: Scheduler) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for s in schedulers:
            await stack.enter_async_context(s)
        yield


def owners(s: Scheduler) -> dict[int, str | None]:
    coord = s._runners["job"].coordinator
    return {i: coord.owner(i) for i in range(6)}


def settled_on(s: Scheduler, ids: list[str]) -> Callable[[], bool]:
    want = {
        i: inst
        for inst, items in shard(ShardingStrategy.AVG_ALLOCATION, ids, "job", 6).items()
        for i in items
    }
    coord = s._runners["job"].coordinator
    return lambda: not coord.reshard_pending() and owners(s) == want


async def test_static_sharding_keeps_the_assignment_when_instances_join(backend: Backend) -> None:
    a, b = (
        make(backend, "a", "h1", static_sharding=True),
        make(backend, "b", "h2", static_sharding=True),
    )
    async with running(a, b):
        coord = a._runners["job"].coordinator
        # Static: whoever is there at the first sharding keeps the items.
        await eventually(lambda: not coord.reshard_pending() and None not in owners(a).values())
        before = owners(a)
        c = make(backend, "c", "h3", static_sharding=True)
        async with running(c):
            await eventually(lambda: "c" in a._runners["job"].coordinator.available_instances())
            await eventually(lambda: owners(c) == before)
            assert owners(a) == before  # the newcomer got nothing
            assert not a._runners["job"].coordinator.reshard_pending()


async def test_without_static_sharding_a_newcomer_gets_items(backend: Backend) -> None:
    a, b = make(backend, "a", "h1"), make(backend, "b", "h2")
    async with running(a, b):
        await eventually(settled_on(a, ["a", "b"]))
        c = make(backend, "c", "h3")
        async with running(c):
            await eventually(settled_on(a, ["a", "b", "c"]))
        await eventually(settled_on(a, ["a", "b"]))  # and a leaver's items come back at once


async def test_disabling_a_server_moves_its_items_and_enabling_brings_them_back(
    backend: Backend,
) -> None:
    a, b = make(backend, "a", "h1"), make(backend, "b", "h2")
    async with running(a, b):
        await eventually(settled_on(a, ["a", "b"]))
        paths = JobPaths(backend.namespace, "job")
        await a.registry.set(paths.server("h2"), b"DISABLED")
        await eventually(settled_on(a, ["a"]))
        assert b._runners["job"].coordinator.local_items() == []
        await a.registry.set(paths.server("h2"), b"ENABLED")
        await eventually(settled_on(a, ["a", "b"]))


async def test_ipv6_hosts_and_instance_ids(backend: Backend) -> None:
    a = make(backend, "fe80::1@-@4242@-@x1", "fe80::1")
    b = make(backend, "[::1]:7@-@1@-@y2", "::1")
    async with running(a, b):
        await eventually(settled_on(a, ["fe80::1@-@4242@-@x1", "[::1]:7@-@1@-@y2"]))
        paths = JobPaths(backend.namespace, "job")
        assert (await a.registry.get(paths.server("::1")))[0] == b"ENABLED"
        assert await a.registry.exists(paths.instance("[::1]:7@-@1@-@y2")) is not None


async def test_a_second_scheduler_with_the_same_instance_id_fails_to_start(
    backend: Backend,
) -> None:
    first, second = make(backend, "same", "h1"), make(backend, "same", "h2")
    async with running(first):
        await eventually(settled_on(first, ["same"]))
        coord = first._runners["job"].coordinator
        node = await first.registry.exists(coord.paths.instance("same"))
        with pytest.raises(InstanceIdConflictError, match="'same' is held by another session"):
            async with running(second):
                pass
        # The first keeps its node, its items and its leadership.
        assert await first.registry.exists(coord.paths.instance("same")) == node
        assert coord.holds_instance_node() and coord.is_leader
        assert coord.local_items() == list(range(6))


async def test_an_item_removed_and_added_back_while_it_runs_is_not_run_twice_at_once(
    backend: Backend,
) -> None:
    # Shrinking the sharding count deleted the removed items' nodes, their running marks
    # included: with the count raised again, the item's new owner ran it while the old run
    # still went on (ElasticJob's leader waits for running items; ours relies on the marks).
    from aioelastic import Operations

    running_now: dict[int, set[str]] = {0: set(), 1: set(), 2: set()}
    overlaps: list[tuple[int, str, set[str]]] = []
    ran: list[tuple[str, int]] = []
    release = anyio.Event()

    def make_instance(instance_id: str, host: str) -> Scheduler:
        s = Scheduler(
            settings=Settings(registry_url=backend.url, instance_id=instance_id, host=host)
        )

        async def work(ctx: ShardingContext) -> None:
            item = ctx.sharding_item
            if running_now[item]:
                overlaps.append((item, instance_id, set(running_now[item])))
            running_now[item].add(instance_id)
            ran.append((instance_id, item))
            try:
                if item == 2 and not release.is_set():
                    await release.wait()
            finally:
                running_now[item].discard(instance_id)

        s.add_job(work, name="job", sharding_total_count=3, misfire=True)
        return s

    a, b = make_instance("a", "h1"), make_instance("b", "h2")
    hosts = {"a": "h1", "b": "h2"}
    by_id = {"a": a, "b": b}
    async with running(a, b), Operations(backend.url) as ops:
        coord = a._runners["job"].coordinator

        def settled(total: int) -> bool:
            return not coord.reshard_pending() and all(
                coord.owner(i) is not None for i in range(total)
            )

        await eventually(lambda: settled(3), 15, what="the first assignment")
        first = coord.owner(2)
        assert first is not None
        other = "b" if first == "a" else "a"
        await a.trigger("job")
        await eventually(lambda: running_now[2] == {first}, 10, what="item 2 running")
        await ops.update_job_config("job", sharding_total_count=2)
        await eventually(lambda: coord.config.sharding_total_count == 2 and settled(2), 15)
        await ops.disable_server("job", hosts[first])  # item 2 goes to the other instance
        await ops.update_job_config("job", sharding_total_count=3)
        await eventually(lambda: settled(3) and coord.owner(2) == other, 15, what="reassigned")
        assert coord.is_running(2)  # the old run's mark is still there
        before = len(ran)
        await by_id[other].trigger("job")  # the fire finds item 2 running: it misfires
        await eventually(lambda: coord.is_misfired(2), 15, what="the other's fire misfired")
        # (Its items not running may be re-run at once; item 2 waits for the old run.)
        assert not overlaps and (other, 2) not in ran[before:], (overlaps, ran[before:])
        release.set()  # the old run ends: the other instance runs the misfired items once
        await eventually(lambda: (other, 2) in ran[before:], 15, what="the misfire re-run")
        await eventually(lambda: not coord.is_running(2), 10, what="the re-run's end")
        assert set(ran[before:]) == {(other, 0), (other, 1), (other, 2)}
    assert not overlaps, overlaps


async def test_a_removed_items_node_goes_once_its_run_ends(backend: Backend) -> None:
    # Its running mark stays while the run goes on (see above); the run's end wakes the
    # leader, whose next reshard deletes the item's node.
    from aioelastic import Operations

    release, running_2 = anyio.Event(), anyio.Event()
    scheduler = Scheduler(settings=Settings(registry_url=backend.url, instance_id="a"))

    async def work(ctx: ShardingContext) -> None:
        if ctx.sharding_item == 2:
            running_2.set()
            await release.wait()

    scheduler.add_job(work, name="job", sharding_total_count=3)
    async with scheduler, Operations(backend.url) as ops:
        coord = scheduler._runners["job"].coordinator
        sharding = coord.paths.sharding
        await eventually(lambda: coord.owner(2) == "a", 10, what="assigned")
        await scheduler.trigger("job")
        await running_2.wait()
        await ops.update_job_config("job", sharding_total_count=2)
        await eventually(lambda: coord.config.sharding_total_count == 2, 10)
        await eventually(lambda: list(coord.view.children(coord.paths.item(2))) == ["running"], 10)
        assert [i.item for i in await ops.sharding("job")] == [0, 1, 2]  # still running
        release.set()
        await eventually(lambda: "2" not in coord.view.children(sharding), 10, what="removed")
        assert [i.item for i in await ops.sharding("job")] == [0, 1]


async def test_a_removed_item_whose_run_loses_its_session_leaves_no_node_behind(
    backend: Backend,
) -> None:
    # The attack on the kept running mark: the session that holds it ends mid-run (the
    # ephemeral goes with it, the run is fenced). The leader must still delete the item's
    # node, and the item must not run again.
    from aioelastic import Operations

    runs: list[int] = []
    running_2 = anyio.Event()
    scheduler = Scheduler(settings=Settings(registry_url=backend.url, instance_id="a"))

    async def work(ctx: ShardingContext) -> None:
        runs.append(ctx.sharding_item)
        if ctx.sharding_item == 2:
            running_2.set()
            await anyio.sleep_forever()  # until fenced

    scheduler.add_job(work, name="job", sharding_total_count=3)
    async with scheduler, Operations(backend.url) as ops:
        coord = scheduler._runners["job"].coordinator
        await eventually(lambda: coord.owner(2) == "a", 10, what="assigned")
        await scheduler.trigger("job")
        await running_2.wait()
        await ops.update_job_config("job", sharding_total_count=2)
        await eventually(lambda: list(coord.view.children(coord.paths.item(2))) == ["running"], 10)
        await backend.expire(scheduler.registry)
        sharding = coord.paths.sharding

        def removed() -> bool:  # (a view reloading after the new session shows no children)
            kids = coord.view.children(sharding)
            return coord.view.fresh and "0" in kids and "2" not in kids

        await eventually(removed, 20, what="removed")
        assert [i.item for i in await ops.sharding("job")] == [0, 1]
    assert runs.count(2) == 1
