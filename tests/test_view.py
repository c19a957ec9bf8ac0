"""The watch-maintained view, over both registries (``backend``: embedded and ZooKeeper)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from anyio.abc import TaskGroup

from aioelastic.registry import CreateOp, DeleteOp, MemoryRegistry, Registry, SetOp
from aioelastic.registry._view import _LAZY_DELAY, SharedView, TreeView, View
from tests.conftest import Backend
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["tree", "shared"])
def kind(request: pytest.FixtureRequest) -> str:
    """Each view test runs on a job's own ``TreeView`` (one-shot watches) and on its part of
    the instance's ``SharedView`` (one tree watch on the namespace)."""
    kind: str = request.param
    return kind


async def start_view(kind: str, registry: Registry, job: str, tg: TaskGroup) -> View:
    view: View
    if kind == "tree":
        view = TreeView(registry, job)
    else:
        shared = SharedView(registry, job.rsplit("/", 1)[0])
        assert await shared.start(tg)
        view = shared.job(job)
    await tg.start(view.run)
    return view


@pytest.fixture
async def registry(backend: Backend) -> AsyncIterator[Registry]:
    async with backend.open() as reg:
        await reg.create(f"{backend.root}/job/a", b"1", make_parents=True)
        yield reg


@pytest.fixture
def job(backend: Backend) -> str:
    """The watched job root, ``/{namespace}/job``."""
    return f"{backend.root}/job"


async def test_view_follows_changes(registry: Registry, job: str, kind: str) -> None:
    async with anyio.create_task_group() as tg:
        view = await start_view(kind, registry, job, tg)
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


async def test_deleted_and_recreated_path_is_watched_again(
    registry: Registry, job: str, kind: str
) -> None:
    # aiozk's recipes stop watching such a path; ours must not.
    async with anyio.create_task_group() as tg:
        view = await start_view(kind, registry, job, tg)
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


async def test_multi_op_is_seen_whole(registry: Registry, job: str, kind: str) -> None:
    await registry.create(f"{job}/flag")
    async with anyio.create_task_group() as tg:
        view = await start_view(kind, registry, job, tg)
        await registry.transaction(
            [CreateOp(f"{job}/o1", b"A"), SetOp(f"{job}/a", b"B"), DeleteOp(f"{job}/flag")]
        )
        assert await view.wait_for(lambda: not view.exists(f"{job}/flag"), 10)
        # Once the flag (deleted last) is gone, the earlier ops are visible too.
        assert view.get(f"{job}/o1") == b"A" and view.get(f"{job}/a") == b"B"
        tg.cancel_scope.cancel()


async def test_new_session_resyncs_and_drops_old_ephemerals(
    registry: Registry, job: str, backend: Backend, kind: str
) -> None:
    await registry.create(f"{job}/eph", b"e", ephemeral=True)
    async with anyio.create_task_group() as tg:
        view = await start_view(kind, registry, job, tg)
        assert view.exists(f"{job}/eph")
        old = registry.session_id
        await backend.expire(registry)
        assert registry.session_id != old
        assert await view.wait_for(lambda: not view.exists(f"{job}/eph"), 10)
        # Watches of the new session work.
        await registry.set(f"{job}/a", b"after")
        assert await view.wait_for(lambda: view.get(f"{job}/a") == b"after", 10)
        assert await view.wait_for(lambda: view.fresh, 10)  # the shared one reloads meanwhile
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


async def test_a_shared_view_wakes_only_the_job_that_changed(registry: Registry, job: str) -> None:
    other = f"{job}-other"
    await registry.create(f"{other}/a", make_parents=True)
    async with anyio.create_task_group() as tg:
        shared = SharedView(registry, job.rsplit("/", 1)[0])
        assert await shared.start(tg)
        mine, theirs = shared.job(job), shared.job(other)
        woken_mine = mine.subscribe(lambda path: True)
        woken_theirs = theirs.subscribe(lambda path: True)
        await woken_mine.wait(0)  # forget the load's signal
        await woken_theirs.wait(0)
        await registry.set(f"{other}/a", b"x")
        assert await woken_theirs.wait(10)
        assert theirs.get(f"{other}/a") == b"x"
        assert not await woken_mine.wait(0)
        tg.cancel_scope.cancel()


async def test_a_shared_view_needs_no_read_for_its_own_writes(
    registry: Registry, job: str, backend: Backend
) -> None:
    async with anyio.create_task_group() as tg:
        shared = SharedView(registry, job.rsplit("/", 1)[0])
        assert await shared.start(tg)
        view = shared.job(job)
        before = registry.request_count
        await registry.transaction(
            [CreateOp(f"{job}/run", b"me", ephemeral=True), CreateOp(f"{job}/plain", b"p")]
        )
        await registry.create(f"{job}/deep/er", b"d", make_parents=True)
        assert view.get(f"{job}/run") == b"me" and view.get(f"{job}/deep/er") == b"d"
        stat = view.stat(f"{job}/run")
        assert stat is not None and stat.ephemeral_owner == registry.session_id
        await registry.transaction([DeleteOp(f"{job}/run"), DeleteOp(f"{job}/plain")])
        assert await view.wait_for(lambda: not view.exists(f"{job}/plain"), 10)
        # The writes themselves only (on ZooKeeper the make_parents create is three requests:
        # the failed try, the parent, the retry).
        assert registry.request_count - before == (5 if backend.name == "zookeeper" else 3)
        tg.cancel_scope.cancel()


async def test_a_shared_view_reads_others_marks_only_if_they_stay(
    registry: Registry, job: str, backend: Backend
) -> None:
    async with backend.open() as other, anyio.create_task_group() as tg:
        shared = SharedView(registry, job.rsplit("/", 1)[0])
        assert await shared.start(tg)
        view = shared.job(job)
        before = registry.request_count
        await other.create(f"{job}/a/running", b"other", ephemeral=True)
        await other.delete(f"{job}/a/running")
        await other.create(f"{job}/a/running", b"other", ephemeral=True)
        assert await view.wait_for(lambda: view.exists(f"{job}/a/running"), 10)
        # ZooKeeper's events carry no data: a short-lived mark is never read.
        if backend.name == "zookeeper":
            assert view.get(f"{job}/a/running") is None
            assert registry.request_count == before
        await eventually(
            lambda: view.get(f"{job}/a/running"),
            10 + _LAZY_DELAY,
            0.05,
            until=lambda data: data == b"other",
            what="the mark's data read once it stayed",
        )
        tg.cancel_scope.cancel()


async def test_the_embedded_shared_view_reads_the_store_itself(
    registry: Registry, job: str, backend: Backend
) -> None:
    if not isinstance(registry, MemoryRegistry):
        pytest.skip("only the embedded registry's store can be read in place")
    async with anyio.create_task_group() as tg:
        shared = SharedView(registry, backend.root)
        assert await shared.start(tg)
        view = shared.job(job)
        node = registry.store.nodes[f"{job}/a"]
        assert view.get(f"{job}/a") is node.data  # the store's bytes: no copy of them
        node.mtime = 12.5  # as a test moves a node's age: the view sees the store at once
        stat = view.stat(f"{job}/a")
        assert stat is not None and stat.mtime == 12.5
        # Outside the view's root, nothing (as a copy of the subtree would have it).
        await registry.create("/elsewhere", b"x")
        assert not shared.exists("/elsewhere") and shared.get("/elsewhere") is None
        tg.cancel_scope.cancel()
