"""ZooKeeper coordination figures, against a real ZooKeeper started here (loopback, temp dir):

1. registry requests per fire in steady state, counted from the requests each instance sends,
   split into the fire path (mark/clear running) and view upkeep (re-reads after watches fire);
2. time from a membership change (an instance joins; one stops gracefully) to the new
   assignment being committed;
3. failover latency: SIGKILL of an instance process to its running items starting on a survivor,
   against the session timeout (target: within timeout + 0.5 s);
4. counted by the ZooKeeper server itself (``mntr``'s per-namespace read/write counters and
   its packets received): requests per fire per instance (2 instances x 4 items, with and
   without failover), and the start of N jobs firing every second on one instance
   (``server_side``, the rows ``run_all`` prints next to the client-side ones).

    python benchmarks/zk_coordination.py [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aioelastic import Observer, Scheduler, Settings, ShardingContext
from aioelastic._layout import JobPaths
from tests.harness.cluster import (
    Cluster,
    expected,
    ready,
    wait_assignment,
    zk_client,
)
from tests.harness.zookeeper import ZooKeeperServer

RESULTS = Path(__file__).parent / "results"
JOB = "cluster_job"


class FireCounter(Observer):
    def __init__(self) -> None:
        self.fires = 0
        self.lags: list[float] | None = None  # seconds from scheduled to started, if recording

    def fire_started(self, job: str, scheduled: Any, started: Any) -> None:
        self.fires += 1
        if self.lags is not None and scheduled is not None:
            self.lags.append((started - scheduled).total_seconds())


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def requests_per_fire(server: ZooKeeperServer, items: int, seconds: float) -> dict[str, Any]:
    url = server.url(f"bench{int(time.time() * 1000)}", session_timeout=10)
    counters = [FireCounter() for _ in range(3)]
    schedulers = []
    for k, counter in enumerate(counters):
        s = Scheduler(
            settings=Settings(registry_url=url, instance_id=f"bench-{k}"), observers=[counter]
        )

        async def noop(ctx: ShardingContext) -> None:
            pass

        s.add_job(noop, name=JOB, cron="* * * * * ?", sharding_total_count=items)
        schedulers.append(s)
    async with AsyncExitStack() as stack:
        for s in schedulers:
            await stack.enter_async_context(s)
        async with zk_client(url) as reg:
            await wait_assignment(
                reg,
                url,
                items,
                expected(
                    [f"bench-{k}" for k in range(3)],
                    items,
                ),
                20,
            )
        await anyio.sleep(2)  # settle
        before = [s.registry.request_count for s in schedulers]
        fires_before = [c.fires for c in counters]
        await anyio.sleep(seconds)
        sent = [s.registry.request_count - b for s, b in zip(schedulers, before, strict=True)]
        fires = [c.fires - f for c, f in zip(counters, fires_before, strict=True)]
    per_fire = [r / f for r, f in zip(sent, fires, strict=True) if f]
    return {
        "instances": 3,
        "items": items,
        "fires_per_instance": fires,
        "requests_per_instance": sent,
        "requests_per_fire_per_instance": round(sum(per_fire) / len(per_fire), 2),
        "fire_path_requests": 2,
        "note": "fire path = one multi-op to mark items running + one to clear them; the rest "
        "is view upkeep (re-reading nodes whose watches fired, for every instance's view)",
    }


def server_counters(server: ZooKeeperServer, namespace: str) -> dict[str, int]:
    """ZooKeeper's own counters (``mntr``): requests it served under ``/namespace`` (reads and
    writes; a multi-op is one write) and every packet it received (pings included)."""
    text = (server.four_letter("mntr", timeout=5) or b"").decode()
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition("\t")
        with contextlib.suppress(ValueError):
            values[key] = int(float(value))
    return {
        "reads": values.get(f"zk_cnt_{namespace}_read_per_namespace", 0),
        "writes": values.get(f"zk_cnt_{namespace}_write_per_namespace", 0),
        "packets": values.get("zk_packets_received", 0),
    }


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


async def server_requests_per_fire(
    server: ZooKeeperServer,
    *,
    instances: int = 2,
    items: int = 4,
    failover: bool = False,
    seconds: float = 10,
) -> dict[str, Any]:
    """Requests per fire per instance in steady state, counted by the ZooKeeper server (its
    per-namespace read/write counters), for one job firing every second on ``instances``."""
    namespace = f"srvreq{uuid.uuid4().hex[:8]}"
    url = server.url(namespace, session_timeout=10)
    counters = [FireCounter() for _ in range(instances)]
    ids = [f"bench-{k}" for k in range(instances)]

    async def noop(ctx: ShardingContext) -> None:
        pass

    schedulers = []
    for k, counter in enumerate(counters):
        s = Scheduler(settings=Settings(registry_url=url, instance_id=ids[k]), observers=[counter])
        s.add_job(noop, name=JOB, cron="* * * * * ?", sharding_total_count=items, failover=failover)
        schedulers.append(s)
    async with AsyncExitStack() as stack:
        for s in schedulers:
            await stack.enter_async_context(s)
        async with zk_client(url) as reg:
            await wait_assignment(reg, url, items, expected(ids, items), 20)
        await anyio.sleep(2)  # settle
        before, fires_before = server_counters(server, namespace), sum(c.fires for c in counters)
        await anyio.sleep(seconds)
        after, fires = server_counters(server, namespace), sum(c.fires for c in counters)
    delta, fires = _delta(after, before), fires - fires_before
    return {
        "instances": instances,
        "items": items,
        "failover": failover,
        "fires": fires,
        "server_reads_per_fire": round(delta["reads"] / fires, 2) if fires else None,
        "server_writes_per_fire": round(delta["writes"] / fires, 2) if fires else None,
        "server_packets_per_fire": round(delta["packets"] / fires, 2) if fires else None,
        "note": "per fire per instance, from the server's mntr counters (zk_cnt_<ns>_read/"
        "write_per_namespace; packets include pings and other clients' traffic)",
    }


async def start_time(server: ZooKeeperServer, jobs: int, budget: float = 60) -> dict[str, Any]:
    """One instance with ``jobs`` one-item jobs firing every second: time from ``run()`` to
    started, the server-side requests of the start, and the share of fires that ran in the
    5 s after it."""
    namespace = f"start{uuid.uuid4().hex[:8]}"
    url = server.url(namespace, session_timeout=10)
    counter = FireCounter()
    scheduler = Scheduler(
        settings=Settings(registry_url=url, instance_id="bench-0"), observers=[counter]
    )

    async def noop(ctx: ShardingContext) -> None:
        pass

    for j in range(jobs):
        scheduler.add_job(noop, name=f"job{j:04d}", cron="* * * * * ?")
    out: dict[str, Any] = {"jobs": jobs}
    before = server_counters(server, namespace)
    async with anyio.create_task_group() as tg:
        t0 = time.perf_counter()
        with anyio.move_on_after(budget):
            await tg.start(scheduler.run)
            out["start_s"] = round(time.perf_counter() - t0, 2)
        if "start_s" not in out:
            out["error"] = f"not started within {budget:g} s"
        else:
            start = _delta(server_counters(server, namespace), before)
            out["server_requests_per_job_start"] = round(
                (start["reads"] + start["writes"]) / jobs, 1
            )
            fires0, cpu0 = counter.fires, time.process_time()
            counter.lags = []
            await anyio.sleep(5)
            fired, lags = counter.fires - fires0, counter.lags
            counter.lags = None
            out["fires_run_share"] = round(fired / (5 * jobs), 2)
            out["cpu_ms_per_fire"] = round((time.process_time() - cpu0) * 1000 / fired, 3)
            if lags:
                out["lag_p50_ms"] = round(_pct(lags, 50) * 1000, 1)
                out["lag_p99_ms"] = round(_pct(lags, 99) * 1000, 1)
        scheduler.stop()
        tg.cancel_scope.deadline = anyio.current_time() + 30
    return out


async def server_side(server: ZooKeeperServer, quick: bool = False) -> dict[str, Any]:
    """The server-side rows: per-fire requests (2 x 4, without and with failover) and the start
    of 300 and 1000 jobs (100 when ``quick``) on one instance, each start in a fresh process."""
    seconds = 4 if quick else 10
    return {
        "per_fire": await server_requests_per_fire(server, seconds=seconds),
        "per_fire_failover": await server_requests_per_fire(server, failover=True, seconds=seconds),
        "start": [
            await anyio.to_thread.run_sync(start_time_fresh, server, jobs)
            for jobs in ([100] if quick else [300, 1000])
        ],
    }


class _Attached:
    """A running server known by its address and port (a fresh process's view of it)."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.hosts = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    url = ZooKeeperServer.url
    four_letter = ZooKeeperServer.four_letter


def start_time_fresh(server: ZooKeeperServer, jobs: int, budget: float = 60) -> dict[str, Any]:
    """``start_time`` in a process of its own: a start that overloads (or stalls) that process
    costs this row only, reported as its error, not the whole run."""
    cmd = [sys.executable, __file__, "start-one", server.address, str(server.port), str(jobs)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=budget + 60)
    except subprocess.TimeoutExpired:
        return {"jobs": jobs, "error": f"the start's process did not end within {budget + 60:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
    return {"jobs": jobs, "error": f"the start's process exited {proc.returncode}: {tail[0]}"}


def server_side_rows(side: dict[str, Any] | None) -> list[str]:
    """``server_side``'s results as rows of run_all's coordination table."""
    if not side:
        return []
    rows = []
    for key in ("per_fire", "per_fire_failover"):
        r = side[key]
        rows.append(
            f"| server-side per fire per instance ({r['instances']} x {r['items']} items"
            f"{', failover' if r['failover'] else ''}) | {r['server_writes_per_fire']} writes, "
            f"{r['server_reads_per_fire']} reads |"
        )
    for r in side["start"]:
        if "error" in r:
            rows.append(f"| start of {r['jobs']} jobs on one instance | {r['error']} |")
            continue
        rows.append(
            f"| start of {r['jobs']} jobs on one instance: s, share of fires run, lag p50 / p99 "
            f"ms, CPU ms per fire, server requests per job | {r['start_s']}, "
            f"{r['fires_run_share']:.0%}, {r.get('lag_p50_ms')} / {r.get('lag_p99_ms')}, "
            f"{r['cpu_ms_per_fire']}, {r['server_requests_per_job_start']} |"
        )
    return rows


async def requests_per_reshard(server: ZooKeeperServer, items: int = 10) -> dict[str, Any]:
    """ZooKeeper requests one membership change costs, for a one-off job (nothing fires, so every
    request is registration, view upkeep or the reshard itself): a 4th instance joins 3, then one
    of the first three stops gracefully. Counted until the new assignment is committed + 1 s."""
    url = server.url(f"reshardreq{int(time.time() * 1000)}", session_timeout=10)
    ids = [f"bench-{k}" for k in range(4)]

    async def noop(ctx: ShardingContext) -> None:
        pass

    schedulers = {}
    for i in ids:
        s = Scheduler(settings=Settings(registry_url=url, instance_id=i, shutdown_grace_period=1))
        s.add_job(noop, name=JOB, sharding_total_count=items)
        schedulers[i] = s

    def counts(names: list[str]) -> dict[str, int]:
        return {n: schedulers[n].registry.request_count for n in names}

    async with anyio.create_task_group() as tg, zk_client(url) as reg:
        try:
            for i in ids[:3]:
                await tg.start(schedulers[i].run)
            await wait_assignment(reg, url, items, expected(ids[:3], items), 20)
            await anyio.sleep(1)
            before = counts(ids[:3])
            await tg.start(schedulers[ids[3]].run)
            await wait_assignment(reg, url, items, expected(ids, items), 20)
            await anyio.sleep(1)
            after = counts(ids)
            join_existing = sum(after[n] - before[n] for n in ids[:3])
            before = counts(ids[1:])
            schedulers[ids[0]].stop()
            await wait_assignment(reg, url, items, expected(ids[1:], items), 20)
            await anyio.sleep(1)
            leave = sum(v - before[n] for n, v in counts(ids[1:]).items())
        finally:
            for s in schedulers.values():
                s.stop()
    return {
        "items": items,
        "join_3_to_4": {"existing_instances": join_existing, "joiner": after[ids[3]]},
        "graceful_leave_4_to_3": {"survivors": leave},
        "note": "joiner = its whole start (session, registration, view load); the others' "
        "requests are view upkeep and, on the leader, the reshard multi-op",
    }


async def reshard_times(server: ZooKeeperServer, workdir: Path, rounds: int) -> dict[str, Any]:
    joins, leaves = [], []
    for r in range(rounds):
        url = server.url(f"reshard{r}{int(time.time())}", session_timeout=10)
        cluster = Cluster(
            url,
            workdir / f"r{r}",
            job_options={"cron": "0/1 * * * * ?", "sharding_total_count": 10, "duration": 0.01},
        )
        (workdir / f"r{r}").mkdir()
        try:
            ids = ["inst-a", "inst-b", "inst-c"]
            procs = {i: cluster.start(i) for i in ids}
            await ready(cluster, *procs.values())
            async with zk_client(url) as reg:
                await wait_assignment(reg, url, 10, expected(ids, 10), 20)
                fourth = cluster.start("inst-d")
                await ready(cluster, fourth)
                ready_at = next(x["t"] for x in fourth.records() if x["ev"] == "ready")
                done = await wait_assignment(reg, url, 10, expected([*ids, "inst-d"], 10), 10)
                joins.append(done - ready_at)
                procs["inst-b"].signal(signal.SIGTERM)
                left = time.time()
                done = await wait_assignment(
                    reg, url, 10, expected(["inst-a", "inst-c", "inst-d"], 10), 10
                )
                leaves.append(done - left)
        finally:
            cluster.close()
    return {
        "join_to_commit_s": [round(x, 3) for x in joins],
        "graceful_leave_to_commit_s": [round(x, 3) for x in leaves],
        "session_timeout_s": 10,
    }


async def failover_latency(
    server: ZooKeeperServer, workdir: Path, rounds: int, timeout: float
) -> dict[str, Any]:
    latencies: list[float] = []
    timeline: list[dict[str, Any]] = []
    for r in range(rounds):
        url = server.url(f"failover{r}{int(time.time())}", session_timeout=timeout)
        path = workdir / f"f{r}"
        path.mkdir()
        cluster = Cluster(
            url, path, job_options={"sharding_total_count": 6, "failover": True, "duration": 30}
        )
        try:
            ids = ["inst-a", "inst-b", "inst-c"]
            procs = {i: cluster.start(i) for i in ids}
            await ready(cluster, *procs.values())
            async with zk_client(url) as reg:
                await wait_assignment(reg, url, 6, expected(ids, 6), 20)
                ns = url.split("/")[3].split("?")[0]
                await reg.create(JobPaths(ns, JOB).trigger("inst-c"))
            with anyio.fail_after(10):
                while {x.item for x in cluster.history() if x.instance == "inst-c"} != {0, 1}:
                    await anyio.sleep(0.02)
            await anyio.sleep(1)  # items run a while before the kill (for the timeline)
            procs["inst-c"].signal(signal.SIGKILL)
            killed = time.time()
            with anyio.fail_after(timeout + 10):
                while True:
                    taken = [x for x in cluster.history() if x.source == "FAILOVER"]
                    if {x.item for x in taken} == {0, 1}:
                        break
                    await anyio.sleep(0.01)
            latencies.append(max(x.start for x in taken) - killed)
            timeline = [
                {
                    "instance": x.instance,
                    "item": x.item,
                    "source": x.source,
                    "start": round(x.start - killed, 4),
                    "end": None if x.end is None else round(x.end - killed, 4),
                }
                for x in cluster.history()
            ]
        finally:
            cluster.close()
    return {
        "timeline_last_round": timeline,
        "session_timeout_s": timeout,
        "sigkill_to_failover_start_s": [round(x, 3) for x in latencies],
        "over_timeout_s": [round(x - timeout, 3) for x in latencies],
        "target": "<= session timeout + 0.5 s",
        "met": all(x <= timeout + 0.5 for x in latencies),
    }


async def main(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = ZooKeeperServer(workdir / "zk")
        server.start()
        try:
            results: dict[str, Any] = {
                "requests": await requests_per_fire(server, 10, 3 if quick else 10),
                "reshard_requests": await requests_per_reshard(server, 10),
                "reshard": await reshard_times(server, workdir, 1 if quick else 3),
                "failover": await failover_latency(server, workdir, 1 if quick else 3, 3.0),
                "server_side": await server_side(server, quick),
            }
        finally:
            server.close()
    req, rs, fo = results["requests"], results["reshard"], results["failover"]
    rr = results["reshard_requests"]
    print(
        f"registry requests per fire per instance (3 instances, 10 items): "
        f"{req['requests_per_fire_per_instance']} (fire path: {req['fire_path_requests']})"
    )
    print(
        f"registry requests per reshard (10 items): join 3->4 {rr['join_3_to_4']}, "
        f"graceful leave 4->3 {rr['graceful_leave_4_to_3']}"
    )
    print(
        f"membership change -> assignment committed: join {rs['join_to_commit_s']} s, "
        f"graceful leave {rs['graceful_leave_to_commit_s']} s "
        f"(session timeout {rs['session_timeout_s']} s)"
    )
    side = results["server_side"]
    for key in ("per_fire", "per_fire_failover"):
        row = side[key]
        print(
            f"server-side per fire per instance ({row['instances']} x {row['items']} items, "
            f"failover {row['failover']}): {row['server_packets_per_fire']} requests "
            f"({row['server_reads_per_fire']} reads, {row['server_writes_per_fire']} write ops)"
        )
    for row in side["start"]:
        print(f"start on one instance, server-side: {row}")
    print(
        f"failover latency SIGKILL -> item started on a survivor: "
        f"{fo['sigkill_to_failover_start_s']} s with session timeout {fo['session_timeout_s']} s "
        f"(over timeout: {fo['over_timeout_s']}; target met: {fo['met']})"
    )
    return results


if __name__ == "__main__" and sys.argv[1:2] == ["start-one"]:  # start_time_fresh's child
    logging.getLogger("aioelastic").setLevel(logging.CRITICAL)  # overload shows in the result
    address, port, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    attached: Any = _Attached(address, port)
    print(json.dumps(anyio.run(start_time, attached, count)), flush=True)
elif __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    out = anyio.run(main, args.quick)
    RESULTS.mkdir(exist_ok=True)
    name = "zk_coordination_quick.json" if args.quick else "zk_coordination.json"
    (RESULTS / name).write_text(json.dumps(out, indent=2))
