"""Registry and tracing URLs: RFC 3986 parsing, percent-decoded credentials, and no password in
any error, ``repr``, ``str``, log line or CLI output, whatever the password contains."""

from __future__ import annotations

import logging
import secrets
import sys
from contextlib import AsyncExitStack
from urllib.parse import quote, urlsplit

import anyio
import pytest

from aioelastic import ConfigError, Settings
from aioelastic._urls import parse_registry_url, parse_tracing_url, redact_url
from aioelastic.registry import ZooKeeperRegistry
from aioelastic.tracing._postgres import create_pool
from tests.harness.postgres import PostgresServer
from tests.harness.zookeeper import free_port

pytestmark = pytest.mark.anyio

# Each password is "hunter" + special characters + "twelve": neither half may ever be printed.
SPECIALS = ["/", "@", ":", "%", "#", "?", "/@:%#?", "%2F", "%zz", "@@", "::"]
PASSWORDS = [f"hunter{c}twelve" for c in SPECIALS]
PIECES = ("hunter", "twelve")


def assert_hidden(*texts: object) -> None:
    for text in texts:
        for piece in PIECES:
            assert piece not in str(text), text


def written(password: str, encoded: bool) -> str:
    return quote(password, safe="") if encoded else password


# What follows the credentials: valid, or broken in each place an error message can name.
ZK_TAILS = {
    "ok": "127.0.0.1:2181/ns",
    "bad-port": "127.0.0.1:notaport/ns",
    "port-range": "127.0.0.1:99999/ns",
    "no-port": "127.0.0.1/ns",
    "bad-host": "bad host:2181/ns",
    "second-host": "127.0.0.1:2181,:2182/ns",
    "bad-namespace": "127.0.0.1:2181/bad ns",
    "bad-option": "127.0.0.1:2181/ns?session_timeout=pw",
    "nan-option": "127.0.0.1:2181/ns?connect_timeout=nan",
    "unknown-option": "127.0.0.1:2181/ns?bogus=1",
    "fragment": "127.0.0.1:2181/ns#x",
}
PG_TAILS = {
    "ok": "127.0.0.1:5432/trace",
    "no-port": "127.0.0.1/trace",
    "bad-port": "127.0.0.1:notaport/trace",
    "port-range": "127.0.0.1:0/trace",
    "bad-host": "bad host:5432/trace",
    "fragment": "127.0.0.1:5432/trace#x",
}


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "percent-encoded"])
@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("tail", list(ZK_TAILS), ids=list(ZK_TAILS))
def test_zookeeper_url_never_shows_the_password(password: str, encoded: bool, tail: str) -> None:
    url = f"zookeeper://ops:{written(password, encoded)}@{ZK_TAILS[tail]}"
    try:
        parsed = parse_registry_url(url)
    except ConfigError as exc:
        assert exc.field == "registry_url"
        assert_hidden(exc, repr(exc), exc.value, exc.reason, exc.args)
        with pytest.raises(ConfigError) as info:
            Settings(registry_url=url)
        assert_hidden(info.value, repr(info.value))
        return
    assert tail == "ok"
    assert_hidden(parsed, repr(parsed), Settings(registry_url=url))
    assert str(parsed) == "zookeeper://ops:***@127.0.0.1:2181/ns"
    if encoded:  # the RFC's way: decoded exactly
        assert parsed.password is not None
        assert parsed.password.get_secret_value() == password


@pytest.mark.parametrize("encoded", [False, True], ids=["raw", "percent-encoded"])
@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("tail", list(PG_TAILS), ids=list(PG_TAILS))
def test_postgres_url_never_shows_the_password(password: str, encoded: bool, tail: str) -> None:
    url = f"postgresql://tracer:{written(password, encoded)}@{PG_TAILS[tail]}"
    try:
        parsed = parse_tracing_url(url)
    except ConfigError as exc:
        assert exc.field == "tracing_url"
        assert_hidden(exc, repr(exc), exc.value, exc.reason, exc.args)
        return
    assert tail in ("ok", "no-port")
    assert_hidden(parsed, repr(parsed), parsed.connect_dsn, Settings(tracing_url=url))
    assert str(parsed) == f"postgresql://tracer:***@{PG_TAILS[tail]}"
    assert parsed.connect_dsn == f"postgresql://{PG_TAILS[tail]}"
    if encoded:
        assert parsed.username == "tracer" and parsed.password is not None
        assert parsed.password.get_secret_value() == password


@pytest.mark.parametrize(
    "url",
    [
        "zookeeper://ops:hunter/twelve@127.0.0.1:2181/ns",
        "zookeeper://ops:hunter?twelve@127.0.0.1:2181/ns",
        "zookeeper://ops:hunter#twelve@127.0.0.1:2181/ns",
        "postgresql://tracer:hunter/twelve@127.0.0.1/trace",
    ],
)
def test_a_raw_slash_question_or_hash_in_a_password_says_how_to_encode_it(url: str) -> None:
    with pytest.raises(ConfigError, match="percent-encode") as info:
        (parse_tracing_url if url.startswith("postgresql") else parse_registry_url)(url)
    assert "%2F" in str(info.value) and "***@" in str(info.value)


