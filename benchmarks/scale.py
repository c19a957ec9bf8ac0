"""Scale: many jobs x items over many instances against one real ZooKeeper.

All instances run in this process, each a ``Scheduler`` with its own ZooKeeper session (so the
figures are for one CPU core driving every instance; real instances would be spread over
machines). Jobs are one-off (no cron): nothing fires, so what is measured is coordination only.

For each size: start every instance at once and wait until each job's leader has committed an
assignment over all of them; then stop one instance gracefully and time until every job's leader
has committed the new assignment. Reported per size:

- ``start_s``: until all jobs are assigned over all instances (registration + reshards);
- ``reshard_after_leave_s``: a graceful stop to the last job's new assignment committed;
- ``join_start_s`` / ``reshard_after_join_s`` / ``join_to_settled_s``: a new instance joins the
  survivors: its start (``run()`` to started), its start's end to the last job's assignment
  over it committed, and the whole (leaders reshard while it still registers jobs);
- ``rss_per_job_instance_kib``: growth of this process's RSS divided by jobs x instances;
- ``znodes``: ZooKeeper's ``zk_znode_count`` growth (from ``mntr``), total and per job;
- ``requests_per_job_instance_start`` / ``requests_per_job_reshard``: ZooKeeper requests sent;
- ``session_troubles``: how often an instance's session was suspended or lost (overload shows
  here first: one process cannot answer pings while it drives thousands of job views).

    python benchmarks/scale.py [--quick] [--jobs 10 100 1000] [--items 10] [--instances 10]

Prints each size's row as a JSON line as soon as it is measured (before tearing it down).

RSS growth is only meaningful in a fresh process per size (``run_all`` runs one per size):
memory freed by one size is reused by the next, and by whatever ran before.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioelastic import Observer, Scheduler, Settings, ShardingContext
from aioelastic.registry._view import shared_view_of
from tests.harness.zookeeper import ZooKeeperServer

RESULTS = Path(__file__).parent / "results"


class ReshardLog(Observer):
    """The last committed assignment of each job: (instance count, when); session troubles."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[int, float]] = {}
        self.sessions: dict[str, int] = {"SUSPENDED": 0, "LOST": 0}

    def reshard_committed(self, job: str, instances: int, items: int) -> None:
        self.last[job] = (instances, time.time())

    def session_state_changed(self, state: str) -> None:
        if state in self.sessions:
            self.sessions[state] += 1

    def all_over(self, jobs: int, instances: int, since: float = 0.0) -> bool:
        done = [v for v in self.last.values() if v[0] == instances and v[1] >= since]
        return len(done) == jobs


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def znode_count(server: ZooKeeperServer) -> int:
    for line in (server.four_letter("mntr") or b"").decode().splitlines():
        if line.startswith("zk_znode_count"):
            return int(line.split()[1])
    return -1


async def noop(ctx: ShardingContext) -> None:
    pass


def make_instances(
    url: str, jobs: int, items: int, count: int, log: ReshardLog, prefix: str = "inst"
) -> list[Scheduler]:
    out = []
    for k in range(count):
        settings = Settings(
            registry_url=url, instance_id=f"{prefix}-{k:02d}", shutdown_grace_period=1
        )
        scheduler = Scheduler(settings=settings, observers=[log])
        for j in range(jobs):
            scheduler.add_job(noop, name=f"job{j:04d}", sharding_total_count=items)
        out.append(scheduler)
    return out


async def wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Poll ``predicate`` until it holds; the time it did (raises TimeoutError past timeout)."""
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)
    return time.time()


async def run_instance(scheduler: Scheduler, failures: list[str]) -> None:
    """Run one instance; a failure (say, a session lost while registering) is recorded."""
    try:
        await scheduler.run()
    except Exception as exc:
        failures.append(f"{scheduler.instance_id}: {exc!r}")


def views_settled(schedulers: list[Scheduler]) -> bool:
    """No instance's shared view waits for a read."""
    views = [shared_view_of(s.registry) for s in schedulers]
    return all(v is not None and v.fresh and not v.reading for v in views)


def requests(schedulers: list[Scheduler]) -> int:
    return sum(s.registry.request_count for s in schedulers)


