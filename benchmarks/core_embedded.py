"""Embedded-mode core figures, each contender in a fresh process of its own (``--json`` lines).

    python benchmarks/core_embedded.py lag --contender aioelastic --jobs 1000   # one run
    python benchmarks/core_embedded.py lag --contender floor --jobs 1000
    python benchmarks/core_embedded.py items --contender aioelastic --items 500
    python benchmarks/core_embedded.py compare [--quick] [--repeat 3]   # all, fresh processes

Fire lag = job start (inside the job) - the cron's scheduled fire time, for N one-item jobs all
firing every second (``lag_window.py``: also CPU per run and memory per job). The floor is N bare
tasks sleeping until each next whole second: what any scheduler on this event loop can reach.
Throughput = no-op items executed per second by fires of one job with many items (each fire goes
through the whole template: registry marks, trace events into a memory sink) against the same
no-op coroutine spawned in a bare task group. ``run_all.py`` runs these same subcommands.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from lag_window import Footprint, LagWindow  # noqa: E402

from aioelastic import Scheduler, Settings, ShardingContext  # noqa: E402
from aioelastic.registry import MemoryStore  # noqa: E402

RESULTS = HERE / "results"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def floor_lag(jobs: int, seconds: int, warmup: float, drain: float) -> dict[str, Any]:
    """N bare tasks, each sleeping until the next whole second, measured like a scheduler."""
    footprint = Footprint()
    window = LagWindow()
    out: dict[str, Any] = {"start_s": 0.0}

    async def ticker() -> None:
        while True:
            now = time.time()
            target = int(now) + 1
            await anyio.sleep(target - now)
            window.record(datetime.fromtimestamp(target, UTC), datetime.now(UTC))

    async with anyio.create_task_group() as tg:
        for _ in range(jobs):
            tg.start_soon(ticker)
        await anyio.sleep(warmup)
        out.update(footprint.per_job(jobs))
        out.update(await window.measure(seconds, drain))
        tg.cancel_scope.cancel()
    return out


async def aioelastic_throughput(
    items: int, rounds: int, registry_url: str = "memory://bench-tp/bench", timeout: float = 120
) -> float:
    """No-op items/s of ``rounds`` fires of one ``items``-item job (any registry URL)."""
    if registry_url.startswith("memory://"):
        MemoryStore.reset(registry_url.split("/")[2])
    from aioelastic.tracing import MemorySink

    sink = MemorySink()
    scheduler = Scheduler(settings=Settings(registry_url=registry_url), sinks=[sink])
    done = 0
    finished = anyio.Event()

    @scheduler.job(sharding_total_count=items)
    async def noop(ctx: ShardingContext) -> None:
        nonlocal done
        done += 1
        if done == items * rounds:
            finished.set()

    async with scheduler:
        runner = scheduler._runners["noop"]
        coord = runner.coordinator
        if not await coord.view.wait_for(lambda: len(coord.local_items()) == items, timeout):
            raise TimeoutError(f"the {items} items were not assigned within {timeout}s")
        start = time.perf_counter()
        with anyio.fail_after(timeout):
            for _ in range(rounds):
                await runner.executor.fire()
            await finished.wait()
        elapsed = time.perf_counter() - start
    return items * rounds / elapsed


async def baseline_throughput(items: int, rounds: int) -> float:
    async def noop(ctx: object) -> None:
        pass

    start = time.perf_counter()
    for _ in range(rounds):
        async with anyio.create_task_group() as tg:
            for i in range(items):
                tg.start_soon(noop, i)
    return items * rounds / (time.perf_counter() - start)


# -- one contender per process --


async def _lag(args: argparse.Namespace) -> dict[str, Any]:
    if args.contender == "floor":
        return await floor_lag(args.jobs, args.seconds, args.warmup, args.drain)
    import aioelastic_workloads as ours

    timing = {"warmup": args.warmup, "drain": args.drain, "start_timeout": args.start_timeout}
    return await ours.lag(args.registry, args.jobs, args.seconds, **timing)


async def _items(args: argparse.Namespace) -> dict[str, Any]:
    if args.contender == "floor":
        per_s = await baseline_throughput(args.items, args.rounds)
    else:
        per_s = await aioelastic_throughput(args.items, args.rounds, args.registry)
    return {"items_per_s": round(per_s, 1)}


async def _fires(args: argparse.Namespace) -> dict[str, Any]:
    import aioelastic_workloads as ours

    return {"fires_per_s": round(await ours.fire_throughput(args.registry, args.jobs, args.rounds))}


def run_fresh(*args: object, timeout: float = 300, env: dict[str, str] | None = None) -> Any:
    """One subcommand of this script in a fresh interpreter; its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:,.2f}"
    return f"{statistics.median(values):,.2f} ({min(values):,.2f}-{max(values):,.2f})"


