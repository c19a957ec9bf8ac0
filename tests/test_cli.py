"""The ``aioelastic`` command, run as a subprocess against the harness's ZooKeeper and
PostgreSQL: output, JSON, exit codes and error messages."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import aioelastic
from aioelastic import JobStatus, Operations, Scheduler, Settings, ShardingContext
from aioelastic.cli import EXIT_BROKEN_PIPE, build_parser
from aioelastic.registry import MemoryStore
from tests.harness.cli import JOBS_COLUMNS, ROOT, clean_env, cli
from tests.harness.helpers import eventually
from tests.harness.zookeeper import free_port

pytestmark = pytest.mark.anyio


def dead_zk(credentials: str = "") -> str:
    return f"zookeeper://{credentials}127.0.0.1:{free_port()}/ns?connect_timeout=0.5"


# -- without services ----------------------------------------------------------------------


async def test_help_documents_commands_and_exit_codes() -> None:
    result = await cli("--help")
    assert result.code == 0
    for text in (
        "run",
        "jobs",
        "sharding",
        "trace",
        "exit codes",
        "3  unknown job",
        "4  the registry",
    ):
        assert text in result.out
    result = await cli("trace", "executions", "--help")
    assert result.code == 0 and "--failure" in result.out and "--since" in result.out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--registry", "http://127.0.0.1:1/x", "jobs"],
            2,
            "scheme must be memory:// or zookeeper://",
        ),
        (["jobs"], 2, "needs a zookeeper:// URL"),
        (["--registry", "memory://", "jobs"], 2, "needs a zookeeper:// URL"),
        (["trace", "stats"], 2, "give --tracing URL"),
        (["--tracing", "mysql://u:pw@127.0.0.1/db", "trace", "stats"], 2, "scheme must be"),
        (["run", "no_such_module:scheduler"], 2, "cannot import 'no_such_module'"),
        (["run", "json:dumps"], 2, "is a function, not a Scheduler"),
        (["frobnicate"], 2, "invalid choice"),
    ],
    ids=[
        "bad-scheme",
        "no-registry",
        "memory",
        "no-tracing",
        "bad-tracing",
        "import",
        "not-scheduler",
        "usage",
    ],
)
async def test_usage_errors_exit_2(args: list[str], code: int, message: str) -> None:
    result = await cli(*args)
    assert (result.code, result.out) == (code, "")
    assert message in result.err
    assert len(result.err.strip().splitlines()) <= 3  # argparse's usage + one error line


async def test_unreachable_registry_exits_4_without_the_password() -> None:
    result = await cli("--registry", dead_zk("ops:s3cret-pw@"), "jobs")
    assert result.code == 4
    assert "cannot reach the registry" in result.err and "ops:***@" in result.err
    assert "s3cret-pw" not in result.err + result.out
    assert len(result.err.strip().splitlines()) == 1


async def test_unreachable_trace_database_exits_4_without_the_password() -> None:
    url = f"postgresql://tracer:s3cret-pw@127.0.0.1:{free_port()}/trace"
    result = await cli("--tracing", url, "--timeout", "2", "trace", "executions")
    assert result.code == 4, result.err
    assert "cannot reach the trace database" in result.err
    assert "s3cret-pw" not in result.err + result.out


async def test_version_and_python_dash_m_aioelastic() -> None:
    with anyio.fail_after(30):
        done = await anyio.run_process(
            [sys.executable, "-m", "aioelastic", "--version"], check=False, env=clean_env()
        )
    assert (done.returncode, done.stdout.decode()) == (0, f"aioelastic {aioelastic.__version__}\n")
    assert (await cli("--version")).out == done.stdout.decode()


REGISTRY_COMMANDS = [
    ["job", "show"],
    ["job", "trigger"],
    ["job", "disable"],
    ["job", "enable"],
    ["job", "remove"],
    ["job", "update"],
    ["servers"],
    ["instances"],
    ["sharding"],
    ["dump"],
    ["item", "disable"],
    ["item", "enable"],
    ["instance", "shutdown"],
]


def _subparser(words: list[str]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in words:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


@pytest.mark.parametrize("words", REGISTRY_COMMANDS, ids=[" ".join(w) for w in REGISTRY_COMMANDS])
def test_registry_subcommands_show_only_their_options_each_with_help(words: list[str]) -> None:
    parser = _subparser(words)
    options = {o for a in parser._actions for o in a.option_strings}
    assert {"--registry", "--json", "--timeout"} <= options
    assert "--tracing" not in options  # a trace-only option
    for act in parser._actions:
        assert act.help, (words, act.dest)
    help_text = parser.format_help()
    assert "--tracing" not in help_text and "--older-than-days" not in help_text


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e400", "abc", ""])
async def test_timeout_must_be_a_positive_number(value: str) -> None:
    result = await cli("--registry", dead_zk(), "jobs", "--timeout", value)
    assert (result.code, result.out) == (2, "")
    assert "argument --timeout" in result.err and "Traceback" not in result.err


UNDECODABLE = os.fsdecode(b"\xff")  # what Python makes of a byte that is not UTF-8


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["item", "disable", "j", "99999999999"], {}, "out of range 0..2147483647"),
        (["item", "enable", "j", "--", "-1"], {}, "out of range"),
        (["item", "enable", "j", "1e3"], {}, "not an integer"),
        (["item", "enable", "j", "9" * 5000], {}, "not an integer"),
        (["trace", "executions", "--item", "99999999999"], {}, "out of range 0..2147483647"),
        (["job", "show", UNDECODABLE], {}, "argument NAME: not valid UTF-8"),
        (["job", "disable", "j", "--host", f"h{UNDECODABLE}"], {}, "--host: not valid UTF-8"),
        (["job", "update", "j", f"description={UNDECODABLE}"], {}, "CHANGES: not valid UTF-8"),
        (["job", "show", "a\x01"], {}, "not a registry node name"),
        (["job", "show", "a/b"], {}, "not a registry node name"),
        (["instance", "shutdown", "j", ".."], {}, "not a registry node name"),
        (["--registry", f"zookeeper://h:1/n{UNDECODABLE}", "jobs"], {}, "--registry: not valid"),
        (
            ["jobs"],
            {"AIOELASTIC_REGISTRY_URL": f"zookeeper://u:p{UNDECODABLE}@h:1/ns"},
            "not valid UTF-8",
        ),
    ],
    ids=[
        "item-too-big",
        "item-negative",
        "item-float",
        "item-huge",
        "trace-item",
        "name-bytes",
        "host-bytes",
        "change-bytes",
        "name-control",
        "name-slash",
        "instance-dotdot",
        "url-bytes",
        "env-bytes",
    ],
)
async def test_bad_numbers_and_text_get_one_line_and_exit_2(
    args: list[str], env: dict[str, str], message: str
) -> None:
    registry = [] if "--registry" in args or env else ["--registry", dead_zk()]
    result = await cli(*args[:1], *registry, *args[1:], env=clean_env(**env))
    assert (result.code, result.out) == (2, ""), result.err
    assert message in result.err and "Traceback" not in result.err
    lines = result.err.strip().splitlines()  # argparse's usage, then one error line
    assert "error:" in lines[-1] and all(line.startswith(("usage:", " ")) for line in lines[:-1])


async def test_help_into_a_closed_pipe_is_quiet() -> None:
    for args in (["--help"], ["--version"], ["jobs", "--help"]):
        proc = subprocess.Popen(
            [sys.executable, "-m", "aioelastic", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=clean_env(),
            cwd=ROOT,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # the reader is gone before the first byte is written
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=30) in (0, EXIT_BROKEN_PIPE) and err == "", (args, err)


# -- registry commands on ZooKeeper --------------------------------------------------------


ESCAPES = "\x1b]0;owned\x07\x1b[2J\u202e\x9b"  # a title, clear screen, RLO, CSI (C1)


@pytest.mark.zookeeper
async def test_registry_data_reaches_the_terminal_without_control_characters(
    zk_url: str,
) -> None:
    # Any client may write a job's description or a node's data; the CLI printed them raw,
    # so escape sequences in them reached the operator's terminal (retitle, clear, hide).
    scheduler = Scheduler(registry=zk_url)

    @scheduler.job(description=f"nightly {ESCAPES} settlement")
    async def settle(ctx: ShardingContext) -> None: ...

    reg = ("--registry", zk_url)
    async with scheduler, Operations(zk_url) as ops:
        await eventually(lambda: _status_is(ops, "settle", JobStatus.OK))
        await ops.registry.create(
            f"/{ops.namespace}/settle/odd", f"x{ESCAPES}y".encode(), make_parents=True
        )
        for args in (("jobs",), ("job", "show", "settle"), ("dump", "settle")):
            shown = await cli(*reg, *args)
            assert shown.code == 0, shown.err
            assert not any(c in shown.out for c in "\x1b\x07\x9b\u202e"), (args, shown.out)
            assert "\\x1b" in shown.out, (args, shown.out)  # escaped, still visible
        as_json = await cli(*reg, "--json", "jobs")
        assert as_json.json()[0]["description"] == f"nightly {ESCAPES} settlement"


@pytest.mark.zookeeper
async def test_registry_commands(zk_url: str) -> None:
    scheduler = Scheduler(registry=zk_url)
    runs: list[int] = []

    @scheduler.job(sharding_total_count=3, description="nightly settlement")
    async def settle(ctx: ShardingContext) -> None:
        runs.append(ctx.sharding_item)

    me = scheduler.instance_id
    reg = ("--registry", zk_url)
    async with scheduler, Operations(zk_url) as ops:
        await eventually(lambda: _status_is(ops, "settle", JobStatus.OK))

        table = await cli(*reg, "jobs")
        assert table.code == 0
        header, row = table.out.splitlines()
        assert header.split() == JOBS_COLUMNS
        assert row.split() == ["settle", "OK", "-", "-", "3", "1", "nightly", "settlement"]
        assert header.index("STATUS") == row.index("OK")  # aligned columns

        env = clean_env(AIOELASTIC_REGISTRY_URL=zk_url)  # the env var instead of --registry
        listed = await cli("jobs", "--json", env=env)
        assert listed.code == 0 and listed.json() == [
            {
                "name": "settle",
                "cron": None,
                "sharding_total_count": 3,
                "description": "nightly settlement",
                "instance_count": 1,
                "status": "OK",
                "time_zone": "UTC",
                "next_fire_time": None,
            }
        ]
        shown = (await cli(*reg, "--json", "job", "show", "settle")).json()
        assert shown["config"]["sharding_total_count"] == 3
        servers = (await cli(*reg, "servers", "settle", "--json")).json()
        assert servers == [
            {"host": scheduler.identity.host, "status": "ENABLED", "instances": [me]}
        ]
        instances = (await cli(*reg, "instances", "settle", "--json")).json()
        assert [i["pid"] for i in instances] == [os.getpid()]

        assert (await cli(*reg, "item", "disable", "settle", "1")).code == 0
        sharding = (await cli(*reg, "sharding", "settle", "--json")).json()
        assert [(i["item"], i["status"], i["instance"]) for i in sharding] == [
            (0, "PENDING", me),
            (1, "DISABLED", me),
            (2, "PENDING", me),
        ]
        triggered = await cli(*reg, "job", "trigger", "settle")
        assert (triggered.code, triggered.out) == (0, "triggered 'settle' on 1 instance(s)\n")
        await eventually(lambda: sorted(runs) == [0, 2])
        assert (await cli(*reg, "item", "enable", "settle", "1")).code == 0

        updated = await cli(
            *reg, "job", "update", "settle", "description=weekly", "job_parameter=7"
        )
        assert updated.code == 0, updated.err
        await eventually(lambda: scheduler.jobs["settle"].description == "weekly")
        assert scheduler.jobs["settle"].job_parameter == "7"
        bad = await cli(*reg, "job", "update", "settle", "sharding_total_count=0")
        assert bad.code == 2 and "sharding_total_count" in bad.err

        assert (await cli(*reg, "job", "disable", "settle")).code == 0
        assert (await ops.job("settle")).status is JobStatus.DISABLED
        assert (
            await cli(*reg, "job", "enable", "settle", "--host", scheduler.identity.host)
        ).code == 0
        await eventually(lambda: _status_is(ops, "settle", JobStatus.OK))

        dump = await cli(*reg, "dump", "settle")
        assert dump.code == 0
        assert f"/{ops.namespace}/settle/servers/{scheduler.identity.host} = ENABLED" in dump.out

        refused = await cli(*reg, "job", "remove", "settle")
        assert refused.code == 1 and "still runs on 1 instance" in refused.err
        for args in (
            ("job", "show", "nope"),
            ("sharding", "nope"),
            ("item", "disable", "settle", "9"),
            ("job", "enable", "settle", "--host", "nohost"),
            ("instance", "shutdown", "settle", "no-such-instance"),
        ):
            missing = await cli(*reg, *args)
            assert missing.code == 3, (args, missing.err)
            assert missing.err.startswith("aioelastic: error: ") and missing.out == ""

        down = await cli(*reg, "instance", "shutdown", "settle", me)
        assert down.code == 0
        await eventually(lambda: _crashed(ops))  # the instance left the job: no live instance
        refused_no_more = await cli(*reg, "job", "trigger", "settle")
        assert refused_no_more.code == 1 and "no live instance" in refused_no_more.err
    removed = await cli(*reg, "job", "remove", "settle")
    assert removed.code == 0, removed.err
    assert (await cli(*reg, "jobs", "--json")).json() == []


@pytest.mark.zookeeper
async def test_a_namespace_without_jobs_says_so(zk_url: str) -> None:
    result = await cli("--registry", zk_url, "jobs")
    namespace = zk_url.split("/")[3].split("?")[0]
    assert (result.code, result.out) == (0, "")
    assert result.err == f"aioelastic: no jobs in namespace {namespace!r}\n"
    assert (await cli("--registry", zk_url, "jobs", "--json")).json() == []


@pytest.mark.zookeeper
async def test_output_into_a_closed_pipe_exits_quietly(zk_url: str) -> None:
    scheduler = Scheduler(registry=zk_url)

    for n in range(40):

        async def job(ctx: ShardingContext) -> None: ...

        scheduler.add_job(job, name=f"job{n:02d}", description="x" * 200)
    async with scheduler:
        base = [sys.executable, "-m", "aioelastic", "--registry", zk_url]

        def closed_pipe_run(args: list[str]) -> tuple[int, str]:
            proc = subprocess.Popen(
                [*base, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=clean_env(),
                cwd=ROOT,
            )
            assert proc.stdout is not None and proc.stderr is not None
            proc.stdout.close()
            err = proc.stderr.read().decode()
            return proc.wait(timeout=30), err

        for args in (["jobs"], ["jobs", "--json"], ["dump", "job00"]):
            # In a thread: blocking the loop this long would trip the scheduler's watchdog.
            result = await anyio.to_thread.run_sync(closed_pipe_run, args)
            assert result == (EXIT_BROKEN_PIPE, ""), args
        # The shell's way: `| head -1` reads one line and leaves.
        command = " ".join([*map(shlex.quote, base), "jobs", "|", "head", "-1"])
        with anyio.fail_after(30):
            done = await anyio.run_process(
                ["sh", "-c", command], check=False, env=clean_env(), cwd=ROOT
            )
        assert done.stdout.decode().split() == JOBS_COLUMNS
        assert done.stderr.decode() == "" and done.returncode == 0


async def _status_is(ops: Operations, job: str, status: JobStatus) -> bool:
    return (await ops.job(job)).status is status


async def _crashed(ops: Operations) -> bool:
    return await _status_is(ops, "settle", JobStatus.CRASHED)


# -- run -----------------------------------------------------------------------------------


@pytest.mark.zookeeper
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_run_imports_the_scheduler_and_stops_cleanly_on_signals(
    zk_url: str, tmp_path: Path, sig: signal.Signals
) -> None:
    ran, log = tmp_path / "ran.txt", tmp_path / "run.log"
    (tmp_path / "myjobs.py").write_text(
        textwrap.dedent(
            f"""
            from aioelastic import Scheduler

            scheduler = Scheduler()  # the registry comes from --registry (via the environment)

            @scheduler.job(cron="0/1 * * * * ?", sharding_total_count=2)
            async def tick(ctx):
                with open({str(ran)!r}, "a") as f:
                    f.write(f"{{ctx.sharding_item}}\\n")
            """
        )
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aioelastic.cli",
            "--registry",
            zk_url,
            "run",
            "myjobs:scheduler",
            "--app-dir",
            str(tmp_path),
        ],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        async with Operations(zk_url) as ops:

            def ran_twice() -> bool:
                assert proc.poll() is None, log.read_text()
                return ran.exists() and len(ran.read_text().split()) >= 2

            await eventually(ran_twice, 15, 0.05, what="two runs")
            assert (await ops.job("tick")).instance_count == 1
            proc.send_signal(sig)
            await eventually(lambda: proc.poll() is not None, 20, 0.05, what="the exit")
            assert proc.returncode == 0, log.read_text()
            assert "stopping gracefully" in log.read_text()
            assert (await ops.job("tick")).status is JobStatus.CRASHED  # its node is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def test_run_with_unreachable_registry_exits_4(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "from aioelastic import Scheduler\nscheduler = Scheduler()\n"
        "@scheduler.job()\nasync def j(ctx): ...\n"
    )
    result = await cli("--registry", dead_zk(), "run", "app:scheduler", "--app-dir", str(tmp_path))
    assert result.code == 4 and "cannot connect to ZooKeeper" in result.err


# -- trace commands on PostgreSQL ----------------------------------------------------------


@pytest.mark.postgres
async def test_trace_commands(postgres_url: str, tmp_path: Path) -> None:
    name = f"cli{uuid.uuid4().hex[:6]}"
    MemoryStore.reset(name)
    scheduler = Scheduler(
        settings=Settings(
            registry_url=f"memory://{name}/ns",
            tracing_url=postgres_url,
            trace_journal_path=tmp_path / "trace.journal",
        )
    )
    done = 0

    @scheduler.job(sharding_total_count=3)
    async def payroll(ctx: ShardingContext) -> None:
        nonlocal done
        done += 1
        if ctx.sharding_item == 2:
            raise RuntimeError("item 2 failed")

    async with scheduler:
        for n in (3, 6):
            await scheduler.trigger("payroll")
            await eventually(lambda: done >= n, 5)  # noqa: B023 - awaited in this iteration
    # leaving `async with` flushed the trace: 6 item runs, 2 of them failed

    tr = ("--tracing", postgres_url)
    table = await cli(*tr, "trace", "executions", "--job", "payroll")
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert lines[0].split()[:4] == ["START", "ITEM", "RESULT", "TOOK"]  # one job: no JOB
    assert len(lines) == 1 + 6 + 1 and lines[-1] == "(1-6 of 6)"
    assert postgres_url.split("@")[0].split(":")[-1] not in table.out  # no password

    failures = (await cli(*tr, "trace", "executions", "--failure", "--json")).json()
    assert failures["total"] == 2
    assert {e["sharding_item"] for e in failures["items"]} == {2}
    assert "item 2 failed" in failures["items"][0]["failure_cause"]
    page = (
        await cli(
            *tr,
            "trace",
            "executions",
            "--success",
            "--limit",
            "2",
            "--offset",
            "3",
            "--since",
            "1h",
            "--json",
        )
    ).json()
    assert (page["total"], len(page["items"])) == (4, 1)
    later = (await cli(*tr, "trace", "executions", "--since", "2099-01-01", "--json")).json()
    assert later == {"total": 0, "items": []}

    env = clean_env(AIOELASTIC_TRACING_URL=postgres_url)
    errors = (await cli("trace", "status", "--state", "TASK_ERROR", "--json", env=env)).json()
    assert errors["total"] == 2 and errors["items"][0]["job_name"] == "payroll"
    stats = (await cli(*tr, "trace", "stats", "--json")).json()
    assert stats == [{"job_name": "payroll", "total": 6, "succeeded": 4, "failed": 2, "running": 0}]
    bad_time = await cli(*tr, "trace", "stats", "--since", "yesterday")
    assert bad_time.code == 2 and "ISO 8601" in bad_time.err

    purged = await cli(*tr, "trace", "purge", "--older-than-days", "0", "--yes")
    assert purged.code == 0 and purged.out.startswith("purged 6 execution row(s) and ")
    assert (await cli(*tr, "trace", "executions", "--json")).json() == {"total": 0, "items": []}
