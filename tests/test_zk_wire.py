"""The wire layer's direct decoders and batched reads, and the shared view's reads at scale
(issue 17): what another instance creates is read only where its data matters."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import anyio
import pytest
from aiozk import exc as zk_exc
from aiozk import protocol

from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic.registry import CheckOp, CreateOp, DeleteOp, SetOp
from aioelastic.registry._view import SharedView
from aioelastic.registry._wire import (
    Connection,
    WatchNote,
    _multi_reply,
    _reply,
    _watch_note,
    to_stat,
)
from aioelastic.registry._zookeeper import ZooKeeperRegistry
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


def test_watch_notifications_decode_like_aiozk() -> None:
    for kind, path in ((1, "/ns/job/a"), (2, "/x"), (3, "/ns/ü/ß"), (4, "")):
        raw = path.encode()
        body = struct.pack("!iii", kind, 3, len(raw)) + raw
        frame = struct.pack("!iqi", -1, -1, 0) + body
        ours, theirs = _watch_note(frame, 16), protocol.WatchEvent.deserialize(body)
        assert (ours.type, ours.state, ours.path) == (theirs.type, theirs.state, theirs.path)


def _frame(xid: int, body: bytes = b"") -> bytes:
    payload = struct.pack("!iqi", xid, -1, 0) + body
    return struct.pack("!i", len(payload)) + payload


def _note(kind: int, path: str) -> bytes:
    return _frame(-1, struct.pack("!iii", kind, 3, len(path.encode())) + path.encode())


async def test_watch_events_of_one_read_are_delivered_together_before_the_next_reply() -> None:
    """A read holding events, a reply, then more events: the events before the reply come in
    one call, before the reply is handled; those after it in the next call."""
    calls: list[tuple[list[tuple[int, str]], float | None]] = []
    async with (
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        anyio.create_task_group() as tg,
    ):
        served: list[anyio.abc.SocketStream] = []
        accepted = anyio.Event()

        async def serve(stream: anyio.abc.SocketStream) -> None:
            served.append(stream)
            accepted.set()
            await anyio.sleep_forever()

        tg.start_soon(listener.serve, serve)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        conn = await Connection.open("127.0.0.1", port, 0)
        conn.ping_sent_at = 5.0  # the ping reply in the middle clears it

        def on_events(notes: list[WatchNote]) -> None:
            calls.append(([(n.type, n.path) for n in notes], conn.ping_sent_at))

        tg.start_soon(conn.run, on_events, lambda _: None)
        with anyio.fail_after(10):
            await accepted.wait()
            blob = _note(1, "/ns/a") + _note(2, "/ns/b") + _frame(-2) + _note(3, "/ns/c")
            await served[0].send(blob)  # one write: one read on our side
            await eventually(lambda: len(calls) == 2, timeout=10)
        assert calls == [([(1, "/ns/a"), (2, "/ns/b")], 5.0), ([(3, "/ns/c")], None)]
        assert conn.ping_sent_at is None
        tg.cancel_scope.cancel()


def _header(kind: int, done: bool, err: int) -> bytes:
    return struct.pack("!i?i", kind, done, err)


def test_multi_replies_decode_like_aiozk() -> None:
    stat = bytes(range(68))
    done = _header(-1, True, -1)
    ok = (
        _header(1, False, 0)
        + struct.pack("!i", 5)
        + b"/a/bc"
        + _header(5, False, 0)
        + stat
        + _header(2, False, 0)
        + _header(13, False, 0)
        + _header(15, False, 0)
        + struct.pack("!i", 2)
        + b"/d"
        + stat
        + done
    )
    assert _multi_reply(ok).responses == [None] * 5
    assert len(protocol.TransactionResponse.deserialize(ok).responses) == 5
    failed = b"".join(_header(-1, False, 0) + struct.pack("!i", code) for code in (0, -110, -2))
    reply = _multi_reply(failed + done).responses
    theirs = protocol.TransactionResponse.deserialize(failed + done).responses
    assert [type(r) for r in reply] == [type(r) for r in theirs]
    assert isinstance(reply[0], zk_exc.RolledBack) and isinstance(reply[1], zk_exc.NodeExists)


def test_read_replies_decode_like_aiozk() -> None:
    stat = struct.pack("!qqqqiiiqiiq", 1, 2, 3, 1_700_000_000_123, 7, 8, 9, 0x1234, 5, 6, 10)
    names = [b"a", "ü".encode(), b"n0001"]
    bodies = [
        (4, struct.pack("!i", 5) + b"hello" + stat),
        (4, struct.pack("!i", -1) + stat),
        (3, stat),
        (5, stat),
        (8, struct.pack("!i", 3) + b"".join(struct.pack("!i", len(n)) + n for n in names)),
        (1, struct.pack("!i", 4) + b"/a/b"),
    ]
    for opcode, body in bodies:
        ours, theirs = _reply(opcode, body), protocol.response_xref[opcode].deserialize(body)
        assert ours is not None
        if opcode in (3, 4, 5):
            assert to_stat(ours.stat) == to_stat(theirs.stat)
        if opcode == 4:
            assert ours.data == theirs.data
        if opcode == 8:
            assert ours.children == list(theirs.children)
        if opcode == 1:
            assert ours.path == theirs.path


@contextlib.asynccontextmanager
async def registry(url: str) -> AsyncIterator[ZooKeeperRegistry]:
    async with AsyncExitStack() as stack:
        reg = ZooKeeperRegistry(parse_registry_url(url))
        await reg.start(stack)
        yield reg


@pytest.mark.zookeeper
async def test_many_replies_of_one_read_are_all_dispatched(zk_url: str) -> None:
    """Pipelined requests answered in few TCP chunks: every reply reaches its caller."""
    async with registry(zk_url) as reg:
        await reg.create("/burst")
        async with anyio.create_task_group() as tg:
            for k in range(300):
                tg.start_soon(reg.create, f"/burst/n{k:03d}", str(k).encode())
        assert len(await reg.get_children("/burst")) == 300
        results: dict[str, bytes | None] = {}

        def on_value(path: str, data: bytes | None, *_: object) -> None:
            results[path] = data

        await reg.read_many([f"/burst/n{k:03d}" for k in range(300)], on_value)
        assert results == {f"/burst/n{k:03d}": str(k).encode() for k in range(300)}


@pytest.mark.zookeeper
async def test_a_shared_view_reads_no_container_another_instance_creates(zk_url: str) -> None:
    """Another instance registering a job creates its skeleton (a dozen container nodes), item
    nodes and the reshard flag: the view learns they exist without reading one of them; the
    nodes whose data matters (config, owners) it reads."""
    namespace = zk_url.rsplit("/", 1)[1].split("?")[0]
    async with registry(zk_url) as ours, registry(zk_url) as theirs:
        async with anyio.create_task_group() as tg:
            await ours.create(f"/{namespace}", make_parents=True)
            view = SharedView(ours, f"/{namespace}")
            assert await view.start(tg)
            await _bare_nodes_unread(ours, theirs, view, JobPaths(namespace, "job"))
            tg.cancel_scope.cancel()


async def _bare_nodes_unread(
    ours: ZooKeeperRegistry, theirs: ZooKeeperRegistry, view: SharedView, paths: JobPaths
) -> None:
    before = ours.request_count
    skeleton = paths.persistent_skeleton()
    bare = [*skeleton[:-2], f"{paths.root}/guarantee", *skeleton[-2:], paths.item(0)]
    bare.append(paths.item(1))
    created = [CreateOp(p) for p in bare]
    await theirs.transaction(
        [*created, CreateOp(paths.sharding_necessary), CreateOp(paths.config, b"{}")]
    )
    await eventually(lambda: view.get(paths.config) == b"{}", timeout=10)
    assert all(view.exists(p) for p in [*bare, paths.sharding_necessary])
    assert ours.request_count - before == 1  # the config alone
    await theirs.transaction(
        [
            CreateOp(paths.item_instance(0), b"i0"),
            SetOp(paths.config, b"{ }"),
            DeleteOp(paths.sharding_necessary),
            CheckOp(paths.item(1), -1),
        ]
    )
    await eventually(lambda: view.get(paths.item_instance(0)) == b"i0", timeout=10)
    await eventually(lambda: view.get(paths.config) == b"{ }", timeout=10)
    assert not view.exists(paths.sharding_necessary)
    assert ours.request_count - before == 3