def test_rfc3986_userinfo() -> None:
    # The userinfo ends at the authority's last '@'; user and password split at the first ':'.
    url = parse_registry_url("zookeeper://op%3As:a:b@c@127.0.0.1:1,[::1]:2/ns")
    assert url.username == "op:s" and url.password is not None
    assert url.password.get_secret_value() == "a:b@c"
    assert url.hosts == "127.0.0.1:1,[::1]:2"
    assert parse_registry_url("zookeeper://u:%E2%82%AC@h:1/ns").password.get_secret_value() == "€"  # type: ignore[union-attr]
    for bad in ("zookeeper://u:%ff@h:1/ns", "zookeeper://u:50%@h:1/ns", "zookeeper://u@h:1/ns"):
        with pytest.raises(ConfigError, match="registry_url"):
            parse_registry_url(bad)


def test_a_password_parameter_is_hidden_and_handed_over_apart() -> None:
    url = parse_tracing_url("postgresql://tracer@127.0.0.1/trace?sslmode=disable&password=s%2Fx")
    assert url.password is not None and url.password.get_secret_value() == "s/x"
    assert url.connect_dsn == "postgresql://127.0.0.1/trace?sslmode=disable"
    assert str(url) == "postgresql://tracer@127.0.0.1/trace?sslmode=disable&password=***"
    odd = "postgresql://127.0.0.1:x/trace?%70assword=hunter%2Ftwelve&PASSWORD=hunter"
    with pytest.raises(ConfigError) as info:
        parse_tracing_url(odd)
    assert_hidden(info.value)
    assert_hidden(parse_tracing_url(odd.replace(":x", "")))


def test_shown_forms_stay_as_before_for_plain_urls() -> None:
    # default_journal_path hashes str(url): a plain URL must print as it did.
    assert str(parse_tracing_url("postgresql://u:pw@h:5432/db")) == "postgresql://u:***@h:5432/db"
    assert str(parse_tracing_url("postgres://u@h/db")) == "postgres://u@h/db"
    assert str(parse_tracing_url("sqlite:///tmp/a@b.db")) == "sqlite:///tmp/a@b.db"
    assert redact_url("mysql://u:hunter/twelve@h/db") == "mysql://***@h/db"


def test_undecodable_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="UTF-8"):
        parse_registry_url("zookeeper://u:p\udcff@h:1/ns")


@pytest.mark.zookeeper
@pytest.mark.parametrize("password", ["hunter/@:%#?twelve", "hunter%2Ftwelve"])
async def test_zookeeper_digest_with_an_encoded_password(
    zk_url: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The decoded password is what ZooKeeper's digest sees; no log line shows it."""
    caplog.set_level(logging.DEBUG)
    parts = urlsplit(zk_url)
    url = parse_registry_url(
        f"zookeeper://ops:{quote(password, safe='')}@{parts.netloc}{parts.path}?{parts.query}"
    )
    assert url.password is not None and url.password.get_secret_value() == password
    async with AsyncExitStack() as stack:
        reg = ZooKeeperRegistry(url)
        await reg.start(stack)
        await reg.create(f"/{url.namespace}/secret", b"x", make_parents=True)
    other = parse_registry_url(zk_url.replace("zookeeper://", "zookeeper://ops:wrong@"))
    async with AsyncExitStack() as stack:
        reg = ZooKeeperRegistry(other)
        await reg.start(stack)
        with pytest.raises(Exception, match="NoAuth"):
            await reg.set(f"/{url.namespace}/secret", b"y")
    assert_hidden(caplog.text)
    assert quote(password, safe="") not in caplog.text


@pytest.mark.postgres
async def test_postgres_password_with_every_special_character_connects(
    postgres_server: PostgresServer,
) -> None:
    postgres_server.ensure_running()
    role, password = f"r{secrets.token_hex(4)}", "hunter/@:%#?twelve"
    postgres_server.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    try:
        url = parse_tracing_url(
            f"postgresql://{role}:{quote(password, safe='')}@127.0.0.1:{postgres_server.port}"
            "/postgres"
        )
        pool = await create_pool(url, connect_timeout=10)
        try:
            with anyio.fail_after(20):
                assert await pool.fetchval("SELECT current_user") == role
        finally:
            await pool.close()
        wrong = parse_tracing_url(
            f"postgresql://{role}:hunter%2Fnope@127.0.0.1:{postgres_server.port}/postgres"
        )
        pool = await create_pool(wrong, connect_timeout=10)
        try:
            with pytest.raises(Exception) as info:
                await pool.fetchval("SELECT 1")
            assert "hunter" not in str(info.value)
        finally:
            await pool.close()
    finally:
        postgres_server.psql(f"DROP ROLE {role}")


async def test_cli_errors_never_show_the_password() -> None:
    """Through the real command: bad URLs (exit 2) and unreachable servers (exit 4)."""
    dead = free_port()
    cases = []
    for password in ("hunter/@:%#?twelve", quote("hunter/@:%#?twelve", safe="")):
        cases += [
            ["--registry", f"zookeeper://ops:{password}@127.0.0.1:{dead}/ns?connect_timeout=0.5"],
            ["--registry", f"zookeeper://ops:{password}@127.0.0.1:x/ns"],
        ]
    for args in cases:
        with anyio.fail_after(30):
            done = await anyio.run_process(
                [sys.executable, "-m", "aioelastic", *args, "jobs"], check=False
            )
        out = done.stdout.decode() + done.stderr.decode()
        assert done.returncode in (2, 4), out
        assert_hidden(out)
        assert len(done.stderr.decode().strip().splitlines()) == 1, out
