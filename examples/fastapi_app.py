"""A FastAPI app whose lifespan runs an aioelastic scheduler.

    pip install 'aioelastic[fastapi,metrics]'
    uvicorn fastapi_app:app --app-dir examples --host 127.0.0.1 --port 8000
    # distributed: start several, each with
    AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo uvicorn fastapi_app:app \
        --app-dir examples --host 127.0.0.1 --port 8001

Endpoints: ``GET /jobs`` (every job's status, through ``Operations``), ``POST
/jobs/{name}/trigger`` (run a job once now on every live instance), ``GET /runs`` (item runs seen
by this process), ``GET /metrics`` (Prometheus, when ``prometheus-client`` is installed).
Ctrl-C / SIGTERM: uvicorn runs the lifespan's shutdown, which stops the scheduler gracefully.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from fastapi import FastAPI, HTTPException, Response

from aioelastic import JobBrief, JobNotFoundError, Operations, Scheduler, ShardingContext

log = logging.getLogger("fastapi_app")

try:
    from aioelastic.metrics import PrometheusMetrics

    metrics: PrometheusMetrics | None = PrometheusMetrics()
except ImportError:  # the metrics extra is not installed: no /metrics
    metrics = None

# The registry comes from AIOELASTIC_REGISTRY_URL (default: embedded memory://).
scheduler = Scheduler(observers=[metrics] if metrics else [], sinks=[metrics] if metrics else [])
runs: Counter[str] = Counter()


@scheduler.job(cron="0/1 * * * * ?", sharding_total_count=2, description="every second")
async def heartbeat(ctx: ShardingContext) -> None:
    runs[ctx.job_name] += 1
    await anyio.sleep(0.05)


@scheduler.job(sharding_total_count=1, description="only when triggered")
async def report(ctx: ShardingContext) -> None:
    runs[ctx.job_name] += 1


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with scheduler:  # starts the jobs; leaving it stops them gracefully
        if metrics is not None:
            metrics.bind(scheduler)
        log.warning("scheduler started: instance %s", scheduler.instance_id)
        yield
    log.warning("scheduler stopped: lifespan shutdown complete")


app = FastAPI(lifespan=lifespan)


@app.get("/jobs")
async def jobs() -> list[JobBrief]:
    return await Operations.of(scheduler).jobs()


@app.post("/jobs/{name}/trigger")
async def trigger(name: str) -> dict[str, Any]:
    try:
        instances = await Operations.of(scheduler).trigger(name)
    except JobNotFoundError:
        raise HTTPException(status_code=404, detail=f"no job named {name!r}") from None
    return {"job": name, "instances": instances}


@app.get("/runs")
async def item_runs() -> dict[str, int]:
    return dict(runs)


@app.get("/metrics")
async def prometheus() -> Response:
    if metrics is None:
        raise HTTPException(status_code=404, detail="pip install 'aioelastic[metrics]'")
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # main() handles SIGINT/SIGTERM (uvicorn's own handlers re-raise them at exit)


async def serve(host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM, then let uvicorn run the lifespan shutdown."""
    server = _Server(uvicorn.Config(app, host=host, port=port))
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.warning("%s: shutting down", signal.Signals(signum).name)
                    server.should_exit = True
                    return

        tg.start_soon(stop_on_signal)
        await server.serve()
        tg.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="aioelastic in a FastAPI app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    anyio.run(serve, args.host, args.port)
