"""ZooKeeper fixtures: a shared server, a unique registry URL per test, a restartable server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness.zookeeper import ZooKeeperServer

__all__ = ["zk_restartable_server", "zk_server", "zk_url"]

SESSION_TIMEOUT = 3  # seconds: short, so session-loss tests are quick (server allows 1-10 s)


@pytest.fixture(scope="session")
def zk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """One ZooKeeper for the whole run; tests isolate themselves by namespace."""
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def zk_url(zk_server: ZooKeeperServer) -> str:
    """``zookeeper://127.0.0.1:PORT/<unique namespace>?session_timeout=3``."""
    namespace = f"t{uuid.uuid4().hex[:12]}"
    return zk_server.url(namespace, session_timeout=SESSION_TIMEOUT, connect_timeout=5)


@pytest.fixture
def zk_restartable_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    """A server of the test's own, free to stop, restart, pause and resume."""
    server = ZooKeeperServer(tmp_path_factory.mktemp("zookeeper-own"))
    server.start()
    yield server
    server.close()
