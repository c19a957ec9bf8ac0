"""Console overview load time for a namespace of many jobs (issue 14: 500 jobs "well under a
second"), on the embedded registry and on a real ZooKeeper started here (loopback, temp dir),
with a SQLite trace holding a day of fires.

    python benchmarks/console_overview.py                  # 500 jobs, both registries
    python benchmarks/console_overview.py --jobs 100 --registry memory --repeat 5

Each job: a config (cron, 4 items), one server, two live instances (ephemeral nodes), its items'
owners. Measured: the console's start (its watch-maintained copy of the namespace loaded), then
``GET /`` (the full overview page) ``--repeat`` times through the ASGI app (no network): the
median and the slowest. The overview reads the registry from the local copy and the trace with
two queries, so its time does not grow with registry round trips.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioelastic import JobConfig, Operations
from aioelastic._layout import ENABLED, JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic.console import Console, ConsoleSettings
from aioelastic.registry import MemoryRegistry, Registry, ZooKeeperRegistry
from aioelastic.tracing import open_trace_store
from tests.harness.zookeeper import ZooKeeperServer

RESULTS = Path(__file__).parent / "results"
ITEMS = 4


async def populate(registry: Registry, namespace: str, jobs: int) -> None:
    for n in range(jobs):
        name = f"job{n:04d}"
        p = JobPaths(namespace, name)
        config = JobConfig(name=name, cron="0 0/5 * * * ?", sharding_total_count=ITEMS)
        await registry.create(p.config, config.to_registry(), make_parents=True)
        await registry.create(p.server("10.0.0.1"), ENABLED, make_parents=True)
        for inst in ("a", "b"):
            info = json.dumps({"host": "10.0.0.1", "ip": "10.0.0.1", "pid": 1, "hostname": inst})
            await registry.create(
                p.instance(f"inst-{inst}"), info.encode(), ephemeral=True, make_parents=True
            )
        for item in range(ITEMS):
            owner = b"inst-a" if item < ITEMS // 2 else b"inst-b"
            await registry.create(p.item_instance(item), owner, make_parents=True)


def fill_trace(path: Path, jobs: int, fires_per_job: int) -> int:
    """A day of fires: ``fires_per_job`` per job, every item, one in ten failed."""
    conn = sqlite3.connect(path)
    now = datetime.now(UTC)
    rows = []
    for n in range(jobs):
        for f in range(fires_per_job):
            start = now - timedelta(minutes=5 * f + n % 5)
            task = f"job{n:04d}@-@0,1,2,3@-@READY@-@inst-a@-@{uuid.uuid4().hex}"
            for item in range(ITEMS):
                ok = (f + item) % 10 != 0
                t0 = start.strftime("%Y-%m-%d %H:%M:%S.%f")
                t1 = (start + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S.%f")
                rows.append(
                    (
                        uuid.uuid4().hex,
                        f"job{n:04d}",
                        task,
                        "h",
                        "10.0.0.1",
                        item,
                        "NORMAL_TRIGGER",
                        None if ok else "boom",
                        int(ok),
                        t0,
                        t1,
                    )
                )
    conn.executemany(f"INSERT INTO JOB_EXECUTION_LOG VALUES ({','.join('?' * 11)})", rows)
    conn.commit()
    conn.close()
    return len(rows)


async def measure(registry: Registry, namespace: str, trace: Path, repeat: int) -> dict[str, Any]:
    ops = Operations.for_registry(registry, namespace)
    console = Console(ConsoleSettings())
    async with AsyncExitStack() as stack:
        store = await stack.enter_async_context(open_trace_store(f"sqlite:///{trace}"))
        t0 = time.perf_counter()
        await stack.enter_async_context(console.serve(ops, search=store.search))
        started = time.perf_counter() - t0
        transport = httpx.ASGITransport(app=console.app)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://console")
        )
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            page = await client.get("/")
            times.append(time.perf_counter() - t)
            assert page.status_code == 200 and page.text.count("<tr data-job=") > 0
        rows = page.text.count("<tr data-job=")
    return {
        "jobs_shown": rows,
        "console_start_s": round(started, 3),
        "overview_median_s": round(statistics.median(times), 4),
        "overview_max_s": round(max(times), 4),
        "page_bytes": len(page.text),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"jobs": args.jobs, "items_per_job": ITEMS, "repeat": args.repeat}
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.db"
        async with open_trace_store(f"sqlite:///{trace}"):
            pass  # creates the tables
        results["trace_rows"] = fill_trace(trace, args.jobs, args.fires)
        if args.registry in ("memory", "both"):
            async with AsyncExitStack() as stack:
                reg = MemoryRegistry(parse_registry_url("memory://bench/bench"))
                await reg.start(stack)
                await populate(reg, "bench", args.jobs)
                results["memory"] = await measure(reg, "bench", trace, args.repeat)
                print("memory:", results["memory"], flush=True)
        if args.registry in ("zookeeper", "both"):
            server = ZooKeeperServer(Path(tmp) / "zk")
            server.start()
            try:
                async with AsyncExitStack() as stack:
                    reg = ZooKeeperRegistry(parse_registry_url(server.url("bench")))
                    await reg.start(stack)
                    await populate(reg, "bench", args.jobs)
                    results["zookeeper"] = await measure(reg, "bench", trace, args.repeat)
                    print("zookeeper:", results["zookeeper"], flush=True)
            finally:
                server.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--fires", type=int, default=12, help="fires per job in the trace")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--registry", choices=["memory", "zookeeper", "both"], default="both")
    parser.add_argument("--out", type=Path, default=RESULTS / "console_overview.json")
    args = parser.parse_args()
    results = anyio.run(run, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
