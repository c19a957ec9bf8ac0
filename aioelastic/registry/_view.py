"""Watch-maintained local copies of the registry: ``SharedView`` (the whole namespace, one tree
watch for every job of an instance; ZooKeeper >= 3.6 and the memory registry) and ``TreeView``
(one job's subtree, one-shot watches: the fallback for older servers).

Reads on the hot path (a fire) come from here, not from the registry. The copy is kept by one
task that applies watch events in the order the registry delivers them; ZooKeeper delivers a
deleted node's own event before its parent's children event, and a multi-op's events in op
order, so the copy never shows an intermediate state the registry never had. After a session
event (reconnect or new session) the whole subtree is read again, since watches of a lost
session are gone.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import TaskStatus

from .._errors import NoNodeError, RegistryError, SessionLostError
from ._memory import MemoryRegistry, _Node
from ._names import Names, with_name, without_name
from ._protocol import Registry, SessionEvent, SessionState, Stat, WatchEvent, WatchEventType

__all__ = ["JobView", "SharedView", "Subscription", "TreeView", "View", "shared_view_of"]

log = logging.getLogger("aioelastic.view")

_Event = WatchEvent | SessionEvent


def _join(path: str, child: str) -> str:
    return f"{path.rstrip('/')}/{child}"


class Subscription:
    """Wakes its owner only for changes to the paths it cares about (``relevant(path)``): a
    flag, a future only while someone waits, and an optional ``wake`` callback (a driver that
    serves several subscriptions in one task)."""

    __slots__ = ("_pending", "_waiter", "_wake", "relevant")

    def __init__(
        self, relevant: Callable[[str], bool], wake: Callable[[], None] | None = None
    ) -> None:
        self.relevant = relevant
        self._pending = False
        self._waiter: asyncio.Future[None] | None = None
        self._wake = wake

    @property
    def pending(self) -> bool:
        """A relevant change happened since the last ``wait``/``take``."""
        return self._pending

    def notify(self) -> None:
        """Wake the owner as if a relevant change happened."""
        self._pending = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._wake is not None:
            self._wake()

    def take(self) -> bool:
        """Consume the pending change: True if there was one."""
        changed, self._pending = self._pending, False
        return changed

    async def wait(self, timeout: float) -> bool:
        """Wait for a relevant change since the last wait (True) or ``timeout`` (False)."""
        if self._pending:
            await anyio.lowlevel.checkpoint()  # always yield: what the owner started runs first
        else:
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                with anyio.move_on_after(timeout):
                    await waiter
            finally:
                self._waiter = None
        return self.take()


class TreeView:
    """The nodes under ``root`` as last seen, with a change signal for waiters."""

    def __init__(self, registry: Registry, root: str) -> None:
        self._registry = registry
        self.root = root
        self._data: dict[str, bytes] = {}
        self._stats: dict[str, Stat] = {}
        self._children: dict[str, set[str]] = {}
        self._send, self._receive = anyio.create_memory_object_stream[_Event](math.inf)
        self._watcher = self._on_watch  # one object, so registries can de-duplicate it
        self._changed = anyio.Event()
        self._fresh = False
        self._subscriptions: list[Subscription] = []
        self._batch: set[str] = set()  # paths changed since the last signal
        self._everything = False  # a resync: every subscription hears about it

    # -- reads (no I/O) --

    @property
    def fresh(self) -> bool:
        """False while the session is not connected or the copy is being re-read."""
        return self._fresh and self._registry.session_state is SessionState.CONNECTED

    def get(self, path: str) -> bytes | None:
        return self._data.get(path)

    def stat(self, path: str) -> Stat | None:
        return self._stats.get(path)

    def exists(self, path: str) -> bool:
        return path in self._data

    def children(self, path: str) -> list[str]:
        return sorted(self._children.get(path, ()))

    def subscribe(
        self, relevant: Callable[[str], bool], wake: Callable[[], None] | None = None
    ) -> Subscription:
        """A change signal restricted to paths for which ``relevant(path)`` is true (``wake``
        is called on each such change)."""
        subscription = Subscription(relevant, wake)
        self._subscriptions.append(subscription)
        return subscription

    async def wait_changed(self, timeout: float) -> bool:
        """Wait for the next change (True) or ``timeout`` seconds (False)."""
        with anyio.move_on_after(timeout):
            await self._changed.wait()
            return True
        return False

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds on the copy; False if ``timeout`` passes first."""
        with anyio.move_on_after(timeout):
            while not predicate():
                await self._changed.wait()
            return True
        return predicate()

    # -- maintenance --

    def _on_watch(self, event: _Event) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.ClosedResourceError:
            pass  # the view has stopped; a late watch is of no interest

    def _on_session(self, event: SessionEvent) -> None:
        if event.state is not SessionState.CONNECTED:
            self._fresh = False
        self._on_watch(event)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the subtree, then apply changes until cancelled."""
        self._registry.add_session_listener(self._on_session)
        try:
            await self._resync()
            task_status.started()
            async for event in self._receive:
                await self._apply(event)
                # Drain whatever else is queued before waking waiters once.
                while True:
                    try:
                        event = self._receive.receive_nowait()
                    except anyio.WouldBlock:
                        break
                    await self._apply(event)
                self._signal()
        finally:
            self._registry.remove_session_listener(self._on_session)
            self._send.close()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
        batch, everything = self._batch, self._everything
        self._batch, self._everything = set(), False
        for subscription in self._subscriptions:
            if everything or any(subscription.relevant(path) for path in batch):
                subscription.notify()

    async def _apply(self, event: _Event) -> None:
        try:
            if isinstance(event, SessionEvent):
                if event.state is SessionState.CONNECTED:
                    await self._resync()
                return
            await self._apply_watch(event)
        except SessionLostError:
            self._fresh = False  # the next CONNECTED event re-reads everything
        except RegistryError:
            log.exception("view of %s: re-reading after a failed update", self.root)
            await self._resync_later()

    async def _resync_later(self) -> None:
        await anyio.sleep(0.2)
        self._send.send_nowait(SessionEvent(SessionState.CONNECTED, self._registry.session_id))

    async def _resync(self) -> None:
        self._fresh = False
        self._everything = True
        self._data.clear()
        self._stats.clear()
        self._children.clear()
        while True:
            try:
                await self._load(self.root)
                break
            except SessionLostError:
                return
            except NoNodeError:
                continue
        self._fresh = True
        self._signal()

    async def _load(self, path: str) -> None:
        try:
            data, stat = await self._registry.get(path, self._watcher)
            kids = (
                []
                if stat.ephemeral_owner  # ephemerals have no children
                else await self._registry.get_children(path, self._watcher)
            )
        except NoNodeError:
            self._drop(path)
            if path == self.root and await self._registry.exists(path, self._watcher):
                raise  # re-created meanwhile: the caller loads again
            return
        self._data[path], self._stats[path] = data, stat
        self._children[path] = set(kids)
        self._batch.add(path)
        parent = path.rsplit("/", 1)[0]
        if path != self.root and parent in self._children:
            self._children[parent].add(path.rsplit("/", 1)[1])
        for kid in kids:
            await self._load(_join(path, kid))

    def _drop(self, path: str) -> None:
        if path in self._data:
            self._batch.add(path)
        for kid in self._children.pop(path, ()):
            self._drop(_join(path, kid))
        self._data.pop(path, None)
        self._stats.pop(path, None)
        parent, _, name = path.rpartition("/")
        if parent in self._children:
            self._children[parent].discard(name)

    async def _apply_watch(self, event: WatchEvent) -> None:
        path = event.path
        if event.type is WatchEventType.DELETED:
            self._drop(path)
            if path == self.root:
                await self._registry.exists(path, self._watcher)
        elif event.type is WatchEventType.CREATED:
            if path == self.root or path.rpartition("/")[0] in self._children:
                await self._load(path)
        elif event.type is WatchEventType.CHANGED:
            if path in self._data:
                try:
                    self._data[path], self._stats[path] = await self._registry.get(
                        path, self._watcher
                    )
                    self._batch.add(path)
                except NoNodeError:
                    self._drop(path)
        elif event.type is WatchEventType.CHILDREN and path in self._children:
            try:
                kids = set(await self._registry.get_children(path, self._watcher))
            except NoNodeError:
                self._drop(path)
                return
            old = self._children[path]
            for gone in old - kids:
                self._drop(_join(path, gone))
            for new in sorted(kids - old):
                await self._load(_join(path, new))


class View(Protocol):
    """What coordination code reads: one job's nodes, kept by watches (``TreeView`` with
    one-shot watches, or a job's part of the instance's ``SharedView``)."""

    root: str

    @property
    def fresh(self) -> bool: ...

    def get(self, path: str) -> bytes | None: ...

    def stat(self, path: str) -> Stat | None: ...

    def exists(self, path: str) -> bool: ...

    def children(self, path: str) -> list[str]: ...

    def subscribe(
        self, relevant: Callable[[str], bool], wake: Callable[[], None] | None = None
    ) -> Subscription: ...

    async def wait_changed(self, timeout: float) -> bool: ...

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool: ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...


@dataclass(frozen=True, slots=True)
class _Value:
    """A read's reply, queued in wire order with the watch events: the node at that point
    (``missing``), its data and stat, or (``kids`` not None) its children's names."""

    path: str
    data: bytes | None
    stat: Stat | None
    kids: list[str] | None


