"""A watch-maintained local copy of one registry subtree (our own TreeCache).

Reads on the hot path (a fire) come from here, not from the registry. The copy is kept by one
task that applies watch events in the order the registry delivers them; ZooKeeper delivers a
deleted node's own event before its parent's children event, and a multi-op's events in op
order, so the copy never shows an intermediate state the registry never had. After a session
event (reconnect or new session) the whole subtree is read again, since watches of a lost
session are gone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus

from .._errors import NoNodeError, RegistryError, SessionLostError
from ._protocol import Registry, SessionEvent, SessionState, Stat, WatchEvent, WatchEventType

__all__ = ["Subscription", "TreeView"]

log = logging.getLogger("aioelastic.view")

_Event = WatchEvent | SessionEvent


def _join(path: str, child: str) -> str:
    return f"{path.rstrip('/')}/{child}"


class Subscription:
    """Wakes its owner only for changes to the paths it cares about (``relevant(path)``)."""

    def __init__(self, relevant: Callable[[str], bool]) -> None:
        self.relevant = relevant
        self._event = anyio.Event()

    def notify(self) -> None:
        """Wake the owner as if a relevant change happened."""
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for a relevant change since the last wait (True) or ``timeout`` (False)."""
        with anyio.move_on_after(timeout):
            await self._event.wait()
        changed = self._event.is_set()
        if changed:
            self._event = anyio.Event()
        return changed


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

    def subscribe(self, relevant: Callable[[str], bool]) -> Subscription:
        """A change signal restricted to paths for which ``relevant(path)`` is true."""
        subscription = Subscription(relevant)
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
