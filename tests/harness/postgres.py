"""A real, throw-away PostgreSQL server for tests and benchmarks.

``PostgresServer`` runs ``initdb`` into a private temp dir and ``pg_ctl`` on a free loopback port.
PostgreSQL refuses to run as root, so when this process is root the server runs as the
``postgres`` OS user (created if missing) and the temp dir is owned by it. ``stop()``/``start()``
simulate an outage; the data and the port survive them. Missing binaries raise (never skip).

Connections use password (scram) auth over TCP, so tests exercise a URL with a real secret.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["PostgresServer", "PostgresUnavailable", "free_port", "running_postgres"]

_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
_OS_USER = "postgres"
_SUPERUSER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or the server did not start."""


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str | None:
    """``name`` on PATH, else next to ``initdb`` (Debian keeps psql elsewhere)."""
    found = shutil.which(name)
    initdb = shutil.which("initdb")
    if found is None and initdb is not None:
        sibling = Path(os.path.realpath(initdb)).with_name(name)
        found = str(sibling) if sibling.exists() else None
    return found


def _check_binaries() -> None:
    missing = [name for name in _BINARIES if _binary(name) is None]
    if missing:
        raise PostgresUnavailable(
            f"PostgreSQL binaries not on PATH: {', '.join(missing)} "
            "(install PostgreSQL 15 server binaries; tests need a real server)"
        )


def _ensure_os_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _OS_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(_OS_USER)


class PostgresServer:
    """One PostgreSQL cluster in a temp dir; ``url(db)`` gives an asyncpg DSN with a password."""

    def __init__(self, *, fsync: bool = False, settings: Mapping[str, str] | None = None) -> None:
        _check_binaries()
        self.password = secrets.token_urlsafe(12)
        self.port = free_port()
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.root = Path(tempfile.mkdtemp(prefix="aioelastic-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self._account = _ensure_os_user() if os.geteuid() == 0 else None
        self._initialized = False
        if self._account is not None:
            os.chown(self.root, self._account.pw_uid, self._account.pw_gid)

    # -- process control -------------------------------------------------------------------

    def _run(self, args: list[str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
        extra: dict[str, Any] = {}
        if self._account is not None:
            extra = {"user": self._account.pw_uid, "group": self._account.pw_gid}
            extra["extra_groups"] = []
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root, **extra
        )
        if result.returncode != 0:
            raise PostgresUnavailable(
                f"{' '.join(args[:2])} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return "server log tail:\n" + "\n".join(self.log_file.read_text().splitlines()[-20:])
        return ""

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._account is not None:
            os.chown(pwfile, self._account.pw_uid, self._account.pw_gid)
        pwfile.chmod(0o600)
        self._run(
            [
                "initdb",
                "-D",
                str(self.data_dir),
                "--username",
                _SUPERUSER,
                "--pwfile",
                str(pwfile),
                "--auth-local",
                "trust",
                "--auth-host",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--no-sync",
            ]
        )
        pwfile.unlink()
        self._initialized = True

    def _options(self) -> str:
        opts = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "max_connections": "100",
            **self.settings,
        }
        return " ".join(f"-c {key}={value}" for key, value in opts.items())

    def start(self) -> None:
        """Start the server (``initdb`` first time) and wait until it accepts connections."""
        if not self._initialized:
            self._initdb()
        args = ["pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file)]
        self._run([*args, "-w", "-t", "60", "-o", self._options()])

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` drops clients; ``immediate`` is a crash)."""
        self._run(["pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60"])

    @property
    def running(self) -> bool:
        pid_file = self.data_dir / "postmaster.pid"
        return pid_file.exists()

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def cleanup(self) -> None:
        """Stop (if running) and delete everything."""
        with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
            if self.running:
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through ``psql`` over the private unix socket; returns unaligned output."""
        args = [
            _binary("psql") or "psql",
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            _SUPERUSER,
        ]
        args += ["-d", database, "-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql]
        return self._run(args).stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database and return its URL."""
        name = name or f"t_{secrets.token_hex(6)}"
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_postgres(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """A started server, removed on exit."""
    server = PostgresServer(fsync=fsync)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
