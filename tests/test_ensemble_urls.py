"""Ensemble connect strings (issue 16.4): chroot and namespace, host names, IPv6 literals, and
the error when none of the hosts answers (every host named, the password never)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aioelastic._errors import ConfigError, SessionLostError
from aioelastic._urls import parse_registry_url
from tests.harness.cluster import zk_client
from tests.harness.zookeeper import ZooKeeperServer, free_port


@pytest.mark.parametrize(
    ("url", "chroot", "namespace", "shown"),
    [
        ("zookeeper://h1:1,h2:2,h3:3/ns", "", "ns", "zookeeper://h1:1,h2:2,h3:3/ns"),
        ("zookeeper://h1:1,h2:2/apps/ns", "/apps", "ns", "zookeeper://h1:1,h2:2/apps/ns"),
        ("zookeeper://h:1/a/b/ns/", "/a/b", "ns", "zookeeper://h:1/a/b/ns"),
        ("zookeeper://u:pw@h:1/a/ns", "/a", "ns", "zookeeper://u:***@h:1/a/ns"),
        ("zookeeper://h:1", "", "aioelastic", "zookeeper://h:1/aioelastic"),
        ("memory://x/ns", "", "ns", "memory://x/ns"),
    ],
)
def test_the_last_path_segment_is_the_namespace_the_rest_a_chroot(
    url: str, chroot: str, namespace: str, shown: str
) -> None:
    parsed = parse_registry_url(url)
    assert (parsed.chroot, parsed.namespace, str(parsed)) == (chroot, namespace, shown)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("zookeeper://h:1/a//ns", "chroot segment ''"),
        ("zookeeper://h:1/zookeeper/ns", "chroot segment 'zookeeper'"),
        ("zookeeper://h:1/a/b c", "namespace 'b c'"),
        ("memory://x/a/ns", "needs zookeeper://"),
        ("zookeeper://[::1/ns", "bad host:port"),
        ("zookeeper://h1:1,h2/ns", "bad host:port 'h2'"),
    ],
)
def test_bad_chroots_and_hosts_are_config_errors(url: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason.replace("[", r"\[").replace("?", r"\?")):
        parse_registry_url(url)


def test_host_names_and_ipv6_literals_parse() -> None:
    parsed = parse_registry_url("zookeeper://zk-1.example:2181,localhost:2182,[::1]:2183/ns")
    assert parsed.hosts == "zk-1.example:2181,localhost:2182,[::1]:2183"


@pytest.fixture
def zk_ipv6_server(tmp_path: Path) -> Iterator[ZooKeeperServer]:
    server = ZooKeeperServer(tmp_path / "zk6", address="::1")
    server.start()
    yield server
    server.close()


@pytest.mark.anyio
@pytest.mark.zookeeper
async def test_an_ipv6_literal_connects(zk_ipv6_server: ZooKeeperServer) -> None:
    """ZooKeeper bound on ::1 only: ``[::1]:port`` reaches it (a dead IPv4 host first)."""
    hosts = f"127.0.0.1:{free_port()},{zk_ipv6_server.hosts}"
    assert zk_ipv6_server.hosts.startswith("[::1]:")
    async with zk_client(f"zookeeper://{hosts}/ns?session_timeout=5") as reg:
        assert reg.connected_host == zk_ipv6_server.hosts
        await reg.create("/ns/x", b"6", make_parents=True)
        assert (await reg.get("/ns/x"))[0] == b"6"


@pytest.mark.anyio
async def test_none_of_the_hosts_answers_names_every_host_never_the_password() -> None:
    hosts = [f"127.0.0.1:{free_port()}", f"localhost:{free_port()}", f"[::1]:{free_port('::1')}"]
    url = f"zookeeper://op:s3cr%3At@{','.join(hosts)}/ch/ns?connect_timeout=1.5"
    started = time.monotonic()
    with pytest.raises(SessionLostError) as caught:
        async with zk_client(url):
            pass
    assert time.monotonic() - started < 5  # connect_timeout, generously
    text = str(caught.value)
    assert "none of its 3 host(s) answered" in text, text
    for host in hosts:
        assert f"{host}: " in text, text
    assert "s3cr" not in text and "s3cr" not in repr(caught.value), text
