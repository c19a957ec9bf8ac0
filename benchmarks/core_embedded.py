"""Embedded-mode core figures: fire lag and no-op item throughput, each against a bare-anyio
baseline measured in the same run (ratios matter; absolute numbers move with machine load).

    python benchmarks/core_embedded.py            # 100 and 1000 jobs, 10 s each
    python benchmarks/core_embedded.py --quick    # CI smoke: small and short

Fire lag = job start (inside the job) - the cron's scheduled fire time, for N jobs all firing
every second. The baseline is N bare tasks sleeping until each next whole second: the floor any
scheduler on this event loop can reach. Throughput = no-op items executed per second through
``Scheduler.trigger`` of a job with many items (each run goes through the whole template:
registry marks, trace events) against the same no-op coroutine run in a bare task group.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore
from aioelastic.tracing import MemorySink

RESULTS = Path(__file__).parent / "results"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def summary(lags_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(lags_ms),
        "p50_ms": round(pct(lags_ms, 50), 3),
        "p99_ms": round(pct(lags_ms, 99), 3),
        "max_ms": round(max(lags_ms), 3),
    }


async def aioelastic_lag(jobs: int, seconds: float) -> list[float]:
    MemoryStore.reset("bench-lag")
    scheduler = Scheduler(settings=Settings(registry_url="memory://bench-lag/bench"))
    lags: list[float] = []

    async def job(ctx: ShardingContext) -> None:
        if ctx.scheduled_fire_time is None:
            return  # a misfire re-run (the loop could not keep up): no scheduled time
        lags.append((datetime.now(UTC) - ctx.scheduled_fire_time).total_seconds() * 1000)

    for i in range(jobs):
        scheduler.add_job(job, name=f"job{i}", cron="* * * * * ?")
    async with scheduler:
        # Skip the first fires: registration and the first reshard of every job.
        await anyio.sleep(2)
        lags.clear()
        await anyio.sleep(seconds)
    return lags


async def baseline_lag(jobs: int, seconds: float) -> list[float]:
    lags: list[float] = []
    end = time.time() + seconds

    async def ticker() -> None:
        while True:
            now = time.time()
            target = int(now) + 1
            if target > end:
                return
            await anyio.sleep(target - now)
            lags.append((time.time() - target) * 1000)

    async with anyio.create_task_group() as tg:
        for _ in range(jobs):
            tg.start_soon(ticker)
    return lags


async def aioelastic_throughput(
    items: int, rounds: int, registry_url: str = "memory://bench-tp/bench", timeout: float = 120
) -> float:
    """No-op items/s of ``rounds`` fires of one ``items``-item job (any registry URL)."""
    if registry_url.startswith("memory://"):
        MemoryStore.reset(registry_url.split("/")[2])
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


async def main(quick: bool) -> dict[str, object]:
    sizes = [10] if quick else [100, 1000]
    seconds = 2.0 if quick else 10.0
    results: dict[str, object] = {"machine": f"{__import__('os').cpu_count()} cores", "lag": {}}
    print(f"{'fire lag (ms)':<28}{'jobs':>6}{'p50':>9}{'p99':>9}{'max':>9}")
    for n in sizes:
        ours = summary(await aioelastic_lag(n, seconds))
        base = summary(await baseline_lag(n, seconds))
        results["lag"][str(n)] = {"aioelastic": ours, "baseline": base}  # type: ignore[index]
        for name, s in (("aioelastic embedded", ours), ("bare anyio baseline", base)):
            print(f"{name:<28}{n:>6}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['max_ms']:>9.2f}")
    items, rounds = (50, 5) if quick else (500, 40)
    ours_tp = await aioelastic_throughput(items, rounds)
    base_tp = await baseline_throughput(items, rounds)
    results["throughput"] = {
        "aioelastic_items_per_s": round(ours_tp),
        "baseline_items_per_s": round(base_tp),
        "ratio": round(ours_tp / base_tp, 3),
    }
    print(
        f"\nno-op items/s: aioelastic {ours_tp:,.0f}  bare anyio {base_tp:,.0f}  "
        f"ratio {ours_tp / base_tp:.2f}"
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small, short run (CI smoke)")
    args = parser.parse_args()
    out = anyio.run(main, args.quick)
    RESULTS.mkdir(exist_ok=True)
    name = "core_embedded_quick.json" if args.quick else "core_embedded.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))