_Item = WatchEvent | _Value
_LAZY_DELAY = 0.5  # seconds a mark's data may stay unread (most are deleted well before)
_WRITTEN, _CREATED, _CHANGED, _DELETED = (
    WatchEventType.WRITTEN,
    WatchEventType.CREATED,
    WatchEventType.CHANGED,
    WatchEventType.DELETED,
)


def _deferred(path: str) -> bool:
    """Nodes created and deleted on every fire (running marks, failover intents): their data
    is read only if they outlive ``_LAZY_DELAY``; until then they exist with unknown data."""
    return path.endswith("/running") or "/leader/failover/items/" in path


_BARE = frozenset(
    [
        (),
        ("servers",),
        ("instances",),
        ("sharding",),
        ("leader",),
        ("leader", "election"),
        ("leader", "sharding"),
        ("leader", "sharding", "necessary"),
        ("leader", "failover"),
        ("leader", "failover", "items"),
        ("trigger",),
        ("guarantee",),
        ("guarantee", "started"),
        ("guarantee", "completed"),
    ]
)


def _bare(path: str) -> bool:
    """A job's container nodes and its reshard flag: only their existence matters, so another
    instance creating them is never answered by a read (their data stays unknown). At scale
    these were half of every instance's reads while the cluster started."""
    parts = path.split("/")[3:]
    if len(parts) == 2 and parts[0] == "sharding" and parts[1].isdigit():
        return path.count("/") >= 2
    return len(parts) <= 3 and path.count("/") >= 2 and tuple(parts) in _BARE


