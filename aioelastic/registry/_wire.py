"""ZooKeeper's wire: one TCP connection to one server (jute framing over an anyio socket,
request/reply matching, pings, watch events), and the mapping of its replies to our types.

The session built on these connections (heartbeats, SUSPENDED/LOST, reconnection, watches) is
``_zookeeper.ZooKeeperRegistry``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from aiozk import exc as zk_exc
from aiozk import protocol
from aiozk.protocol.acl import ACL
from aiozk.protocol.primitives import Int, UString
from anyio.abc import SocketAttribute
from anyio.streams.buffered import BufferedByteReceiveStream

from .._errors import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RegistryError,
    SessionLostError,
)
from .._urls import RegistryURL
from ._protocol import Stat

__all__ = [
    "CONNECTION_ERRORS",
    "AddWatchRequest",
    "Connection",
    "MultiRequest",
    "ReadRequest",
    "RemoveWatchesRequest",
    "ServerError",
    "WatchNote",
    "acl_bytes",
    "make_acl",
    "map_error",
    "parse_hosts",
    "to_stat",
]

log = logging.getLogger("aioelastic.registry")

_SIZE = struct.Struct("!i")
_REPLY_HEADER = struct.Struct("!iqi")
_MAX_FRAME = 64 * 1024 * 1024
_WATCH_XID = -1
_PING_XID = -2
_AUTH_XID = -4
CONNECTION_ERRORS = (
    OSError,
    EOFError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.IncompleteRead,
)

_ERROR_TYPES: tuple[tuple[Any, type[RegistryError]], ...] = (
    (zk_exc.NoNode, NoNodeError),
    (zk_exc.NodeExists, NodeExistsError),
    (zk_exc.BadVersion, BadVersionError),
    (zk_exc.NotEmpty, NotEmptyError),
    (zk_exc.ConnectionLoss, SessionLostError),
    (zk_exc.SessionExpired, SessionLostError),
    (zk_exc.SessionMoved, SessionLostError),
    (zk_exc.OperationTimeout, SessionLostError),
)


class AddWatchRequest(protocol.request.Request):  # type: ignore[misc]
    """ZooKeeper >= 3.6's ``addWatch`` (mode 1: PERSISTENT_RECURSIVE); the reply has no body
    we use."""

    opcode = 106
    parts = (("path", UString), ("mode", Int))


class RemoveWatchesRequest(protocol.request.Request):  # type: ignore[misc]
    """``removeWatches`` (type 5: PersistentRecursive)."""

    opcode = 18
    parts = (("path", UString), ("type", Int))


_INT = struct.Struct("!i")
_HEADER = struct.Struct("!i?i")  # a multi's per-op header: type, done, error
_OPCODES = {"create": 1, "delete": 2, "set": 5, "check": 13}


def _ustring(text: str) -> bytes:
    raw = text.encode()
    return _INT.pack(len(raw)) + raw


def acl_bytes(acl: list[Any]) -> bytes:
    """A jute vector of ACLs, serialized once per registry."""
    out = [_INT.pack(len(acl))]
    for entry in acl:
        out += [_INT.pack(entry.perms), _ustring(entry.id.scheme), _ustring(entry.id.id)]
    return b"".join(out)


class MultiRequest:
    """A multi (opcode 14), serialized directly: aiozk's generic ``Part`` rendering was a
    tenth of the CPU of a busy instance. ``ops`` are (kind, server-side path, data, version or
    flags) with kind one of create/delete/set/check."""

    opcode = 14

    def __init__(self, ops: Sequence[tuple[str, str, bytes, int]], acl: bytes) -> None:
        self.ops = ops
        self.acl = acl

    def serialize(self, xid: int) -> bytes:
        out = [_INT.pack(xid), _INT.pack(self.opcode)]
        for kind, path, data, number in self.ops:
            out += [_HEADER.pack(_OPCODES[kind], False, -1), _ustring(path)]
            if kind == "create":
                out += [_INT.pack(len(data)), data, self.acl, _INT.pack(number)]
            elif kind == "set":
                out += [_INT.pack(len(data)), data, _INT.pack(number)]
            else:
                out.append(_INT.pack(number))
        out.append(_HEADER.pack(-1, True, -1))
        return b"".join(out)


class ReadRequest:
    """getData (4) / getChildren (8) without a watch, serialized directly (``read_many`` sends
    thousands at a time)."""

    def __init__(self, opcode: int, path: str) -> None:
        self.opcode = opcode
        self.path = path

    def serialize(self, xid: int) -> bytes:
        return _INT.pack(xid) + _INT.pack(self.opcode) + _ustring(self.path) + b"\x00"


class ServerError(Exception):
    """A non-zero error code in a reply, kept as the aiozk exception until mapped."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def _response_error(code: int) -> Exception:
    if code in zk_exc.response_error_xref:  # aiozk's fallback prints unknown codes to stdout
        error: Exception = zk_exc.response_error_xref[code]()
        return error
    return RegistryError(f"ZooKeeper error code {code}")


