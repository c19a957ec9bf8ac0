"""A real ZooKeeper server for tests (Debian's ``zookeeper`` package), plus fault injection.

``ZooKeeperEnsemble`` runs a 3-server quorum on loopback (``QuorumPeerMain``, ``server.N`` lines,
``myid`` files): any member can be stopped, paused, restarted or wiped; ``leader()`` and
``serving(session_id)`` read the members' ``srvr`` and ``cons`` four-letter words.

``ZooKeeperServer`` runs ``ZooKeeperServerMain`` with a private ``zoo.cfg`` on a free loopback
port and a temporary data dir; ``stop()``/``restart()`` keep both, so sessions and data survive a
restart as they would in production. ``pause()``/``resume()`` freeze the JVM (SIGSTOP/SIGCONT):
the TCP connection stays up but nothing answers.

``drop_connection(registry)`` breaks the client's TCP connection (the session survives);
``expire_session(registry)`` ends the session on the server kazoo-style: a second connection
presents the same session id and password, then sends a CloseRequest. ``Recorder`` records
watch/session events for ``await rec.until(...)``; ``barrier()`` makes "no event arrived"
decidable without sleeping.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from aiozk import protocol
from anyio.streams.buffered import BufferedByteReceiveStream

from aioelastic.registry import Registry, SessionEvent, SessionState, ZooKeeperRegistry

__all__ = [
    "EnsembleMember",
    "Recorder",
    "ZooKeeperEnsemble",
    "ZooKeeperServer",
    "barrier",
    "drop_connection",
    "expire_session",
    "free_port",
    "zookeeper_classpath",
]

MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
INSTALL_HINT = "ZooKeeper is not installed: run `apt-get install -y zookeeper` (Debian package)"
_SIZE = struct.Struct("!i")


def zookeeper_classpath() -> str:
    """The server jar from the Debian package; fails the test (not skip) when it is missing."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", "zookeeper", "libzookeeper-java"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        listing = []
    jars = [p for p in listing if p.endswith("/zookeeper.jar") and Path(p).is_file()]
    if not jars:
        pytest.fail(INSTALL_HINT, pytrace=False)
    if shutil.which("java") is None:
        pytest.fail(f"no `java` on PATH; {INSTALL_HINT}", pytrace=False)
    return jars[0]


def free_port(address: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


class ZooKeeperServer:
    """One standalone ZooKeeper 3.8 on 127.0.0.1 (tickTime 500 ms: session timeouts 1-30 s)."""

    main_class = MAIN_CLASS
    jvm_options: tuple[str, ...] = ()

    def __init__(
        self,
        workdir: Path,
        *,
        tick_ms: int = 500,
        ready_timeout: float = 30.0,
        address: str = "127.0.0.1",
    ) -> None:
        self.workdir = workdir
        self.address = address  # the client port's loopback address: 127.0.0.1 or ::1
        self.port = free_port(address)
        self.tick_ms = tick_ms
        self.ready_timeout = ready_timeout
        self._classpath = zookeeper_classpath()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "zookeeper.log"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self._cfg = workdir / "zoo.cfg"
        self._cfg.write_text(self._config())

    def _config(self) -> str:
        return (
            f"tickTime={self.tick_ms}\n"
            f"dataDir={self.workdir / 'data'}\n"
            f"clientPort={self.port}\n"
            f"clientPortAddress={self.address}\n"
            "maxClientCnxns=0\n"
            "maxSessionTimeout=30000\n"
            "4lw.commands.whitelist=srvr,ruok,mntr,cons\n"
            "admin.enableServer=false\n"
        )

    @property
    def hosts(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )

    def url(self, namespace: str, **options: float) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"zookeeper://{self.hosts}/{namespace}" + (f"?{query}" if query else "")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the JVM and wait (with a deadline) until it serves requests."""
        if self.running:
            return
        self.spawn()
        self.wait_serving()

    def spawn(self) -> None:
        """Start the JVM without waiting (an ensemble member serves only once it has a quorum)."""
        if self.running:
            return
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    "java",
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-Dzookeeper.admin.enableServer=false",
                    *self.jvm_options,
                    # reap empty container nodes within ~0.2 s, so creating one by mistake shows
                    "-Dznode.container.checkIntervalMs=200",
                    "-cp",
                    self._classpath,
                    self.main_class,
                    str(self._cfg),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        atexit.unregister(self.stop)
        atexit.register(self.stop)  # no stray JVM if the test run is interrupted

    def wait_serving(self, timeout: float | None = None) -> None:
        """Wait (with a deadline) until ``srvr`` shows a mode: serving, not just up."""
        timeout = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while self.mode is None:
            if not self.running:
                pytest.fail(f"ZooKeeper exited at start-up; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ZooKeeper not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower`` while serving; None otherwise."""
        match = re.search(rb"Mode: (\w+)", self.four_letter("srvr", timeout=0.5) or b"")
        return match[1].decode() if match else None

    def session_ids(self) -> set[int]:
        """The ids of the sessions connected to this server now (``cons``)."""
        text = self.four_letter("cons", timeout=0.5) or b""
        return {int(m, 16) for m in re.findall(rb"sid=0x([0-9a-fA-F]+)", text)}

    def four_letter(self, word: str, timeout: float = 1.0) -> bytes | None:
        try:
            with socket.create_connection((self.address, self.port), timeout=timeout) as sock:
                sock.sendall(word.encode())
                chunks = []
                while chunk := sock.recv(65536):
                    chunks.append(chunk)
                return b"".join(chunks)
        except OSError:
            return None

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL to simulate a crash); data dir is kept."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGCONT)  # a paused JVM cannot handle SIGTERM
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port and data dir."""
        self.stop(kill=kill)
        self.start()

    def wipe(self) -> None:
        """Stop, delete the data dir, start empty on the same port (a rebuilt ensemble)."""
        self.stop(kill=True)
        self.clear_data()
        self.start()

    def clear_data(self) -> None:
        """Empty the data dir of a stopped server (an ensemble member keeps its ``myid``)."""
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        self._init_data()

    def _init_data(self) -> None:
        """Prepare a fresh data dir (an ensemble member writes its ``myid`` here)."""

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    def close(self) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def drop_connection(registry: ZooKeeperRegistry) -> None:
    """Break the registry's TCP connection (both directions); its session lives on."""
    sock = registry.raw_socket()
    assert sock is not None, "registry is not connected"
    sock.shutdown(socket.SHUT_RDWR)


