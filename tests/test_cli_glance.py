"""At a glance in the CLI (issue 13 part 5): ``aioelastic jobs`` with next fire, last fire and
outcome; ``trace fires``; trace tables within 100 columns with short task ids and visible
causes (``--wide`` for everything); ``job show --code`` beside the registry's config; output into
``| head`` ends quietly."""

from __future__ import annotations

import io
import shlex
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from aioelastic import Operations, Scheduler, Settings, ShardingContext
from aioelastic.cli._format import (
    cause_line,
    format_duration,
    short_source,
    short_task_id,
    write_table,
)
from tests.harness.cli import JOBS_COLUMNS, JOBS_TRACED_COLUMNS, ROOT, Result, clean_env, cli
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio

TASK = "payroll@-@0,1,2@-@READY@-@10.0.0.1@-@4242@-@abc@-@0123456789abcdef0123456789abcdef"
TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1\nRuntimeError: item 2 failed\n'
)


def test_short_forms() -> None:
    assert short_task_id(TASK) == "01234567"
    assert short_task_id("manual") == "manual"
    assert cause_line(TRACEBACK) == "RuntimeError: item 2 failed"
    assert cause_line(None) is None
    assert short_source("NORMAL_TRIGGER") == "normal"
    assert short_source("FAILOVER") == "failover"
    assert [format_duration(timedelta(seconds=s)) for s in (0.25, 12.34, 245, 7380)] == [
        "0.25s",
        "12.3s",
        "4m05s",
        "2h03m",
    ]


def test_a_table_is_cut_to_the_width_in_its_last_column() -> None:
    out = io.StringIO()
    write_table(out, ["A", "CAUSE"], [("x" * 10, "y" * 200)], width=40)
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["A", "CAUSE"]
    assert len(lines[1]) == 40 and lines[1].endswith("...")


async def _run_fires(zk_url: str, trace_url: str, tmp_path: Path) -> Scheduler:
    scheduler = Scheduler(
        settings=Settings(
            registry_url=zk_url,
            tracing_url=trace_url,
            trace_journal_path=tmp_path / "trace.journal",
        )
    )
    done: list[int] = []

    @scheduler.job(cron="* * * * * ?", sharding_total_count=3, description="monthly payroll run")
    async def payroll(ctx: ShardingContext) -> None:
        done.append(ctx.sharding_item)
        if ctx.sharding_item == 2:
            raise RuntimeError("item 2 failed: " + "a long reason " * 10)

    async with scheduler:
        await eventually(lambda: len(done) >= 6, 20, what="two cron fires")
    return scheduler  # leaving `async with` flushed the trace


def _narrow(result: Result) -> list[str]:
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert all(len(line) <= 100 for line in lines), result.out
    return lines


