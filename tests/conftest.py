"""Shared pytest setup: asyncio backend for anyio tests, and the service harness plugins."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cluster

pytest_plugins = ["tests.harness.zookeeper_plugin", "tests.harness.postgres_plugin"]


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
