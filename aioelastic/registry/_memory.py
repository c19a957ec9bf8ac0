"""The embedded ``memory://`` registry: ZooKeeper's semantics in one process.

A process-wide ``MemoryStore`` per ``memory://NAME`` plays the server: several ``MemoryRegistry``
clients (schedulers) in one process with the same URL share it, each with its own session,
ephemeral nodes and one-shot watches. ``expire_session()`` simulates a session expiry for tests.
Tree watches (persistent recursive) get every event with the node's data and stat, so a holder
never needs to read back; they are re-added for each new session of the client.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from functools import partial
from itertools import count

from .._errors import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RegistryError,
    SessionLostError,
    TransactionFailedError,
)
from .._urls import RegistryURL
from ._base import ListenerBase
from ._limits import check_request, create_size, set_size, transaction_size
from ._names import Names, with_name, without_name
from ._paths import is_at_or_under, validate_path
from ._protocol import (
    CheckOp,
    CreateOp,
    DeleteOp,
    Op,
    ReadResult,
    SessionEvent,
    SessionState,
    SetOp,
    Stat,
    Watcher,
    WatchEvent,
    WatchEventType,
)

__all__ = ["MemoryRegistry", "MemoryStore"]

log = logging.getLogger("aioelastic.registry")
_session_ids = count(1)


class _Node:
    """One node; ``children`` as ``_names`` keeps them."""

    __slots__ = ("children", "data", "ephemeral_owner", "mtime", "seq", "version")

    def __init__(self, data: bytes, ephemeral_owner: int = 0, mtime: float | None = None) -> None:
        self.data = data
        self.version = 0
        self.mtime = time.time() if mtime is None else mtime
        self.ephemeral_owner = ephemeral_owner
        self.seq = 0
        self.children: Names = ()

    def stat(self) -> Stat:
        return Stat(self.version, self.mtime, self.ephemeral_owner, len(self.children))

    def add_child(self, name: str) -> None:
        self.children = with_name(self.children, name)

    def discard_child(self, name: str) -> None:
        self.children = without_name(self.children, name)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


#: What a multi-op's mutations log to be undone if a later op fails (newest last).
_Undo = list[Callable[[], object]]


def _unset(node: _Node, data: bytes, version: int, mtime: float) -> None:
    node.data, node.version, node.mtime = data, version, mtime


class MemoryStore:
    """The shared state of one ``memory://NAME`` (plays the ZooKeeper server)."""

    _stores: dict[str, MemoryStore] = {}  # noqa: RUF012 - process-wide registry of stores

    def __init__(self) -> None:
        self.nodes: dict[str, _Node] = {"/": _Node(b"")}
        self.data_watches: dict[str, list[tuple[int, Watcher]]] = {}
        self.child_watches: dict[str, list[tuple[int, Watcher]]] = {}
        self.tree_watches: list[tuple[int, str, Watcher]] = []  # session, root, watcher
        self.undo: _Undo | None = None  # set during a multi-op: mutations log their inverse
        # Set during a multi-op: its time, as ZooKeeper stamps every op of a transaction
        # (one float for all the nodes it writes, not one each).
        self.now: float | None = None

    def _tree(
        self, path: str, kind: WatchEventType, node: _Node | None
    ) -> list[tuple[Watcher, WatchEvent]]:
        """The tree watches over ``path`` hear ``kind`` (with the node's data and stat)."""
        if not self.tree_watches:
            return []
        event: WatchEvent | None = None
        out: list[tuple[Watcher, WatchEvent]] = []
        for _, root, w in self.tree_watches:
            if is_at_or_under(path, root):
                if event is None:  # one event for every watch that hears it (it is frozen)
                    data, stat = (node.data, node.stat()) if node is not None else (None, None)
                    event = WatchEvent(kind, path, data, stat)
                out.append((w, event))
        return out

    @classmethod
    def named(cls, name: str) -> MemoryStore:
        return cls._stores.setdefault(name, cls())

    @classmethod
    def reset(cls, name: str | None = None) -> None:
        """Forget one named store (or all): for tests."""
        if name is None:
            cls._stores.clear()
        else:
            cls._stores.pop(name, None)

    # -- mutations: each returns the watchers to notify once the state is consistent --

    def _fire(
        self, table: dict[str, list[tuple[int, Watcher]]], path: str, kind: WatchEventType
    ) -> list[tuple[Watcher, WatchEvent]]:
        entries = table.pop(path, None)
        if not entries:
            return []
        if self.undo is not None:
            self.undo.append(partial(table.__setitem__, path, entries))
        return [(w, WatchEvent(kind, path)) for _, w in entries]

    def create(
        self,
        path: str,
        data: bytes,
        ephemeral_owner: int,
        sequential: bool,
        *,
        validated: bool = False,
    ) -> tuple[str, list[tuple[Watcher, WatchEvent]]]:
        if not validated:  # a multi-op validates every path before applying any
            validate_path(path, sequential=sequential)
        parent = self.nodes.get(_parent(path))
        if parent is None:
            raise NoNodeError(f"parent of {path} does not exist")
        if parent.ephemeral_owner:
            raise RegistryError(f"ephemeral {_parent(path)} cannot have children")
        seq = parent.seq
        if sequential:
            path = f"{path}{seq:010d}"
        if path in self.nodes:
            raise NodeExistsError(path)
        parent.seq += sequential
        node = self.nodes[path] = _Node(data, ephemeral_owner, self.now)
        name = sys.intern(path.rsplit("/", 1)[1])  # "running", "0", ...: one string for all jobs
        parent.add_child(name)
        if self.undo is not None:
            self.undo.append(partial(self._uncreate, path, parent, name, seq))
        fired = self._fire(self.data_watches, path, WatchEventType.CREATED)
        fired += self._tree(path, WatchEventType.CREATED, node)
        fired += self._fire(self.child_watches, _parent(path), WatchEventType.CHILDREN)
        return path, fired

    def set(
        self, path: str, data: bytes, version: int
    ) -> tuple[Stat, list[tuple[Watcher, WatchEvent]]]:
        node = self._node(path)
        if version not in (-1, node.version):
            raise BadVersionError(f"{path}: version {node.version}, expected {version}")
        if self.undo is not None:
            self.undo.append(partial(_unset, node, node.data, node.version, node.mtime))
        now = time.time() if self.now is None else self.now
        node.data, node.version, node.mtime = data, node.version + 1, now
        fired = self._fire(self.data_watches, path, WatchEventType.CHANGED)
        return node.stat(), fired + self._tree(path, WatchEventType.CHANGED, node)

    def delete(
        self, path: str, version: int, *, validated: bool = False
    ) -> list[tuple[Watcher, WatchEvent]]:
        node = self.nodes.get(path) if validated else self._node(path)
        if node is None:
            raise NoNodeError(path)
        if path == "/":
            raise RegistryError("cannot delete /")
        if version not in (-1, node.version):
            raise BadVersionError(f"{path}: version {node.version}, expected {version}")
        if node.children:
            raise NotEmptyError(path)
        del self.nodes[path]
        parent, name = self.nodes[_parent(path)], path.rsplit("/", 1)[1]
        parent.discard_child(name)
        if self.undo is not None:
            self.undo.append(partial(self._undelete, path, node, parent, name))
        fired = self._fire(self.data_watches, path, WatchEventType.DELETED)
        fired += self._tree(path, WatchEventType.DELETED, None)
        fired += self._fire(self.child_watches, path, WatchEventType.DELETED)
        fired += self._fire(self.child_watches, _parent(path), WatchEventType.CHILDREN)
        return fired

    def _uncreate(self, path: str, parent: _Node, name: str, seq: int) -> None:
        del self.nodes[path]
        parent.discard_child(name)
        parent.seq = seq

    def _undelete(self, path: str, node: _Node, parent: _Node, name: str) -> None:
        self.nodes[path] = node
        parent.add_child(name)

    def check(self, path: str, version: int) -> None:
        node = self._node(path)
        if version not in (-1, node.version):
            raise BadVersionError(f"{path}: version {node.version}, expected {version}")

    def _node(self, path: str) -> _Node:
        validate_path(path)
        node = self.nodes.get(path)
        if node is None:
            raise NoNodeError(path)
        return node

    def _node_or_none(self, path: str) -> _Node | None:
        validate_path(path)
        return self.nodes.get(path)

    def end_session(self, session_id: int) -> list[tuple[Watcher, WatchEvent]]:
        """Delete the session's ephemerals and drop its watches (expiry or close)."""
        fired: list[tuple[Watcher, WatchEvent]] = []
        for table in (self.data_watches, self.child_watches):
            for path, watchers in list(table.items()):
                table[path] = [(s, w) for s, w in watchers if s != session_id]
        self.tree_watches = [t for t in self.tree_watches if t[0] != session_id]
        for path in sorted(
            (p for p, n in self.nodes.items() if n.ephemeral_owner == session_id),
            key=len,
            reverse=True,
        ):
            if path in self.nodes:
                fired += self.delete(path, -1)
        return fired


