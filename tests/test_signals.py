"""Stop signals, as separate processes on a real ZooKeeper: the README's ``python service.py``
pattern (``anyio.run(scheduler.run)``) and ``aioelastic run module:scheduler`` behave the same.

First SIGTERM/SIGINT: the instance node is gone within 1 s, the running item gets its grace
period (it completes), the trace is flushed, exit status 0 and no traceback. A second signal
cancels the running item at once (exit 0 for the script, 130 for ``aioelastic run``).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import pytest

from aioelastic import Scheduler, Settings
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from tests.harness.cluster import zk_client
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
INSTANCE = "sig-instance"

SERVICE = textwrap.dedent(
    """
    import os
    import pathlib

    import anyio

    from aioelastic import Scheduler, ShardingContext

    marks = pathlib.Path(os.environ["SIGTEST_MARKS"])
    scheduler = Scheduler(instance_id="sig-instance")  # registry, tracing, grace: environment

    @scheduler.job(cron="0/1 * * * * ?", misfire=False)
    async def slow(ctx: ShardingContext) -> None:
        with marks.open("a") as f:
            f.write("start\\n")
        try:
            await anyio.sleep(float(os.environ["SIGTEST_ITEM_SECONDS"]))
        except BaseException:
            with marks.open("a") as f:
                f.write("cancelled\\n")
            raise
        with marks.open("a") as f:
            f.write("end\\n")

    if __name__ == "__main__":
        anyio.run(scheduler.run)
    """
)


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    marks: Path
    stderr: Path
    trace_db: Path

    def lines(self) -> list[str]:
        return self.marks.read_text().split() if self.marks.exists() else []

    def err(self) -> str:
        return self.stderr.read_text()

    def err_tail(self) -> str:
        return f"stderr:\n{self.err()[-3000:]}"


def start_service(
    tmp_path: Path, zk_url: str, how: str, item_seconds: float, grace: float
) -> Service:
    (tmp_path / "service.py").write_text(SERVICE)
    marks, stderr, db = tmp_path / "marks.txt", tmp_path / "stderr.txt", tmp_path / "trace.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELASTIC_")}
    env.update(
        PYTHONPATH=str(ROOT),
        AIOELASTIC_REGISTRY_URL=zk_url,
        AIOELASTIC_TRACING_URL=f"sqlite:///{db}",
        AIOELASTIC_SHUTDOWN_GRACE_PERIOD=str(grace),
        SIGTEST_MARKS=str(marks),
        SIGTEST_ITEM_SECONDS=str(item_seconds),
    )
    if how == "script":
        argv = [sys.executable, str(tmp_path / "service.py")]
    else:
        argv = [sys.executable, "-m", "aioelastic.cli", "run", "service:scheduler"]
        argv += ["--app-dir", str(tmp_path)]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr.open("wb")
    )
    return Service(proc, marks, stderr, db)


async def exited(service: Service, timeout: float) -> int:
    await eventually(
        lambda: service.proc.poll() is not None, timeout, 0.02, what="exit", detail=service.err_tail
    )
    code = service.proc.returncode
    assert code is not None
    return code


def execution_rows(db: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT is_success, complete_time FROM JOB_EXECUTION_LOG WHERE job_name = 'slow'"
        ).fetchall()


async def stop_and_check_node(service: Service, zk_url: str, sig: signal.Signals) -> None:
    """Wait until the item runs, send ``sig``; the instance node must be gone within 1 s."""
    node = JobPaths(parse_registry_url(zk_url).namespace, "slow").instance(INSTANCE)
    async with zk_client(zk_url) as reg:
        await eventually(
            lambda: "start" in service.lines(),
            30,
            0.02,
            what="an item start",
            detail=service.err_tail,
        )
        assert await reg.exists(node) is not None
        sent = time.monotonic()
        service.proc.send_signal(sig)

        async def gone() -> bool:
            return await reg.exists(node) is None

        await eventually(gone, 5, 0.02, what="instance node deleted", detail=service.err_tail)
        seen = time.monotonic()
        assert seen - sent < 1.0, f"instance node lived {seen - sent:.2f}s after {sig.name}"


@pytest.mark.zookeeper
@pytest.mark.parametrize(
    ("how", "sig"),
    [("script", signal.SIGTERM), ("script", signal.SIGINT), ("cli", signal.SIGTERM)],
    ids=["script-SIGTERM", "script-SIGINT", "cli-SIGTERM"],
)
async def test_first_signal_stops_gracefully(
    zk_url: str, tmp_path: Path, how: str, sig: signal.Signals
) -> None:
    service = start_service(tmp_path, zk_url, how, item_seconds=2.0, grace=20.0)
    try:
        await stop_and_check_node(service, zk_url, sig)
        assert await exited(service, 25) == 0, service.err()
        assert service.lines()[:2] == ["start", "end"], service.lines()  # given its grace
        assert "Traceback" not in service.err(), service.err()
        assert "stopping gracefully" in service.err()
        assert [r[0] for r in execution_rows(service.trace_db)][:1] == [1]  # trace flushed
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(10)


@pytest.mark.zookeeper
@pytest.mark.parametrize(
    ("how", "sig", "status"),
    [("script", signal.SIGINT, 0), ("cli", signal.SIGTERM, 130)],
    ids=["script-SIGINT", "cli-SIGTERM"],
)
async def test_second_signal_cancels_running_items_at_once(
    zk_url: str, tmp_path: Path, how: str, sig: signal.Signals, status: int
) -> None:
    service = start_service(tmp_path, zk_url, how, item_seconds=60.0, grace=60.0)
    try:
        await stop_and_check_node(service, zk_url, sig)
        await eventually(
            lambda: "stopping gracefully" in service.err(),
            5,
            0.02,
            what="first signal logged",
            detail=service.err_tail,
        )
        assert service.proc.poll() is None  # the item has its grace period
        sent = time.monotonic()
        service.proc.send_signal(sig)
        assert await exited(service, 10) == status, service.err()
        assert time.monotonic() - sent < 10
        assert service.lines() == ["start", "cancelled"], service.lines()
        assert "Traceback" not in service.err(), service.err()
        assert "cancelling running items" in service.err()
        rows = execution_rows(service.trace_db)
        assert rows and rows[0][0] == 0 and rows[0][1] is not None, rows  # a completed failure
    finally:
        if service.proc.poll() is None:
            service.proc.kill()
            service.proc.wait(10)


# -- in process: who owns the handlers --


async def test_run_restores_previous_handlers_and_async_with_leaves_them() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    scheduler = Scheduler(settings=Settings(registry_url="memory://sigs-a/ns"))
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        assert signal.getsignal(signal.SIGTERM) is not before[0]  # taken
        scheduler.stop()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

    async with Scheduler(settings=Settings(registry_url="memory://sigs-b/ns")):
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


async def test_run_leaves_signals_of_another_owner_alone() -> None:
    def mine(signum: int, frame: object) -> None: ...

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        scheduler = Scheduler(settings=Settings(registry_url="memory://sigs-c/ns"))
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            assert signal.getsignal(signal.SIGTERM) is mine
            scheduler.stop()
        scheduler = Scheduler(settings=Settings(registry_url="memory://sigs-d/ns"))
        async with anyio.create_task_group() as tg:
            await tg.start(partial(scheduler.run, handle_signals=True))
            assert signal.getsignal(signal.SIGTERM) is not mine  # taken over on request
            scheduler.stop()
        assert signal.getsignal(signal.SIGTERM) is mine  # and given back
    finally:
        signal.signal(signal.SIGTERM, previous)
