"""A longer randomized chaos run: 3 instance processes with failover on a real ZooKeeper, tracing
to a real PostgreSQL (each with its own journal), a seeded random schedule of faults (SIGKILL +
replacement, SIGSTOP beyond the session timeout, server restart, forced session expiry, an item
blocking the event loop, corrupted registry nodes, a server wiped empty, a SIGKILL during a
trace-database outage), then the history checker over everything that ran, and the trace rows
(after the journals were replayed) against the histories.

    python benchmarks/chaos_soak.py --seed 7 --duration 150
    python benchmarks/chaos_soak.py --seed 7 --duration 150 --ensemble   # a 3-server quorum

With ``--ensemble`` the registry is a 3-server ZooKeeper quorum and the faults also kill, pause
and wipe its servers, kill its leader and lose its quorum (``tests/harness/ensemble_faults.py``).

Prints the fault count by kind, the checker's and the trace report; exits 1 on any invariant
violation or any trace row lost beyond the documented window.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness.chaos import Chaos
from tests.harness.cluster import Cluster, expected, ready, url_with, wait_assignment, zk_client
from tests.harness.ensemble_faults import SERVER_FAULTS, EnsembleFaults, EnsembleServer
from tests.harness.postgres import running_postgres
from tests.harness.zookeeper import ZooKeeperEnsemble, ZooKeeperServer

RESULTS = Path(__file__).parent / "results"
TIMEOUT = 3.0
TOTAL = 6


async def soak(
    seed: int,
    duration: float,
    only: list[str] | None = None,
    keep: str | None = None,
    ensemble: bool = False,
) -> dict[str, object]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp, running_postgres() as postgres:
        workdir = Path(keep or tmp)  # --keep: the histories and logs stay for a post-mortem
        workdir.mkdir(parents=True, exist_ok=True)
        quorum = ZooKeeperEnsemble(workdir / "zk") if ensemble else None
        server: ZooKeeperServer | EnsembleServer
        if quorum is not None:
            quorum.start()
            server = EnsembleServer(quorum)  # what Chaos and url_with use of one server
        else:
            server = ZooKeeperServer(workdir / "zk")
            server.start()
        cluster: Cluster | None = None
        tracing_url = postgres.create_database()
        try:
            url = url_with(server, session_timeout=TIMEOUT)
            cluster = Cluster(
                url,
                workdir,
                tracing_url=tracing_url,
                job_options={
                    "cron": "0/1 * * * * ?",
                    "sharding_total_count": TOTAL,
                    "failover": True,
                    "duration": 0.4,
                },
            )
            ids = ["inst-a", "inst-b", "inst-c"]
            procs = [cluster.start(i) for i in ids]
            await ready(cluster, *procs)
            async with zk_client(url) as reg:
                await wait_assignment(reg, url, TOTAL, expected(ids, TOTAL), 20)
            chaos = Chaos(cluster, server, TIMEOUT, TOTAL, postgres=postgres)  # type: ignore[arg-type]
            server_kinds = tuple(k for k in (only or SERVER_FAULTS) if k.startswith("zk-"))
            server_faults = (
                EnsembleFaults(quorum, chaos.faults, TIMEOUT, server_kinds or SERVER_FAULTS)
                if quorum is not None
                else None
            )
            instance_kinds = [k for k in only if not k.startswith("zk-")] if only else None
            kinds: Counter[str] = Counter()
            end = time.monotonic() + duration
            while time.monotonic() < end:
                await anyio.sleep(rng.uniform(2.0, 6.0))
                if server_faults is not None and (instance_kinds == [] or rng.random() < 0.4):
                    kind = await server_faults.random_fault(rng)
                else:
                    kind = await chaos.random_fault(rng, instance_kinds)
                kinds[kind] += 1
                print(
                    f"{time.strftime('%H:%M:%S')} fault #{sum(kinds.values())}: {kind}", flush=True
                )
            await anyio.sleep(TIMEOUT + 7)
            report = await chaos.finish(url, settle=2.0)
            await chaos.stop_all()
            trace = await chaos.trace_report(tracing_url)
        finally:
            if cluster is not None:
                cluster.close()
            server.close()
    print(f"seed {seed}, {duration:.0f}s, {sum(kinds.values())} faults {dict(kinds)}")
    print(report)
    print(trace)
    if keep:
        (Path(keep) / "faults.json").write_text(json.dumps([vars(f) for f in chaos.faults]))
    return {
        "seed": seed,
        "duration_s": duration,
        "faults": dict(kinds),
        "fault_count": sum(kinds.values()),
        "item_runs": report.runs,
        "settled_fires_checked": report.fires_checked,
        "violations": report.violations,
        "trace_rows": trace.rows,
        "trace_runs_compared": trace.runs,
        "lost_rows_within_window": trace.lost_in_window,
        "lost_rows_beyond_window": len(trace.lost_beyond_window),
        "rows_without_completion_within_window": trace.incomplete_in_window,
        "rows_without_completion_beyond_window": len(trace.incomplete_beyond_window),
        "trace_problems": (trace.lost_beyond_window + trace.incomplete_beyond_window)[:50],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    parser.add_argument("--kinds", help="comma-separated fault kinds (default: all)")
    parser.add_argument("--keep", help="keep histories and logs in this directory")
    parser.add_argument(
        "--ensemble",
        action="store_true",
        help="a 3-server ZooKeeper quorum; faults also kill, pause and wipe its servers, kill its "
        "leader and lose its quorum",
    )
    args = parser.parse_args()
    kinds = args.kinds.split(",") if args.kinds else None
    result = anyio.run(soak, args.seed, args.duration, kinds, args.keep, args.ensemble)
    result["ensemble"] = args.ensemble
    if args.kinds:
        sys.exit(1 if result["violations"] or result["trace_problems"] else 0)  # not saved
    RESULTS.mkdir(exist_ok=True)
    name = "chaos_soak_ensemble.json" if args.ensemble else "chaos_soak.json"
    (RESULTS / name).write_text(json.dumps(result, indent=2))
    sys.exit(1 if result["violations"] or result["trace_problems"] else 0)
