"""The watch-maintained view, over both registries (``backend``: embedded and ZooKeeper)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest

from aioelastic.registry import CreateOp, DeleteOp, Registry, SetOp
from aioelastic.registry._view import TreeView
from tests.conftest import Backend

pytestmark = pytest.mark.anyio


@pytest.fixture
async def registry(backend: Backend) -> AsyncIterator[Registry]:
    async with backend.open() as reg:
        await reg.create(f"{backend.root}/job/a", b"1", make_parents=True)
        yield reg


@pytest.fixture
def job(backend: Backend) -> str:
    """The watched job root, ``/{namespace}/job``."""
    return f"{backend.root}/job"


async def test_view_follows_changes(registry: Registry, job: str) -> None:
    view = TreeView(registry, job)
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        assert view.get(f"{job}/a") == b"1"
        await registry.set(f"{job}/a", b"2")
        await registry.create(f"{job}/b/c", b"deep", make_parents=True)
        assert await view.wait_for(lambda: view.get(f"{job}/b/c") == b"deep", 10)
        assert view.get(f"{job}/a") == b"2"
        assert view.children(job) == ["a", "b"]
        await registry.delete(f"{job}/b", recursive=True)
        assert await view.wait_for(lambda: not view.exists(f"{job}/b"), 10)
        assert not view.exists(f"{job}/b/c")
        tg.cancel_scope.cancel()


async def test_deleted_and_recreated_path_is_watched_again(registry: Registry, job: str) -> None:
    # aiozk's recipes stop watching such a path; ours must not.
    view = TreeView(registry, job)
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        for round_ in range(3):
            await registry.delete(f"{job}/a")
            await registry.create(f"{job}/a", f"v{round_}".encode())
            await registry.set(f"{job}/a", f"w{round_}".encode())
            assert await view.wait_for(
                lambda: view.get(f"{job}/a") == f"w{round_}".encode(),  # noqa: B023 - awaited here
                10,
            )
        # The root itself deleted and re-created.
        await registry.delete(job, recursive=True)
        assert await view.wait_for(lambda: not view.exists(job), 10)
        await registry.create(f"{job}/x", b"x", make_parents=True)
        assert await view.wait_for(lambda: view.get(f"{job}/x") == b"x", 10)
        tg.cancel_scope.cancel()


async def test_multi_op_is_seen_whole(registry: Registry, job: str) -> None:
    await registry.create(f"{job}/flag")
    view = TreeView(registry, job)
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        await registry.transaction(
            [CreateOp(f"{job}/o1", b"A"), SetOp(f"{job}/a", b"B"), DeleteOp(f"{job}/flag")]
        )
        assert await view.wait_for(lambda: not view.exists(f"{job}/flag"), 10)
        # Once the flag (deleted last) is gone, the earlier ops are visible too.
        assert view.get(f"{job}/o1") == b"A" and view.get(f"{job}/a") == b"B"
        tg.cancel_scope.cancel()


async def test_new_session_resyncs_and_drops_old_ephemerals(
    registry: Registry, job: str, backend: Backend
) -> None:
    await registry.create(f"{job}/eph", b"e", ephemeral=True)
    view = TreeView(registry, job)
    async with anyio.create_task_group() as tg:
        await tg.start(view.run)
        assert view.exists(f"{job}/eph")
        old = registry.session_id
        await backend.expire(registry)
        assert registry.session_id != old
        assert await view.wait_for(lambda: not view.exists(f"{job}/eph"), 10)
        # Watches of the new session work.
        await registry.set(f"{job}/a", b"after")
        assert await view.wait_for(lambda: view.get(f"{job}/a") == b"after", 10)
        assert view.fresh
        tg.cancel_scope.cancel()


async def test_transaction_is_all_or_nothing(registry: Registry, job: str) -> None:
    from aioelastic import TransactionFailedError

    with pytest.raises(TransactionFailedError) as info:
        await registry.transaction(
            [CreateOp(f"{job}/new", b"n"), SetOp(f"{job}/a", b"x", version=99)]
        )
    assert info.value.index == 1
    assert await registry.exists(f"{job}/new") is None
    data, stat = await registry.get(f"{job}/a")
    assert data == b"1" and stat.version == 0
