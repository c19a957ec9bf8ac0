"""Several schedulers sharing one embedded registry (one session each): sharding rules that do
not need separate processes — static sharding, disabled servers, IPv6 hosts and instance ids."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic._errors import InstanceIdConflictError
from aioelastic._layout import JobPaths
from aioelastic._sharding import ShardingStrategy, shard
from aioelastic.registry import MemoryStore
from tests.helpers import eventually

pytestmark = pytest.mark.anyio


def make(store: str, instance_id: str, host: str, **job: Any) -> Scheduler:
    scheduler = Scheduler(
        settings=Settings(registry_url=f"memory://{store}/ns", instance_id=instance_id, host=host)
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


async def test_static_sharding_keeps_the_assignment_when_instances_join() -> None:
    MemoryStore.reset("static")
    a, b = (
        make("static", "a", "h1", static_sharding=True),
        make("static", "b", "h2", static_sharding=True),
    )
    async with running(a, b):
        coord = a._runners["job"].coordinator
        # Static: whoever is there at the first sharding keeps the items.
        await eventually(lambda: not coord.reshard_pending() and None not in owners(a).values())
        before = owners(a)
        c = make("static", "c", "h3", static_sharding=True)
        async with running(c):
            await eventually(lambda: "c" in a._runners["job"].coordinator.available_instances())
            await eventually(lambda: owners(c) == before)
            assert owners(a) == before  # the newcomer got nothing
            assert not a._runners["job"].coordinator.reshard_pending()


async def test_without_static_sharding_a_newcomer_gets_items() -> None:
    MemoryStore.reset("dynamic")
    a, b = make("dynamic", "a", "h1"), make("dynamic", "b", "h2")
    async with running(a, b):
        await eventually(settled_on(a, ["a", "b"]))
        c = make("dynamic", "c", "h3")
        async with running(c):
            await eventually(settled_on(a, ["a", "b", "c"]))
        await eventually(settled_on(a, ["a", "b"]))  # and a leaver's items come back at once


async def test_disabling_a_server_moves_its_items_and_enabling_brings_them_back() -> None:
    MemoryStore.reset("disable")
    a, b = make("disable", "a", "h1"), make("disable", "b", "h2")
    async with running(a, b):
        await eventually(settled_on(a, ["a", "b"]))
        paths = JobPaths("ns", "job")
        await a.registry.set(paths.server("h2"), b"DISABLED")
        await eventually(settled_on(a, ["a"]))
        assert b._runners["job"].coordinator.local_items() == []
        await a.registry.set(paths.server("h2"), b"ENABLED")
        await eventually(settled_on(a, ["a", "b"]))


async def test_ipv6_hosts_and_instance_ids() -> None:
    MemoryStore.reset("ipv6")
    a = make("ipv6", "fe80::1@-@4242@-@x1", "fe80::1")
    b = make("ipv6", "[::1]:7@-@1@-@y2", "::1")
    async with running(a, b):
        await eventually(settled_on(a, ["fe80::1@-@4242@-@x1", "[::1]:7@-@1@-@y2"]))
        paths = JobPaths("ns", "job")
        assert (await a.registry.get(paths.server("::1")))[0] == b"ENABLED"
        assert await a.registry.exists(paths.instance("[::1]:7@-@1@-@y2")) is not None


async def test_a_second_scheduler_with_the_same_instance_id_fails_to_start() -> None:
    MemoryStore.reset("dupid")
    first, second = make("dupid", "same", "h1"), make("dupid", "same", "h2")
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
