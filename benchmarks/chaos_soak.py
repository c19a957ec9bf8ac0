"""A longer randomized chaos run: 3 instance processes with failover on a real ZooKeeper, a seeded
random schedule of faults (SIGKILL + replacement, SIGSTOP beyond the session timeout, server
restart, forced session expiry), then the history checker over everything that ran.

    python benchmarks/chaos_soak.py --seed 7 --duration 120

Prints the fault count by kind and the checker's report; exits 1 on any invariant violation.
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

from tests.chaos import Chaos
from tests.cluster import Cluster, expected, ready, url_with, wait_assignment, zk_client
from tests.harness.zookeeper import ZooKeeperServer

RESULTS = Path(__file__).parent / "results"
TIMEOUT = 3.0
TOTAL = 6


async def soak(seed: int, duration: float) -> dict[str, object]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        server = ZooKeeperServer(workdir / "zk")
        server.start()
        cluster: Cluster | None = None
        try:
            url = url_with(server, session_timeout=TIMEOUT)
            cluster = Cluster(
                url,
                workdir,
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
            chaos = Chaos(cluster, server, TIMEOUT, TOTAL)
            kinds: Counter[str] = Counter()
            end = time.monotonic() + duration
            while time.monotonic() < end:
                await anyio.sleep(rng.uniform(2.0, 6.0))
                kind = await chaos.random_fault(rng)
                kinds[kind] += 1
                print(
                    f"{time.strftime('%H:%M:%S')} fault #{sum(kinds.values())}: {kind}", flush=True
                )
            await anyio.sleep(TIMEOUT + 7)
            report = await chaos.finish(url, settle=2.0)
        finally:
            if cluster is not None:
                cluster.close()
            server.close()
    print(f"seed {seed}, {duration:.0f}s, {sum(kinds.values())} faults {dict(kinds)}")
    print(report)
    return {
        "seed": seed,
        "duration_s": duration,
        "faults": dict(kinds),
        "fault_count": sum(kinds.values()),
        "item_runs": report.runs,
        "settled_fires_checked": report.fires_checked,
        "violations": report.violations,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of faults")
    args = parser.parse_args()
    result = anyio.run(soak, args.seed, args.duration)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chaos_soak.json").write_text(json.dumps(result, indent=2))
    sys.exit(1 if result["violations"] else 0)
