"""The leader's bookkeeping of members across reshards that did not write: a member that
joined while another reshard was being written still gets items (without waiting for the
reconcile interval), and an unchanged member set brings no second reshard."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import anyio
import pytest

from aioelastic import JobConfig
from aioelastic._coordination import JobCoordinator, make_identity
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic.registry import MemoryRegistry, MemoryStore
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio

TOTAL = 4


async def _member(
    stack: AsyncExitStack, tg: anyio.abc.TaskGroup, store: str, instance: str
) -> JobCoordinator:
    registry = MemoryRegistry(parse_registry_url(f"memory://{store}/ns"))
    await registry.start(stack)
    config = JobConfig(name="job", sharding_total_count=TOTAL)
    coord = JobCoordinator(registry, JobPaths("ns", "job"), make_identity(instance, "h"), config)
    await coord.register()
    await tg.start(coord.view.run)
    return coord


async def _lead(coord: JobCoordinator) -> None:
    """Leader steps until the flag is gone and every item has an owner."""
    await eventually(coord.holds_instance_node, 10)
    with anyio.fail_after(10):
        while not coord.is_leader or coord.reshard_pending() or coord.owner(TOTAL - 1) is None:
            await coord.leader_step()
            await coord.view.wait_changed(0.2)


def _owners(coord: JobCoordinator) -> set[str | None]:
    return {coord.owner(i) for i in range(TOTAL)}


async def test_a_member_seen_while_another_reshard_was_written_gets_items() -> None:
    store = f"race{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(store)
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        a = await _member(stack, tg, store, "a")
        await _lead(a)
        assert _owners(a) == {"a"}
        # A reshard flagged (say, by a config change) is being written over {a} by another
        # task of the leader (a fire waiting for it) when b joins.
        await a.registry.create(a.paths.sharding_necessary)
        await eventually(a.reshard_pending, 5)
        async with anyio.create_task_group() as steps:
            async with a._reshard_lock:
                b = await _member(stack, tg, store, "b")
                await eventually(lambda: "b" in a.available_instances(), 5)
                # The leader step takes in {a, b} and waits for the lock...
                steps.start_soon(a.leader_step)
                await eventually(lambda: len(a._reshard_lock._waiters or ()) == 1, 5)
                # ...while the other reshard, made over {a}, commits.
                await a.registry.delete(a.paths.sharding_necessary)
                await eventually(lambda: not a.reshard_pending(), 5)
        # Without the reconcile interval (minutes), b gets items from the next leader steps.
        with anyio.fail_after(5):
            while "b" not in _owners(a):
                await a.leader_step()
                await a.view.wait_changed(0.2)
        await eventually(lambda: "b" in _owners(b), 5)
        tg.cancel_scope.cancel()


async def test_a_reshard_that_found_nothing_to_do_brings_no_second_one() -> None:
    store = f"race{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(store)
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        a = await _member(stack, tg, store, "a")
        await _lead(a)
        assert not await a.reshard()  # no flag: nothing written
        for _ in range(3):
            await a.leader_step()
        assert not a.reshard_pending()
        assert not await a.registry.exists(a.paths.sharding_necessary)
        tg.cancel_scope.cancel()
