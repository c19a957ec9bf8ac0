"""ZooKeeperRegistry against a real ZooKeeper 3.8 (tests/harness/zookeeper.py), no mocks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import pytest

from aioelastic._errors import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RegistryError,
    SessionLostError,
    TransactionFailedError,
)
from aioelastic._urls import parse_registry_url
from aioelastic.registry import (
    SESSION_LOSS_FRACTION,
    CheckOp,
    CreateOp,
    DeleteOp,
    Op,
    Registry,
    SessionEvent,
    SessionState,
    SetOp,
    WatchEvent,
    WatchEventType,
    ZooKeeperRegistry,
)
from tests.harness.zookeeper import (
    Recorder,
    ZooKeeperServer,
    barrier,
    drop_connection,
    expire_session,
    free_port,
)

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper]

CONNECTED, SUSPENDED, LOST = SessionState.CONNECTED, SessionState.SUSPENDED, SessionState.LOST
CREATED, DELETED = WatchEventType.CREATED, WatchEventType.DELETED
CHANGED, CHILDREN = WatchEventType.CHANGED, WatchEventType.CHILDREN


def ns(url: str) -> str:
    return "/" + parse_registry_url(url).namespace


@contextlib.asynccontextmanager
async def registry(url: str, **kwargs: float) -> AsyncIterator[ZooKeeperRegistry]:
    async with AsyncExitStack() as stack:
        reg = ZooKeeperRegistry(parse_registry_url(url), **kwargs)
        await reg.start(stack)
        yield reg


def with_auth(url: str, creds: str) -> str:
    return url.replace("zookeeper://", f"zookeeper://{creds}@")


async def test_protocol_conformance_and_crud_errors(zk_url: str) -> None:
    root = ns(zk_url)
    async with registry(zk_url) as reg:
        assert isinstance(reg, Registry)
        assert reg.session_state is CONNECTED and reg.session_id != 0
        assert await reg.create(root) == root
        assert await reg.create(f"{root}/a", b"one") == f"{root}/a"
        data, stat = await reg.get(f"{root}/a")
        assert (data, stat.version, stat.ephemeral_owner) == (b"one", 0, 0)
        assert abs(stat.mtime - time.time()) < 60
        assert (await reg.set(f"{root}/a", b"two")).version == 1
        assert (await reg.get(f"{root}/a"))[0] == b"two"
        assert await reg.exists(f"{root}/missing") is None
        exists = await reg.exists(root)
        assert exists is not None and exists.num_children == 1
        assert await reg.get_children(root) == ["a"]
        with pytest.raises(NodeExistsError):
            await reg.create(f"{root}/a")
        for call in (reg.get, reg.get_children, reg.delete):
            with pytest.raises(NoNodeError):
                await call(f"{root}/missing")
        with pytest.raises(NoNodeError):
            await reg.set(f"{root}/missing", b"")
        with pytest.raises(NoNodeError):
            await reg.create(f"{root}/no/parent")
        with pytest.raises(NotEmptyError):
            await reg.delete(root)
        seq = [await reg.create(f"{root}/s-", sequential=True) for _ in range(2)]
        assert seq[0] < seq[1] and seq[0].startswith(f"{root}/s-") and len(seq[0]) > 5
        await reg.delete(f"{root}/a")
        assert await reg.exists(f"{root}/a") is None
        assert reg.request_count >= 16


async def test_explicit_versions(zk_url: str) -> None:
    path = ns(zk_url)
    async with registry(zk_url) as reg:
        await reg.create(path, b"0")
        await reg.set(path, b"1", version=0)
        with pytest.raises(BadVersionError):
            await reg.set(path, b"x", version=0)  # no stat cache: the version we pass is used
        assert (await reg.set(path, b"2")).version == 2  # -1 = any
        with pytest.raises(BadVersionError):
            await reg.delete(path, version=1)
        await reg.delete(path, version=2)


async def test_make_parents_are_persistent_plain_nodes(zk_url: str) -> None:
    root = ns(zk_url)
    leaf = f"{root}/job/sharding/0/running"
    async with registry(zk_url) as reg:
        assert await reg.create(leaf, b"x", ephemeral=True, make_parents=True) == leaf
        assert (await reg.get(leaf))[1].ephemeral_owner == reg.session_id
        await reg.create(f"{root}/job/sharding/1/instance", make_parents=True)  # partly there
        await reg.delete(leaf)
        # A container node would be reaped within ~0.2 s once empty (the harness sets the
        # reaper interval): watch three reaper rounds go by.
        await anyio.sleep(0.6)
        for parent in (root, f"{root}/job", f"{root}/job/sharding", f"{root}/job/sharding/0"):
            stat = await reg.exists(parent)
            assert stat is not None and stat.ephemeral_owner == 0, parent  # not ephemeral/container
    async with registry(zk_url) as other:  # they survive the session that made them
        assert sorted(await other.get_children(f"{root}/job/sharding")) == ["0", "1"]


async def test_recursive_delete(zk_url: str) -> None:
    root = ns(zk_url)
    async with registry(zk_url) as reg:
        for path in ("a/b/c", "a/b/d", "a/e", "f"):
            await reg.create(f"{root}/{path}", b"", make_parents=True)
        with pytest.raises(BadVersionError):
            await reg.delete(f"{root}/a", version=5, recursive=True)
        assert await reg.exists(f"{root}/a/b/c") is not None  # nothing deleted on BadVersion
        await reg.delete(f"{root}/a", recursive=True)
        assert await reg.get_children(root) == ["f"]
        await reg.delete(f"{root}/f", recursive=True)  # a leaf
        with pytest.raises(NoNodeError):
            await reg.delete(f"{root}/a", recursive=True)


async def test_ephemerals_vanish_when_the_session_closes(zk_url: str) -> None:
    root = ns(zk_url)
    async with registry(zk_url) as observer:
        await observer.create(root)
        gone = Recorder()
        async with registry(zk_url) as owner:
            await owner.create(f"{root}/e", ephemeral=True)
            stat = await observer.exists(f"{root}/e", gone)
            assert stat is not None and stat.ephemeral_owner == owner.session_id
            listener = Recorder()
            owner.add_session_listener(listener)
        assert listener.states() == [LOST] and owner.session_state is LOST
        await gone.until(lambda calls: calls == [WatchEvent(DELETED, f"{root}/e")])
        with pytest.raises(SessionLostError):
            await owner.get(root)


async def test_transaction_is_atomic_and_reports_the_failing_op(zk_url: str) -> None:
    root = ns(zk_url)
    async with registry(zk_url) as reg:
        await reg.create(root)
        await reg.create(f"{root}/a", b"a")
        await reg.create(f"{root}/gone")
        await reg.transaction(
            [
                CheckOp(f"{root}/a", 0),
                CreateOp(f"{root}/b", b"b"),
                CreateOp(f"{root}/eph", ephemeral=True),
                SetOp(f"{root}/a", b"a1", version=0),
                DeleteOp(f"{root}/gone"),
            ]
        )
        assert sorted(await reg.get_children(root)) == ["a", "b", "eph"]
        assert (await reg.get(f"{root}/eph"))[1].ephemeral_owner == reg.session_id
        failing: list[tuple[Op, type[RegistryError]]] = [
            (CheckOp(f"{root}/a", 0), BadVersionError),  # it is at version 1 now
            (CreateOp(f"{root}/b"), NodeExistsError),
            (DeleteOp(f"{root}/missing"), NoNodeError),
            (SetOp(f"{root}/a", b"x", version=7), BadVersionError),
        ]
        for index, (bad_op, cause) in enumerate(failing):
            ops = [CreateOp(f"{root}/new"), bad_op, SetOp(f"{root}/b", b"b1")]
            with pytest.raises(TransactionFailedError) as info:
                await reg.transaction(ops)
            assert info.value.index == 1, index
            assert isinstance(info.value.cause, cause)
        assert await reg.exists(f"{root}/new") is None
        data, stat = await reg.get(f"{root}/b")
        assert (data, stat.version) == (b"b", 0)
        await reg.transaction([])


async def test_watches_fire_once_with_the_first_change(zk_url: str) -> None:
    root = ns(zk_url)
    async with registry(zk_url) as reg, registry(zk_url) as other:
        await reg.create(root)
        await reg.create(f"{root}/d", b"0")
        data, child, created, both = Recorder(), Recorder(), Recorder(), Recorder()
        await reg.get(f"{root}/d", data)
        await reg.get(f"{root}/d", data)  # same watcher, same node: called once
        await reg.get_children(root, child)
        assert await reg.exists(f"{root}/later", created) is None
        await reg.get(f"{root}/d", both)
        await reg.get_children(f"{root}/d", both)
        await other.set(f"{root}/d", b"1")
        await other.set(f"{root}/d", b"2")
        await other.create(f"{root}/later")
        await other.create(f"{root}/d/kid")
        await data.until(lambda c: len(c) >= 1)
        await created.until(lambda c: len(c) >= 1)
        await child.until(lambda c: len(c) >= 1)
        await both.until(lambda c: len(c) >= 2)
        await barrier(reg, other, root)  # nothing else may arrive
        assert data.calls == [WatchEvent(CHANGED, f"{root}/d")]
        assert created.calls == [WatchEvent(CREATED, f"{root}/later")]
        assert child.calls == [WatchEvent(CHILDREN, root)]
        assert both.calls == [WatchEvent(CHANGED, f"{root}/d"), WatchEvent(CHILDREN, f"{root}/d")]
        with pytest.raises(NoNodeError):
            await reg.get(f"{root}/none", Recorder())  # no watch is left behind


async def test_delete_then_recreate_of_a_watched_path(zk_url: str) -> None:
    path = ns(zk_url)
    async with registry(zk_url) as reg, registry(zk_url) as other:
        await reg.create(path)
        on_data, on_children, on_exists = Recorder(), Recorder(), Recorder()
        await reg.get(path, on_data)
        await reg.get_children(path, on_children)
        await reg.exists(path, on_exists)
        await other.delete(path)
        for rec in (on_data, on_children, on_exists):
            await rec.until(lambda c: c == [WatchEvent(DELETED, path)])
        again = Recorder()
        assert await reg.exists(path, again) is None  # re-armed on the absent node
        await other.create(path)
        await again.until(lambda c: c == [WatchEvent(CREATED, path)])
        await other.set(path, b"x")
        following = Recorder()
        await reg.get(path, following)
        await other.set(path, b"y")
        await following.until(lambda c: c == [WatchEvent(CHANGED, path)])
        assert again.calls == [WatchEvent(CREATED, path)]


async def test_watches_survive_a_dropped_connection(zk_url: str) -> None:
    root = ns(zk_url)
    async with registry(zk_url) as reg, registry(zk_url) as other:
        await reg.create(root)
        for name in ("changed", "deleted", "quiet"):
            await reg.create(f"{root}/{name}")
        listener = Recorder()
        reg.add_session_listener(listener)
        session = reg.session_id
        changed, deleted, created, children, quiet = (Recorder() for _ in range(5))
        await reg.get(f"{root}/changed", changed)
        await reg.get(f"{root}/deleted", deleted)  # fires only on deletion (DELETED-only)
        await reg.exists(f"{root}/created", created)
        await reg.get_children(root, children)
        await reg.get(f"{root}/quiet", quiet)
        drop_connection(reg)
        await listener.until(lambda c: len(c) >= 1)
        await other.delete(f"{root}/deleted")  # while we may be disconnected
        await listener.until_state(CONNECTED)
        assert listener.states() == [SUSPENDED, CONNECTED] and reg.session_id == session
        await deleted.until(lambda c: c == [WatchEvent(DELETED, f"{root}/deleted")])
        await children.until(lambda c: c == [WatchEvent(CHILDREN, root)])
        await other.set(f"{root}/changed", b"x")
        await other.create(f"{root}/created")
        await changed.until(lambda c: c == [WatchEvent(CHANGED, f"{root}/changed")])
        await created.until(lambda c: c == [WatchEvent(CREATED, f"{root}/created")])
        await barrier(reg, other, root)
        assert quiet.calls == []  # no spurious event from re-arming (relative zxid is right)


async def test_many_watches_are_re_armed_in_batches(zk_url: str) -> None:
    root = ns(zk_url)
    names = [f"{i:04d}-" + "x" * 180 for i in range(800)]  # > 128 KiB of paths: 2 batches
    async with registry(zk_url) as reg, registry(zk_url) as other:
        await reg.create(root)
        recorders = [Recorder() for _ in names]
        async with anyio.create_task_group() as tg:
            for name, rec in zip(names, recorders, strict=True):
                tg.start_soon(reg.exists, f"{root}/{name}", rec)
        listener = Recorder()
        reg.add_session_listener(listener)
        drop_connection(reg)
        await listener.until_state(CONNECTED)
        for name in (names[0], names[-1]):
            await other.create(f"{root}/{name}")
        await recorders[0].until(lambda c: c == [WatchEvent(CREATED, f"{root}/{names[0]}")])
        await recorders[-1].until(lambda c: c == [WatchEvent(CREATED, f"{root}/{names[-1]}")])
        await reg.delete(root, recursive=True)


async def test_expired_session_is_lost_then_replaced(zk_url: str) -> None:
    root = ns(zk_url)
    async with registry(zk_url) as reg, registry(zk_url) as other:
        await reg.create(root)
        await reg.create(f"{root}/mine", ephemeral=True)
        stale = Recorder()
        await reg.get(root, stale)
        listener = Recorder()
        reg.add_session_listener(listener)
        old = reg.session_id
        await expire_session(reg)
        # Attaching to the session drops reg's connection and reg may resume it (a CONNECTED
        # of the old session) before the server expires it: wait for the new session's.
        await listener.until(
            lambda calls: (
                SessionEvent(LOST, old) in calls
                and calls[-1] == SessionEvent(CONNECTED, reg.session_id)
            ),
            timeout=15,
        )
        assert [e for e in listener.calls if e == SessionEvent(LOST, old)] == [listener.calls[-2]]
        assert listener.states()[-2:] == [LOST, CONNECTED]
        assert listener.calls[-1] == SessionEvent(CONNECTED, reg.session_id)
        assert reg.session_id != old
        assert await other.exists(f"{root}/mine") is None  # the old ephemeral is gone
        await other.set(root, b"changed")
        await barrier(reg, other, root)
        assert stale.calls == []  # watches of the old session are never delivered
        await reg.create(f"{root}/mine", ephemeral=True)  # the new session works


async def test_server_restart_within_the_timeout_keeps_the_session(
    zk_restartable_server: ZooKeeperServer,
) -> None:
    server = zk_restartable_server
    # A JVM restart can take more than 5 s on a loaded machine: a timeout well beyond that.
    url = server.url("restart", session_timeout=20)
    async with registry(url) as reg, AsyncExitStack():
        await reg.create("/restart")
        await reg.create("/restart/eph", ephemeral=True)
        watch = Recorder()
        await reg.get("/restart", watch)
        listener = Recorder()
        reg.add_session_listener(listener)
        session = reg.session_id
        await anyio.to_thread.run_sync(server.restart)  # the loop keeps running meanwhile
        await listener.until_state(CONNECTED, timeout=20)
        assert listener.states() == [SUSPENDED, CONNECTED] and reg.session_id == session
        assert (await reg.get("/restart/eph"))[1].ephemeral_owner == session
        await reg.set("/restart", b"x")
        await watch.until(lambda c: c == [WatchEvent(CHANGED, "/restart")])


async def test_suspended_too_long_is_declared_lost_before_the_server_expires_it(
    zk_restartable_server: ZooKeeperServer,
) -> None:
    server = zk_restartable_server
    url = server.url("frozen", session_timeout=3)
    async with registry(url) as reg:
        timeout = reg.negotiated_timeout
        await reg.create("/frozen")
        await reg.create("/frozen/eph", ephemeral=True)
        listener = Recorder()
        reg.add_session_listener(listener)
        old = reg.session_id
        await reg.exists("/frozen")  # a fresh answer: the server last heard from us now
        heard = time.monotonic()
        server.pause()
        try:
            await listener.until_state(LOST, timeout=timeout)
            lost_after = time.monotonic() - heard
            with pytest.raises(SessionLostError):
                await reg.get("/frozen")  # LOST: fails at once
        finally:
            server.resume()
        assert listener.states() == [SUSPENDED, LOST]
        assert lost_after <= timeout * SESSION_LOSS_FRACTION + 0.3 < timeout
        await listener.until(lambda _: listener.states()[-1] is CONNECTED, timeout=10)
        assert reg.session_id != old
        # The old session was closed on the server, not left to expire with its ephemeral.
        assert await reg.exists("/frozen/eph") is None


async def test_outage_past_the_loss_limit_ends_in_a_new_session(
    zk_restartable_server: ZooKeeperServer,
) -> None:
    server = zk_restartable_server
    async with registry(server.url("outage", session_timeout=3)) as reg:
        await reg.create("/outage")
        await reg.create("/outage/eph", ephemeral=True)
        listener = Recorder()
        reg.add_session_listener(listener)
        old = reg.session_id
        server.stop(kill=True)
        await listener.until_state(LOST)
        await anyio.to_thread.run_sync(server.start)  # the old session lives there again
        await listener.until(lambda _: listener.states()[-1] is CONNECTED, timeout=10)
        assert listener.states() == [SUSPENDED, LOST, CONNECTED] and reg.session_id != old
        assert await reg.exists("/outage/eph") is None  # we closed it rather than wait


async def test_abandoning_a_suspended_session(zk_restartable_server: ZooKeeperServer) -> None:
    server = zk_restartable_server
    async with registry(server.url("abandon", session_timeout=6)) as reg:
        await reg.create("/abandon")
        await reg.create("/abandon/eph", ephemeral=True)
        listener = Recorder()
        reg.add_session_listener(listener)
        old = reg.session_id
        server.stop()
        await listener.until_state(SUSPENDED)
        reg.abandon_session("process paused")  # well before the 4 s loss limit
        assert listener.states() == [SUSPENDED, LOST] and reg.session_state is LOST
        with pytest.raises(SessionLostError):
            await reg.get("/abandon")
        await anyio.to_thread.run_sync(server.start)  # old session: closed, not resumed
        await listener.until_state(CONNECTED, timeout=20)  # reconnect backoff, a loaded machine
        assert listener.states() == [SUSPENDED, LOST, CONNECTED] and reg.session_id != old
        assert await reg.exists("/abandon/eph") is None


async def test_requests_have_deadlines(zk_restartable_server: ZooKeeperServer) -> None:
    server = zk_restartable_server
    url = server.url("deadline", session_timeout=3)
    async with registry(url, request_timeout=1.0) as reg:
        await reg.create("/deadline")
        server.pause()  # connection up, no answers
        try:
            started = time.monotonic()
            with pytest.raises(SessionLostError, match="within 1s"):
                await reg.get("/deadline")
            assert time.monotonic() - started < 1.5
        finally:
            server.resume()
        await reg.get("/deadline", Recorder())
        server.stop()  # connection refused from now on
        for _ in range(2):  # in flight when the connection breaks, then while SUSPENDED
            started = time.monotonic()
            with pytest.raises(SessionLostError):
                await reg.get("/deadline")
            assert time.monotonic() - started < 1.5
            assert reg.session_state is not CONNECTED


async def test_start_against_a_dead_port_fails_within_connect_timeout() -> None:
    url = f"zookeeper://127.0.0.1:{free_port()}/x?connect_timeout=1"
    started = time.monotonic()
    with pytest.raises(SessionLostError, match=r"127\.0\.0\.1:\d+ within 1s"):
        async with registry(url):
            pass
    assert time.monotonic() - started < 2


async def test_digest_acl_world_can_read_only(zk_url: str) -> None:
    root = ns(zk_url)
    owner_url = with_auth(zk_url, "svc:s3cret")
    async with registry(owner_url) as owner:
        await owner.create(f"{root}/job/config", b"cfg", make_parents=True)
        for url in (zk_url, with_auth(zk_url, "svc:wrong"), with_auth(zk_url, "intruder:x")):
            async with registry(url) as stranger:
                assert (await stranger.get(f"{root}/job/config"))[0] == b"cfg"
                assert await stranger.get_children(f"{root}/job") == ["config"]
                with pytest.raises(RegistryError, match="NoAuth"):
                    await stranger.set(f"{root}/job/config", b"evil")
                with pytest.raises(RegistryError, match="NoAuth"):
                    await stranger.delete(f"{root}/job/config")
                with pytest.raises(RegistryError, match="NoAuth"):
                    await stranger.create(f"{root}/job/x")
        assert "s3cret" not in str(owner.url)
    async with registry(owner_url) as again:  # a new session with the same credentials
        await again.set(f"{root}/job/config", b"v2")
        await again.delete(root, recursive=True)


async def test_an_owner_error_passes_through_unwrapped(zk_url: str) -> None:
    with pytest.raises(KeyError, match="boom"):  # not an ExceptionGroup from our task group
        async with registry(zk_url) as reg:
            await reg.exists("/")
            raise KeyError("boom")
    assert reg.session_state is LOST