async def one_size(
    server: ZooKeeperServer,
    jobs: int,
    items: int,
    instances: int,
    budget: float,
    emit: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Measure one size; ``emit`` gets the row as soon as it is known, before the teardown
    (which, for a size that overloaded the process, can take long: the caller may kill it)."""
    url = server.url(f"scale{uuid.uuid4().hex[:8]}", session_timeout=10)
    log = ReshardLog()
    schedulers = make_instances(url, jobs, items, instances, log)
    out: dict[str, Any] = {"jobs": jobs, "items": items, "instances": instances}
    failures: list[str] = []
    nodes0, rss0 = znode_count(server), rss_kib()
    async with anyio.create_task_group() as tg:
        try:
            t0 = time.time()
            for s in schedulers:
                tg.start_soon(run_instance, s, failures)
            started = await wait_until(lambda: log.all_over(jobs, instances), budget)
            out["start_s"] = round(started - t0, 2)
            # What the started instances keep: out of the collector's sight, as each process
            # of a real cluster does at its start (a scheduler's own freeze only works for the
            # first one of a process; full collections over ten instances' objects held the
            # loop for seconds, sessions dropped).
            gc.freeze()
            out["requests_per_job_instance_start"] = round(
                requests(schedulers) / (jobs * instances), 1
            )
            await anyio.sleep(1)  # let the views settle
            out["rss_per_job_instance_kib"] = round((rss_kib() - rss0) / (jobs * instances), 1)
            out["znodes"] = znode_count(server) - nodes0
            out["znodes_per_job"] = round(out["znodes"] / jobs, 1)
            out["session_troubles"] = dict(log.sessions)  # before the leave (which closes one)
            survivors, leaving = schedulers[:-1], schedulers[-1]
            before = requests(survivors)
            left = time.time()
            leaving.stop()
            done = await wait_until(lambda: log.all_over(jobs, instances - 1, left), budget)
            out["reshard_after_leave_s"] = round(done - left, 2)
            await anyio.sleep(1)
            out["requests_per_job_reshard"] = round((requests(survivors) - before) / jobs, 1)
            # Every survivor has read the new owners (they share this process with the joiner).
            views_done = await wait_until(lambda: views_settled(survivors), budget)
            out["views_settled_after_leave_s"] = round(views_done - left, 2)
            # A new instance joins the survivors: its start (session, view load, registration
            # of every job), then every leader's reshard over it.
            (joiner,) = make_instances(url, jobs, items, 1, log, prefix="join")
            schedulers.append(joiner)
            joined = time.time()
            await tg.start(joiner.run)
            ready = time.time()
            gc.freeze()
            out["join_start_s"] = round(ready - joined, 2)
            done = await wait_until(lambda: log.all_over(jobs, instances, joined), budget)
            out["reshard_after_join_s"] = round(max(0.0, done - ready), 2)
            out["join_to_settled_s"] = round(done - joined, 2)
        except TimeoutError:
            out["error"] = (
                f"did not settle within the {budget:.0f} s budget "
                f"(sessions suspended {log.sessions['SUSPENDED']}x, lost {log.sessions['LOST']}x)"
            )
        finally:
            if failures:
                out["instance_failures"] = failures[:5]
            emit(out)
            gc.unfreeze()
            for s in schedulers:
                s.stop()
            tg.cancel_scope.deadline = anyio.current_time() + 30
    return out


def print_row(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


async def run(
    server: ZooKeeperServer,
    sizes: list[int],
    items: int,
    instances: int,
    budget: float,
    emit: Callable[[dict[str, Any]], None] = print_row,
) -> dict[str, Any]:
    """Each size in turn (smallest first); stops at the first that does not fit the budget."""
    rows = []
    for jobs in sizes:
        row = await one_size(server, jobs, items, instances, budget, emit)
        rows.append(row)
        if "error" in row:
            break  # bigger sizes would not fit either
    return {"note": "instances share this process (separate ZooKeeper sessions)", "rows": rows}


async def main(sizes: list[int], items: int, instances: int, budget: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        server = ZooKeeperServer(Path(tmp) / "zk")
        server.start()
        try:
            return await run(server, sizes, items, instances, budget)
        finally:
            server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--jobs", type=int, nargs="*", help="job counts (default 10 100 1000)")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds per size step")
    parser.add_argument("--no-file", action="store_true", help="only print the rows (JSON lines)")
    args = parser.parse_args()
    sizes = args.jobs or ([5] if args.quick else [10, 100, 1000])
    instances = 3 if args.quick else args.instances
    result = anyio.run(main, sizes, args.items, instances, args.budget)
    if not args.no_file:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / ("scale_quick.json" if args.quick else "scale.json")).write_text(
            json.dumps(result, indent=2)
        )
