"""PostgreSQL fixtures: a session-wide server and a fresh database per test.

- ``postgres_server``: one ``PostgresServer`` for the session (tests may ``stop()``/``start()`` it
  for outages; ``postgres_url`` restarts it afterwards if a test left it stopped).
- ``postgres_url``: URL string of a new empty database, dropped after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from .postgres import PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()  # raises (test error, not skip) when binaries are missing
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    postgres_server.ensure_running()
    url = postgres_server.create_database()
    try:
        yield url
    finally:
        postgres_server.ensure_running()
        postgres_server.drop_database(urlsplit(url).path.lstrip("/"))
