"""Traced heap per idle job, grouped by line (issue 17, helper "mem").

    python benchmarks/results/mem/snapshot.py --jobs 1000 [--top 15] [--cron "0 0 0 1 1 ? 2099"]

N one-item jobs on one embedded instance; tracemalloc from before the scheduler exists to after
it started (and a gc.collect()); prints KiB per job and the top lines of the difference.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc

import anyio

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore


async def main(args: argparse.Namespace) -> None:
    MemoryStore.reset()

    async def probe(ctx: ShardingContext) -> None:
        pass

    tracemalloc.start(args.frames)
    gc.collect()
    base = tracemalloc.take_snapshot()
    base_mem = tracemalloc.get_traced_memory()[0]
    scheduler = Scheduler(settings=Settings(registry_url=args.registry, instance_id="mem-bench"))
    for i in range(args.jobs):
        scheduler.add_job(probe, name=f"job{i:04d}", cron=args.cron)
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        started = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await anyio.sleep(args.settle)
        gc.collect()
        current, peak = tracemalloc.get_traced_memory()
        heap = current - base_mem
        print(
            f"traced KiB per job: at start {(started[0] - base_mem) / 1024 / args.jobs:.2f}, "
            f"peak while starting {(started[1] - base_mem) / 1024 / args.jobs:.2f}, "
            f"peak after {(peak - base_mem) / 1024 / args.jobs:.2f}"
        )
        snap = tracemalloc.take_snapshot()
        scheduler.stop()
    stats = snap.compare_to(base, args.group)
    print(f"traced KiB per job: {heap / 1024 / args.jobs:.2f}")
    for s in stats[: args.top]:
        frame = s.traceback[0]
        print(
            f"{s.size_diff / 1024 / args.jobs:7.2f} KiB/job {s.count_diff / args.jobs:7.1f} obj/job"
            f"  {frame.filename.split('aioelastic/')[-1]}:{frame.lineno}"
        )
    print(json.dumps({"traced_kib_per_job": round(heap / 1024 / args.jobs, 2)}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--cron", default="0 0 0 1 1 ? 2099")
    p.add_argument("--registry", default="memory://mem-bench/bench")
    p.add_argument("--group", default="lineno")
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--settle", type=float, default=1.0)
    anyio.run(main, p.parse_args())
