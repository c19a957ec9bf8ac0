"""Parsing of registry and tracing URLs (the only place that reads them).

URLs are split as RFC 3986 says: the authority ends at the first ``/``, ``?`` or ``#``, the
userinfo is everything before the authority's last ``@``, and it is percent-decoded. So a
password containing ``/ ? # @ : %`` must be percent-encoded (``%2F %3F %23 %40 %3A %25``). No
error message, ``repr`` or ``str`` contains the password, whatever it contains: anything up to
the URL's last ``@`` is shown as ``***`` until the URL parsed, and as ``user:***`` after.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, unquote_to_bytes

from pydantic import SecretStr

from ._errors import ConfigError

__all__ = [
    "DEFAULT_NAMESPACE",
    "RegistryURL",
    "TracingURL",
    "check_node_name",
    "parse_registry_url",
    "parse_tracing_url",
    "redact_url",
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


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\[\]:,\s]+)(?::([0-9]{1,5}))?")
_QUERY_PARAM = re.compile(r"([?&])([^=&#]*)=([^&#]*)")
_AT_AFTER_HOST = (
    "has an '@' after its host part: percent-encode '/', '?', '#' and '@' in the user name "
    "and password (%2F, %3F, %23, %40), and '@' anywhere else (%40)"
)


def redact_url(url: str) -> str:
    """``url`` safe to print whatever it holds: everything after ``scheme://`` up to the last
    ``@`` becomes ``***`` (a password always precedes an ``@``), ``password=`` values too."""
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*:(?://)?", url)
    start = match.end() if match else 0
    if "@" in url[start:]:
        url = f"{url[:start]}***@{url[start:].rsplit('@', 1)[1]}"
    return _hide_password_params(url)


def _is_password_key(key: str) -> bool:
    return unquote(key).lower() == "password"


def _hide_password_params(text: str) -> str:
    """``password=...`` query values (however the key is encoded) as ``***``."""

    def hide(match: re.Match[str]) -> str:
        return f"{match[1]}{match[2]}=***" if _is_password_key(match[2]) else match[0]

    return _QUERY_PARAM.sub(hide, text)


@dataclass(frozen=True)
class _Parts:
    scheme: str  # lower-cased
    raw_scheme: str
    userinfo: str | None  # still percent-encoded
    hostport: str
    path: str
    query: str
    fragment: str | None


class _Parser:
    """RFC 3986 splitting with errors that only ever show the redacted URL."""

    def __init__(self, field: str, url: str) -> None:
        self.field, self.url, self.shown = field, url, redact_url(url)

    def error(self, reason: str) -> ConfigError:
        return ConfigError(self.field, self.shown, reason)

    def split(self) -> _Parts:
        try:
            self.url.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error("is not valid UTF-8 text") from None
        match = _SCHEME.match(self.url)
        rest = self.url[match.end() :] if match else ""
        if match is None or not rest.startswith("//"):
            raise self.error("is not a URL of the form scheme://...")
        rest = rest[2:]
        end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
        authority, tail = rest[:end], rest[end:]
        if "@" in tail:
            raise self.error(_AT_AFTER_HOST)
        tail, hash_, fragment = tail.partition("#")
        path, _, query = tail.partition("?")
        userinfo, at, hostport = authority.rpartition("@")
        return _Parts(
            scheme=match[1].lower(),
            raw_scheme=match[1],
            userinfo=userinfo if at else None,
            hostport=hostport,
            path=path,
            query=query,
            fragment=fragment if hash_ else None,
        )

    def decode(self, text: str, what: str) -> str:
        """Percent-decode a user name or password (never echoed)."""
        if _BAD_PERCENT.search(text):
            raise self.error(
                f"the {what} has a '%' not followed by two hex digits: write '%' as %25"
            )
        try:
            return unquote_to_bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"the {what} is not UTF-8 once percent-decoded") from None

    def credentials(self, userinfo: str) -> tuple[str, SecretStr | None]:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = self.decode(raw_user, "user name")
        return user, SecretStr(self.decode(raw_password, "password")) if colon else None

    def check_hosts(self, hostport: str, *, port_required: bool) -> None:
        for hp in hostport.split(","):
            match = _HOST_PORT.fullmatch(hp)
            if match is None or (port_required and match[2] is None):
                raise self.error(f"bad host:port {hp!r}")
            if match[2] is not None and not 0 < int(match[2]) < 65536:
                raise self.error(f"bad port in {hp!r}: must be 1..65535")


@dataclass(frozen=True)
class RegistryURL:
    """``memory://[name]`` or ``zookeeper://[user:pass@]host:port[,host:port...]/namespace?opts``.

    For ``memory://`` the host part names a process-wide store (instances in one process with the
    same name share it) and the path is the namespace. User name and password are
    percent-decoded (RFC 3986).

    ZooKeeper hosts are ``name:port``, ``a.b.c.d:port`` or ``[IPv6]:port``, comma-separated (an
    ensemble). The path's *last* segment is the namespace; any segments before it are a chroot
    (``zookeeper://h1:2181,h2:2181/apps/prod/ns``: chroot ``/apps/prod``, namespace ``ns``), which
    the client prefixes to every path, as ZooKeeper's own ``host:port/chroot`` connect string.
    """

    scheme: str
    hosts: str
    namespace: str
    session_timeout: float = 10.0
    connect_timeout: float = 5.0
    username: str | None = None
    password: SecretStr | None = None
    chroot: str = ""  # "" or "/seg[/seg...]" (zookeeper:// only)

    def __str__(self) -> str:
        auth = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{auth}{self.hosts}{self.chroot}/{self.namespace}"


def _float_options(parser: _Parser, query: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, raw in parse_qsl(query, keep_blank_values=True):
        if name not in {"session_timeout", "connect_timeout"}:
            raise parser.error(f"unknown option {name!r} (session_timeout, connect_timeout)")
        try:
            value = float(raw)
        except ValueError:
            raise parser.error(f"{name}={raw!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise parser.error(f"{name} must be a finite number > 0")
        out[name] = value
    return out


def parse_registry_url(url: str) -> RegistryURL:
    """Parse and validate a registry URL; errors name ``registry_url`` (password hidden)."""
    parser = _Parser("registry_url", url)
    parts = parser.split()
    if parts.scheme not in {"memory", "zookeeper"}:
        raise parser.error("scheme must be memory:// or zookeeper://")
    if parts.fragment is not None:
        raise parser.error("a #fragment has no meaning in a registry URL")
    chroot, namespace = _chroot_and_namespace(parser, parts.path)
    if chroot and parts.scheme != "zookeeper":
        raise parser.error("a chroot (a path of more than one segment) needs zookeeper://")
    options = _float_options(parser, parts.query)
    username = password = None
    if parts.userinfo is not None:
        username, password = parser.credentials(parts.userinfo)
        if not username or password is None:
            raise parser.error("credentials must be user:password")
    if parts.scheme == "zookeeper":
        if not parts.hostport:
            raise parser.error("needs host:port[,host:port...]")
        parser.check_hosts(parts.hostport, port_required=True)
    return RegistryURL(
        scheme=parts.scheme,
        hosts=parts.hostport or "default",
        namespace=namespace,
        session_timeout=options.get("session_timeout", 10.0),
        connect_timeout=options.get("connect_timeout", 5.0),
        username=username,
        password=password,
        chroot=chroot,
    )


def _chroot_and_namespace(parser: _Parser, path: str) -> tuple[str, str]:
    """``/a/b/ns`` -> (``/a/b``, ``ns``): the last segment names the namespace."""
    segments = path.strip("/").split("/") if path.strip("/") else [DEFAULT_NAMESPACE]
    for index, segment in enumerate(segments):
        try:
            check_node_name("registry_url namespace", segment)
        except ConfigError as exc:
            what = "namespace" if index == len(segments) - 1 else "chroot segment"
            raise parser.error(f"{what} {segment!r}: {exc.reason}") from None
    return "".join(f"/{s}" for s in segments[:-1]), segments[-1]


@dataclass(frozen=True)
class TracingURL:
    """``postgresql://...`` (libpq URI), ``sqlite:///path.db``, ``memory://`` or ``log://``.

    For PostgreSQL, ``connect_dsn`` is the URL without user name and password (and without a
    ``password=`` parameter): those go to the driver as ``username`` / ``password``, so no
    driver error can echo them.
    """

    scheme: str
    dsn: SecretStr
    connect_dsn: str = ""
    username: str | None = None
    password: SecretStr | None = None
    shown: str = ""

    def __str__(self) -> str:
        return self.shown or redact_url(self.dsn.get_secret_value())


def _without_password_param(query: str) -> tuple[str, str | None]:
    """The query without its ``password=`` pieces, and the (decoded) password they held."""
    kept, password = [], None
    for piece in query.split("&") if query else []:
        key, _, value = piece.partition("=")
        if _is_password_key(key):
            password = unquote(value)
        else:
            kept.append(piece)
    return "&".join(kept), password


def _parse_postgres(parser: _Parser, url: str) -> TracingURL:
    parts = parser.split()
    if parts.fragment is not None:
        raise parser.error("a #fragment has no meaning in a PostgreSQL URL")
    if parts.hostport:
        parser.check_hosts(parts.hostport, port_required=False)
    username = password = None
    shown_auth = ""
    if parts.userinfo is not None:
        username, password = parser.credentials(parts.userinfo)
        raw_user = parts.userinfo.partition(":")[0]
        shown_auth = f"{raw_user}:***@" if password is not None else f"{raw_user}@"
        username = username or None
    query, query_password = _without_password_param(parts.query)
    if query_password is not None:
        password = SecretStr(query_password)
    tail = parts.path + (f"?{query}" if query else "")
    shown_tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return TracingURL(
        scheme="postgresql",
        dsn=SecretStr(url),
        connect_dsn=f"{parts.raw_scheme}://{parts.hostport}{tail}",
        username=username,
        password=password,
        shown=_hide_password_params(
            f"{parts.raw_scheme}://{shown_auth}{parts.hostport}{shown_tail}"
        ),
    )


def parse_tracing_url(url: str) -> TracingURL:
    """Parse and validate a tracing URL; errors name ``tracing_url`` (password hidden)."""
    parser = _Parser("tracing_url", url)
    match = _SCHEME.match(url)
    scheme = match[1].lower() if match else ""
    if scheme in {"postgres", "postgresql"}:
        return _parse_postgres(parser, url)
    if scheme not in {"sqlite", "memory", "log"}:
        raise parser.error("scheme must be postgresql://, sqlite:///, memory:// or log://")
    if scheme == "sqlite" and not url.startswith("sqlite:///"):
        raise parser.error("sqlite URLs look like sqlite:///path/to/file.db")
    shown = url if scheme == "sqlite" else parser.shown  # a file path may hold an '@'
    return TracingURL(scheme=scheme, dsn=SecretStr(url), shown=shown)
