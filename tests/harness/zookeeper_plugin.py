"""ZooKeeper fixtures: a shared server, a unique registry URL per test, a restartable server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness.zookeeper import ZooKeeperEnsemble, ZooKeeperServer

__all__ = ["zk_ensemble", "zk_ensemble_module", "zk_restartable_server", "zk_server", "zk_url"]

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


@pytest.fixture(scope="module")
def zk_ensemble_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperEnsemble]:
    """One 3-server quorum per test module (starting three JVMs costs seconds)."""
    ensemble = ZooKeeperEnsemble(tmp_path_factory.mktemp("zk-ensemble"))
    try:
        ensemble.start()
        yield ensemble
    finally:
        ensemble.close()


@pytest.fixture
def zk_ensemble(zk_ensemble_module: ZooKeeperEnsemble) -> Iterator[ZooKeeperEnsemble]:
    """The module's quorum with every member up; a test that stops or pauses members gets
    them back afterwards. Tests isolate themselves by namespace."""
    zk_ensemble_module.heal()
    yield zk_ensemble_module
    zk_ensemble_module.heal()