def map_error(error: Exception, path: str) -> RegistryError:
    if isinstance(error, RegistryError):
        return error
    for zk_type, ours in _ERROR_TYPES:
        if isinstance(error, zk_type):
            return ours(f"{path}: {type(error).__name__}")
    if isinstance(error, zk_exc.NoAuth):
        return RegistryError(f"{path}: not authorized (NoAuth): the node's ACL denies this client")
    return RegistryError(f"{path}: ZooKeeper error {type(error).__name__}")


def to_stat(raw: Any) -> Stat:
    return Stat(
        version=int(raw.version),
        mtime=raw.modified / 1000.0,
        ephemeral_owner=int(raw.ephemeral_owner),
        num_children=int(raw.num_children),
    )


def show_host(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hosts(hosts: str) -> list[tuple[str, int]]:
    out = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        out.append((host.strip("[]"), int(port)))
    return out


_STAT_SIZE = 68  # a jute Stat: 6 longs, 5 ints
_CREATE, _DELETE, _SET, _CHECK, _CREATE2, _ERROR = 1, 2, 5, 13, 15, -1


@dataclass(slots=True)
class MultiReply:
    """A multi's reply: per op None (done) or the error (aiozk's exception types)."""

    responses: list[Exception | None]


_STAT = struct.Struct("!qqqqiiiqiiq")  # czxid mzxid ctime mtime version cversion aversion
# ephemeralOwner dataLength numChildren pzxid


@dataclass(frozen=True, slots=True)
class RawStat:
    """The fields of a reply's Stat that ``to_stat`` uses (named as aiozk names them)."""

    version: int
    modified: int
    ephemeral_owner: int
    num_children: int


@dataclass(frozen=True, slots=True)
class Reply:
    """A read or write reply, decoded directly (aiozk's generic ``Part`` parsing was most of
    a view's read cost): the fields its request type has."""

    data: bytes | None = None
    stat: RawStat | None = None
    children: list[str] | None = None
    path: str | None = None


def _stat(body: bytes, offset: int) -> RawStat:
    _, _, _, mtime, version, _, _, owner, _, kids, _ = _STAT.unpack_from(body, offset)
    return RawStat(version, mtime, owner, kids)


def _string(body: bytes, offset: int) -> tuple[str, int]:
    (size,) = _INT.unpack_from(body, offset)
    offset += _INT.size
    size = max(size, 0)
    return body[offset : offset + size].decode(), offset + size


def _reply(opcode: int, body: bytes) -> Reply | None:
    """``body`` of a reply to ``opcode``; None for the types decoded by aiozk."""
    if opcode == _OP_GET_DATA:
        (size,) = _INT.unpack_from(body, 0)
        end = _INT.size + max(size, 0)
        return Reply(data=body[_INT.size : end] if size >= 0 else None, stat=_stat(body, end))
    if opcode in (_OP_EXISTS, _OP_SET_DATA):
        return Reply(stat=_stat(body, 0))
    if opcode == _OP_GET_CHILDREN:
        (count,) = _INT.unpack_from(body, 0)
        offset, names = _INT.size, []
        for _ in range(max(count, 0)):
            name, offset = _string(body, offset)
            names.append(name)
        return Reply(children=names)
    if opcode == _OP_CREATE:
        return Reply(path=_string(body, 0)[0])
    return None


_OP_CREATE, _OP_EXISTS, _OP_GET_DATA, _OP_SET_DATA, _OP_GET_CHILDREN = 1, 3, 4, 5, 8


def _multi_reply(body: bytes) -> Any:
    """Decoded directly (aiozk's generic parsing was most of a mark's reply cost); a result
    type we never send goes to aiozk's decoder."""
    out: list[Exception | None] = []
    offset = 0
    while True:
        kind, done, _ = _HEADER.unpack_from(body, offset)
        offset += _HEADER.size
        if done:
            return MultiReply(out)
        if kind == _ERROR:
            (code,) = _INT.unpack_from(body, offset)
            offset += _INT.size
            out.append(zk_exc.get_response_error(code))
            continue
        if kind in (_CREATE, _CREATE2):
            (size,) = _INT.unpack_from(body, offset)
            offset += _INT.size + max(size, 0) + (_STAT_SIZE if kind == _CREATE2 else 0)
        elif kind == _SET:
            offset += _STAT_SIZE
        elif kind not in (_DELETE, _CHECK):
            return protocol.TransactionResponse.deserialize(body)
        out.append(None)


def make_acl(url: RegistryURL) -> list[Any]:
    """ALL for our digest identity + READ for the world; open without credentials."""
    if url.username is None or url.password is None:
        return [protocol.UNRESTRICTED_ACCESS]
    secret = f"{url.username}:{url.password.get_secret_value()}".encode()
    digest = base64.b64encode(hashlib.sha1(secret).digest()).decode()  # noqa: S324 - ZK's scheme
    ours = ACL.make("digest", f"{url.username}:{digest}", True, True, True, True, True)
    return [ours, protocol.WORLD_READABLE]


class _Countdown:
    """One signal for the replies of a ``call_many`` batch (an Event per request was a good
    part of sending thousands of reads)."""

    def __init__(self, count: int) -> None:
        self.left = count
        self.event = anyio.Event()
        if count <= 0:
            self.event.set()

    def set(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.event.set()


_READ_CHUNK = 64 * 1024  # what one read hands over at most: the loop is not held longer
_WATCH_HEADER = struct.Struct("!iii")  # a watch notification: type, state, path length


@dataclass(frozen=True, slots=True)
class WatchNote:
    """A watch notification as the server sent it (``type`` is ZooKeeper's event code)."""

    type: int
    state: int
    path: str


def _now(loop: asyncio.AbstractEventLoop | None) -> float:
    return anyio.current_time() if loop is None else loop.time()


def _watch_note(frame: bytes, offset: int) -> WatchNote:
    """Decoded directly (aiozk's generic parsing was most of a busy view's event cost)."""
    kind, state, size = _WATCH_HEADER.unpack_from(frame, offset)
    start = offset + _WATCH_HEADER.size
    return WatchNote(kind, state, frame[start : start + size].decode() if size > 0 else "")


class _Waiter:
    """One reply's signal on asyncio: a bare future (an anyio ``Event`` looks its backend up
    on every creation and wait, a tenth of a busy instance's fire path)."""

    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self._future.done():  # done: answered, or the waiter was cancelled
            self._future.set_result(None)

    async def wait(self) -> None:
        await self._future


@dataclass(eq=False)
class _Call:
    """A request waiting for its reply on one connection."""

    opcode: int
    sent_at: float
    on_reply: Callable[[Any, Exception | None], None] | None = None
    done: anyio.Event | _Countdown | _Waiter = field(default_factory=anyio.Event)
    response: Any = None
    error: Exception | None = None


class Connection:
    """One TCP connection to one server: framing, request/reply matching, pings."""

    def __init__(self, stream: anyio.abc.SocketStream, host: str, last_zxid: int) -> None:
        self.host = host
        self.last_zxid = last_zxid
        now = anyio.current_time()
        self.acked_at = now  # send time of the newest request the server answered
        self.last_send = now
        self.closed = anyio.Event()
        self.attention = anyio.Event()
        """Set when the connection closes or a call's deadline comes before ``wake_at`` (when
        its keepalive looks next, see ``expire``)."""
        self.wake_at = 0.0
        self._timeout = math.inf  # of ``expire``
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # another backend: anyio's primitives
            self._loop = None
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._send_lock = anyio.Lock()
        self._pending: dict[int, _Call] = {}
        self._outbox: list[bytes] = []  # framed requests of ``call`` not sent yet
        self._flushing = False
        self.ping_sent_at: float | None = None  # the one outstanding ping, if any
        self._xid = 0
        self._on_closed: Callable[[Connection], None] | None = None

    @classmethod
    async def open(cls, host: str, port: int, last_zxid: int) -> Connection:
        stream = await anyio.connect_tcp(host, port)
        return cls(stream, show_host(host, port), last_zxid)

    @property
    def raw_socket(self) -> socket.socket:
        sock: socket.socket = self._stream.extra(SocketAttribute.raw_socket)  # noqa: S610
        return sock

    async def _write(self, payload: bytes) -> None:
        await self._stream.send(_SIZE.pack(len(payload)) + payload)  # one atomic write
        self.last_send = anyio.current_time()

    async def _read_frame(self) -> bytes:
        (size,) = _SIZE.unpack(await self._reader.receive_exactly(_SIZE.size))
        if not 0 <= size <= _MAX_FRAME:
            raise EOFError(f"bad frame size {size} from {self.host}")
        return await self._reader.receive_exactly(size)

    async def handshake(self, request: Any) -> Any:
        """Send the ConnectRequest and read the ConnectResponse (before ``run``)."""
        sent = anyio.current_time()
        await self._write(request.serialize())
        response = protocol.ConnectResponse.deserialize(await self._read_frame())
        self.acked_at = sent
        return response

    async def authenticate(self, credentials: bytes) -> None:
        """Digest auth (before ``run``); the server answers on the special auth xid."""
        request = protocol.AuthRequest(type=0, scheme="digest", auth=credentials)
        await self._write(request.serialize(_AUTH_XID))
        xid, _, err = _REPLY_HEADER.unpack_from(await self._read_frame())
        if xid != _AUTH_XID or err:
            raise RegistryError(f"digest authentication refused by {self.host} (code {err})")

    async def call(
        self, request: Any, on_reply: Callable[[Any, Exception | None], None] | None = None
    ) -> Any:
        """Send a request and wait for its reply; ``ServerError`` for an error code."""
        xid = 0
        try:
            if self.closed.is_set():
                raise SessionLostError(f"connection to {self.host} is closed")
            self._xid = xid = self._xid % 0x7FFFFFFF + 1
            loop = self._loop
            done = anyio.Event() if loop is None else _Waiter(loop)
            pending = _Call(request.opcode, _now(loop), on_reply, done)
            if not self._pending and pending.sent_at + self._timeout < self.wake_at:
                self.attention.set()
            self._pending[xid] = pending
            payload = request.serialize(xid)
            self._outbox.append(_SIZE.pack(len(payload)) + payload)
            if not self._flushing:
                await self._flush()
            await done.wait()
        except CONNECTION_ERRORS as error:
            raise SessionLostError(f"connection to {self.host} broke: {error!r}") from None
        finally:
            self._pending.pop(xid, None)  # abandoned (cancelled): a late reply is dropped
        if pending.error is not None:
            raise pending.error
        return pending.response

    def expire(self, timeout: float) -> float:
        """Fail the calls unanswered for ``timeout`` seconds (``TimeoutError``): one deadline
        check for every request instead of a cancel scope each. Returns when the oldest call
        left is due (inf if none waits)."""
        now, self._timeout = _now(self._loop), timeout
        while self._pending:
            xid, oldest = next(iter(self._pending.items()))  # in the order they were sent
            if oldest.sent_at + timeout > now:
                return oldest.sent_at + timeout
            del self._pending[xid]
            oldest.error = TimeoutError()
            oldest.done.set()
        return math.inf

    async def _flush(self) -> None:
        """Send the outbox: the requests of every task that called in this loop iteration go
        out in one write (one system call instead of one each), in the order of their xids.
        Shielded, so a caller's cancellation never strands the others' requests."""
        self._flushing = True
        try:
            with anyio.CancelScope(shield=True):
                await anyio.lowlevel.checkpoint()  # let the other callers of this tick join
                async with self._send_lock:
                    while self._outbox:
                        frames, self._outbox = self._outbox, []
                        await self._stream.send(b"".join(frames))
                        self.last_send = anyio.current_time()
        finally:
            self._flushing = False

    async def call_many(
        self, requests: Sequence[tuple[Any, Callable[[Any, Exception | None], None]]]
    ) -> None:
        """Send ``requests`` in one write and wait for every reply; each ``on_reply`` runs as
        its reply is read (error replies included). Raises ``SessionLostError`` if the
        connection ends first."""
        calls: list[tuple[int, _Call]] = []
        countdown = _Countdown(len(requests))
        try:
            async with self._send_lock:
                if self.closed.is_set():
                    raise SessionLostError(f"connection to {self.host} is closed")
                now = anyio.current_time()
                frames = []
                for request, on_reply in requests:
                    self._xid = xid = self._xid % 0x7FFFFFFF + 1
                    pending = _Call(request.opcode, now, on_reply, countdown)
                    self._pending[xid] = pending
                    calls.append((xid, pending))
                    payload = request.serialize(xid)
                    frames.append(_SIZE.pack(len(payload)) + payload)
                await self._stream.send(b"".join(frames))
                self.last_send = anyio.current_time()
            await countdown.event.wait()
        except CONNECTION_ERRORS as error:
            raise SessionLostError(f"connection to {self.host} broke: {error!r}") from None
        finally:
            for xid, _ in calls:
                self._pending.pop(xid, None)
        for _, pending in calls:
            if pending.error is not None and not isinstance(pending.error, ServerError):
                raise pending.error

    async def ping(self) -> None:
        """Send a ping unless one is outstanding; its reply acknowledges its send time."""
        async with self._send_lock:
            if self.closed.is_set() or self.ping_sent_at is not None:
                return
            self.ping_sent_at = anyio.current_time()
            with contextlib.suppress(*CONNECTION_ERRORS):  # the reader sees the breakage
                await self._write(protocol.PingRequest().serialize(_PING_XID))

    async def run(
        self, on_events: Callable[[list[WatchNote]], None], on_closed: Callable[[Connection], None]
    ) -> None:
        """Read replies and watch events until the connection ends; then fail what waits.
        Consecutive watch events of one read go to ``on_events`` together (in wire order, and
        before any reply that follows them)."""
        self._on_closed = on_closed
        reason = "closed"
        buffer = bytearray()
        try:
            while True:
                # Every complete frame of a chunk is dispatched in one go: one await per read
                # from the socket, not two per frame, and the callers its replies wake send
                # their next requests together.
                buffer += await self._reader.receive(_READ_CHUNK)
                offset, end = 0, len(buffer)
                notes: list[WatchNote] = []
                while end - offset >= _SIZE.size:
                    (size,) = _SIZE.unpack_from(buffer, offset)
                    if not 0 <= size <= _MAX_FRAME:
                        raise EOFError(f"bad frame size {size} from {self.host}")
                    start = offset + _SIZE.size
                    if start + size > end:
                        break
                    if self.closed.is_set():
                        return  # aborted: nothing of this connection is delivered any more
                    offset = start + size
                    frame = bytes(buffer[start:offset])
                    if _REPLY_HEADER.unpack_from(frame)[0] == _WATCH_XID:
                        notes.append(_watch_note(frame, _REPLY_HEADER.size))
                        continue
                    if notes:
                        on_events(notes)
                        notes = []
                    self._dispatch(frame)
                if notes and not self.closed.is_set():
                    on_events(notes)
                del buffer[:offset]
        except CONNECTION_ERRORS as error:
            reason = repr(error)
        except Exception as error:  # a protocol bug must not take the registry down
            log.exception("ZooKeeper connection to %s: unreadable reply", self.host)
            reason = repr(error)
        finally:
            self._shutdown(reason)

    def _dispatch(self, frame: bytes) -> None:
        """A reply (watch events go to ``run``'s ``on_events``)."""
        xid, zxid, err = _REPLY_HEADER.unpack_from(frame)
        body = frame[_REPLY_HEADER.size :]
        if xid == _PING_XID:
            if self.ping_sent_at is not None:
                self.acked_at = max(self.acked_at, self.ping_sent_at)
                self.ping_sent_at = None
            return
        pending = self._pending.pop(xid, None)
        if pending is None:
            return  # the caller gave up; its reply is dropped
        self.acked_at = max(self.acked_at, pending.sent_at)
        if zxid > 0:
            self.last_zxid = max(self.last_zxid, zxid)
        if err:
            pending.error = ServerError(_response_error(err))
        elif pending.opcode == MultiRequest.opcode:
            pending.response = _multi_reply(body)
        elif (reply := _reply(pending.opcode, body)) is not None:
            pending.response = reply
        elif pending.opcode in protocol.response_xref:
            pending.response = protocol.response_xref[pending.opcode].deserialize(body)
        if pending.on_reply is not None:
            error = pending.error.error if isinstance(pending.error, ServerError) else None
            pending.on_reply(pending.response, error)
        pending.done.set()

    def _shutdown(self, reason: str) -> None:
        if not self.closed.is_set():
            log.debug("ZooKeeper connection to %s ended: %s", self.host, reason)
        self.closed.set()
        self.attention.set()
        for pending in self._pending.values():
            pending.error = SessionLostError(f"connection to {self.host} lost ({reason})")
            pending.done.set()
        self._pending.clear()
        on_closed, self._on_closed = self._on_closed, None
        if on_closed is not None:
            on_closed(self)

    def abort(self, reason: str) -> None:
        """End the connection now (sync): waiting calls fail, the reader dispatches no more."""
        self._shutdown(reason)

    async def aclose(self) -> None:
        self._shutdown("closed by us")
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()
