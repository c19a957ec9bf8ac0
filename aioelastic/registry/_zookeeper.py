"""The ZooKeeper registry: the ``Registry`` protocol over aiozk's wire protocol.

aiozk gives us the jute wire format (``aiozk.protocol`` requests and responses, ``ACL``,
``Stat``, ``aiozk.exc`` error codes). Everything above it is ours: framing on an anyio socket
(``_wire``), the session and its supervisor (here), heartbeats, reconnection, watches, recipes.
aiozk's ``Session`` is unfit for a coordinator (see the pitfalls below) and fixing it would mean
overriding most of it, so we do not use ``ZKClient``/``Session`` at all.

Session rule (``T`` = the session timeout negotiated with the server):

* a ping goes out when nothing was sent for ``T/4`` (one ping in flight at most);
* SUSPENDED as soon as the connection breaks, or when nothing sent in the last ``T/2`` was
  answered (the connection is then dropped);
* LOST, declared by us, ``2/3·T`` (``SESSION_LOSS_FRACTION``) after the *send time* of the last
  request the server answered. The server cannot expire the session before ``T`` has passed
  since it last heard from us, which is after that send time: we stop trusting the session
  (and its ephemerals) at least ``T/3`` before another instance can see it expire and take
  over. A session the server reports expired (or that comes back with another id) is LOST too.
* after LOST we open a *new* session (listeners get LOST with the old id, then CONNECTED with
  the new one; the old session's watches are dropped, never delivered). If we declared the loss
  ourselves and the server still has the old session, we first attach to it and close it, so
  its ephemerals are gone before the new session re-registers (given up after 3 failed tries
  on a reachable server: it then expires on its own).

Ensemble: the URL's hosts are tried in turn, starting at a random one (ZooKeeper's clients
shuffle the connect string too), each attempt within ``connect_timeout / len(hosts)``; a server
that drops or ignores the ConnectRequest (one without quorum, a frozen one) is skipped for the
next. When none answers within ``connect_timeout`` at start-up, the error names every host with
its last failure. A chroot in the URL (``zookeeper://h1,h2,h3/chroot/ns``) prefixes every path
on the wire and is cut off paths we return (watch events, sequential names); ``make_parents``
creates it when missing.

Requests: each call has a deadline (``request_timeout``, default the session timeout). While
SUSPENDED a call waits for the reconnection within it; while LOST it fails at once; both raise
``SessionLostError``. Requests are never replayed: a write whose connection broke raises
``SessionLostError`` and may or may not have been applied (a sequential create may have left an
orphan node). aiozk's ``Session.send`` replays such requests, duplicating sequential nodes.

Tree watches (``watch_tree``) are persistent recursive watches (``addWatch``, ZooKeeper >= 3.6),
re-added on every new connection before CONNECTED is reported (the server drops a connection's
watches with it; changes meanwhile are not replayed: holders re-read on CONNECTED). A server
without ``addWatch`` refuses it and ``watch_tree`` returns False. Our own creates are announced
to tree watchers (WRITTEN, at reply time) so they need not read back what we wrote.

Watches are one-shot, registered when the server's reply is read (no event can overtake them),
re-armed after a reconnection to the same session with ``SetWatches`` relative to the last zxid
we saw (changes missed meanwhile fire then), and called synchronously by the connection's reader
task, which the registry owns.

ACLs: with ``zookeeper://user:pass@...`` each connection sends a digest ``AuthRequest`` and the
nodes we create get ALL for ``digest:user:base64(sha1(user:pass))`` plus READ for
``world:anyone``: operators can browse the tree with ``zkCli``, only we can change it. Without
credentials nodes are open (``world:anyone`` ALL). The password is never logged.

aiozk pitfalls avoided this way: ``Session.send`` retries forever (replays) and has no timeout;
``find_server`` backs off exponentially up to 60 s (a restarted server is found too late for the
session to survive); ``establish_session`` resets the last zxid to ``None``, so every re-armed
data watch fires spuriously; DELETED-only watches are not re-armed; the read loop exits silently
on EOF (a drop is only noticed by a ping timeout); callbacks run as unreferenced tasks;
``ensure_path`` makes container nodes; ``delete``/``set_data`` default to cached versions; a
failed multi returns a falsy result; ``close()`` can hang; unknown error codes are printed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from aiozk import exc as zk_exc
from aiozk import protocol

from .._errors import (
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
from ._paths import is_at_or_under
from ._paths import validate_path as _check_path
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
from ._wire import (
    CONNECTION_ERRORS,
    AddWatchRequest,
    Connection,
    MultiRequest,
    ReadRequest,
    RemoveWatchesRequest,
    ServerError,
    WatchNote,
    acl_bytes,
    make_acl,
    map_error,
    parse_hosts,
    show_host,
    to_stat,
)

__all__ = ["SESSION_LOSS_FRACTION", "ZooKeeperRegistry"]

log = logging.getLogger("aioelastic.registry")

SESSION_LOSS_FRACTION = 2 / 3
"""Declare the session LOST this fraction of the negotiated timeout after the last answer."""
_SUSPEND_FRACTION = 1 / 2
_PING_FRACTION = 1 / 4

_SET_WATCHES_BATCH = 128 * 1024  # bytes of paths per SetWatches request, as the Java client
_RETRY_PAUSE = (0.05, 1.0)  # pause between connection rounds: first, maximum
_EPHEMERAL, _SEQUENTIAL = 1, 2
_MAX_ATTEMPTS = 8  # make_parents / recursive delete rounds against concurrent changes
_RETIRE_TRIES = 3  # attempts to close a lost session on a reachable server before giving up
_PERSISTENT_RECURSIVE = 1  # addWatch mode
_WATCHER_PERSISTENT_RECURSIVE = 5  # removeWatches type
_READ_WINDOW = 500  # requests of one read_many in flight at once

_EVENT_TYPES = {
    protocol.WatchEvent.CREATED: WatchEventType.CREATED,
    protocol.WatchEvent.DELETED: WatchEventType.DELETED,
    protocol.WatchEvent.DATA_CHANGED: WatchEventType.CHANGED,
    protocol.WatchEvent.CHILDREN_CHANGED: WatchEventType.CHILDREN,
}


def _ignore_reply(_response: Any, _error: Exception | None) -> None:
    pass


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _child(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


_DATA, _EXIST, _CHILD = "data", "exist", "child"  # the server's three kinds of watch
_FIRED_BY = {
    WatchEventType.CREATED: (_DATA, _EXIST),
    WatchEventType.CHANGED: (_DATA, _EXIST),
    WatchEventType.DELETED: (_DATA, _EXIST, _CHILD),
    WatchEventType.CHILDREN: (_CHILD,),
}


class _Watches:
    """One-shot watchers of the current session, by (kind, path)."""

    def __init__(self) -> None:
        self._table: dict[tuple[str, str], list[Watcher]] = {}

    def add(self, kind: str, path: str, watcher: Watcher) -> None:
        watchers = self._table.setdefault((kind, path), [])
        if watcher not in watchers:
            watchers.append(watcher)

    def pop(self, event_type: WatchEventType, path: str) -> list[Watcher]:
        fired: list[Watcher] = []
        for kind in _FIRED_BY[event_type]:
            for watcher in self._table.pop((kind, path), []):
                if watcher not in fired:
                    fired.append(watcher)
        return fired

    def paths(self, kind: str) -> list[str]:
        return [path for (k, path) in self._table if k == kind]

    def clear(self) -> None:
        self._table.clear()


@dataclass
class _Retiring:
    """A session we declared lost, to close on the server before opening a new one."""

    session_id: int
    password: bytes
    reached: bool = False  # the current attempt got an answer to its ConnectRequest
    failures: int = 0  # attempts that reached the server but could not close it


class _SessionExpiredError(Exception):
    """The server refused to resume the session: it expired."""


class ZooKeeperRegistry(ListenerBase):
    """A ZooKeeper session implementing the ``Registry`` protocol (see the module docstring)."""

    def __init__(self, url: RegistryURL, *, request_timeout: float | None = None) -> None:
        super().__init__()
        if url.scheme != "zookeeper":
            raise ValueError(f"not a zookeeper:// URL: {url}")
        self.url = url
        self._hosts = parse_hosts(url.hosts)
        self._chroot = url.chroot
        self._request_timeout = request_timeout or url.session_timeout
        self._acl = make_acl(url)
        self._acl_bytes = acl_bytes(self._acl)
        self._credentials = (
            None
            if url.username is None or url.password is None
            else f"{url.username}:{url.password.get_secret_value()}".encode()
        )
        self._state = SessionState.LOST
        self._state_changed = anyio.Event()
        self._watches = _Watches()
        self._tree_watches: dict[str, list[Watcher]] = {}  # server-side root -> watchers
        self._inflight_creates: dict[str, int] = {}  # server-side path -> our creates of it
        self._flagged: set[str] = set()  # paths whose CREATED went out marked pending
        self._session_id = 0
        self._password = b"\x00" * 16
        self._timeout = url.session_timeout
        self._last_zxid = 0
        self._conn: Connection | None = None
        self._retire: _Retiring | None = None
        # Where the first connection attempt goes: random, as ZooKeeper's clients shuffle the
        # connect string, so the instances of a service spread over the ensemble's servers.
        self._next_host = random.randrange(len(self._hosts))
        self._host_errors: dict[str, str] = {}  # host:port -> its latest connection failure
        self._requests = 0
        self._started = self._closing = False
        self._tg: anyio.abc.TaskGroup | None = None

    # -- protocol properties -------------------------------------------------------------

    @property
    def session_state(self) -> SessionState:
        return self._state

    @property
    def session_id(self) -> int:
        """The current session's id (the lost one's until a new session is established)."""
        return self._session_id

    @property
    def session_password(self) -> bytes:
        """The session's password (with ``session_id``, lets a test expire it kazoo-style)."""
        return self._password

    @property
    def negotiated_timeout(self) -> float:
        """The session timeout granted by the server, seconds."""
        return self._timeout

    @property
    def request_count(self) -> int:
        """Requests sent for callers (pings, auth, watch re-arming and close excluded)."""
        return self._requests

    @property
    def connected_host(self) -> str | None:
        """``host:port`` of the server the session is connected to now, else None."""
        return self._conn.host if self._conn is not None else None

    def raw_socket(self) -> socket.socket | None:
        """The current connection's TCP socket, for fault-injection tests; else None."""
        return self._conn.raw_socket if self._conn is not None else None

    def abandon_session(self, reason: str) -> None:
        """Give the session up now: LOST, close it on the server, then a new session."""
        if not self._started or self._closing or self._state is SessionState.LOST:
            return
        self._declare_lost(f"abandoned: {reason}", retire=True)
        if self._conn is not None:
            self._conn.abort("session abandoned")

    # -- lifetime -------------------------------------------------------------------------

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Connect (within ``connect_timeout``) and push a bounded close onto ``exit_stack``."""
        if self._started:
            raise RuntimeError("ZooKeeperRegistry.start() called twice")
        self._started = True
        conn, resumed = await self._first_connection()  # raises before touching the stack
        try:
            tg = await exit_stack.enter_async_context(self._running())
        except BaseException:
            await conn.aclose()
            raise
        exit_stack.push_async_callback(self._close)
        await tg.start(self._supervise, conn, resumed)

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[anyio.abc.TaskGroup]:
        """Own the background tasks; an exception of the owner passes through unwrapped."""
        owner_error: BaseException | None = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    yield tg
                except BaseException as error:
                    owner_error = error
                    raise
        except BaseExceptionGroup as group:
            if owner_error is None or list(group.exceptions) != [owner_error]:
                raise
        if owner_error is not None:
            raise owner_error

    async def _close(self) -> None:
        self._closing = True
        conn = self._conn if self._state is SessionState.CONNECTED else None
        with anyio.move_on_after(self.url.connect_timeout, shield=True):
            if conn is not None:
                try:
                    await conn.call(protocol.CloseRequest())
                except (RegistryError, ServerError) as error:
                    log.debug("closing ZooKeeper session: %r", error)
        self._watches.clear()
        self._tree_watches.clear()
        self._set_state(SessionState.LOST)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        log.info("ZooKeeper session 0x%x closed (%s)", self._session_id, self.url)

    # -- session supervisor ---------------------------------------------------------------

    async def _supervise(
        self, conn: Connection, resumed: bool, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        while True:
            await self._serve(conn, resumed, task_status)
            task_status = anyio.TASK_STATUS_IGNORED
            if self._closing:
                return
            conn, resumed = await self._recover(conn)

    async def _first_connection(self) -> tuple[Connection, bool]:
        per_attempt = self.url.connect_timeout / len(self._hosts)
        with anyio.move_on_after(self.url.connect_timeout):
            pause = _RETRY_PAUSE[0]
            while True:
                for _ in self._hosts:
                    attempt = await self._attempt(math.inf, per_attempt)
                    if attempt is not None:
                        return attempt
                await anyio.sleep(pause)
                pause = min(pause * 2, _RETRY_PAUSE[1])
        shown = [show_host(host, port) for host, port in self._hosts]
        tried = "; ".join(f"{h}: {self._host_errors.get(h, 'not reached in time')}" for h in shown)
        raise SessionLostError(
            f"cannot connect to ZooKeeper at {self.url.hosts} within "
            f"{self.url.connect_timeout:g}s: none of its {len(self._hosts)} host(s) answered "
            f"({tried})"
        )

    async def _serve(
        self, conn: Connection, resumed: bool, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Run one connection: reader, watch re-arming, CONNECTED, keepalive until it dies."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(conn.run, self._on_watch_events, self._on_connection_closed)
                if (not resumed or await self._rearm_watches(conn)) and (
                    await self._add_tree_watches(conn)
                ):
                    self._conn = conn
                    self._set_state(SessionState.CONNECTED)
                    task_status.started()
                    await self._keepalive(conn)
                tg.cancel_scope.cancel()
        finally:
            self._on_connection_closed(conn)
            self._last_zxid = max(self._last_zxid, conn.last_zxid)
            await conn.aclose()

    def _on_connection_closed(self, conn: Connection) -> None:
        """SUSPENDED as soon as the connection ends, before any failed request resumes."""
        if conn is self._conn:
            self._conn = None
            if not self._closing and self._state is SessionState.CONNECTED:
                self._set_state(SessionState.SUSPENDED)

    async def _keepalive(self, conn: Connection) -> None:
        """Ping when idle; return when the connection ends or stays silent too long."""
        ping_every = self._timeout * _PING_FRACTION
        silent_max = self._timeout * _SUSPEND_FRACTION
        while not conn.closed.is_set():
            now = anyio.current_time()
            silent_until = conn.acked_at + silent_max
            if now >= silent_until:
                log.warning(
                    "ZooKeeper %s: no answer for %.1fs, dropping the connection",
                    conn.host,
                    now - conn.acked_at,
                )
                return
            wake = min(silent_until, conn.expire(self._request_timeout))
            if conn.ping_sent_at is None:
                if now - conn.last_send >= ping_every:
                    with anyio.move_on_after(silent_until - now):  # the send lock may be busy
                        await conn.ping()
                    continue
                wake = min(wake, conn.last_send + ping_every)
            conn.wake_at = wake
            with anyio.move_on_after(wake - now):
                await conn.attention.wait()
            conn.attention = anyio.Event()

    async def _recover(self, dead: Connection) -> tuple[Connection, bool]:
        """Reconnect: resume the session while SUSPENDED, until it is lost; then a new one."""
        loss_at = dead.acked_at + self._timeout * SESSION_LOSS_FRACTION
        if self._state is SessionState.SUSPENDED:
            log.warning(
                "ZooKeeper session 0x%x suspended (connection to %s lost); declared lost in "
                "%.1fs unless resumed",
                self._session_id,
                dead.host,
                max(0.0, loss_at - anyio.current_time()),
            )
        per_attempt = self.url.connect_timeout / len(self._hosts)
        pause = _RETRY_PAUSE[0]
        while True:
            for _ in self._hosts:
                if self._state is SessionState.SUSPENDED and anyio.current_time() >= loss_at:
                    silent = self._timeout * SESSION_LOSS_FRACTION
                    self._declare_lost(
                        f"no answer from ZooKeeper for {silent:.1f}s "
                        f"({SESSION_LOSS_FRACTION:.2f} of the {self._timeout:g}s session timeout)",
                        retire=True,
                    )
                attempt = await self._attempt(loss_at, per_attempt)
                if attempt is not None:
                    return attempt
            wait = pause
            if self._state is SessionState.SUSPENDED:
                wait = max(0.0, min(pause, loss_at - anyio.current_time()))
            await anyio.sleep(wait)
            pause = min(pause * 2, _RETRY_PAUSE[1])

    async def _attempt(self, loss_at: float, budget: float) -> tuple[Connection, bool] | None:
        """One connection attempt to the next host; (connection, resumed) or None."""
        host, port = self._hosts[self._next_host % len(self._hosts)]
        self._next_host += 1
        resume = self._state is not SessionState.LOST and self._session_id != 0
        if resume:
            budget = min(budget, loss_at - anyio.current_time())
        try:
            with anyio.fail_after(max(budget, 0.0)):
                if self._retire is not None:
                    await self._retire_session(host, port)
                try:
                    return await self._open(host, port, resume=resume)
                except _SessionExpiredError:
                    self._declare_lost("ZooKeeper reports the session expired", retire=False)
                    return await self._open(host, port, resume=False)
        except (*CONNECTION_ERRORS, TimeoutError, RegistryError, _SessionExpiredError) as error:
            reason = "no answer" if isinstance(error, TimeoutError) else repr(error)
            shown = show_host(host, port)
            self._host_errors[shown] = reason
            log.debug("ZooKeeper connection attempt to %s failed: %s", shown, reason)
            self._retire_failed()
            return None

    async def _open(self, host: str, port: int, *, resume: bool) -> tuple[Connection, bool]:
        """TCP connect, ConnectRequest (resuming or new session), digest auth."""
        conn = await Connection.open(host, port, self._last_zxid if resume else 0)
        try:
            response = await conn.handshake(
                protocol.ConnectRequest(
                    protocol_version=0,
                    last_seen_zxid=conn.last_zxid,
                    timeout=int(self.url.session_timeout * 1000),
                    session_id=self._session_id if resume else 0,
                    password=self._password if resume else b"\x00" * 16,
                    read_only=False,
                )
            )
            if response.timeout <= 0 or response.session_id == 0:
                raise _SessionExpiredError
            if resume and self._state is SessionState.LOST:  # abandoned meanwhile
                raise RegistryError("the session was abandoned during the reconnection")
            if self._credentials is not None:
                await conn.authenticate(self._credentials)
        except BaseException:
            await conn.aclose()
            raise
        return conn, self._adopt(response)

    def _adopt(self, response: Any) -> bool:
        """Take the session the server granted; True if it is the one we had."""
        resumed = self._session_id != 0 and response.session_id == self._session_id
        if not resumed and self._session_id and self._state is not SessionState.LOST:
            self._declare_lost("ZooKeeper granted a new session id", retire=False)
        if not resumed:
            self._watches.clear()
            self._last_zxid = 0  # the old session's zxid may be ahead of this server (wiped)
            log.info(
                "ZooKeeper session 0x%x established (%s, timeout %.1fs)",
                response.session_id,
                self.url,
                response.timeout / 1000,
            )
        self._session_id = int(response.session_id)
        self._password = bytes(response.password)
        self._timeout = response.timeout / 1000
        return resumed

    async def _retire_session(self, host: str, port: int) -> None:
        """Close a session we declared lost, until the server refuses it as expired.

        Attach with its id and password and close it, until a ConnectRequest is refused: a
        close can be undone by a stale request of ours that reached the server late.
        """
        assert self._retire is not None
        retiring = self._retire
        session_id, password = retiring.session_id, retiring.password
        while True:
            conn = await Connection.open(host, port, 0)
            try:
                response = await conn.handshake(
                    protocol.ConnectRequest(
                        protocol_version=0,
                        last_seen_zxid=0,
                        timeout=int(self.url.session_timeout * 1000),
                        session_id=session_id,
                        password=password,
                        read_only=False,
                    )
                )
                # Only a server that answers counts: one of an ensemble without quorum (or a
                # frozen one) accepts the connection, then drops it or says nothing.
                retiring.reached = True
                if response.timeout <= 0 or response.session_id != session_id:
                    log.info("lost ZooKeeper session 0x%x is gone on the server", session_id)
                    self._retire = None
                    return
                await conn._write(protocol.CloseRequest().serialize(1))
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await conn._read_frame()
                log.info("closing lost ZooKeeper session 0x%x on the server", session_id)
            finally:
                await conn.aclose()

    def _retire_failed(self) -> None:
        """Count a failed close of a lost session the server answered; give up at last."""
        retiring = self._retire
        if retiring is None or not retiring.reached:
            return  # unreachable server: a new session cannot be opened either
        retiring.reached = False
        retiring.failures += 1
        if retiring.failures >= _RETIRE_TRIES:
            log.warning(
                "could not close lost ZooKeeper session 0x%x; it will expire on its own",
                retiring.session_id,
            )
            self._retire = None

    def _declare_lost(self, reason: str, *, retire: bool) -> None:
        log.warning("ZooKeeper session 0x%x lost: %s", self._session_id, reason)
        self._watches.clear()
        self._retire = _Retiring(self._session_id, self._password) if retire else None
        self._set_state(SessionState.LOST)

    async def _rearm_watches(self, conn: Connection) -> bool:
        """Re-send the session's watches on a new connection (SetWatches); False if it died.

        The server fires at once the watches whose node changed after our last seen zxid.
        """
        relative_zxid = conn.last_zxid  # replies to the batches below move conn.last_zxid
        lists = [self._watches.paths(kind) for kind in (_DATA, _EXIST, _CHILD)]
        batches: list[list[list[str]]] = [[[], [], []]]
        size = 0
        for index, paths in enumerate(lists):
            for path in paths:
                if size > _SET_WATCHES_BATCH:
                    batches.append([[], [], []])
                    size = 0
                batches[-1][index].append(path)
                size += len(path) + 4
        try:
            with anyio.fail_after(self._request_timeout):
                for data, exist, child in batches:
                    if data or exist or child:
                        await conn.call(
                            protocol.SetWatchesRequest(
                                relative_zxid=relative_zxid,
                                data_watches=data,
                                exist_watches=exist,
                                child_watches=child,
                            )
                        )
        except (TimeoutError, SessionLostError, ServerError) as error:
            log.warning("ZooKeeper %s: re-arming watches failed: %r", conn.host, error)
            return False
        return True

    def _set_state(self, state: SessionState) -> None:
        if state is self._state:
            return
        self._state = state
        self._state_changed.set()
        self._state_changed = anyio.Event()
        event = SessionEvent(state, self._session_id)
        if not self._closing:  # a graceful close is logged as "closed", not as a loss
            log.info("ZooKeeper session 0x%x %s", self._session_id, state.value)
        self._notify_session(event)

    def _on_watch_events(self, raws: list[WatchNote]) -> None:
        """The watch events of one read from the wire, delivered together: a tree watcher
        (the shared view) takes them in one call."""
        fired: list[tuple[Watcher, WatchEvent]] = []
        for raw in raws:
            event_type = _EVENT_TYPES.get(raw.type)
            if event_type is None:
                continue  # a connection-state notification: our supervisor tracks state itself
            event = WatchEvent(event_type, self._rel(raw.path))
            fired += [(w, event) for w in self._watches.pop(event_type, raw.path)]
            if self._tree_watches and event_type is not WatchEventType.CHILDREN:
                pending = (
                    event_type is WatchEventType.CREATED and raw.path in self._inflight_creates
                )
                if pending:
                    self._flagged.add(raw.path)
                tree_event = WatchEvent(event_type, event.path, pending=True) if pending else event
                fired += [(w, tree_event) for w in self._tree_watchers(raw.path)]
        self._notify_watchers(fired)

    def _tree_watchers(self, path: str) -> list[Watcher]:
        """Tree watchers whose root covers the server-side ``path``."""
        out: list[Watcher] = []
        for root, watchers in self._tree_watches.items():
            if is_at_or_under(path, root):
                out += watchers
        return out

    def _written(self, creates: list[tuple[str, bytes, bool]], ok: bool) -> None:
        """At the reply of our request with ``creates`` (server-side path, data, ephemeral):
        tree watchers hear WRITTEN for each node it created, or CHANGED (re-read it) if it
        failed and the node's CREATED event was someone else's."""
        fired: list[tuple[Watcher, WatchEvent]] = []
        now = time.time()
        for path, data, ephemeral in creates:
            left = self._inflight_creates.get(path, 0) - 1
            if left > 0:
                self._inflight_creates[path] = left
            else:
                self._inflight_creates.pop(path, None)
            flagged = path in self._flagged
            self._flagged.discard(path)
            watchers = self._tree_watchers(path) if self._tree_watches else []
            if not watchers or not (ok or flagged):
                continue
            if ok:
                stat = Stat(0, now, self._session_id if ephemeral else 0, 0)
                event = WatchEvent(WatchEventType.WRITTEN, self._rel(path), data, stat)
            else:
                event = WatchEvent(WatchEventType.CHANGED, self._rel(path))
            fired += [(w, event) for w in watchers]
        self._notify_watchers(fired)

    async def _tracked_call(
        self, request: Any, label: str, creates: list[tuple[str, bytes, bool]]
    ) -> Any:
        """``_call`` for a request creating ``creates``: CREATED events they cause are marked
        pending, and tree watchers learn the outcome at reply time (``_written``)."""
        if not creates:
            return await self._call(request, label)
        for path, _, _ in creates:
            self._inflight_creates[path] = self._inflight_creates.get(path, 0) + 1
        answered = False

        def on_reply(response: Any, error: Exception | None) -> None:
            nonlocal answered
            answered = True
            failed = error is not None or any(
                isinstance(r, Exception) for r in getattr(response, "responses", ())
            )
            self._written(creates, not failed)

        try:
            return await self._call(request, label, on_reply)
        finally:
            if not answered:  # no reply (connection lost, cancelled): forget the tracking
                self._written([(p, b"", False) for p, _, _ in creates], False)

    # -- requests -------------------------------------------------------------------------

    async def _connection(self) -> Connection:
        while True:
            if self._closing:
                raise SessionLostError(f"ZooKeeper registry {self.url} is closed")
            if self._state is SessionState.CONNECTED and self._conn is not None:
                return self._conn
            if self._state is SessionState.LOST:
                raise SessionLostError(
                    f"ZooKeeper session 0x{self._session_id:x} is lost ({self.url})"
                )
            await self._state_changed.wait()

    async def _call(
        self,
        request: Any,
        path: str,
        on_reply: Callable[[Any, Exception | None], None] | None = None,
    ) -> Any:
        """Send one request with a deadline; map every failure to our errors."""
        try:
            conn = self._conn
            if conn is None or self._state is not SessionState.CONNECTED or self._closing:
                with anyio.fail_after(self._request_timeout):
                    conn = await self._connection()
            self._requests += 1
            # Its deadline: the keepalive fails it after request_timeout (Connection.expire).
            return await conn.call(request, on_reply)
        except TimeoutError:
            raise SessionLostError(
                f"{path}: no answer from ZooKeeper within {self._request_timeout:g}s"
            ) from None
        except ServerError as error:
            raise map_error(error.error, path) from None

    def _abs(self, path: str) -> str:
        """The server-side path of ``path`` under the URL's chroot."""
        if not self._chroot:
            return path
        return self._chroot if path == "/" else self._chroot + path

    def _rel(self, path: str) -> str:
        """``path`` as the caller sees it (the chroot cut off)."""
        if not self._chroot or not path.startswith(self._chroot):
            return path
        rest = path[len(self._chroot) :]
        return rest if rest.startswith("/") else "/" if not rest else path

    def _watch_on_reply(
        self, watcher: Watcher | None, kind: str, path: str, *, absent_kind: str | None = None
    ) -> Callable[[Any, Exception | None], None] | None:
        """Register ``watcher`` when the reply is read (before any event can follow it)."""
        if watcher is None:
            return None
        watches = self._watches

        def register(_response: Any, error: Exception | None) -> None:
            if error is None:
                watches.add(kind, path, watcher)
            elif absent_kind is not None and isinstance(error, zk_exc.NoNode):
                watches.add(absent_kind, path, watcher)

        return register

    async def watch_tree(self, path: str, watcher: Watcher) -> bool:
        _check_path(path)
        path = self._abs(path)
        if path in self._tree_watches:
            if watcher not in self._tree_watches[path]:
                self._tree_watches[path].append(watcher)
            return True
        tree_watches = self._tree_watches

        def register(_response: Any, error: Exception | None) -> None:
            if error is None:  # from the reply on, events of the subtree reach the watcher
                tree_watches.setdefault(path, []).append(watcher)

        try:
            await self._call(AddWatchRequest(path=path, mode=_PERSISTENT_RECURSIVE), path, register)
        except SessionLostError:
            raise
        except RegistryError as error:
            log.info("ZooKeeper refuses addWatch on %s (%s): one-shot watches instead", path, error)
            # A server that does not know the request may drop the connection after refusing
            # it (3.8 does for an unknown opcode): return once requests go through again.
            for _ in range(2):
                with contextlib.suppress(SessionLostError):
                    await self.exists("/")
                    break
            return False
        return True

    async def unwatch_tree(self, path: str, watcher: Watcher) -> None:
        path = self._abs(path)
        watchers = self._tree_watches.get(path, [])
        if watcher in watchers:
            watchers.remove(watcher)
        if watchers or path not in self._tree_watches:
            return
        del self._tree_watches[path]
        if self._state is SessionState.CONNECTED and not self._closing:
            request = RemoveWatchesRequest(path=path, type=_WATCHER_PERSISTENT_RECURSIVE)
            with contextlib.suppress(RegistryError):
                await self._call(request, path)

    async def _add_tree_watches(self, conn: Connection) -> bool:
        """Re-add the tree watches on a new connection (before CONNECTED); False if it died."""
        if not self._tree_watches:
            return True
        requests = [
            (AddWatchRequest(path=path, mode=_PERSISTENT_RECURSIVE), _ignore_reply)
            for path in self._tree_watches
        ]
        try:
            with anyio.fail_after(self._request_timeout):
                await conn.call_many(requests)
        except (TimeoutError, SessionLostError) as error:
            log.warning("ZooKeeper %s: re-adding tree watches failed: %r", conn.host, error)
            return False
        return True

    async def read_many(
        self, paths: Sequence[str], on_result: ReadResult, *, children: Sequence[str] = ()
    ) -> None:
        """Pipelined getData/getChildren (``_READ_WINDOW`` in flight), each result delivered
        at its reply; raises ``SessionLostError`` or the first error other than NoNode."""
        failures: list[RegistryError] = []

        def data_reply(path: str) -> Callable[[Any, Exception | None], None]:
            def reply(response: Any, error: Exception | None) -> None:
                if error is None:
                    on_result(path, bytes(response.data or b""), to_stat(response.stat), None)
                elif isinstance(error, zk_exc.NoNode):
                    on_result(path, None, None, None)
                else:
                    failures.append(map_error(error, path))

            return reply

        def children_reply(path: str) -> Callable[[Any, Exception | None], None]:
            def reply(response: Any, error: Exception | None) -> None:
                if error is None:
                    on_result(path, None, None, list(response.children))
                elif isinstance(error, zk_exc.NoNode):
                    on_result(path, None, None, None)
                else:
                    failures.append(map_error(error, path))

            return reply

        todo = [(4, path) for path in paths] + [(8, path) for path in children]
        for start in range(0, len(todo), _READ_WINDOW):
            window = []  # built window by window: a long list must not hold the loop
            for opcode, path in todo[start : start + _READ_WINDOW]:
                _check_path(path)
                reply = data_reply(path) if opcode == 4 else children_reply(path)
                window.append((ReadRequest(opcode, self._abs(path)), reply))
            try:
                with anyio.fail_after(self._request_timeout):
                    conn = await self._connection()
                    self._requests += len(window)
                    await conn.call_many(window)
            except TimeoutError:
                raise SessionLostError(
                    f"read of {len(window)} nodes: no answer within {self._request_timeout:g}s"
                ) from None
            if failures:
                raise failures[0]

    async def get(self, path: str, watcher: Watcher | None = None) -> tuple[bytes, Stat]:
        _check_path(path)
        path = self._abs(path)
        on_reply = self._watch_on_reply(watcher, _DATA, path)
        request = protocol.GetDataRequest(path=path, watch=watcher is not None)
        response = await self._call(request, path, on_reply)
        return bytes(response.data or b""), to_stat(response.stat)

    async def get_children(self, path: str, watcher: Watcher | None = None) -> list[str]:
        _check_path(path)
        path = self._abs(path)
        on_reply = self._watch_on_reply(watcher, _CHILD, path)
        request = protocol.GetChildrenRequest(path=path, watch=watcher is not None)
        response = await self._call(request, path, on_reply)
        return list(response.children)

    async def exists(self, path: str, watcher: Watcher | None = None) -> Stat | None:
        _check_path(path)
        path = self._abs(path)
        on_reply = self._watch_on_reply(watcher, _DATA, path, absent_kind=_EXIST)
        request = protocol.ExistsRequest(path=path, watch=watcher is not None)
        try:
            response = await self._call(request, path, on_reply)
        except NoNodeError:
            return None
        return to_stat(response.stat)

    def _create_request(self, path: str, data: bytes, flags: int) -> Any:
        request = protocol.CreateRequest(path=path, data=data, acl=self._acl)
        request.flags = flags
        return request

    async def create(
        self,
        path: str,
        data: bytes = b"",
        *,
        ephemeral: bool = False,
        sequential: bool = False,
        make_parents: bool = False,
    ) -> str:
        _check_path(path, sequential=sequential)
        path = self._abs(path)
        check_request(create_size(path, data), path)
        flags = (_EPHEMERAL if ephemeral else 0) | (_SEQUENTIAL if sequential else 0)
        creates = [] if sequential else [(path, data, ephemeral)]
        for _ in range(_MAX_ATTEMPTS):
            try:
                request = self._create_request(path, data, flags)
                response = await self._tracked_call(request, path, creates)
                return self._rel(str(response.path))
            except NoNodeError:
                if not make_parents:
                    raise
            await self._make_parents(path)
        raise NoNodeError(f"{path}: parents keep disappearing")

    async def _make_parents(self, path: str) -> None:
        """Create the missing ancestors of ``path`` as plain persistent nodes, bottom-up."""
        missing: list[str] = []
        parent = _parent(path)
        while parent != "/":
            try:
                await self._tracked_call(
                    self._create_request(parent, b"", 0), parent, [(parent, b"", False)]
                )
            except NodeExistsError:
                break
            except NoNodeError:
                missing.append(parent)
                parent = _parent(parent)
                continue
            break
        for node in reversed(missing):
            try:
                await self._tracked_call(
                    self._create_request(node, b"", 0), node, [(node, b"", False)]
                )
            except NodeExistsError:
                pass

    async def set(self, path: str, data: bytes, *, version: int = -1) -> Stat:
        _check_path(path)
        path = self._abs(path)
        check_request(set_size(path, data), path)
        request = protocol.SetDataRequest(path=path, data=data, version=version)
        return to_stat((await self._call(request, path)).stat)

    async def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> None:
        _check_path(path)
        path = self._abs(path)
        if not recursive:
            await self._call(protocol.DeleteRequest(path=path, version=version), path)
            return
        await self._delete_tree(path, version, missing_ok=False)

    async def _delete_tree(self, path: str, version: int, *, missing_ok: bool) -> None:
        """Delete ``path`` and its subtree, children first; NoNode races are tolerated."""
        for _ in range(_MAX_ATTEMPTS):
            try:
                await self._call(protocol.DeleteRequest(path=path, version=version), path)
                return
            except NoNodeError:
                if missing_ok:
                    return
                raise
            except NotEmptyError:
                missing_ok = True  # it existed: if it vanishes now, someone else deleted it
            try:
                request = protocol.GetChildrenRequest(path=path, watch=False)
                children = list((await self._call(request, path)).children)
            except NoNodeError:
                return
            for name in children:
                await self._delete_tree(_child(path, name), -1, missing_ok=True)
        raise NotEmptyError(f"{path}: children keep appearing")

    def _op_entry(self, op: Op) -> tuple[str, str, bytes, int]:
        _check_path(op.path)
        path = self._abs(op.path)
        match op:
            case CreateOp(_, data, ephemeral):
                return ("create", path, data, _EPHEMERAL if ephemeral else 0)
            case SetOp(_, data, version):
                return ("set", path, data, version)
            case DeleteOp(_, version):
                return ("delete", path, b"", version)
            case CheckOp(_, version):
                return ("check", path, b"", version)
        raise TypeError(f"unknown op {op!r}")

    async def transaction(self, ops: Sequence[Op]) -> None:
        """A ZooKeeper multi; per-op results are checked (aiozk returns them, not raises)."""
        if not ops:
            return
        check_request(transaction_size(ops), f"transaction of {len(ops)} ops on {ops[0].path}")
        request = MultiRequest([self._op_entry(op) for op in ops], self._acl_bytes)
        label = f"transaction on {ops[0].path}"
        touched_later = {op.path for op in ops if not isinstance(op, CreateOp | CheckOp)}
        creates = [
            (self._abs(op.path), op.data, op.ephemeral)
            for op in ops
            if isinstance(op, CreateOp) and op.path not in touched_later
        ]
        response = await self._tracked_call(request, label, creates)
        errors = [r for r in response.responses if isinstance(r, Exception)]
        if not errors and len(response.responses) == len(ops):
            return
        for index, result in enumerate(response.responses):
            if isinstance(result, Exception) and not isinstance(
                result, zk_exc.RolledBack | zk_exc.RuntimeInconsistency
            ):
                raise TransactionFailedError(index, map_error(result, ops[index].path))
        raise TransactionFailedError(0, RegistryError(f"{label}: failed ({response})"))
