"""``aioelastic trace`` inputs, run as a separate process on a SQLite trace: no command creates a
database, ``--state`` is validated, ``purge`` needs ``--yes``, out-of-range numbers and dates are
one-line errors (exit 2), ``--running`` / ``--failure`` split unfinished and failed runs, and
hostile strings are plain values."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from aioelastic.tracing import open_trace_store
from aioelastic.tracing._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    State,
    TraceEvent,
)

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(UTC).replace(microsecond=0)
HOSTILE = "x'); DROP TABLE JOB_EXECUTION_LOG; --"


async def aioelastic(*args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELASTIC_")}
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", "aioelastic.cli", *args],
            check=False,
            env={**env, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def one_line_error(err: str) -> bool:
    """One error line (argparse's usage lines may come before it), no traceback."""
    lines = err.strip().splitlines()
    return (
        "Traceback" not in err
        and "error:" in lines[-1]
        and all(line.startswith(("usage:", " ")) for line in lines[:-1])
    )


def runs() -> list[TraceEvent]:
    events: list[TraceEvent] = []
    for item, outcome in enumerate((True, False, None)):
        start = JobExecutionEvent(
            job_name="payroll",
            task_id="payroll@-@0-2@-@READY@-@i1@-@u1",
            hostname="h",
            ip="127.0.0.1",
            sharding_item=item,
            execution_source=ExecutionSource.NORMAL_TRIGGER,
            start_time=NOW - timedelta(days=3),
        )
        events.append(start)
        if outcome is not None:
            fields = {n: getattr(start, n) for n in JobExecutionEvent.__dataclass_fields__}
            fields.update(complete_time=NOW - timedelta(days=3), is_success=outcome)
            events.append(JobExecutionEvent(**fields))
    events.append(
        JobStatusTraceEvent(
            job_name="payroll",
            task_id="payroll@-@0-2@-@READY@-@i1@-@u1",
            slave_id="i1",
            execution_type=ExecutionType.READY,
            sharding_items=(0, 1, 2),
            state=State.TASK_ERROR,
            message="item 1 failed",
            creation_time=NOW - timedelta(days=3),
        )
    )
    return events


@pytest.fixture
async def trace(tmp_path: Path) -> list[str]:
    url = f"sqlite:///{tmp_path}/trace.db"
    async with open_trace_store(url, journal_path=tmp_path / "j.journal") as store:
        await store.sink.write(runs())
    return ["--tracing", url]


async def test_no_trace_command_creates_a_database(tmp_path: Path) -> None:
    typo = tmp_path / "tarce.db"
    tracing = ["--tracing", f"sqlite:///{typo}"]
    for action in (["executions"], ["status"], ["stats"], ["purge", "--older-than-days", "1"]):
        code, out, err = await aioelastic(*tracing, "trace", *action)
        assert code == 2 and one_line_error(err), (action, err)
        assert "no SQLite trace database" in err and out == ""
        assert not typo.exists()


async def test_state_is_validated(trace: list[str]) -> None:
    code, _, err = await aioelastic(*trace, "trace", "status", "--state", "TASK_EROR")
    assert code == 2 and one_line_error(err) and "TASK_ERROR" in err
    code, out, _ = await aioelastic(*trace, "trace", "status", "--state", "task_error", "--json")
    assert code == 0 and json.loads(out)["total"] == 1


async def test_purge_prints_the_count_and_needs_yes(trace: list[str]) -> None:
    code, out, _ = await aioelastic(*trace, "trace", "purge", "--older-than-days", "1")
    assert code == 1
    assert out == (
        "would delete 3 execution row(s) and 1 status row(s) older than 1 day(s);"
        " nothing deleted: add --yes\n"
    )
    code, out, _ = await aioelastic(*trace, "trace", "executions", "--json")
    assert json.loads(out)["total"] == 3
    code, out, _ = await aioelastic(*trace, "trace", "purge", "--older-than-days", "1", "--yes")
    assert code == 0 and out.startswith("purged 3 execution row(s) and 1 status row(s)")


async def test_out_of_range_values_are_one_line_errors(trace: list[str]) -> None:
    for args in (
        ["executions", "--since", "99999999d"],
        ["executions", "--until", "99999999999d"],
        ["status", "--since", "99999999d"],
        ["stats", "--since", "99999999d"],
        ["executions", "--offset", "99999999999999999999"],
        ["status", "--offset", "-1"],
        ["executions", "--limit", "99999999999999"],
        ["executions", "--item", "99999999999"],
        ["purge", "--older-than-days", "nan"],
        ["purge", "--older-than-days", "inf"],
        ["purge", "--older-than-days", "1e10", "--yes"],
        ["purge", "--older-than-days", "-1"],
    ):
        code, _, err = await aioelastic(*trace, "trace", *args)
        assert code == 2 and one_line_error(err), (args, err)


async def test_running_and_failure_are_disjoint(trace: list[str]) -> None:
    _, out, _ = await aioelastic(*trace, "trace", "executions", "--failure", "--json")
    assert [r["sharding_item"] for r in json.loads(out)["items"]] == [1]
    _, out, _ = await aioelastic(*trace, "trace", "executions", "--running", "--json")
    assert [r["sharding_item"] for r in json.loads(out)["items"]] == [2]
    _, out, _ = await aioelastic(*trace, "trace", "stats", "--since", "7d", "--json")
    assert json.loads(out) == [
        {"job_name": "payroll", "total": 3, "succeeded": 1, "failed": 1, "running": 1}
    ]
    _, out, _ = await aioelastic(*trace, "trace", "stats", "--json")  # the last day: none
    assert json.loads(out) == []


async def test_hostile_strings_are_plain_values(trace: list[str]) -> None:
    for args in (
        ["executions", "--job", HOSTILE],
        ["executions", "--task-id", HOSTILE],
        ["status", "--job", HOSTILE],
        ["status", "--task-id", HOSTILE],
        ["stats", "--job", HOSTILE],
    ):
        code, out, err = await aioelastic(*trace, "trace", *args, "--json")
        assert code == 0, err
        body = json.loads(out)
        assert body == [] or body["total"] == 0
    _, out, _ = await aioelastic(*trace, "trace", "executions", "--json")
    assert json.loads(out)["total"] == 3