#: Paths whose job key ``SharedView`` keeps (cleared when full: fire keys keep coming).
_KEYS_KEPT = 16384


def _job_key(path: str) -> str:
    """``/ns/job`` of ``/ns/job/...`` (the part of the tree one job's subscriptions watch)."""
    parts = path.split("/", 3)
    return "/".join(parts[:3])


class _Batched:
    """A watcher that also takes several events in one call (``many``, see the registries'
    ``_notify_watchers``)."""

    __slots__ = ("_one", "many")

    def __init__(
        self, one: Callable[[WatchEvent], None], many: Callable[[list[WatchEvent]], None]
    ) -> None:
        self._one, self.many = one, many

    def __call__(self, event: WatchEvent) -> None:
        self._one(event)


_shared: weakref.WeakKeyDictionary[Registry, SharedView] = weakref.WeakKeyDictionary()


def shared_view_of(registry: Registry) -> SharedView | None:
    """The instance-wide view serving ``registry``'s jobs, if one runs (see ``SharedView``)."""
    return _shared.get(registry)


class SharedView:
    """The whole namespace as last seen, kept by one tree watch (persistent recursive) for every
    job of the instance, with per-job reads, subscriptions and change signals (``job``).

    Every change is applied synchronously as the registry delivers it (events and read replies
    share the wire's order), so a read's reply supersedes exactly the events before it. An
    event without data (ZooKeeper sends none) waits for a read of its node, and every later
    event of the same job waits behind it: readers see a state of the job's subtree the
    registry had, never a mix (a batched multi-op spans jobs, each job's part applied together;
    other jobs do not wait). Nodes this session created need no read (WRITTEN carries their
    data); running marks and failover intents of other instances are kept with unknown data
    (``get`` is None) and read only if they outlive ``_LAZY_DELAY``. After a new connection or
    session the subtree is read again, level by level with pipelined requests.

    On the embedded registry the view keeps no copy: it reads the ``MemoryStore`` itself (whose
    changes, multi-ops included, are atomic and whose events carry their data), and the events
    only drive the signals, ``fresh`` and the reloads as they do for ZooKeeper.
    """

    def __init__(self, registry: Registry, root: str) -> None:
        self._registry = registry
        self.root = root
        self._prefix = root.rstrip("/") + "/"
        self._store = registry.store.nodes if isinstance(registry, MemoryRegistry) else None
        self._data: dict[str, bytes] = {}
        self._stats: dict[str, Stat] = {}
        self._children: dict[str, Names] = {}
        self._unknown: set[str] = set()  # deferred nodes whose data is not read yet
        # Per job (``_job_key``): items not applied yet, and the paths they wait to be read.
        self._queues: dict[str, list[_Item]] = {}
        self._unresolved: dict[str, set[str]] = {}
        self._to_read: set[str] = set()
        self._lazy: dict[str, float] = {}  # deferred node -> when to read it
        self._wake = anyio.Event()
        self._fresh = False
        self._loading = True
        self._watcher = _Batched(self._on_event, self._on_events)
        self._changed: dict[str, anyio.Event] = {}  # job key -> signal
        self._subscriptions: dict[str, list[Subscription]] = {}
        self._keys: dict[str, str] = {}  # path -> its job key (a fire's marks, every fire)
        self._batch: set[str] = set()
        self._everything = False
        self._signal_queued = False  # a deferred ``_signal`` is queued on the loop
        self._generation = 0  # bumped by each reset: stale loads stop

    # -- setup --

    async def start(self, tg: anyio.abc.TaskGroup) -> bool:
        """Add the tree watch and load the namespace under ``tg``; False (nothing started) if
        the registry cannot watch a tree (ZooKeeper < 3.6): jobs keep views of their own."""
        if not await self._watch_tree():
            return False
        self._registry.add_session_listener(self._on_session)
        _shared[self._registry] = self
        await tg.start(self._run)
        return True

    async def _watch_tree(self) -> bool:
        """Add the tree watch, through connection losses (a request in flight when the
        connection drops fails; the next one waits for the connection to come back)."""
        deadline = anyio.current_time() + self._registry_wait()
        while True:
            try:
                return await self._registry.watch_tree(self.root, self._watcher)
            except SessionLostError:
                if anyio.current_time() >= deadline:
                    raise
                await anyio.sleep(0.1)

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            self._reset()
            while self._loading:  # the first load, through connection losses
                try:
                    await self._load_all()
                except SessionLostError:
                    with anyio.fail_after(self._registry_wait()):
                        await self._wake.wait()  # set by the reset of the next CONNECTED
                    self._wake = anyio.Event()
            task_status.started()
            while True:
                await self._step()
        finally:
            _shared.pop(self._registry, None)
            self._registry.remove_session_listener(self._on_session)
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                await self._registry.unwatch_tree(self.root, self._watcher)

    def _registry_wait(self) -> float:
        """How long the first load waits for a lost connection to come back."""
        url = getattr(self._registry, "url", None)
        return float(getattr(url, "connect_timeout", 30.0)) * 2

    def job(self, root: str) -> JobView:
        """The part of the view under one job's ``root``."""
        return JobView(self, root)

    # -- reads (no I/O) --

    @property
    def fresh(self) -> bool:
        # Not "nothing unresolved": events waiting for a read leave a consistent (older) state.
        return self._fresh and self._registry.session_state is SessionState.CONNECTED

    @property
    def reading(self) -> bool:
        """Changes wait for a read (a load, events without data)."""
        return self._loading or bool(self._to_read or self._unresolved)

    def get(self, path: str) -> bytes | None:
        if self._store is not None:
            node = self._stored(path)
            return None if node is None else node.data
        return self._data.get(path)

    def stat(self, path: str) -> Stat | None:
        if self._store is not None:
            node = self._stored(path)
            return None if node is None else node.stat()
        return self._stats.get(path)

    def exists(self, path: str) -> bool:
        if self._store is not None:
            return self._stored(path) is not None
        return path in self._data or path in self._unknown

    def children(self, path: str) -> list[str]:
        if self._store is not None:
            node = self._stored(path)
            return [] if node is None else sorted(node.children)
        return sorted(self._children.get(path, ()))

    def _stored(self, path: str) -> _Node | None:
        """The embedded registry's node at ``path``, if it is in the view's subtree."""
        assert self._store is not None
        if path == self.root or path.startswith(self._prefix):
            return self._store.get(path)
        return None

    def subscribe(
        self, root: str, relevant: Callable[[str], bool], wake: Callable[[], None] | None = None
    ) -> Subscription:
        subscription = Subscription(relevant, wake)
        self._subscriptions.setdefault(root, []).append(subscription)
        return subscription

    def changed_event(self, key: str) -> anyio.Event:
        event = self._changed.get(key)
        if event is None:
            event = self._changed[key] = anyio.Event()
        return event

    # -- events and replies, applied in wire order --

    def _on_session(self, event: SessionEvent) -> None:
        if event.state is SessionState.CONNECTED:
            self._reset()
        else:
            self._fresh = False
        self._signal()

    def _on_event(self, event: WatchEvent) -> None:
        if self._store is not None:
            self._on_events([event])
        else:
            self._enqueue(event)

    def _on_events(self, events: list[WatchEvent]) -> None:
        """Several events at once (a multi-op's own creates): waiters wake once, after all."""
        if self._store is not None:
            # The embedded store holds every node and its tree events carry their data: an
            # event only names a path whose subscribers to ask (nothing waits for a read).
            self._batch.update([event.path for event in events])
        else:
            for event in events:
                self._enqueue(event, signal=False)
        if not self._loading:
            self._signal_soon()

    def _on_value(
        self, path: str, data: bytes | None, stat: Stat | None, kids: list[str] | None
    ) -> None:
        self._enqueue(_Value(path, data, stat, kids))

    def _enqueue(self, item: _Item, *, signal: bool = True) -> None:
        """Queue ``item`` behind its job's items waiting for a read, or apply it (and them)
        now. Jobs never wait for each other: each job's part of a (batched) multi-op stays within
        its subtree."""
        path = item.path
        key = _job_key(path)
        waiting = self._unresolved.get(key)
        if isinstance(item, _Value):
            if item.kids is None and waiting:  # a data reply (or the node missing) settles it
                waiting.discard(path)
        elif item.type in (_WRITTEN, _DELETED) or item.data is not None:
            if waiting:
                waiting.discard(path)
        elif not (_deferred(path) or _bare(path)):  # no data: wait for a read
            if waiting is None:
                waiting = self._unresolved[key] = set()
            waiting.add(path)
            if not (item.type is _CREATED and item.pending):
                self._to_read.add(path)
                self._wake.set()
        if waiting:
            self._queues.setdefault(key, []).append(item)
            return
        self._unresolved.pop(key, None)
        for queued in self._queues.pop(key, ()):
            self._apply(queued)
        self._apply(item)
        if signal and not self._loading:  # a load wakes every job once, at its end
            self._signal_soon()

    def _apply(self, item: _Item) -> None:
        path = item.path
        if isinstance(item, _Value):
            if item.kids is not None:
                self._apply_kids(path, item.kids)
            elif item.data is None or item.stat is None:
                self._drop(path)
            else:
                self._set(path, item.data, item.stat)
        elif item.type is _DELETED:
            self._drop(path)
        elif item.data is not None and item.stat is not None:
            self._set(path, item.data, item.stat)
        elif _bare(path):  # exists, data never read
            if item.type is _CREATED:
                self._add(path)
                self._unknown.add(path)
        elif _deferred(path):  # unknown data for now
            if item.type is _CREATED or path in self._data:
                self._add(path)
                self._data.pop(path, None)
                self._stats.pop(path, None)
                self._unknown.add(path)
                self._lazy.setdefault(path, anyio.current_time() + _LAZY_DELAY)
                self._wake.set()
        # else: a later read in this batch sets the node

    def _add(self, path: str) -> None:
        self._batch.add(path)
        if self._store is not None:
            return  # the store holds the node
        children = self._children
        children.setdefault(path, ())
        parent, _, name = path.rpartition("/")
        if path != self.root and parent in children:
            children[parent] = with_name(children[parent], name)

    def _set(self, path: str, data: bytes, stat: Stat) -> None:
        self._add(path)
        if self._store is None:
            self._unknown.discard(path)
            self._lazy.pop(path, None)
            self._data[path], self._stats[path] = data, stat

    def _drop(self, path: str) -> None:
        if self._store is not None:
            self._batch.add(path)  # the store deletes leaves only: each node has its event
            return
        if path in self._data or path in self._unknown:
            self._batch.add(path)
        for kid in self._children.pop(path, ()):
            self._drop(_join(path, kid))
        self._data.pop(path, None)
        self._stats.pop(path, None)
        self._unknown.discard(path)
        self._lazy.pop(path, None)
        parent, _, name = path.rpartition("/")
        kids = self._children.get(parent)
        if kids is not None:
            self._children[parent] = without_name(kids, name)

    def _apply_kids(self, path: str, kids: list[str]) -> None:
        """A children listing (loading): names the view holds but the listing lacks are gone."""
        if path not in self._children:
            return
        listed = set(kids)
        for gone in [k for k in self._children[path] if k not in listed]:
            self._drop(_join(path, gone))

    def _signal_soon(self) -> None:
        """Signal once per loop pass what the events applied meanwhile changed (the copy is
        already up to date: only waking the waiters is deferred, so the fires of a tick that
        write marks do not each pay for it before their jobs start)."""
        if not self._signal_queued:
            self._signal_queued = True
            asyncio.get_running_loop().call_soon(self._signal)

    def _signal(self) -> None:
        self._signal_queued = False
        batch, everything = self._batch, self._everything
        if not batch and not everything:
            return
        self._batch, self._everything = set(), False
        by_key: dict[str, list[str]] = {}
        keys = self._keys
        for path in batch:
            key = keys.get(path)
            if key is None:
                if len(keys) >= _KEYS_KEPT:
                    keys.clear()
                key = keys[path] = sys.intern(_job_key(path))  # one string per job
            paths = by_key.get(key)
            if paths is None:
                by_key[key] = [path]
            else:
                paths.append(path)
        if everything:
            for key in set(self._changed) | set(self._subscriptions):
                by_key.setdefault(key, [])
        changed, subscriptions = self._changed, self._subscriptions
        for key, paths in by_key.items():
            event = changed.pop(key, None)
            if event is not None:
                event.set()
            for subscription in subscriptions.get(key, ()):
                if everything:
                    subscription.notify()
                    continue
                if subscription.pending:
                    continue  # notified already, not yet taken: its owner will look
                relevant = subscription.relevant
                for path in paths:
                    if relevant(path):
                        subscription.notify()
                        break

    # -- loading and reading --

    def _reset(self) -> None:
        """Forget everything (a new connection: events missed meanwhile are not replayed)."""
        self._generation += 1
        self._fresh, self._loading, self._everything = False, True, True
        self._data.clear()
        self._stats.clear()
        self._children.clear()
        self._unknown.clear()
        self._queues.clear()
        self._unresolved.clear()
        self._to_read.clear()
        self._lazy.clear()
        self._wake.set()

    async def _load_all(self) -> None:
        """Read the whole subtree, level by level (pipelined reads), until done or reset."""
        generation = self._generation
        stats: dict[str, Stat] = {}
        kids: dict[str, list[str]] = {}

        def on_value(
            path: str, data: bytes | None, stat: Stat | None, names: list[str] | None
        ) -> None:
            if generation != self._generation:
                return
            if stat is not None:
                stats[path] = stat
            if names is not None:
                kids[path] = names
            self._on_value(path, data, stat, names)

        level = [self.root]
        while level and generation == self._generation:
            stats.clear()
            kids.clear()
            await self._registry.read_many(level, on_value)
            if self._store is not None:
                break  # one round trip, as a load: the view reads the store itself
            parents = [p for p in level if p in stats and stats[p].num_children]
            await self._registry.read_many([], on_value, children=parents)
            level = [_join(p, k) for p in parents for k in kids.get(p, ())]
        if generation == self._generation:
            self._loading = False
            self._fresh = True
            self._everything = True
            self._signal()

    async def _step(self) -> None:
        """Wait for reads to do (a reset's reload, events without data, unread marks)."""
        now = anyio.current_time()
        due = [p for p, at in self._lazy.items() if at <= now]
        if not (self._to_read or due or self._loading):
            wake = min(self._lazy.values(), default=now + 60)
            with anyio.move_on_after(max(0.0, wake - now)):
                await self._wake.wait()
            self._wake = anyio.Event()
            return
        try:
            if self._loading:
                await self._load_all()
                return
            for path in due:
                self._lazy.pop(path, None)
            paths = sorted(self._to_read | {p for p in due if p in self._unknown})
            self._to_read.clear()
            if paths:
                try:
                    await self._registry.read_many(paths, self._on_value)
                except RegistryError:
                    self._to_read.update(paths)  # read again (a reset may forget them first)
                    raise
        except SessionLostError:
            with anyio.move_on_after(1):
                await self._wake.wait()  # the next CONNECTED resets and reloads
            self._wake = anyio.Event()
        except RegistryError:
            log.exception("view of %s: re-reading after a failed update", self.root)
            await anyio.sleep(0.2)
            self._reset()


class JobView:
    """One job's part of a ``SharedView`` (the ``View`` the job's coordination reads)."""

    def __init__(self, shared: SharedView, root: str) -> None:
        self._shared = shared
        self.root = root
        self._key = _job_key(root)

    @property
    def fresh(self) -> bool:
        return self._shared.fresh

    def get(self, path: str) -> bytes | None:
        return self._shared.get(path)

    def stat(self, path: str) -> Stat | None:
        return self._shared.stat(path)

    def exists(self, path: str) -> bool:
        return self._shared.exists(path)

    def children(self, path: str) -> list[str]:
        return self._shared.children(path)

    def subscribe(
        self, relevant: Callable[[str], bool], wake: Callable[[], None] | None = None
    ) -> Subscription:
        return self._shared.subscribe(self._key, relevant, wake)

    async def wait_changed(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self._shared.changed_event(self._key).wait()
            return True
        return False

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            while not predicate():
                await self._shared.changed_event(self._key).wait()
            return True
        return predicate()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing to keep (the shared view does): ready once it is fresh, then idle."""
        await self.wait_for(lambda: self._shared.fresh, math.inf)
        task_status.started()
        await anyio.sleep_forever()
