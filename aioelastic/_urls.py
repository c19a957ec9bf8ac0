"""Parsing of registry and tracing URLs (the only place that reads them)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import SecretStr

from ._errors import ConfigError

__all__ = [
    "DEFAULT_NAMESPACE",
    "RegistryURL",
    "TracingURL",
    "check_node_name",
    "parse_registry_url",
    "parse_tracing_url",
]

DEFAULT_NAMESPACE = "aioelastic"
_NODE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_node_name(field: str, value: str) -> str:
    """Reject names that cannot be one registry path segment."""
    if not value or value in {".", ".."} or not _NODE_NAME.match(value) or value == "zookeeper":
        raise ConfigError(
            field, value, "must be a non-empty registry node name of letters, digits, '_', '-', '.'"
        )
    return value


@dataclass(frozen=True)
class RegistryURL:
    """``memory://[name]`` or ``zookeeper://[user:pass@]host:port[,host:port...]/namespace?opts``.

    For ``memory://`` the host part names a process-wide store (instances in one process with the
    same name share it) and the path is the namespace.
    """

    scheme: str
    hosts: str
    namespace: str
    session_timeout: float = 10.0
    connect_timeout: float = 5.0
    username: str | None = None
    password: SecretStr | None = None

    def __str__(self) -> str:
        auth = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{auth}{self.hosts}/{self.namespace}"


def _float_option(url: str, opts: dict[str, list[str]], name: str, default: float) -> float:
    if name not in opts:
        return default
    raw = opts[name][-1]
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError("registry_url", url, f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError("registry_url", url, f"{name} must be > 0")
    return value


def parse_registry_url(url: str) -> RegistryURL:
    """Parse and validate a registry URL; errors name ``registry_url`` (password hidden)."""
    shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
    parts = urlsplit(url)
    if parts.scheme not in {"memory", "zookeeper"}:
        raise ConfigError("registry_url", shown, "scheme must be memory:// or zookeeper://")
    namespace = parts.path.strip("/") or DEFAULT_NAMESPACE
    try:
        check_node_name("registry_url namespace", namespace)
    except ConfigError as exc:
        raise ConfigError("registry_url", shown, f"namespace {namespace!r}: {exc.reason}") from None
    opts = parse_qs(parts.query)
    unknown = set(opts) - {"session_timeout", "connect_timeout"}
    if unknown:
        raise ConfigError("registry_url", shown, f"unknown option(s) {sorted(unknown)}")
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        creds, netloc = netloc.rsplit("@", 1)
        user, sep, pw = creds.partition(":")
        if not user or not sep:
            raise ConfigError("registry_url", shown, "credentials must be user:password")
        username, password = unquote(user), SecretStr(unquote(pw))
    if parts.scheme == "zookeeper":
        if not netloc:
            raise ConfigError("registry_url", shown, "needs host:port[,host:port...]")
        for hp in netloc.split(","):
            host, _, port = hp.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigError("registry_url", shown, f"bad host:port {hp!r}")
    return RegistryURL(
        scheme=parts.scheme,
        hosts=netloc or "default",
        namespace=namespace,
        session_timeout=_float_option(shown, opts, "session_timeout", 10.0),
        connect_timeout=_float_option(shown, opts, "connect_timeout", 5.0),
        username=username,
        password=password,
    )


@dataclass(frozen=True)
class TracingURL:
    """``postgresql://...`` (asyncpg DSN), ``sqlite:///path.db``, ``memory://`` or ``log://``."""

    scheme: str
    dsn: SecretStr

    def __str__(self) -> str:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", self.dsn.get_secret_value())


def parse_tracing_url(url: str) -> TracingURL:
    shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)
    scheme = urlsplit(url).scheme
    if scheme == "postgres":
        scheme = "postgresql"
    if scheme not in {"postgresql", "sqlite", "memory", "log"}:
        raise ConfigError(
            "tracing_url", shown, "scheme must be postgresql://, sqlite:///, memory:// or log://"
        )
    if scheme == "sqlite" and not url.startswith("sqlite:///"):
        raise ConfigError("tracing_url", shown, "sqlite URLs look like sqlite:///path/to/file.db")
    return TracingURL(scheme=scheme, dsn=SecretStr(url))
