"""Health probes (issue 13 part 3): ``Scheduler.health()``, the ASGI app, and ``aioelastic run
--health-port`` answering real HTTP requests; ready turns 503 while ZooKeeper is down and 200
again once it is back, live stays 200."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from aioelastic import RunState, Scheduler, Settings, ShardingContext
from aioelastic.health import asgi_app, serve_health
from aioelastic.registry import MemoryStore
from tests.harness.cli import ROOT, clean_env
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer, free_port

pytestmark = pytest.mark.anyio


def embedded() -> Scheduler:
    name = f"health{uuid.uuid4().hex[:6]}"
    MemoryStore.reset(name)
    scheduler = Scheduler(settings=Settings(registry_url=f"memory://{name}/ns"))

    @scheduler.job(sharding_total_count=2)
    async def work(ctx: ShardingContext) -> None:
        pass

    return scheduler


async def test_health_follows_the_scheduler() -> None:
    scheduler = embedded()
    before = scheduler.health()
    assert (before.live, before.ready) == (False, False)
    assert before.live_reason == "the scheduler is not running"
    async with scheduler:
        now = scheduler.health()
        assert (now.live, now.ready, now.session) == (True, True, "CONNECTED")
        assert now.ready_reason == "ok" and now.state == "started"
        scheduler.stop()
        stopping = scheduler.health()
        assert scheduler.state is RunState.STOPPING
        assert (stopping.live, stopping.ready) == (True, False)
        assert stopping.ready_reason == "scheduler stopping"
    assert not scheduler.health().live


async def test_asgi_app_answers_probes_where_it_is_mounted() -> None:
    from fastapi import FastAPI

    scheduler = embedded()
    app = FastAPI()
    app.mount("/health", asgi_app(scheduler))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        down = await http.get("/health/livez")
        assert down.status_code == 503 and down.json()["reason"] == "the scheduler is not running"
        async with scheduler:
            live = await http.get("/health/livez")
            ready = await http.get("/health/readyz")
            assert (live.status_code, ready.status_code) == (200, 200)
            assert ready.json()["status"] == "ok" and ready.json()["session"] == "CONNECTED"
            assert (await http.get("/health/nope")).status_code == 404
            assert (await http.post("/health/readyz")).status_code == 405


async def test_the_streams_responder_speaks_http_1_1() -> None:
    scheduler = embedded()
    async with scheduler, anyio.create_task_group() as tg:
        port = await tg.start(serve_health, scheduler, 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200 and ready.json()["ready"] is True
            assert ready.headers["content-type"] == "application/json"
            head = await http.head("/livez")
            assert head.status_code == 200 and head.content == b""
            assert (await http.get("/")).status_code == 404
        # garbage and a client that says nothing do not hurt the server
        async with await anyio.connect_tcp("127.0.0.1", port) as raw:
            await raw.send(b"NONSENSE\r\n\r\n")
            assert (await raw.receive()).startswith(b"HTTP/1.1 400 ")
        async with await anyio.connect_tcp("127.0.0.1", port):
            pass
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            assert (await http.get("/livez")).status_code == 200
        tg.cancel_scope.cancel()


APP = """
from aioelastic import Scheduler
scheduler = Scheduler()

@scheduler.job(cron="0/1 * * * * ?", sharding_total_count=2)
async def tick(ctx):
    pass
