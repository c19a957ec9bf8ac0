"""The watch-maintained view over the embedded registry (the same code runs on ZooKeeper)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import pytest

from aioelastic._urls import parse_registry_url
from aioelastic.registry import CreateOp, DeleteOp, MemoryRegistry, MemoryStore, SetOp
from aioelastic.registry._view import TreeView

pytestmark = pytest.mark.anyio


@pytest.fixture
async def registry() -> AsyncIterator[MemoryRegistry]:
    MemoryStore.reset("viewtest")
    async with AsyncExitStack() as stack:
        reg = MemoryRegistry(parse_registry_url("memory://viewtest/ns"))
        await reg.start(stack)
        await reg.create("/ns/job/a", b"1", make_parents=True)
        yield reg


async def test_view_follows_changes(registry: MemoryRegistry) -> None:
    view = TreeView(registry, "/ns/job")
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        assert view.get("/ns/job/a") == b"1"
        await registry.set("/ns/job/a", b"2")
        await registry.create("/ns/job/b/c", b"deep", make_parents=True)
        assert await view.wait_for(lambda: view.get("/ns/job/b/c") == b"deep", 2)
        assert view.get("/ns/job/a") == b"2"
        assert view.children("/ns/job") == ["a", "b"]
        await registry.delete("/ns/job/b", recursive=True)
        assert await view.wait_for(lambda: not view.exists("/ns/job/b"), 2)
        assert not view.exists("/ns/job/b/c")
        tg.cancel_scope.cancel()


async def test_deleted_and_recreated_path_is_watched_again(registry: MemoryRegistry) -> None:
    # aiozk's recipes stop watching such a path; ours must not.
    view = TreeView(registry, "/ns/job")
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        for round_ in range(3):
            await registry.delete("/ns/job/a")
            await registry.create("/ns/job/a", f"v{round_}".encode())
            await registry.set("/ns/job/a", f"w{round_}".encode())
            assert await view.wait_for(
                lambda r=round_: view.get("/ns/job/a") == f"w{r}".encode(), 2
            )
        # The root itself deleted and re-created.
        await registry.delete("/ns/job", recursive=True)
        assert await view.wait_for(lambda: not view.exists("/ns/job"), 2)
        await registry.create("/ns/job/x", b"x", make_parents=True)
        assert await view.wait_for(lambda: view.get("/ns/job/x") == b"x", 2)
        tg.cancel_scope.cancel()


async def test_multi_op_is_seen_whole(registry: MemoryRegistry) -> None:
    await registry.create("/ns/job/flag")
    view = TreeView(registry, "/ns/job")
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        await registry.transaction(
            [CreateOp("/ns/job/o1", b"A"), SetOp("/ns/job/a", b"B"), DeleteOp("/ns/job/flag")]
        )
        assert await view.wait_for(lambda: not view.exists("/ns/job/flag"), 2)
        # Once the flag (deleted last) is gone, the earlier ops are visible too.
        assert view.get("/ns/job/o1") == b"A" and view.get("/ns/job/a") == b"B"
        tg.cancel_scope.cancel()


async def test_new_session_resyncs_and_drops_old_ephemerals(registry: MemoryRegistry) -> None:
    await registry.create("/ns/job/eph", b"e", ephemeral=True)
    view = TreeView(registry, "/ns/job")
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        assert view.exists("/ns/job/eph")
        old = registry.session_id
        registry.expire_session()
        assert registry.session_id != old
        assert await view.wait_for(lambda: not view.exists("/ns/job/eph"), 2)
        # Watches of the new session work.
        await registry.set("/ns/job/a", b"after")
        assert await view.wait_for(lambda: view.get("/ns/job/a") == b"after", 2)
        assert view.fresh
        tg.cancel_scope.cancel()


async def test_transaction_is_all_or_nothing(registry: MemoryRegistry) -> None:
    from aioelastic import TransactionFailedError

    with pytest.raises(TransactionFailedError) as info:
        await registry.transaction(
            [CreateOp("/ns/job/new", b"n"), SetOp("/ns/job/a", b"x", version=99)]
        )
    assert info.value.index == 1
    assert await registry.exists("/ns/job/new") is None
    data, stat = await registry.get("/ns/job/a")
    assert data == b"1" and stat.version == 0
