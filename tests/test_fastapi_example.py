"""examples/fastapi_app.py served for real: uvicorn in a subprocess on a loopback port, the
scheduler in its lifespan on the harness's ZooKeeper, requests served, jobs firing, SIGTERM.

Run as ``python examples/fastapi_app.py`` (signals handled by the app: exit status 0) and under
uvicorn's CLI (which re-raises SIGTERM after its graceful shutdown: killed by SIGTERM)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import httpx
import pytest

from aioelastic import JobStatus, Operations
from tests.harness.helpers import eventually
from tests.harness.zookeeper import free_port

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper]

ROOT = Path(__file__).resolve().parent.parent


LAUNCHERS = {
    "script": (["examples/fastapi_app.py"], 0),
    "uvicorn-cli": (["-m", "uvicorn", "fastapi_app:app", "--app-dir", "examples"], -signal.SIGTERM),
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
async def test_fastapi_app_runs_jobs_and_shuts_down_cleanly(
    zk_url: str, tmp_path: Path, launcher: str
) -> None:
    argv, exit_code = LAUNCHERS[launcher]
    port = free_port()
    log = tmp_path / "uvicorn.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOELASTIC_")}
    env |= {"AIOELASTIC_REGISTRY_URL": zk_url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, *argv, "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:

            async def listed() -> httpx.Response | None:
                assert proc.poll() is None, log.read_text()
                try:
                    jobs = await http.get("/jobs")
                except httpx.TransportError:
                    return None
                return jobs if jobs.status_code == 200 else None

            jobs = await eventually(listed, 20, 0.1, what="the app serving /jobs")
            assert jobs is not None
            by_name = {j["name"]: j for j in jobs.json()}
            assert set(by_name) == {"heartbeat", "report"}
            assert by_name["heartbeat"]["cron"] == "0/1 * * * * ?"

            async def runs(job: str) -> int:
                return int((await http.get("/runs")).json().get(job, 0))

            # the cron job fires every second
            await eventually(partial(runs, "heartbeat"), 10, 0.1, until=lambda n: n >= 4)

            triggered = await http.post("/jobs/report/trigger")
            assert triggered.status_code == 200 and len(triggered.json()["instances"]) == 1
            await eventually(partial(runs, "report"), 5, 0.05, until=lambda n: n >= 1)
            assert (await http.post("/jobs/nope/trigger")).status_code == 404

            metrics = (await http.get("/metrics")).text
            assert 'aioelastic_job_fires_total{job="heartbeat"}' in metrics
            assert 'aioelastic_registry_session_state{state="CONNECTED"} 1.0' in metrics

        async with Operations(zk_url) as ops:  # the app is an instance of the cluster
            assert (await ops.job("heartbeat")).instance_count == 1
            proc.send_signal(signal.SIGTERM)
            await eventually(lambda: proc.poll() is not None, 20, 0.05, what="the exit")
            text = log.read_text()
            assert proc.returncode == exit_code, text
            assert "scheduler stopped: lifespan shutdown complete" in text
            assert "Application shutdown complete" in text
            assert (await ops.job("heartbeat")).status is JobStatus.CRASHED  # node deleted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
