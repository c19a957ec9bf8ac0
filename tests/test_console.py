"""The operator console over HTTP (no browser): roles, CSRF, escaping, actions and their audit,
config compare-and-set, history, outages. An embedded scheduler (memory registry) with a SQLite
trace; the audit table also on PostgreSQL. Browser tests: ``test_console_browser.py``."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from aioelastic import Operations, Scheduler, Settings, ShardingContext
from aioelastic._errors import ConfigError
from aioelastic.cli._console import parse_bind
from aioelastic.console import Console, ConsoleSettings
from aioelastic.console._security import Signer, authenticate
from aioelastic.tracing import TraceSearch, open_trace_store
from aioelastic.tracing._audit import AuditEntry, AuditLog, MemoryAuditLog, open_audit_log
from tests.harness.helpers import eventually
from tests.harness.ticks import run_fires, tick_job

pytestmark = pytest.mark.anyio

XSS = "<script>window.__xss = 1</script>"
OPERATOR = ("op", "op-secret")
VIEWER = ("view", "view-secret")


def settings(**extra: Any) -> ConsoleSettings:
    return ConsoleSettings(
        operators={OPERATOR[0]: OPERATOR[1]},
        viewers={VIEWER[0]: VIEWER[1]},
        operator_tokens={"bot": "bot-token-0123456789"},
        registry_timeout=2,
        trace_timeout=2,
        **extra,
    )


@dataclass
class Env:
    scheduler: Scheduler
    ops: Operations
    console: Console
    search: TraceSearch
    audit: AuditLog

    def client(self, auth: tuple[str, str] | None = OPERATOR) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.console.app)
        return httpx.AsyncClient(transport=transport, base_url="http://console", auth=auth)


async def failing(ctx: ShardingContext) -> None:
    if ctx.sharding_item == 1:
        raise ValueError(f"bad item {XSS}")


async def fine(ctx: ShardingContext) -> None:
    return None


@asynccontextmanager
async def running(
    tmp_path: Path, console_settings: ConsoleSettings | None = None
) -> AsyncIterator[Env]:
    db = tmp_path / "trace.db"
    scheduler = Scheduler(
        settings=Settings(
            registry_url=f"memory://{tmp_path.name}/ns",
            tracing_url=f"sqlite:///{db}",
            trace_journal_path=tmp_path / "journal",
        )
    )
    scheduler.add_job(failing, name="report", sharding_total_count=2, description=XSS)
    scheduler.add_job(fine, name="settle", cron="0 0 3 * * ?", time_zone="Europe/Paris")
    console = Console(console_settings or settings())
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(scheduler)
        store = await stack.enter_async_context(open_trace_store(f"sqlite:///{db}"))
        audit = await stack.enter_async_context(open_audit_log(f"sqlite:///{db}"))
        ops = Operations.of(scheduler)
        await stack.enter_async_context(console.serve(ops, search=store.search, audit=audit))
        yield Env(scheduler, ops, console, store.search, audit)


def csrf_of(client: httpx.AsyncClient) -> str:
    cookie = client.cookies.get("aioelastic_csrf")
    assert cookie is not None
    return cookie.rsplit(".", 1)[0]


async def post_action(client: httpx.AsyncClient, job: str, **form: str) -> httpx.Response:
    await client.get(f"/jobs/{job}")  # the page sets the CSRF cookie
    return await client.post(f"/jobs/{job}/action", data={"csrf": csrf_of(client), **form})


# -- settings and roles --


def test_settings_have_no_default_password_and_hide_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plain = ConsoleSettings()
    assert plain.open_access and plain.read_only
    assert authenticate(plain, None) is not None and not authenticate(plain, None).can_act  # type: ignore[union-attr]
    monkeypatch.setenv("AIOELASTIC_CONSOLE_OPERATORS", '{"alice": "wonderland"}')
    monkeypatch.setenv("AIOELASTIC_CONSOLE_BIND", "127.0.0.1:9999")
    env = ConsoleSettings()
    assert env.bind == "127.0.0.1:9999" and not env.read_only
    assert "wonderland" not in repr(env) and "wonderland" not in str(env.model_dump())
    with pytest.raises(ConfigError):
        ConsoleSettings(operators={"bob": ""})
    assert parse_bind("[::1]:8080") == ("::1", 8080)
    with pytest.raises(ConfigError):
        parse_bind("8080")
    with pytest.raises(ConfigError):
        parse_bind("127.0.0.1:\u00b2")  # (str.isdigit() is True, int() refuses it)


def test_signer_refuses_altered_values() -> None:
    signer = Signer(SecretStr("k"))
    signed = signer.sign("token")
    assert signer.unsign(signed) == "token"
    assert signer.unsign(signed[:-1] + ("0" if signed[-1] != "0" else "1")) is None
    assert signer.unsign("token") is None
    assert Signer(SecretStr("other")).unsign(signed) is None


async def test_read_only_console_without_credentials(tmp_path: Path) -> None:
    async with running(tmp_path, ConsoleSettings()) as env, env.client(auth=None) as client:
        page = await client.get("/jobs/report")
        assert page.status_code == 200
        assert "Read-only console" in page.text and 'data-action="trigger"' not in page.text
        refused = await post_action(client, "report", action="trigger")
        assert refused.status_code == 403
        entries = await env.audit.entries()
        assert [(e.who, e.action, e.result) for e in entries.items] == [
            ("anonymous", "trigger", "refused")
        ]


async def test_credentials_required_and_viewer_cannot_act(tmp_path: Path) -> None:
    async with running(tmp_path) as env:
        async with env.client(auth=None) as anonymous:
            denied = await anonymous.get("/")
            assert denied.status_code == 401 and "Basic" in denied.headers["www-authenticate"]
        async with env.client(auth=("op", "wrong")) as wrong:
            assert (await wrong.get("/")).status_code == 401
        async with env.client(auth=VIEWER) as viewer:
            page = await viewer.get("/jobs/report")
            assert page.status_code == 200 and 'data-action="disable-item"' not in page.text
            refused = await post_action(viewer, "report", action="disable-item", item="0")
            assert refused.status_code == 403
        assert not any(i.status.value == "DISABLED" for i in await env.ops.sharding("report"))
        bearer = {"Authorization": "Bearer bot-token-0123456789"}
        async with env.client(auth=None) as bot:
            page = await bot.get("/jobs/report", headers=bearer)
            assert page.status_code == 200 and 'data-action="trigger"' in page.text


async def test_post_without_or_with_a_wrong_csrf_token_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as env, env.client() as client:
        await client.get("/jobs/report")
        missing = await client.post(
            "/jobs/report/action", data={"action": "disable-item", "item": "0"}
        )
        wrong = await client.post(
            "/jobs/report/action", data={"action": "disable-item", "item": "0", "csrf": "x" * 32}
        )
        client.cookies.clear()  # a token without its signed cookie (another site's form)
        stolen = await client.post(
            "/jobs/report/action", data={"action": "disable-item", "item": "0", "csrf": "abc"}
        )
        assert [r.status_code for r in (missing, wrong, stolen)] == [403, 403, 403]
        assert "CSRF" in missing.text
        assert not any(i.status.value == "DISABLED" for i in await env.ops.sharding("report"))
        assert (await env.audit.entries()).total == 0


# -- pages --


async def test_overview_lists_and_filters_jobs_with_escaped_text(tmp_path: Path) -> None:
    async with running(tmp_path) as env, env.client() as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert XSS not in page.text and "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in page.text
        assert 'data-job="report"' in page.text and 'data-job="settle"' in page.text
        assert "Europe/Paris" in page.text  # cron zone and next fire in the job's zone
        assert re.search(r"\d{4}-\d\d-\d\d 03:00:00 Europe/Paris", page.text)
        by_name = await client.get("/", params={"name": "SETT"})
        assert 'data-job="settle"' in by_name.text and 'data-job="report"' not in by_name.text
        fragment = await client.get("/", params={"status": "OK", "fragment": "1"})
        assert "<html" not in fragment.text and 'data-job="report"' in fragment.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp  # no inline JS
        assert page.headers["x-frame-options"] == "DENY"
        none = await client.get("/", params={"status": "CRASHED"})
        assert "No job matches the filter (2 in all)" in none.text


async def test_job_page_shows_fires_with_cause_escaped_and_history_charts(tmp_path: Path) -> None:
    async with running(tmp_path) as env, env.client() as client:
        await env.ops.trigger("report")
        await eventually(
            lambda: env.search.fires(job_name="report"),
            until=lambda page: page.items and page.items[0].outcome == "failed",
            what="the failed fire in the trace",
            timeout=10,
        )
        page = await client.get("/jobs/report")
        assert page.status_code == 200
        assert XSS not in page.text
        assert '<details class="cause"><summary>' in page.text and "&lt;script&gt;" in page.text
        assert 'data-item="0"' in page.text and 'data-item="1"' in page.text
        history = await client.get("/history", params={"job": "report", "outcome": "failure"})
        assert history.status_code == 200 and XSS not in history.text
        assert 'aria-label="duration per run"' in history.text
        assert 'aria-label="successes and failures per hour"' in history.text
        assert "1 row(s)." in history.text
        status = await client.get("/history", params={"kind": "status", "job": "report"})
        assert "TASK_ERROR" in status.text
        overview = await client.get("/")
        assert "o-failed" in overview.text and "50%" in overview.text  # 1 of 2 items succeeded


async def test_actions_change_the_registry_and_are_audited(tmp_path: Path) -> None:
    async with running(tmp_path) as env, env.client() as client:
        done = await post_action(client, "report", action="disable-item", item="1")
        assert done.status_code == 303 and done.headers["location"] == "/jobs/report"
        assert (await env.ops.sharding("report"))[1].status.value == "DISABLED"
        after = await client.get("/jobs/report")
        assert '<div class="flash ok" role="status">disable-item: item 1 disabled' in after.text
        assert 'class="flash' not in (await client.get("/jobs/report")).text  # shown once
        await post_action(client, "report", action="enable-item", item="1")
        assert (await env.ops.sharding("report"))[1].status.value != "DISABLED"
        # destructive: a confirmation page first, nothing changed yet
        ask = await post_action(client, "report", action="disable")
        assert ask.status_code == 200 and "Confirm: disable" in ask.text
        assert {s.status.value for s in await env.ops.servers("report")} == {"ENABLED"}
        await post_action(client, "report", action="disable", confirmed="yes")
        assert {s.status.value for s in await env.ops.servers("report")} == {"DISABLED"}
        await post_action(client, "report", action="enable")
        missing = await post_action(client, "report", action="disable-item", item="7")
        assert missing.status_code == 303
        entries = (await env.audit.entries()).items
        assert [(e.action, e.target, e.result) for e in reversed(entries)] == [
            ("disable-item", "1", "ok"),
            ("enable-item", "1", "ok"),
            ("disable", "", "ok"),
            ("enable", "", "ok"),
            ("disable-item", "7", "refused"),
        ]
        assert all(e.who == "op" and e.role == "operator" for e in entries)
        audit_page = await client.get("/audit")
        assert "disable-item" in audit_page.text and "5 action(s)." in audit_page.text


async def test_remove_needs_confirmation_and_force_while_instances_run(tmp_path: Path) -> None:
    async with running(tmp_path) as env, env.client() as client:
        refused = await post_action(client, "settle", action="remove", confirmed="yes")
        assert refused.status_code == 303
        assert "still runs on 1 instance" in (await client.get("/jobs/settle")).text
        assert "settle" in [j.name for j in await env.ops.jobs()]


async def test_config_edit_validates_and_compares_the_node_version(tmp_path: Path) -> None:
    async with running(tmp_path) as env, env.client() as client:
        await client.get("/jobs/settle")
        config, version = await env.ops.job_config_version("settle")
        edited = {**config, "description": "nightly <b>settle</b>"}
        import json

        def form(body: dict[str, Any], at: int) -> dict[str, str]:
            return {"csrf": csrf_of(client), "version": str(at), "config": json.dumps(body)}

        bad = await client.post(
            "/jobs/settle/config", data=form({**config, "sharding_total_count": 0}, version)
        )
        assert bad.status_code == 422 and "Invalid config" in bad.text
        assert "sharding_total_count" in bad.text
        saved = await client.post("/jobs/settle/config", data=form(edited, version))
        assert saved.status_code == 303
        stored = await env.ops.job_config("settle")
        assert stored["description"] == "nightly <b>settle</b>"
        # a second editor still holding the old version: a clear conflict, nothing overwritten
        stale = await client.post(
            "/jobs/settle/config", data=form({**config, "description": "stale"}, version)
        )
        assert stale.status_code == 409 and "Conflict" in stale.text and "NOT saved" in stale.text
        assert (await env.ops.job_config("settle"))["description"] == "nightly <b>settle</b>"
        results = [(e.action, e.result) for e in reversed((await env.audit.entries()).items)]
        assert results == [("config", "refused"), ("config", "ok"), ("config", "refused")]


class BrokenSearch:
    """A trace database that is down: every query fails as a driver would."""

    def __getattr__(self, name: str) -> Any:
        async def fail(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5)")

        return fail


async def test_trace_outage_is_a_banner_not_an_error_page(tmp_path: Path) -> None:
    scheduler = Scheduler(settings=Settings(registry_url=f"memory://{tmp_path.name}/ns"))
    scheduler.add_job(fine, name="settle")
    console = Console(settings())
    async with scheduler, console.serve(Operations.of(scheduler), search=BrokenSearch()):
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c", auth=OPERATOR) as c:
            for path in ("/", "/jobs/settle", "/history"):
                page = await c.get(path)
                assert page.status_code == 200, path
                assert "Trace database unreachable" in page.text, path
            audit = await c.get("/audit")
            assert "kept in this process" in audit.text  # no durable audit log: said so


async def test_not_serving_is_a_503_page(tmp_path: Path) -> None:
    console = Console(ConsoleSettings())
    transport = httpx.ASGITransport(app=console.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
        page = await client.get("/")
        assert page.status_code == 503 and "not serving" in page.text


async def test_memory_audit_log_pages() -> None:
    log = MemoryAuditLog()
    for i in range(3):
        await log.record(AuditEntry("op", "operator", "trigger", f"job{i % 2}", "", "ok"))
    page = await log.entries(job_name="job0", limit=1)
    assert page.total == 2 and len(page.items) == 1 and page.has_more


@pytest.mark.postgres
async def test_audit_log_in_postgres(postgres_url: str) -> None:
    async with open_audit_log(postgres_url) as log:
        await log.record(AuditEntry("op", "operator", "trigger", "a", "", "ok", "2 instances"))
        await log.record(
            AuditEntry("op'; DROP TABLE x; --", "operator", "remove", "b", "", "failed")
        )
        page = await log.entries()
        assert [e.job_name for e in page.items] == ["b", "a"] and page.total == 2
        assert page.items[0].who == "op'; DROP TABLE x; --"
        only = await log.entries(job_name="a")
        assert only.total == 1 and only.items[0].detail == "2 instances"
        assert only.items[0].time.tzinfo is not None


def _load_example() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "console_app.py"
    spec = importlib.util.spec_from_file_location("console_app_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_example_fastapi_service_mounts_the_console(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("AIOELASTIC_") and name != "AIOELASTIC_LOOP_STALL_ACTION":
            monkeypatch.delenv(name)
    monkeypatch.setenv("AIOELASTIC_REGISTRY_URL", f"memory://{tmp_path.name}/demo")
    monkeypatch.setenv("AIOELASTIC_TRACING_URL", f"sqlite:///{tmp_path / 'trace.db'}")
    monkeypatch.setenv("AIOELASTIC_TRACE_JOURNAL_PATH", str(tmp_path / "journal"))
    example = _load_example()
    app = example.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            home = await client.get("/", follow_redirects=True)
            assert home.status_code == 200 and 'data-job="settle"' in home.text
            assert 'href="/console/jobs/report"' in home.text  # links under the mount
            assert 'src="/console/static/console.js"' in home.text
            job = await client.get("/console/jobs/report")
            assert "Read-only console" in job.text  # no credential configured
            assert (await client.get("/console/static/console.js")).status_code == 200


def test_cli_console_command_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from aioelastic.cli import main

    assert main(["console", "--registry", "memory://x/ns"]) == 2
    assert "zookeeper://" in capsys.readouterr().err
    assert main(["console", "--registry", "zookeeper://127.0.0.1:1/ns", "--bind", "nowhere"]) == 2
    assert "HOST:PORT" in capsys.readouterr().err
    unreachable = "zookeeper://127.0.0.1:1/ns?connect_timeout=0.5"
    assert main(["console", "--registry", unreachable, "--bind", "127.0.0.1:0"]) == 4
    assert "cannot reach the registry" in capsys.readouterr().err


def test_overview_benchmark_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "result.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "benchmarks" / "console_overview.py"),
            "--jobs",
            "5",
            "--repeat",
            "2",
            "--registry",
            "memory",
            "--out",
            str(out),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    assert json.loads(out.read_text())["memory"]["jobs_shown"] == 5


@pytest.mark.zookeeper
async def test_cli_console_serves_and_stops_on_sigint_with_a_stream_open(
    zk_url: str, tmp_path: Path
) -> None:
    import signal
    import subprocess
    import sys

    from tests.harness.zookeeper import free_port

    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELASTIC_CONSOLE_")}
    env["PYTHONPATH"] = str(root)
    log = tmp_path / "console.log"
    cmd = [sys.executable, "-m", "aioelastic", "console", "--registry", zk_url]
    proc = subprocess.Popen(
        [*cmd, "--bind", f"127.0.0.1:{port}"], cwd=root, env=env, stderr=log.open("wb")
    )
    try:
        base = f"http://127.0.0.1:{port}"

        async def up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    return (await c.get(base + "/")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(
            up, timeout=30, step=0.1, what="the console answering", detail=log.read_text
        )
        async with httpx.AsyncClient(timeout=30) as client:
            async with client.stream("GET", base + "/events") as stream:
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("retry:")
                proc.send_signal(signal.SIGINT)
                await eventually(lambda: proc.poll() is not None, timeout=20, what="exit")
        assert proc.returncode == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


async def test_update_job_config_at_compares_the_version(tmp_path: Path) -> None:
    from aioelastic._errors import BadVersionError

    async with running(tmp_path) as env:
        config, version = await env.ops.job_config_version("settle")
        assert config["cron"] == "0 0 3 * * ?"
        new = await env.ops.update_job_config_at("settle", version, description="v1")
        assert new["description"] == "v1"
        with pytest.raises(BadVersionError):
            await env.ops.update_job_config_at("settle", version, description="lost")
        with pytest.raises(ConfigError):
            await env.ops.update_job_config_at("settle", version + 1, name="other")
        assert (await env.ops.job_config("settle"))["description"] == "v1"


async def test_history_pages_through_executions(tmp_path: Path) -> None:
    import sqlite3

    async with running(tmp_path) as env, env.client() as client:
        now = datetime.now(UTC)
        rows = [
            (
                f"r{i:03d}",
                "settle",
                f"settle@-@0@-@READY@-@i@-@{i}",
                "host-a",
                "10.0.0.1",
                0,
                "MISFIRE" if i % 2 else "NORMAL_TRIGGER",
                None,
                1,
                (now - timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                (now - timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S.%f"),
            )
            for i in range(60)
        ]
        conn = sqlite3.connect(tmp_path / "trace.db")
        conn.executemany(f"INSERT INTO JOB_EXECUTION_LOG VALUES ({','.join('?' * 11)})", rows)
        conn.commit()
        conn.close()
        first = await client.get("/history", params={"job": "settle"})
        assert "60 row(s)." in first.text and first.text.count("<td>host-a</td>") == 50
        assert "offset=50" in first.text and "newer</a>" not in first.text
        second = await client.get("/history", params={"job": "settle", "offset": "50"})
        assert second.text.count("<td>host-a</td>") == 10 and "newer</a>" in second.text
        misfires = await client.get("/history", params={"job": "settle", "source": "MISFIRE"})
        assert "30 row(s)." in misfires.text
        window = await client.get(
            "/history", params={"job": "settle", "since": "30m", "instance": "host-a"}
        )
        assert "30 row(s)." in window.text or "31 row(s)." in window.text
        bad = await client.get("/history", params={"since": "yesterday-ish"})
        assert bad.status_code == 200 and "ISO 8601" in bad.text
        far = await client.get("/history", params={"since": "99999999999d"})  # OverflowError
        assert far.status_code == 200 and "after the year 1" in far.text
        for odd in ("\u00b2", "-\u0661", "x", "-5"):  # "\u00b2": str.isdigit(), not int()
            page = await client.get("/history", params={"job": "settle", "offset": odd})
            assert page.status_code == 400, (odd, page.status_code)


def test_charts_are_svg_for_any_data() -> None:
    from aioelastic.console._charts import duration_chart, hourly_buckets, hourly_chart, sparkline
    from aioelastic.tracing import FireRecord

    now = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)

    def fire(minutes: int, seconds: float, failed: int = 0) -> FireRecord:
        start = now - timedelta(minutes=minutes)
        return FireRecord(
            "j",
            f"t{minutes}",
            "NORMAL_TRIGGER",
            2,
            2 - failed,
            failed,
            0,
            start,
            start + timedelta(seconds=seconds),
            "<b>x</b>" if failed else None,
        )

    assert "No finished run" in duration_chart([])
    for fires in ([fire(1, 0)], [fire(1, 0.5), fire(90, 2.0, failed=1)]):
        svg = duration_chart(fires)
        assert svg.startswith("<svg") and svg.count("<circle") == len(fires)
    buckets = hourly_buckets(
        [fire(1, 1), fire(90, 1, failed=1), fire(60 * 30, 1)], now - timedelta(hours=3), now
    )
    assert [(b.succeeded, b.failed) for b in buckets] == [(0, 0), (0, 0), (1, 1), (2, 0)]
    assert hourly_chart(buckets).count('class="bad"') == 4
    assert sparkline([], []) == "" and "<circle" in sparkline([0, 3], [0, 1])


@pytest.mark.zookeeper
async def test_create_app_opens_registry_trace_and_audit_in_its_lifespan(
    zk_url: str, tmp_path: Path
) -> None:
    from aioelastic.console import create_app

    db = tmp_path / "trace.db"
    async with open_trace_store(f"sqlite:///{db}"):
        pass  # the file and tables, as instances would have made them
    scheduler = Scheduler(settings=Settings(registry_url=zk_url, instance_id="i1"))
    scheduler.add_job(fine, name="nightly", cron="0 0 3 * * ?", description=XSS)
    app = create_app(zk_url, f"sqlite:///{db}", settings=settings())
    async with scheduler, app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c", auth=OPERATOR) as c:
            page = await c.get("/")
            assert 'data-job="nightly"' in page.text and XSS not in page.text
            done = await post_action(c, "nightly", action="trigger")
            assert done.status_code == 303
        async with open_audit_log(f"sqlite:///{db}") as log:  # durable: another reader sees it
            assert [e.action for e in (await log.entries()).items] == ["trigger"]
    with pytest.raises(ConfigError, match="no SQLite trace database"):
        create_app(zk_url, f"sqlite:///{tmp_path / 'typo.db'}")


# -- missed fires --


async def test_missed_fires_page_lists_due_times_no_instance_started(tmp_path: Path) -> None:
    """The only instance stops across fire times: the page lists those due times (from the
    stored cron and the trace), none from while it ran; without a trace it says why."""
    db, name = tmp_path / "trace.db", f"missed{tmp_path.name[-12:]}"
    scheduler = Scheduler(
        settings=Settings(
            registry_url=f"memory://{name}/ns",
            tracing_url=f"sqlite:///{db}",
            trace_journal_path=tmp_path / "journal",
        )
    )
    started, stopped = await run_fires(scheduler, tick_job(scheduler), 3)
    console = Console(settings())
    async with AsyncExitStack() as stack:
        ops = await stack.enter_async_context(Operations(f"memory://{name}/ns"))
        store = await stack.enter_async_context(open_trace_store(f"sqlite:///{db}"))
        await stack.enter_async_context(console.serve(ops, search=store.search))
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://console", auth=VIEWER
        ) as client:
            since = started.isoformat()

            async def listed() -> list[datetime]:
                page = await client.get("/missed", params={"since": since, "tolerance": "0.5"})
                assert page.status_code == 200
                return [
                    datetime.strptime(t, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
                    for t in re.findall(r"<tr><td>([0-9: -]+ UTC)</td><td><a", page.text)
                ]

            due = await eventually(listed, 20, until=lambda d: len(d) >= 2, what="2 missed")
            assert all(d >= stopped.replace(microsecond=0) for d in due), (due, stopped)
            page = await client.get("/missed", params={"job": "tick", "since": since})
            assert "No missed fire in this window." in page.text  # 30 s tolerance: too soon
            for odd in ("1e400", "-5", "nan", "x"):  # 1e400: OverflowError, a server error
                page = await client.get("/missed", params={"since": since, "tolerance": odd})
                assert page.status_code == 200 and "30 s used" in page.text, odd
    async with AsyncExitStack() as stack:
        ops = await stack.enter_async_context(Operations(f"memory://{name}/ns"))
        await stack.enter_async_context(console.serve(ops))
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://console", auth=VIEWER
        ) as client:
            page = await client.get("/missed")
            assert page.status_code == 200 and "No trace database configured" in page.text


async def test_job_page_shows_the_dependency_chain(tmp_path: Path) -> None:
    scheduler = Scheduler(registry=f"memory://chain{tmp_path.name[-12:]}/ns")
    scheduler.add_job(fine, name="extract", sharding_total_count=2)
    scheduler.add_job(fine, name="load", after="extract")
    console = Console(settings())
    async with scheduler, console.serve(Operations.of(scheduler)):
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://console", auth=VIEWER
        ) as client:
            up = await client.get("/jobs/extract")
            down = await client.get("/jobs/load")
    assert re.search(r'runs before <a href="[^"]*/jobs/load">load</a>', up.text), up.text
    assert re.search(r'runs after <a href="[^"]*/jobs/extract">extract</a>', down.text)
