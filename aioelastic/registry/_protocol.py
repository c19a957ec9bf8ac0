"""The registry protocol: the small surface of ZooKeeper that the coordination code uses.

Two backends implement it: the embedded ``memory://`` registry (``_memory``) and ZooKeeper
(``_zookeeper``, over its wire connection in ``_wire``). Coordination code is written against
this protocol only, so the embedded mode runs the very same code as the distributed one.

Semantics follow ZooKeeper:

* paths are absolute (``/ns/job/config``) and already include the namespace;
* ``version=-1`` means "any version";
* watches are one-shot: a watcher passed to ``get``/``get_children``/``exists`` is called at most
  once, with the first change to that node (data/creation/deletion) or its children. Watchers are
  plain synchronous callables; they must not block (typically they set an event or put into a
  queue owned by a loop). They are called from the registry's own task, never concurrently.
* a *tree watch* (``watch_tree``, ZooKeeper >= 3.6's persistent recursive watch) stays armed:
  it hears CREATED, DELETED and CHANGED of every node under its path, never CHILDREN. The
  registry keeps it across reconnections and sessions (re-adding it before reporting
  CONNECTED; changes while disconnected are not replayed, so a holder re-reads on CONNECTED).
  After a successful ``create``/``transaction`` of this session, its tree watchers hear WRITTEN
  with the created node's data and stat, in wire order right after the node's CREATED event
  (so they need not read back what this session wrote); a CREATED event that an in-flight
  create of this session may explain is marked ``pending`` (WRITTEN follows on success, CHANGED
  on failure). The memory registry gives data and stat with every event.
* when a session is replaced (expired and re-established), every watch of the old session is gone
  and every ephemeral node of the old session is deleted; listeners get ``SessionEvent`` with the
  new ``session_id`` and must re-read what they cache.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "CheckOp",
    "CreateOp",
    "DeleteOp",
    "Op",
    "ReadResult",
    "Registry",
    "SessionEvent",
    "SessionListener",
    "SessionState",
    "SetOp",
    "Stat",
    "WatchEvent",
    "WatchEventType",
    "Watcher",
]


class SessionState(enum.Enum):
    """Where the registry session stands, as this client sees it.

    CONNECTED: requests go through. SUSPENDED: the connection is down, the session may still be
    alive on the server; ephemerals may survive. LOST: the session is gone (expired, or suspended
    longer than it could survive, or closed); its ephemerals and watches are gone or about to be.
    After LOST a backend tries to establish a new session and reports CONNECTED with a new id.
    """

    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"
    LOST = "LOST"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    state: SessionState
    session_id: int


SessionListener = Callable[[SessionEvent], None]


@dataclass(frozen=True, slots=True)
class Stat:
    """The part of a ZooKeeper stat we use. ``mtime`` is the server's clock, epoch seconds."""

    version: int
    mtime: float
    ephemeral_owner: int = 0
    num_children: int = 0


class WatchEventType(enum.Enum):
    CREATED = "CREATED"
    DELETED = "DELETED"
    CHANGED = "CHANGED"
    CHILDREN = "CHILDREN"
    WRITTEN = "WRITTEN"  # tree watches only: this session created the node (data, stat given)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: WatchEventType
    path: str
    data: bytes | None = None  # the node's data, where the registry knows it without a read
    stat: Stat | None = None
    pending: bool = False  # CREATED that an in-flight create of this session may explain


Watcher = Callable[[WatchEvent], None]

ReadResult = Callable[[str, bytes | None, Stat | None, list[str] | None], None]
"""``read_many``'s callback, once per reply: ``(path, data, stat, None)`` for a data reply,
``(path, None, None, children)`` for a children reply, ``(path, None, None, None)`` when the
node is missing."""


@dataclass(frozen=True, slots=True)
class CreateOp:
    path: str
    data: bytes = b""
    ephemeral: bool = False


@dataclass(frozen=True, slots=True)
class SetOp:
    path: str
    data: bytes
    version: int = -1


@dataclass(frozen=True, slots=True)
class DeleteOp:
    path: str
    version: int = -1


@dataclass(frozen=True, slots=True)
class CheckOp:
    path: str
    version: int


Op = CreateOp | SetOp | DeleteOp | CheckOp


@runtime_checkable
class Registry(Protocol):
    """A session on a hierarchical registry (see the module docstring for semantics)."""

    @property
    def session_state(self) -> SessionState: ...

    @property
    def session_id(self) -> int: ...

    @property
    def request_count(self) -> int:
        """Requests sent to the registry since start (for benchmarks and tests)."""
        ...

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Open the session; cleanup (closing the session) is pushed onto ``exit_stack``."""
        ...

    def add_session_listener(self, listener: SessionListener) -> None: ...

    def remove_session_listener(self, listener: SessionListener) -> None: ...

    async def get(self, path: str, watcher: Watcher | None = None) -> tuple[bytes, Stat]:
        """Data and stat of ``path``; raises ``NoNodeError`` (no watch is set then)."""
        ...

    async def get_children(self, path: str, watcher: Watcher | None = None) -> list[str]:
        """Child names of ``path``, unsorted; raises ``NoNodeError`` (no watch is set then)."""
        ...

    async def exists(self, path: str, watcher: Watcher | None = None) -> Stat | None:
        """Stat or None; the watcher fires on creation, change or deletion."""
        ...

    async def create(
        self,
        path: str,
        data: bytes = b"",
        *,
        ephemeral: bool = False,
        sequential: bool = False,
        make_parents: bool = False,
    ) -> str:
        """Create a node and return its actual path. Parents made by ``make_parents`` are
        persistent. Raises ``NodeExistsError`` / ``NoNodeError``."""
        ...

    async def set(self, path: str, data: bytes, *, version: int = -1) -> Stat: ...

    async def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> None:
        """Delete a node (and, with ``recursive``, its subtree). Raises ``NoNodeError``."""
        ...

    async def transaction(self, ops: Sequence[Op]) -> None:
        """Apply every op atomically or none; raises ``TransactionFailedError``."""
        ...

    async def watch_tree(self, path: str, watcher: Watcher) -> bool:
        """Add a persistent recursive watch on ``path`` (see the module docstring); False if the
        server cannot (ZooKeeper < 3.6): use one-shot watches then."""
        ...

    async def unwatch_tree(self, path: str, watcher: Watcher) -> None:
        """Remove a tree watch (the server's too, once no watcher of ``path`` is left)."""
        ...

    async def read_many(
        self, paths: Sequence[str], on_result: ReadResult, *, children: Sequence[str] = ()
    ) -> None:
        """Read the data and stat of every node of ``paths`` and the children of those in
        ``children`` (a subset), pipelined; ``on_result`` is called as each reply is read, in
        wire order with watch events (after every event the reply's state includes)."""
        ...

    def abandon_session(self, reason: str) -> None:
        """Give the session up now (this process was paused too long to trust it): report LOST,
        end the session on the server as soon as possible, and open a new one."""
        ...