async def _read_frame(stream: BufferedByteReceiveStream) -> bytes:
    (size,) = _SIZE.unpack(await stream.receive_exactly(_SIZE.size))
    return await stream.receive_exactly(size)


async def _close_session(host: str, port: int, session_id: int, password: bytes) -> bool:
    """Attach to the session and close it; False if the server already considers it gone."""
    connect = protocol.ConnectRequest(
        protocol_version=0,
        last_seen_zxid=0,
        timeout=10_000,
        session_id=session_id,
        password=password,
        read_only=False,
    )
    async with await anyio.connect_tcp(host, port) as stream:
        reader = BufferedByteReceiveStream(stream)
        payload = connect.serialize()
        await stream.send(_SIZE.pack(len(payload)) + payload)
        try:
            response = protocol.ConnectResponse.deserialize(await _read_frame(reader))
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return True  # refused this time (e.g. moved concurrently): try again
        if response.timeout <= 0 or response.session_id != session_id:
            return False
        close = protocol.CloseRequest().serialize(1)
        await stream.send(_SIZE.pack(len(close)) + close)
        with contextlib.suppress(anyio.EndOfStream, anyio.IncompleteRead):
            await _read_frame(reader)
        return True


async def expire_session(registry: ZooKeeperRegistry, timeout: float = 10.0) -> None:
    """End the registry's session on the server (kazoo's trick: same id+password, then close).

    Attaching to the session closes the registry's connection, and the registry may re-attach
    before our close arrives; so we repeat until the server refuses the session as expired.
    """
    host, _, port = registry.url.hosts.split(",")[0].rpartition(":")
    host = host.strip("[]")
    session_id, password = registry.session_id, registry.session_password
    with anyio.fail_after(timeout):
        while await _close_session(host, int(port), session_id, password):
            await anyio.sleep(0.01)