class MemoryRegistry(ListenerBase):
    """A session on a ``MemoryStore``; implements the ``Registry`` protocol."""

    def __init__(self, url: RegistryURL, store: MemoryStore | None = None) -> None:
        super().__init__()
        self.url = url
        self.store = store or MemoryStore.named(url.hosts)
        self._session_id = 0
        self._state = SessionState.LOST
        self._requests = 0
        self._tree_watches: list[tuple[str, Watcher]] = []  # re-added for each new session

    @property
    def session_state(self) -> SessionState:
        return self._state

    @property
    def session_id(self) -> int:
        return self._session_id

    @property
    def request_count(self) -> int:
        return self._requests

    async def start(self, exit_stack: AsyncExitStack) -> None:
        self._new_session()
        exit_stack.callback(self.close)

    def close(self) -> None:
        if self._session_id:
            self._notify_watchers(self.store.end_session(self._session_id))
            self._set_state(SessionState.LOST)

    def expire_session(self) -> None:
        """Test helper: the session expires (ephemerals and watches go) and a new one starts."""
        self._notify_watchers(self.store.end_session(self._session_id))
        self._set_state(SessionState.LOST)
        self._new_session()

    def abandon_session(self, reason: str) -> None:
        log.warning("memory registry session %d abandoned: %s", self._session_id, reason)
        self.expire_session()

    def _new_session(self) -> None:
        self._session_id = next(_session_ids)
        for root, watcher in self._tree_watches:
            self.store.tree_watches.append((self._session_id, root, watcher))
        self._set_state(SessionState.CONNECTED)

    def _set_state(self, state: SessionState) -> None:
        self._state = state
        self._notify_session(SessionEvent(state, self._session_id))

    async def _enter(self) -> None:
        await asyncio.sleep(0)  # one loop yield, as a network round trip (no backend lookup)
        if self._state is not SessionState.CONNECTED:
            raise SessionLostError(f"session {self._session_id} is {self._state.value}")
        self._requests += 1

    def _watch(self, table: dict[str, list[tuple[int, Watcher]]], path: str, w: Watcher) -> None:
        entries = table.setdefault(path, [])
        if all(existing != w for _, existing in entries):
            entries.append((self._session_id, w))

    async def watch_tree(self, path: str, watcher: Watcher) -> bool:
        await self._enter()
        validate_path(path)
        if (path, watcher) not in self._tree_watches:
            self._tree_watches.append((path, watcher))
            self.store.tree_watches.append((self._session_id, path, watcher))
        return True

    async def unwatch_tree(self, path: str, watcher: Watcher) -> None:
        if (path, watcher) in self._tree_watches:
            self._tree_watches.remove((path, watcher))
        entry = (self._session_id, path, watcher)
        if entry in self.store.tree_watches:
            self.store.tree_watches.remove(entry)

    async def read_many(
        self, paths: Sequence[str], on_result: ReadResult, *, children: Sequence[str] = ()
    ) -> None:
        await self._enter()
        self._requests += len(paths) + len(children) - 1
        for path in paths:
            node = self.store._node_or_none(path)
            if node is None:
                on_result(path, None, None, None)
            else:
                on_result(path, node.data, node.stat(), None)
        for path in children:
            node = self.store._node_or_none(path)
            on_result(path, None, None, None if node is None else list(node.children))

    async def get(self, path: str, watcher: Watcher | None = None) -> tuple[bytes, Stat]:
        await self._enter()
        node = self.store._node(path)
        if watcher:
            self._watch(self.store.data_watches, path, watcher)
        return node.data, node.stat()

    async def get_children(self, path: str, watcher: Watcher | None = None) -> list[str]:
        await self._enter()
        node = self.store._node(path)
        if watcher:
            self._watch(self.store.child_watches, path, watcher)
        return list(node.children)

    async def exists(self, path: str, watcher: Watcher | None = None) -> Stat | None:
        await self._enter()
        validate_path(path)
        node = self.store.nodes.get(path)
        if watcher:
            self._watch(self.store.data_watches, path, watcher)
        return node.stat() if node else None

    async def create(
        self,
        path: str,
        data: bytes = b"",
        *,
        ephemeral: bool = False,
        sequential: bool = False,
        make_parents: bool = False,
    ) -> str:
        await self._enter()
        validate_path(path, sequential=sequential)  # before any parent is made
        check_request(create_size(path, data), path)
        fired: list[tuple[Watcher, WatchEvent]] = []
        if make_parents:
            parts = path.strip("/").split("/")[:-1]
            for i in range(1, len(parts) + 1):
                parent = "/" + "/".join(parts[:i])
                if parent not in self.store.nodes:
                    fired += self.store.create(parent, b"", 0, False)[1]
        owner = self._session_id if ephemeral else 0
        try:
            created, more = self.store.create(path, data, owner, sequential)
        finally:
            self._notify_watchers(fired)
        self._notify_watchers(more)
        return created

    async def set(self, path: str, data: bytes, *, version: int = -1) -> Stat:
        await self._enter()
        check_request(set_size(path, data), path)
        stat, fired = self.store.set(path, data, version)
        self._notify_watchers(fired)
        return stat

    async def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> None:
        await self._enter()
        fired: list[tuple[Watcher, WatchEvent]] = []
        if recursive:
            self.store.check(path, version)  # before touching the subtree, as ZooKeeper's client
        try:
            if recursive:
                for sub in self._subtree(path):
                    fired += self.store.delete(sub, -1)
            fired += self.store.delete(path, version)
        finally:
            self._notify_watchers(fired)

    def _subtree(self, path: str) -> list[str]:
        """Descendants of ``path``, deepest first."""
        node = self.store._node(path)
        out: list[str] = []
        for child in node.children:
            sub = f"{path.rstrip('/')}/{child}"
            out += [*self._subtree(sub), sub]
        return out

    async def transaction(self, ops: Sequence[Op]) -> None:
        await self._enter()
        for op in ops:  # refused before anything is sent, as by the ZooKeeper client
            validate_path(op.path)
        if ops:
            check_request(transaction_size(ops), f"transaction of {len(ops)} ops on {ops[0].path}")
        # Apply for real, each mutation logging its inverse: undone newest first if an op fails.
        store = self.store
        undo: _Undo = []
        store.undo, store.now = undo, time.time()
        fired: list[tuple[Watcher, WatchEvent]] = []
        try:
            for index, op in enumerate(ops):
                try:
                    fired += self._apply(op)
                except RegistryError as exc:
                    for step in reversed(undo):
                        step()
                    raise TransactionFailedError(index, exc) from exc
        finally:
            store.undo = store.now = None
        self._notify_watchers(fired)

    def _apply(self, op: Op) -> list[tuple[Watcher, WatchEvent]]:
        match op:
            case CreateOp(path, data, ephemeral):
                owner = self._session_id if ephemeral else 0
                return self.store.create(path, data, owner, False, validated=True)[1]
            case SetOp(path, data, version):
                return self.store.set(path, data, version)[1]
            case DeleteOp(path, version):
                return self.store.delete(path, version, validated=True)
            case CheckOp(path, version):
                self.store.check(path, version)
                return []
        raise TypeError(f"unknown op {op!r}")
