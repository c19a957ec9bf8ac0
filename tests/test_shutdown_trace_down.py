"""A stop with nothing running does not wait out the grace period because the trace database
is down (stopped, or paused so that writes hang): the unwritten events are in the journal, and
the next process writes them."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore
from tests.harness.helpers import eventually
from tests.harness.postgres import PostgresServer, PostgresUnavailable

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


def _server_pids(server: PostgresServer) -> list[int]:
    """The postmaster and its children (backends, background workers)."""
    root = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    pids = [root]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == root:
                pids.append(int(entry))
    return pids


@contextmanager
def _paused(server: PostgresServer) -> Iterator[None]:
    """Every server process stopped (SIGSTOP): connections hang instead of failing."""
    pids = _server_pids(server)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a backend that ended meanwhile
                os.kill(pid, signal.SIGCONT)


def _scheduler(url: str, journal: Path, fires: list[int]) -> Scheduler:
    MemoryStore.reset("tracedown")
    scheduler = Scheduler(
        settings=Settings(
            registry_url="memory://tracedown/ns",
            tracing_url=url,
            shutdown_grace_period=20,
            trace_journal_path=journal,
        )
    )

    @scheduler.job(cron="0/1 * * * * ?")
    async def tick(ctx: ShardingContext) -> None:
        fires.append(ctx.sharding_item)

    return scheduler


def _rows(server: PostgresServer, url: str) -> int:
    database = urlsplit(url).path.lstrip("/")
    try:
        return int(server.psql("SELECT count(*) FROM job_execution_log", database).strip())
    except PostgresUnavailable:  # the table is created by the first write
        return 0


@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_a_stop_with_the_trace_database_down_is_prompt(
    postgres_url: str,
    postgres_server: PostgresServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    outage: str,
) -> None:
    caplog.set_level(logging.INFO, logger="aioelastic")
    journal = tmp_path / "trace.journal"
    fires: list[int] = []
    scheduler = _scheduler(postgres_url, journal, fires)
    with nullcontext() if outage == "stopped" else _paused(postgres_server):
        async with scheduler:
            await eventually(lambda: fires, timeout=15)
            if outage == "stopped":
                await anyio.to_thread.run_sync(postgres_server.stop)
            seen = len(fires)
            await eventually(lambda: len(fires) >= seen + 2, timeout=15)  # traced to nowhere
            await eventually(lambda: not scheduler._runners["tick"].executor.running, timeout=5)
            began = time.monotonic()
            scheduler.stop()
        took = time.monotonic() - began
    assert took < 5, f"stop took {took:.1f}s with a grace period of 20s"
    assert _records(caplog, "stopping: nothing running")
    fired = len(fires)

    postgres_server.ensure_running()
    again: list[int] = []
    async with _scheduler(postgres_url, journal, again):  # replays the journal
        await eventually(lambda: _rows(postgres_server, postgres_url) >= fired, timeout=30)


def _records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]
