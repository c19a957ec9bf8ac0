"""A real ZooKeeper server for tests (Debian's ``zookeeper`` package), plus fault injection.

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
    "Recorder",
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ZooKeeperServer:
    """One standalone ZooKeeper 3.8 on 127.0.0.1 (tickTime 500 ms: session timeouts 1-10 s)."""

    def __init__(self, workdir: Path, *, tick_ms: int = 500, ready_timeout: float = 30.0) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.tick_ms = tick_ms
        self.ready_timeout = ready_timeout
        self._classpath = zookeeper_classpath()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = workdir / "zookeeper.log"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self._cfg = workdir / "zoo.cfg"
        self._cfg.write_text(
            f"tickTime={tick_ms}\n"
            f"dataDir={workdir / 'data'}\n"
            f"clientPort={self.port}\n"
            "clientPortAddress=127.0.0.1\n"
            "maxClientCnxns=0\n"
            "4lw.commands.whitelist=srvr,ruok,mntr\n"
            "admin.enableServer=false\n"
        )

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

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
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    "java",
                    "-Xmx256m",
                    "-XX:+UseSerialGC",
                    "-Dzookeeper.admin.enableServer=false",
                    # reap empty container nodes within ~0.2 s, so creating one by mistake shows
                    "-Dznode.container.checkIntervalMs=200",
                    "-cp",
                    self._classpath,
                    MAIN_CLASS,
                    str(self._cfg),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        atexit.unregister(self.stop)
        atexit.register(self.stop)  # no stray JVM if the test run is interrupted
        deadline = time.monotonic() + self.ready_timeout
        while b"Mode: " not in (self.four_letter("srvr") or b""):  # serving, not just up
            if not self.running:
                pytest.fail(f"ZooKeeper exited at start-up; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"ZooKeeper not ready in {self.ready_timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def four_letter(self, word: str, timeout: float = 1.0) -> bytes | None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
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
        data = self.workdir / "data"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        self.start()

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