@pytest.mark.zookeeper
@pytest.mark.slow
async def test_jobs_fires_and_tables_at_a_glance(zk_url: str, tmp_path: Path) -> None:
    trace_url = f"sqlite:///{tmp_path}/trace.db"
    await _run_fires(zk_url, trace_url, tmp_path)
    env = clean_env(AIOELASTIC_REGISTRY_URL=zk_url, AIOELASTIC_TRACING_URL=trace_url, COLUMNS="100")

    plain = await cli("--registry", zk_url, "jobs", env=clean_env())
    header, row = plain.out.splitlines()
    assert header.split() == JOBS_COLUMNS
    assert row.split()[:2] == ["payroll", "CRASHED"]  # the scheduler stopped

    lines = _narrow(await cli("jobs", env=env))
    assert lines[0].split() == JOBS_TRACED_COLUMNS
    cells = lines[1].split()
    assert cells[0] == "payroll" and "failed 1/3" in lines[1]
    listed = (await cli("jobs", "--json", env=env)).json()
    last = listed[0]["last_fire"]
    assert (last["items"], last["failed"], last["outcome"]) == (3, 1, "failed")
    assert "item 2 failed" in last["failure_cause"]
    assert listed[0]["missed_last_24h"] == 0
    assert listed[0]["next_fire_time"] is not None
    wide = await cli("jobs", "--wide", env=env)
    assert "DESCRIPTION" in wide.out and "monthly payroll run" in wide.out

    fires = _narrow(await cli("trace", "fires", "payroll", env=env))
    assert fires[0].split() == [  # no JOB column: one job
        "START",
        "ITEMS",
        "SOURCE",
        "TOOK",
        "OUTCOME",
        "TASK",
        "CAUSE",
    ]
    assert len(fires) >= 1 + 2 + 1 and fires[-1].startswith("(1-")
    first = fires[1]
    assert " normal " in first and "failed 1/3" in first
    assert "RuntimeError: item 2 f" in first  # the cause, without --json
    assert len(first.split()[-1]) <= 10 or "..." in first  # cut to the width
    fires_json = (await cli("trace", "fires", "payroll", "--json", env=env)).json()
    assert fires_json["items"][0]["duration"] >= 0

    executions = _narrow(await cli("trace", "executions", "--job", "payroll", env=env))
    assert executions[0].split() == [
        "START",
        "ITEM",
        "RESULT",
        "TOOK",
        "SOURCE",
        "TASK",
        "CAUSE",
    ]
    failed = [line for line in executions if " FAILED " in line]
    assert failed and all("RuntimeError: item 2 f" in line for line in failed)
    full = (await cli("trace", "executions", "--job", "payroll", "--wide", env=env)).out
    assert "@-@READY@-@" in full and "HOSTNAME" in full  # full task ids
    status = _narrow(await cli("trace", "status", "--job", "payroll", env=env))
    assert status[0].split()[0] == "TIME"

    # `| head -1`: no traceback, the shell's exit status is head's
    base = [sys.executable, "-m", "aioelastic.cli"]
    every_job = _narrow(await cli("trace", "fires", env=env))
    assert every_job[0].split()[:2] == ["START", "JOB"] and " payroll " in every_job[1]
    for args in (["jobs"], ["trace", "fires", "payroll"], ["trace", "executions"]):
        command = " ".join([*map(shlex.quote, [*base, *args]), "|", "head", "-1"])
        with anyio.fail_after(30):
            done = await anyio.run_process(["sh", "-c", command], check=False, env=env, cwd=ROOT)
        assert done.returncode == 0 and done.stderr.decode() == "", args
        assert len(done.stdout.decode().splitlines()) == 1


@pytest.mark.zookeeper
async def test_job_show_beside_the_code(zk_url: str, tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            from aioelastic import Scheduler
            scheduler = Scheduler()
            @scheduler.job(cron="0 0 3 * * ?", sharding_total_count=2, description="new")
            async def nightly(ctx):
                pass
            """
        )
    )
    scheduler = Scheduler(registry=zk_url)

    @scheduler.job(cron="0 0 2 * * ?", sharding_total_count=2, description="old")
    async def nightly(ctx: ShardingContext) -> None:
        pass

    async with scheduler, Operations(zk_url) as ops:
        await eventually(lambda: _has_job(ops, "nightly"), 10)
        reg = ("--registry", zk_url)
        code = ("--code", "app:scheduler", "--app-dir", str(tmp_path))
        shown = await cli(*reg, "job", "show", "nightly", *code)
        assert shown.code == 0, shown.err
        lines = shown.out.splitlines()
        assert lines[0].split() == ["FIELD", "REGISTRY", "CODE"]
        cron = next(line for line in lines if line.startswith("cron "))
        assert "0 0 2 * * ?" in cron and "0 0 3 * * ?" in cron
        count = next(line for line in lines if line.startswith("sharding_total_count "))
        assert "(same)" in count
        assert lines[-1] == (
            "differs in cron, description: the registry's (overwrite=False) is in effect at start"
        )
        as_json = (await cli(*reg, "job", "show", "nightly", *code, "--json")).json()
        assert as_json["differing"] == ["cron", "description"]
        assert as_json["code"]["cron"] == "0 0 3 * * ?"
        unknown = await cli(
            *reg, "job", "show", "nightly", "--code", "app:nope", "--app-dir", str(tmp_path)
        )
        assert unknown.code == 2 and "has no 'nope'" in unknown.err
        plain = await cli(*reg, "job", "show", "nightly")
        assert plain.out.splitlines()[0].split() == ["FIELD", "VALUE"]
        assert "next_fire_time" in plain.out


async def _has_job(ops: Operations, name: str) -> bool:
    return name in {j.name for j in await ops.jobs()}
