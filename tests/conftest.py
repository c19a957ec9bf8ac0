"""Shared pytest setup: asyncio backend for anyio tests, and the service harness plugins."""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.harness.zookeeper_plugin", "tests.harness.postgres_plugin"]


@pytest.fixture
def anyio_backend() -> str:
    # aiozk and asyncpg are asyncio libraries.
    return "asyncio"