def compare(quick: bool, repeat: int) -> dict[str, Any]:
    sizes = [10] if quick else [100, 1000]
    seconds, warmup = (2, 1.0) if quick else (10, 3.0)
    results: dict[str, Any] = {"lag": {}, "items": {}}
    for n in sizes:
        for contender in ("floor", "aioelastic"):
            runs = [
                run_fresh(
                    "lag",
                    "--contender",
                    contender,
                    "--jobs",
                    n,
                    "--seconds",
                    seconds,
                    "--warmup",
                    warmup,
                )
                for _ in range(repeat)
            ]
            results["lag"][f"{n} {contender}"] = runs
            p50 = [pct(r["lags_ms"], 50) for r in runs]
            p99 = [pct(r["lags_ms"], 99) for r in runs]
            cpu = [r["cpu_ms_per_run"] for r in runs]
            print(
                f"{contender:<12}{n:>6} jobs  p50 {_spread(p50)}  p99 {_spread(p99)} ms  "
                f"cpu/fire {_spread(cpu)} ms  {runs[0]['rss_kib_per_job']} KiB/job"
            )
    items, rounds = (50, 5) if quick else (500, 40)
    for contender in ("floor", "aioelastic"):
        runs = [
            run_fresh("items", "--contender", contender, "--items", items, "--rounds", rounds)
            for _ in range(repeat)
        ]
        results["items"][contender] = runs
        print(f"{contender:<12} items/s {_spread([r['items_per_s'] for r in runs])}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lag = sub.add_parser("lag")
    lag.add_argument("--contender", choices=["floor", "aioelastic"], default="aioelastic")
    lag.add_argument("--registry", default="memory://bench-lag/bench")
    lag.add_argument("--jobs", type=int, default=1000)
    lag.add_argument("--seconds", type=int, default=15)
    lag.add_argument("--warmup", type=float, default=3.0)
    lag.add_argument("--drain", type=float, default=3.0)
    lag.add_argument("--start-timeout", type=float, default=60.0)
    lag.add_argument(
        "--tracemalloc", action="store_true", help="also the traced heap per job (slower start)"
    )
    items = sub.add_parser("items")
    items.add_argument("--contender", choices=["floor", "aioelastic"], default="aioelastic")
    items.add_argument("--registry", default="memory://bench-tp/bench")
    items.add_argument("--items", type=int, default=500)
    items.add_argument("--rounds", type=int, default=20)
    fires = sub.add_parser("fires")
    fires.add_argument("--registry", default="memory://bench-fires/bench")
    fires.add_argument("--jobs", type=int, default=200)
    fires.add_argument("--rounds", type=int, default=5)
    both = sub.add_parser("compare")
    both.add_argument("--quick", action="store_true", help="small, short run (CI smoke)")
    both.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    if args.command == "compare":
        out = compare(args.quick, args.repeat)
        RESULTS.mkdir(exist_ok=True)
        name = "core_embedded_quick.json" if args.quick else "core_embedded.json"
        (RESULTS / name).write_text(json.dumps(out, indent=1))
        return
    if getattr(args, "tracemalloc", False):
        os.environ["BENCH_TRACEMALLOC"] = "1"  # read by lag_window.Footprint
    work = {"lag": _lag, "items": _items, "fires": _fires}[args.command]
    print(json.dumps(anyio.run(work, args)), flush=True)


if __name__ == "__main__":
    main()
