"""The Registry protocol, run against both backends: embedded ``memory://`` and ZooKeeper.

Only protocol-level behaviour lives here (ZooKeeper-only matters such as connection loss, ACLs
and deadlines are in test_zk_registry.py). ZooKeeper is the reference: where the embedded
registry is known to differ, the test is marked ``xfail(strict=True)`` for it, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

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
    CheckOp,
    CreateOp,
    DeleteOp,
    SessionEvent,
    SessionState,
    SetOp,
    WatchEvent,
    WatchEventType,
    ZooKeeperRegistry,
)
from aioelastic.registry._paths import is_at_or_under
from tests.conftest import Backend
from tests.harness.zookeeper import Recorder, barrier

pytestmark = pytest.mark.anyio

CREATED, DELETED = WatchEventType.CREATED, WatchEventType.DELETED
CHANGED, CHILDREN = WatchEventType.CHANGED, WatchEventType.CHILDREN


async def settled(*recorders: Recorder, count: int = 1) -> None:
    for rec in recorders:
        await rec.until(lambda calls: len(calls) >= count)


async def test_crud_stat_and_errors(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        assert reg.session_state is SessionState.CONNECTED and reg.session_id != 0
        before = reg.request_count
        assert await reg.create(root) == root
        assert await reg.create(f"{root}/a", b"one") == f"{root}/a"
        assert reg.request_count > before
        data, stat = await reg.get(f"{root}/a")
        assert (data, stat.version, stat.ephemeral_owner, stat.num_children) == (b"one", 0, 0, 0)
        assert (await reg.set(f"{root}/a", b"two")).version == 1
        assert (await reg.get(f"{root}/a"))[0] == b"two"
        assert await reg.exists(f"{root}/zz") is None
        stat_root = await reg.exists(root)
        assert stat_root is not None and stat_root.num_children == 1
        assert await reg.get_children(root) == ["a"]
        assert await reg.get_children(f"{root}/a") == []
        with pytest.raises(NodeExistsError):
            await reg.create(f"{root}/a")
        with pytest.raises(NoNodeError):
            await reg.get(f"{root}/zz")
        with pytest.raises(NoNodeError):
            await reg.get_children(f"{root}/zz")
        with pytest.raises(NoNodeError):
            await reg.set(f"{root}/zz", b"")
        with pytest.raises(NoNodeError):
            await reg.delete(f"{root}/zz")
        with pytest.raises(NoNodeError):
            await reg.create(f"{root}/zz/child")
        with pytest.raises(NotEmptyError):
            await reg.delete(root)
        for bad in ("relative", f"{root}/", f"{root}//x"):
            with pytest.raises(RegistryError):
                await reg.get(bad)
        await reg.delete(f"{root}/a")
        assert await reg.get_children(root) == []


async def test_explicit_versions(backend: Backend) -> None:
    path = backend.root
    async with backend.open() as reg:
        await reg.create(path, b"0")
        assert (await reg.set(path, b"1", version=0)).version == 1
        with pytest.raises(BadVersionError):
            await reg.set(path, b"x", version=0)
        assert (await reg.set(path, b"2", version=-1)).version == 2
        with pytest.raises(BadVersionError):
            await reg.delete(path, version=0)
        await reg.delete(path, version=2)


async def test_make_parents_and_sequential_names(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        leaf = f"{root}/job/instances/i1"
        assert await reg.create(leaf, b"x", ephemeral=True, make_parents=True) == leaf
        assert await reg.create(f"{root}/job/other", make_parents=True) == f"{root}/job/other"
        for parent in (root, f"{root}/job", f"{root}/job/instances"):
            stat = await reg.exists(parent)
            assert stat is not None and stat.ephemeral_owner == 0
        with pytest.raises(NodeExistsError):
            await reg.create(leaf, make_parents=True)
        names = [await reg.create(f"{root}/job/q-", sequential=True) for _ in range(3)]
        assert all(re.fullmatch(rf"{root}/job/q-\d{{10}}", name) for name in names)
        assert names == sorted(names) and len(set(names)) == 3


async def test_recursive_delete(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        for path in ("a/b/c", "a/b/d", "a/e"):
            await reg.create(f"{root}/{path}", make_parents=True)
        await reg.delete(f"{root}/a", recursive=True)
        assert await reg.get_children(root) == []
        with pytest.raises(NoNodeError):
            await reg.delete(f"{root}/a", recursive=True)


async def test_recursive_delete_with_a_bad_version_deletes_nothing(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(f"{root}/a/b", make_parents=True)
        with pytest.raises(BadVersionError):
            await reg.delete(f"{root}/a", version=3, recursive=True)
        assert await reg.exists(f"{root}/a/b") is not None


async def test_ephemerals_belong_to_the_session(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as observer:
        await observer.create(root)
        gone = Recorder()
        async with backend.open() as owner:
            assert owner.session_id != observer.session_id
            await owner.create(f"{root}/e", b"", ephemeral=True)
            stat = await observer.exists(f"{root}/e", gone)
            assert stat is not None and stat.ephemeral_owner == owner.session_id
            with pytest.raises(RegistryError):
                await owner.create(f"{root}/e/child")  # no children under ephemerals
        await gone.until(lambda calls: calls == [WatchEvent(DELETED, f"{root}/e")])
        assert owner.session_state is SessionState.LOST
        with pytest.raises(SessionLostError):
            await owner.get(root)


async def test_close_reports_lost_to_listeners(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    listener = Recorder()
    async with backend.open() as reg:
        reg.add_session_listener(listener)
    assert listener.states() == [SessionState.LOST]


async def test_transaction_all_or_nothing(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg, backend.open() as other:
        await reg.create(root)
        await reg.create(f"{root}/a", b"a")
        await reg.create(f"{root}/old")
        on_a, on_root = Recorder(), Recorder()
        await other.get(f"{root}/a", on_a)
        await other.get_children(root, on_root)
        with pytest.raises(TransactionFailedError) as info:
            await reg.transaction(
                [CreateOp(f"{root}/n"), SetOp(f"{root}/a", b"x"), CheckOp(f"{root}/a", 0)]
            )
        assert info.value.index == 2 and isinstance(info.value.cause, BadVersionError)
        with pytest.raises(TransactionFailedError) as info:
            await reg.transaction([DeleteOp(f"{root}/old"), DeleteOp(f"{root}/missing")])
        assert info.value.index == 1 and isinstance(info.value.cause, NoNodeError)
        with pytest.raises(TransactionFailedError) as info:
            await reg.transaction([CreateOp(f"{root}/a")])
        assert info.value.index == 0 and isinstance(info.value.cause, NodeExistsError)
        assert sorted(await reg.get_children(root)) == ["a", "old"]
        await barrier(other, reg, f"{root}/a")
        assert on_a.calls == [] and on_root.calls == []  # failed multis change nothing
        await reg.transaction(
            [
                CheckOp(f"{root}/a", 0),
                CreateOp(f"{root}/n", b"n"),
                CreateOp(f"{root}/n/kid", ephemeral=True),  # sees the op before it
                SetOp(f"{root}/a", b"a2", version=0),
                DeleteOp(f"{root}/old"),
            ]
        )
        assert sorted(await reg.get_children(root)) == ["a", "n"]
        assert (await reg.get(f"{root}/n/kid"))[1].ephemeral_owner == reg.session_id
        await settled(on_a, on_root)
        assert on_a.calls == [WatchEvent(CHANGED, f"{root}/a")]
        assert on_root.calls == [WatchEvent(CHILDREN, root)]
        await reg.transaction([])


async def test_watch_kinds_and_one_shot(backend: Backend) -> None:
    root = backend.root
    node = f"{root}/d"
    async with backend.open() as reg, backend.open() as other:
        await reg.create(root)
        await reg.create(node, b"0")
        data, exists_on, exists_off, children, on_delete = (Recorder() for _ in range(5))
        await reg.get(node, data)
        await reg.exists(node, exists_on)
        assert await reg.exists(f"{root}/later", exists_off) is None
        await reg.get_children(root, children)
        await reg.get_children(node, on_delete)
        await other.set(node, b"1")
        await other.set(node, b"2")  # one-shot: not seen
        await other.create(f"{root}/later")
        await other.delete(node)
        await barrier(reg, other, root)
        assert data.calls == [WatchEvent(CHANGED, node)]
        assert exists_on.calls == [WatchEvent(CHANGED, node)]
        assert exists_off.calls == [WatchEvent(CREATED, f"{root}/later")]
        assert children.calls == [WatchEvent(CHILDREN, root)]
        assert on_delete.calls == [WatchEvent(DELETED, node)]
        deleted, recreated = Recorder(), Recorder()
        await reg.get(f"{root}/later", deleted)
        await other.delete(f"{root}/later")
        await deleted.until(lambda calls: calls == [WatchEvent(DELETED, f"{root}/later")])
        assert await reg.exists(f"{root}/later", recreated) is None
        await other.create(f"{root}/later")
        await recreated.until(lambda calls: calls == [WatchEvent(CREATED, f"{root}/later")])


async def test_no_watch_is_left_on_a_missing_node(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg, backend.open() as other:
        await reg.create(root)
        data, children = Recorder(), Recorder()
        with pytest.raises(NoNodeError):
            await reg.get(f"{root}/x", data)
        with pytest.raises(NoNodeError):
            await reg.get_children(f"{root}/x", children)
        await other.create(f"{root}/x")
        await other.create(f"{root}/x/y")
        await barrier(reg, other, root)
        assert data.calls == [] and children.calls == []


class _Target:
    def __init__(self) -> None:
        self.calls: list[WatchEvent] = []

    def watcher(self, event: WatchEvent) -> None:
        self.calls.append(event)


async def test_an_equal_watcher_registered_twice_is_called_once(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    root = backend.root
    async with backend.open() as reg, backend.open() as other:
        await reg.create(root)
        target = _Target()
        await reg.get(root, target.watcher)
        await reg.get(root, target.watcher)  # equal bound methods, distinct objects
        await other.set(root, b"x")
        await barrier(reg, other, root)
        assert target.calls == [WatchEvent(CHANGED, root)]


async def test_one_watcher_on_data_and_children_is_called_once_on_delete(
    backend: Backend, request: pytest.FixtureRequest
) -> None:
    root = backend.root
    async with backend.open() as reg, backend.open() as other:
        await reg.create(f"{root}/n", make_parents=True)
        both = Recorder()
        await reg.get(f"{root}/n", both)
        await reg.get_children(f"{root}/n", both)
        await other.delete(f"{root}/n")
        await barrier(reg, other, root)
        assert both.calls == [WatchEvent(DELETED, f"{root}/n")]


@pytest.mark.parametrize("abandon", [False, True], ids=["expired", "abandoned"])
async def test_expiry_or_abandon_replaces_the_session(backend: Backend, abandon: bool) -> None:
    root = backend.root
    async with backend.open() as reg, backend.open() as other:
        await reg.create(root)
        await reg.create(f"{root}/mine", ephemeral=True)
        stale, listener = Recorder(), Recorder()
        await reg.get(root, stale)
        reg.add_session_listener(listener)
        old = reg.session_id
        if abandon:
            reg.abandon_session("test")
        else:
            await backend.expire(reg)
        await listener.until_state(SessionState.CONNECTED)
        events = [c for c in listener.calls if isinstance(c, SessionEvent)]
        assert events[-2:] == [
            SessionEvent(SessionState.LOST, old),
            SessionEvent(SessionState.CONNECTED, reg.session_id),
        ]
        assert reg.session_id not in (0, old)
        assert await other.exists(f"{root}/mine") is None
        await other.set(root, b"changed")
        await barrier(reg, other, root)
        assert stale.calls == []  # the old session's watches are gone
        await reg.create(f"{root}/mine", ephemeral=True)
        assert (await other.get(f"{root}/mine"))[1].ephemeral_owner == reg.session_id


async def test_a_failing_watcher_does_not_break_the_registry(backend: Backend) -> None:
    root = backend.root

    def explode(_event: WatchEvent) -> None:
        raise RuntimeError("watcher bug")

    async with backend.open() as reg, backend.open() as other:
        await reg.create(root)
        after = Recorder()
        await reg.get(root, explode)
        await reg.get(root, after)
        await other.set(root, b"x")
        await after.until(lambda calls: calls == [WatchEvent(CHANGED, root)])
        assert (await reg.get(root))[0] == b"x"


# -- one set of path rules (ZooKeeper's PathUtils.validatePath) -------------------------------

# Refused by ZooKeeper's PathUtils.validatePath (on UTF-16 code units; inclusive ranges
# 0x01-0x1F, 0x7F-0x9F, 0xD800-0xF8FF, 0xFFF0-0xFFFF, so anything above U+FFFF too).
BAD_NAMES = {
    "dot": "a/./b",
    "dotdot": "a/../b",
    "dot-last": ".",
    "dotdot-last": "a/..",
    "trailing-slash": "a/",
    "empty-segment": "a//b",
    "nul": "a\x00b",
    "ctrl-01": "a\x01",
    "ctrl-1f": "a\x1f",
    "del-7f": "a\x7f",
    "c1-9f": "a\x9f",
    "surrogate-range": "a\ud7ff\ue000",
    "private-use-f8ff": "a\uf8ff",
    "specials-fff0": "a\ufff0",
    "ffff": "a\uffff",
    "emoji": "a\U0001f600",
}
# Odd but accepted by ZooKeeper: both backends create them.
ODD_NAMES = ["a.", ".a", "...", "..a", "a..", "a b", "a\ud7ff", "a\uf900", "a\u00a0", "é"]


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
async def test_paths_zookeeper_refuses_are_refused_by_every_call(
    backend: Backend, name: str
) -> None:
    root = backend.root
    bad = f"{root}/{name}"
    async with backend.open() as reg:
        await reg.create(root)
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "create": lambda: reg.create(bad),
            "create-parents": lambda: reg.create(f"{bad}/leaf", make_parents=True),
            "get": lambda: reg.get(bad),
            "exists": lambda: reg.exists(bad),
            "children": lambda: reg.get_children(bad),
            "set": lambda: reg.set(bad, b""),
            "delete": lambda: reg.delete(bad),
            "delete-recursive": lambda: reg.delete(bad, recursive=True),
            "transaction": lambda: reg.transaction([CreateOp(f"{root}/ok"), CreateOp(bad)]),
        }
        for call, run in calls.items():
            with pytest.raises(RegistryError, match="invalid path") as info:
                await run()
            assert type(info.value) is RegistryError, call
        assert await reg.get_children(root) == []  # no parent, no first op of the multi


async def test_sequential_create_validates_the_name_with_its_suffix(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        assert re.fullmatch(rf"{root}/\d{{10}}", await reg.create(f"{root}/", sequential=True))
        for bad in (f"{root}/./", f"{root}//", f"{root}/a\x00"):
            with pytest.raises(RegistryError, match="invalid path"):
                await reg.create(bad, sequential=True)
        for bad in ("", "a", "a/b"):
            with pytest.raises(RegistryError, match="invalid path"):
                await reg.create(bad)


@pytest.mark.parametrize("name", ODD_NAMES)
async def test_odd_names_zookeeper_accepts_are_accepted(backend: Backend, name: str) -> None:
    root = backend.root
    async with backend.open() as reg:
        path = await reg.create(f"{root}/{name}", b"v", make_parents=True)
        assert path == f"{root}/{name}"
        assert await reg.get_children(root) == [name]
        assert (await reg.get(path))[0] == b"v"
        await reg.delete(path)


@pytest.mark.zookeeper
async def test_the_zookeeper_server_itself_draws_the_same_line(zk_url: str) -> None:
    """The rules are ZooKeeper's: sent raw, past our client-side check, the server refuses every
    bad path (setData validates the path before looking it up; create looks up the parent
    first, so it refuses only where the parent exists) and accepts every odd one."""
    from aiozk import protocol

    root = "/" + parse_registry_url(zk_url).namespace
    reg = ZooKeeperRegistry(parse_registry_url(zk_url))
    async with AsyncExitStack() as stack:
        await reg.start(stack)
        await reg.create(f"{root}/a", make_parents=True)
        for name in [*BAD_NAMES.values(), *ODD_NAMES]:
            path = f"{root}/{name}"
            refused = name in BAD_NAMES.values()
            setdata = protocol.SetDataRequest(path=path, data=b"", version=-1)
            with pytest.raises(RegistryError, match="BadArguments" if refused else "NoNode"):
                await reg._call(setdata, path)
            if refused and path.rsplit("/", 1)[0] in (root, f"{root}/a"):
                with pytest.raises(RegistryError, match="BadArguments"):
                    await reg._call(reg._create_request(path, b"", 0), path)
        assert await reg.get_children(root) == ["a"]
        assert await reg.get_children(f"{root}/a") == []


# -- tree watches (persistent recursive) and pipelined reads --


def _plain(calls: list[object], root: str) -> list[tuple[WatchEventType, str]]:
    """Type and path of the watch events, barrier nodes and WRITTEN left out."""
    return [
        (c.type, c.path)
        for c in calls
        if isinstance(c, WatchEvent) and "barrier-" not in c.path and c.type is not WRITTEN
    ]


WRITTEN = WatchEventType.WRITTEN


async def test_a_tree_watch_hears_every_node_under_it_and_stays_armed(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg, backend.open() as other:
        await reg.create(f"{root}/w", make_parents=True)
        await reg.create(f"{root}/outside")
        await reg.create(f"{root}/wx")  # a sibling whose name starts like the watched one's
        tree = Recorder()
        assert await reg.watch_tree(f"{root}/w", tree)
        await other.create(f"{root}/w/a", b"1")
        await other.create(f"{root}/w/a/b", ephemeral=True)
        await other.set(f"{root}/w/a", b"2")
        await other.set(f"{root}/w/a", b"3")  # persistent: heard again
        await other.set(f"{root}/outside", b"x")
        await other.set(f"{root}/wx", b"y")
        await other.create(f"{root}/wx/z")
        await other.delete(f"{root}/w/a/b")
        await other.delete(f"{root}/w/a")
        await barrier(reg, other, f"{root}/w")
        assert _plain(tree.calls, root) == [
            (CREATED, f"{root}/w/a"),
            (CREATED, f"{root}/w/a/b"),
            (CHANGED, f"{root}/w/a"),
            (CHANGED, f"{root}/w/a"),
            (DELETED, f"{root}/w/a/b"),
            (DELETED, f"{root}/w/a"),
        ]  # no CHILDREN events, nothing from outside the subtree
        await reg.unwatch_tree(f"{root}/w", tree)
        count = len(tree.calls)
        await other.create(f"{root}/w/after")
        await barrier(reg, other, root)
        assert len(tree.calls) == count


async def test_a_tree_watch_learns_this_sessions_creates_without_a_read(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(root)
        tree = Recorder()
        assert await reg.watch_tree(root, tree)
        await reg.create(f"{root}/mine", b"data", ephemeral=True)
        await reg.transaction([CreateOp(f"{root}/t", b"tx"), CreateOp(f"{root}/t/u", b"u")])
        known = {
            (c.path, c.data)
            for c in tree.calls
            if isinstance(c, WatchEvent) and c.data is not None and c.type in (CREATED, WRITTEN)
        }
        assert {(f"{root}/mine", b"data"), (f"{root}/t", b"tx"), (f"{root}/t/u", b"u")} <= known
        stats = [
            c.stat for c in tree.calls if isinstance(c, WatchEvent) and c.path.endswith("mine")
        ]
        assert any(s is not None and s.ephemeral_owner == reg.session_id for s in stats)


async def test_a_tree_watch_survives_a_new_session(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg, backend.open() as other:
        await reg.create(root)
        tree, listener = Recorder(), Recorder()
        assert await reg.watch_tree(root, tree)
        reg.add_session_listener(listener)
        await backend.expire(reg)
        await listener.until_state(SessionState.CONNECTED)
        await other.create(f"{root}/later")
        await tree.until(lambda calls: (CREATED, f"{root}/later") in _plain(calls, root))


async def test_read_many_delivers_data_children_and_missing_nodes(backend: Backend) -> None:
    root = backend.root
    async with backend.open() as reg:
        await reg.create(f"{root}/a", b"A", make_parents=True)
        await reg.create(f"{root}/a/k")
        got: list[tuple[str, bytes | None, int | None, list[str] | None]] = []

        def on_result(path: str, data: bytes | None, stat: object, kids: list[str] | None) -> None:
            version = getattr(stat, "version", None)
            got.append((path, data, version, sorted(kids) if kids is not None else None))

        await reg.read_many([f"{root}/a", f"{root}/zz"], on_result, children=[f"{root}/a"])
        assert sorted(got, key=str) == sorted(
            [
                (f"{root}/a", b"A", 0, None),
                (f"{root}/zz", None, None, None),
                (f"{root}/a", None, None, ["k"]),
            ],
            key=str,
        )


@pytest.mark.parametrize(
    ("path", "root", "under"),
    [
        ("/ns/w", "/ns/w", True),
        ("/ns/w/a/b", "/ns/w", True),
        ("/ns/wx", "/ns/w", False),  # a shared prefix is not a parent
        ("/ns/wx/a", "/ns/w", False),
        ("/ns", "/ns/w", False),
        ("/ns/w", "/", True),
        ("/", "/", True),
    ],
)
def test_at_or_under_a_root_is_by_whole_names(path: str, root: str, under: bool) -> None:
    assert is_at_or_under(path, root) is under