"""


@pytest.mark.zookeeper
@pytest.mark.slow
async def test_run_serves_probes_and_ready_follows_zookeeper(
    zk_restartable_server: ZooKeeperServer, tmp_path: Path
) -> None:
    server = zk_restartable_server
    url = server.url(f"h{uuid.uuid4().hex[:8]}", session_timeout=10, connect_timeout=5)
    (tmp_path / "probed.py").write_text(textwrap.dedent(APP))
    port = free_port()
    log = tmp_path / "run.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aioelastic.cli",
            "run",
            "probed:scheduler",
            "--app-dir",
            str(tmp_path),
            "--health-port",
            str(port),
        ],
        cwd=ROOT,
        env=clean_env(AIOELASTIC_REGISTRY_URL=url),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def probe(path: str) -> tuple[int, dict[str, Any]] | None:
                assert proc.poll() is None, log.read_text()
                try:
                    answer = await http.get(path)
                except httpx.TransportError:
                    return None
                return answer.status_code, json.loads(answer.content)

            def status(code: int) -> Any:
                return lambda r: r is not None and r[0] == code

            await eventually(lambda: probe("/readyz"), 30, 0.1, until=status(200), what="ready")
            assert (await probe("/livez")) is not None

            await anyio.to_thread.run_sync(server.stop)
            down = await eventually(lambda: probe("/readyz"), 20, 0.1, until=status(503))
            assert down is not None
            assert down[1]["reason"].startswith("registry session ")
            assert down[1]["session"] in ("SUSPENDED", "LOST")
            live = await probe("/livez")
            assert live is not None and live[0] == 200  # the loop still answers

            await anyio.to_thread.run_sync(server.start)
            back = await eventually(lambda: probe("/readyz"), 30, 0.1, until=status(200))
            assert back is not None and back[1]["session"] == "CONNECTED"

        proc.send_signal(signal.SIGTERM)
        await eventually(lambda: proc.poll() is not None, 30, 0.05, what="the exit")
        assert proc.returncode == 0, log.read_text()
        assert f"health probes on http://127.0.0.1:{port}/livez" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_kubernetes_manifest_budgets_the_grace_period() -> None:
    text = (ROOT / "examples" / "kubernetes" / "deployment.yaml").read_text()
    lines = [line.split("#")[0].strip() for line in text.splitlines()]
    termination = next(int(x.split(":")[1]) for x in lines if x.startswith("terminationGrace"))
    i = lines.index("- name: AIOELASTIC_SHUTDOWN_GRACE_PERIOD")
    grace = float(lines[i + 1].split(":")[1].strip().strip('"'))
    assert 'exec: {command: ["sleep", "5"]}' in text
    assert termination >= 5 + grace + 10
    for path in ("/livez", "/readyz"):
        assert f"httpGet: {{path: {path}, port: health}}" in text
    assert "fieldPath: metadata.name" in text and "- name: AIOELASTIC_INSTANCE_ID" in text
    for name in ("REGISTRY_URL", "TRACING_URL", "SHUTDOWN_GRACE_PERIOD", "INSTANCE_ID"):
        assert name.lower() in Settings.model_fields
    assert "- --health-bind=0.0.0.0" in lines


class _Watchdog:
    def __init__(self, age: float) -> None:
        self.limit: float | None = 1.7
        self.age = age

    def heartbeat_age(self) -> float:
        return self.age


class _Bus:
    max_queue = 10

    def __init__(self, queued: int) -> None:
        self.queued = queued

    def stats(self) -> list[Any]:
        from types import SimpleNamespace

        return [SimpleNamespace(sink="postgresql", queued=self.queued)]


def fake(
    *,
    session: str = "CONNECTED",
    queued: int = 0,
    age: float = 0.1,
    registered: tuple[str, ...] = ("a", "b"),
) -> Any:
    from types import SimpleNamespace

    from aioelastic.registry._protocol import SessionState

    return SimpleNamespace(
        state=RunState.STARTED,
        registry=SimpleNamespace(session_state=SessionState(session)),
        jobs={"a": None, "b": None},
        registered_jobs=list(registered),
        trace_bus=_Bus(queued),
        loop_watchdog=_Watchdog(age),
    )


@pytest.mark.parametrize(
    ("scheduler", "live", "ready", "reason"),
    [
        (fake(), True, True, "ok"),
        (fake(session="SUSPENDED"), True, False, "registry session SUSPENDED"),
        (fake(session="LOST"), True, False, "registry session LOST"),
        (fake(registered=("a",)), True, False, "job(s) not registered: b"),
        (fake(queued=10), True, False, "trace sink postgresql: 10 event(s) queued (bound 10)"),
        (fake(age=2.5), False, False, "event loop heartbeat 2.5s old (limit 1.7s)"),
    ],
    ids=["ok", "suspended", "lost", "unregistered", "trace-queue-full", "loop-stalled"],
)
def test_each_check_has_its_reason(scheduler: Any, live: bool, ready: bool, reason: str) -> None:
    from aioelastic._health import scheduler_health

    health = scheduler_health(scheduler)
    assert (health.live, health.ready) == (live, ready)
    assert (health.ready_reason if live else health.live_reason) == reason
