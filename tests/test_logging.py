"""Log records people can read and machines can parse: the per-fire line, item failures,
lifecycle lines with their ``extra`` fields, and ``aioelastic run --log-format json``."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic._logging import JsonFormatter, short_task_id
from aioelastic.registry import MemoryStore
from tests.harness.cli import ROOT, clean_env
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


def _memory_url(name: str) -> str:
    MemoryStore.reset(name)
    return f"memory://{name}/ns"


def _records(caplog: pytest.LogCaptureFixture, start: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(start)]


def _field(record: logging.LogRecord, name: str) -> Any:
    return record.__dict__[name]


async def test_a_fire_logs_one_info_line_and_each_failed_item_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aioelastic")
    scheduler = Scheduler(settings=Settings(registry_url=_memory_url("log-fire")))

    @scheduler.job(sharding_total_count=3)
    async def report(ctx: ShardingContext) -> None:
        if ctx.sharding_item == 1:
            raise ValueError("no data for item 1")

    async with scheduler:
        await scheduler.trigger("report")
        await eventually(lambda: _records(caplog, "report: fire "), timeout=10)
    [fire] = _records(caplog, "report: fire ")
    task_id = _field(fire, "task_id")
    assert fire.levelno == logging.INFO and fire.name == "aioelastic.executor"
    assert fire.getMessage() == (
        f"report: fire {short_task_id(task_id)} items [0, 1, 2] (normal) took "
        f"{_field(fire, 'duration'):.3f}s: failed items [1]"
    )
    assert task_id.startswith("report@-@0,1,2@-@READY@-@")
    assert _field(fire, "job") == "report"
    assert _field(fire, "instance") == scheduler.instance_id
    assert _field(fire, "execution_source") == "NORMAL_TRIGGER"
    assert _field(fire, "items") == [0, 1, 2]
    assert _field(fire, "outcome") == "failed" and _field(fire, "failed_items") == [1]
    assert 0 <= _field(fire, "duration") < 10

    [failed] = _records(caplog, "report: item 1 failed")
    assert failed.levelno == logging.ERROR
    assert failed.getMessage().endswith(
        f"(task {short_task_id(task_id)}): ValueError: no data for item 1"
    )
    assert _field(failed, "item") == 1 and _field(failed, "task_id") == task_id
    assert _field(failed, "job") == "report"
    assert _field(failed, "execution_source") == "NORMAL_TRIGGER"
    assert failed.exc_info is not None and isinstance(failed.exc_info[1], ValueError)


async def test_a_successful_fire_says_ok(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aioelastic")
    scheduler = Scheduler(settings=Settings(registry_url=_memory_url("log-ok")))

    @scheduler.job(sharding_total_count=2)
    async def fine(ctx: ShardingContext) -> None:
        pass

    async with scheduler:
        await scheduler.trigger("fine")
        await eventually(lambda: _records(caplog, "fine: fire "), timeout=10)
    [fire] = _records(caplog, "fine: fire ")
    assert fire.getMessage().endswith(": ok")
    assert _field(fire, "outcome") == "ok" and _field(fire, "failed_items") == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _lifecycle(url: str, caplog: pytest.LogCaptureFixture) -> Scheduler:
    caplog.set_level(logging.INFO, logger="aioelastic")
    scheduler = Scheduler(settings=Settings(registry_url=url))

    @scheduler.job(sharding_total_count=2)
    async def one(ctx: ShardingContext) -> None:
        pass

    @scheduler.job()
    async def two(ctx: ShardingContext) -> None:
        pass

    async with scheduler:
        await eventually(lambda: len(_records(caplog, "two: resharded")) == 1, timeout=10)
    return scheduler


def _assert_lifecycle(scheduler: Scheduler, caplog: pytest.LogCaptureFixture) -> None:
    me = scheduler.instance_id
    [started] = _records(caplog, f"instance {me} started with 2 job(s) on ")
    [stopping] = _records(caplog, f"instance {me} stopping: nothing running")
    [stopped] = _records(caplog, f"instance {me} stopped")
    for record in (started, stopping, stopped):
        assert record.levelno == logging.INFO and _field(record, "instance") == me
    [leader] = _records(caplog, f"one: {me} is leader")
    [reshard] = _records(caplog, "one: resharded over 1 instance(s): ")
    for record in (leader, reshard):
        assert record.levelno == logging.INFO
        assert _field(record, "job") == "one" and _field(record, "instance") == me
    assert caplog.records.index(started) < caplog.records.index(stopping)
    assert caplog.records.index(stopping) < caplog.records.index(stopped)


async def test_lifecycle_lines(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = await _lifecycle(_memory_url("log-life"), caplog)
    _assert_lifecycle(scheduler, caplog)


@pytest.mark.zookeeper
async def test_a_graceful_stop_is_not_logged_as_a_lost_session(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = await _lifecycle(zk_url, caplog)
    _assert_lifecycle(scheduler, caplog)
    assert not [r for r in caplog.records if "lost" in r.getMessage().lower()]
    assert [r for r in caplog.records if r.getMessage().startswith("ZooKeeper session 0x")]
    assert [r for r in caplog.records if " closed (" in r.getMessage()]


def test_the_json_formatter_writes_one_object_with_the_extra_fields() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("aioelastic.executor").makeRecord(
            "aioelastic.executor",
            logging.ERROR,
            __file__,
            1,
            "%s: item %d failed\nsecond line",
            ("sync", 3),
            sys.exc_info(),
            extra={"job": "sync", "item": 3, "task_id": "sync@-@3@-@READY@-@i@-@ab", "x": {1}},
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["message"] == "sync: item 3 failed\nsecond line"
    assert out["level"] == "ERROR" and out["logger"] == "aioelastic.executor"
    assert out["job"] == "sync" and out["item"] == 3 and out["task_id"].endswith("@-@ab")
    assert out["x"] == "{1}"  # not JSON: its str()
    assert "RuntimeError: boom" in out["exc_info"]
    assert out["time"].endswith("+00:00")
    assert "args" not in out and "msg" not in out and "levelno" not in out


async def test_run_with_log_format_json_prints_one_object_per_line(tmp_path: Path) -> None:
    (tmp_path / "jsonjobs.py").write_text(
        textwrap.dedent(
            """
            from aioelastic import Scheduler

            scheduler = Scheduler("memory://jsonjobs/ns")

            @scheduler.job(cron="0/1 * * * * ?", sharding_total_count=2)
            async def tick(ctx):
                pass
            """
        )
    )
    log = tmp_path / "run.log"
    args = ["run", "jsonjobs:scheduler", "--app-dir", str(tmp_path), "--log-format", "json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "aioelastic.cli", *args],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        await eventually(lambda: '"tick: fire ' in log.read_text(), timeout=30, step=0.05)
        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: proc.poll() is not None, timeout=30, step=0.05, what="its exit")
        assert proc.returncode == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    fire = next(x for x in lines if x["message"].startswith("tick: fire "))
    assert fire["job"] == "tick" and fire["items"] == [0, 1] and fire["outcome"] == "ok"
    assert fire["execution_source"] == "NORMAL_TRIGGER" and fire["logger"] == "aioelastic.executor"
    assert any(x["message"].endswith(" stopped") for x in lines)


async def test_the_stop_line_says_what_it_waits_for(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aioelastic")
    scheduler = Scheduler(
        settings=Settings(registry_url=_memory_url("log-stop"), shutdown_grace_period=30)
    )
    started, release = anyio.Event(), anyio.Event()

    @scheduler.job(sharding_total_count=3)
    async def slow(ctx: ShardingContext) -> None:
        if ctx.sharding_item == 2:
            started.set()
            await release.wait()

    async with scheduler:
        await scheduler.trigger("slow")
        with anyio.fail_after(10):
            await started.wait()
        await eventually(lambda: scheduler._runners["slow"].executor.active == {2}, timeout=10)
        scheduler.stop()
        await eventually(lambda: _records(caplog, f"instance {scheduler.instance_id} stopping"))
        release.set()
    [line] = _records(caplog, f"instance {scheduler.instance_id} stopping")
    assert line.getMessage().endswith("stopping: waiting up to 30s for 1 running item(s): slow [2]")
    assert _field(line, "running_items") == {"slow": [2]}


async def test_a_registry_failure_of_a_fire_is_one_line_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session lost mid-fire fails every job's fire at once: each logs one line (a thousand
    formatted tracebacks in one loop pass blocked the loop past the stall limit)."""
    from aioelastic._errors import SessionLostError

    caplog.set_level(logging.INFO, logger="aioelastic")
    scheduler = Scheduler(settings=Settings(registry_url=_memory_url("log-registry-error")))

    @scheduler.job()
    async def sync(ctx: ShardingContext) -> None:
        pass

    async with scheduler:
        executor = scheduler._runners["sync"].executor
        await executor.handle_error(SessionLostError("connection to 127.0.0.1:1 lost (closed)"))
        await executor.handle_error(ValueError("a bug"))
    registry_error, bug = _records(caplog, "job 'sync' failed: ")
    assert registry_error.levelno == logging.ERROR
    assert registry_error.getMessage() == (
        "job 'sync' failed: SessionLostError: connection to 127.0.0.1:1 lost (closed)"
    )
    assert registry_error.exc_info is None
    assert bug.exc_info is not None and isinstance(bug.exc_info[1], ValueError)