class Recorder:
    """A sync watcher / session listener that records its calls; ``await until(...)``."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self._changed = anyio.Event()

    def __call__(self, item: object) -> None:
        self.calls.append(item)
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, predicate: Callable[[list[object]], bool], timeout: float = 5) -> None:
        with anyio.fail_after(timeout):
            while not predicate(self.calls):
                await self._changed.wait()

    def states(self) -> list[SessionState]:
        return [c.state for c in self.calls if isinstance(c, SessionEvent)]

    async def until_state(self, state: SessionState, timeout: float = 5) -> None:
        """Until a ``state`` event was recorded (at any point so far)."""
        await self.until(lambda _: state in self.states(), timeout)


async def barrier(watching: Registry, changing: Registry, parent: str) -> None:
    """Return once ``watching`` got every watch event caused by ``changing`` so far.

    ZooKeeper notifies in zxid order, so when the event of a later change (creating a scratch
    node under ``parent``) has arrived, any earlier one has too: "no event" becomes decidable.
    """
    path = f"{parent.rstrip('/')}/barrier-{uuid.uuid4().hex[:8]}"
    seen = Recorder()
    assert await watching.exists(path, seen) is None
    await changing.create(path)
    await seen.until(lambda calls: len(calls) == 1)
    await changing.delete(path)


QUORUM_MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"


class EnsembleMember(ZooKeeperServer):
    """Server ``myid`` of a ``ZooKeeperEnsemble``: ``QuorumPeerMain`` with ``server.N`` lines."""

    main_class = QUORUM_MAIN_CLASS
    # Election connections to a frozen peer give up after 1 s (default 5 s): a paused server
    # must not stall the election of a new leader past our session timeouts.
    jvm_options = ("-Dzookeeper.cnxTimeout=1000",)

    def __init__(self, workdir: Path, myid: int, peers: list[str], *, tick_ms: int = 500) -> None:
        self.myid = myid
        self.peers = peers  # the ensemble's ``server.N=...`` lines
        super().__init__(workdir, tick_ms=tick_ms)
        self._init_data()

    def _config(self) -> str:
        return (
            super()._config()
            + "initLimit=10\nsyncLimit=4\nstandaloneEnabled=false\nreconfigEnabled=false\n"
            + "".join(f"{line}\n" for line in self.peers)
        )

    def _init_data(self) -> None:
        (self.workdir / "data" / "myid").write_text(f"{self.myid}\n")

    def __repr__(self) -> str:
        return f"<server {self.myid} {self.hosts} {self.mode or 'not serving'}>"


class ZooKeeperEnsemble:
    """A 3-server ZooKeeper quorum on loopback; each member can be stopped, killed, paused,
    resumed, restarted or wiped (``members[i]``), and the ensemble tells which one leads and
    which one a session is connected to."""

    def __init__(self, workdir: Path, *, size: int = 3, tick_ms: int = 500) -> None:
        ports = [(free_port(), free_port()) for _ in range(size)]
        peers = [f"server.{n + 1}=127.0.0.1:{p}:{e}" for n, (p, e) in enumerate(ports)]
        self.members = [
            EnsembleMember(workdir / f"server{n + 1}", n + 1, peers, tick_ms=tick_ms)
            for n in range(size)
        ]

    @property
    def hosts(self) -> str:
        return ",".join(m.hosts for m in self.members)

    def url(self, namespace: str, **options: float) -> str:
        query = "&".join(f"{k}={v}" for k, v in options.items())
        return f"zookeeper://{self.hosts}/{namespace}" + (f"?{query}" if query else "")

    def start(self, *members: EnsembleMember, timeout: float = 60.0) -> None:
        """Start these members (all by default) and wait until every running one serves."""
        for member in members or self.members:
            member.spawn()
        self.wait_quorum(timeout)

    def wait_quorum(self, timeout: float = 60.0) -> None:
        """Wait until every running member serves and exactly one of them leads."""
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.running]
            modes = [m.mode for m in running]
            if running and None not in modes and modes.count("leader") == 1:
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m!r}\n{m.log_tail(15)}" for m in self.members)
                pytest.fail(f"no quorum within {timeout}s: {modes}\n{tails}")
            time.sleep(0.1)

    def leader(self) -> EnsembleMember:
        """The member that leads now (fails the test if none does)."""
        self.wait_quorum()
        return next(m for m in self.members if m.running and m.mode == "leader")

    def followers(self) -> list[EnsembleMember]:
        self.wait_quorum()
        return [m for m in self.members if m.running and m.mode == "follower"]

    def serving(self, session_id: int) -> EnsembleMember | None:
        """The member the session is connected to now, if any (``cons``)."""
        for member in self.members:
            if member.running and session_id in member.session_ids():
                return member
        return None

    def heal(self, timeout: float = 60.0) -> None:
        """Resume paused members, start stopped ones, wait for the quorum."""
        for member in self.members:
            if member.running:
                member.resume()
        self.start(*[m for m in self.members if not m.running], timeout=timeout)

    def close(self) -> None:
        for member in self.members:
            member.stop()
