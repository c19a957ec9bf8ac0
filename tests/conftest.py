"""Shared pytest setup: asyncio backend for anyio tests, the service harness plugins, and the
``backend`` fixture that runs a test on both registries (embedded and ZooKeeper)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aioelastic._urls import parse_registry_url
from aioelastic.registry import (
    MemoryRegistry,
    MemoryStore,
    Registry,
    SessionState,
    ZooKeeperRegistry,
)
from tests.harness.cluster import Cluster
from tests.harness.helpers import eventually
from tests.harness.zookeeper import expire_session

pytest_plugins = ["tests.harness.zookeeper_plugin", "tests.harness.postgres_plugin"]

# This process runs in-process schedulers on ZooKeeper next to test code that may block the loop
# (a synchronous subprocess read, a slow fixture on a loaded machine): here the loop watchdog only
# warns instead of ending the whole test run. The instance processes of tests/harness/cluster.py
# keep the production default ("exit"), which the blocked-loop tests rely on.
os.environ.setdefault("AIOELASTIC_LOOP_STALL_ACTION", "warn")


@pytest.fixture
def anyio_backend() -> str:
    # aiozk and asyncpg are asyncio libraries.
    return "asyncio"


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(url: str, **job_options: Any) -> Cluster:
        c = Cluster(url, tmp_path, job_options=job_options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@dataclass
class Backend:
    """A registry for one test: its URL (a fresh namespace), sessions on it, and expiry."""

    name: str
    url: str
    namespace: str

    @property
    def root(self) -> str:
        """The namespace node, e.g. ``/ns1a2b3c``."""
        return f"/{self.namespace}"

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Registry]:
        parsed = parse_registry_url(self.url)
        reg: Registry = (
            MemoryRegistry(parsed) if parsed.scheme == "memory" else ZooKeeperRegistry(parsed)
        )
        async with AsyncExitStack() as stack:
            await reg.start(stack)
            yield reg

    async def expire(self, reg: Registry) -> None:
        """End the session the way the server would (LOST, then a new session)."""
        if isinstance(reg, MemoryRegistry):
            reg.expire_session()
        else:
            assert isinstance(reg, ZooKeeperRegistry)
            old = reg.session_id
            await expire_session(reg)
            # The server has ended the session; the client opens its new one a moment later.
            await eventually(
                lambda: reg.session_id != old and reg.session_state is SessionState.CONNECTED,
                timeout=20,
                what="the client's new session",
            )


@pytest.fixture(params=["memory", pytest.param("zookeeper", marks=pytest.mark.zookeeper)])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The embedded registry, then the harness's ZooKeeper (deselected by ``-m "not
    zookeeper"``); each test gets its own store or namespace."""
    if request.param == "memory":
        store, namespace = f"backend-{uuid.uuid4().hex[:8]}", f"ns{uuid.uuid4().hex[:8]}"
        yield Backend("memory", f"memory://{store}/{namespace}", namespace)
        MemoryStore.reset(store)
    else:
        url: str = request.getfixturevalue("zk_url")
        yield Backend("zookeeper", url, parse_registry_url(url).namespace)
