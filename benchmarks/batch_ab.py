"""Issue 17, batch round: fire lag before/after, alternating in fresh processes (A/B/A/B).

    python benchmarks/batch_ab.py --before /tmp/base --jobs 1000 --rounds 2 [--zk-jobs 300]

``--before``: a checkout of the revision to compare against (``git archive REV | tar -x -C DIR``);
its ``benchmarks/core_embedded.py lag`` runs with ``PYTHONPATH=DIR``, this tree's with this tree.
Embedded (``memory://``) and ZooKeeper (a server started here, from tests/harness) points; for
ZooKeeper the server-side ``mntr`` counters ``zk_packets_received`` are read around each run, so
requests per fire are counted by the server too (pings included: ~1 per 3 s of session). One
JSON line per run into benchmarks/results/batch/ab.jsonl, and a summary table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.harness.zookeeper import ZooKeeperServer  # noqa: E402


def mntr(zk: ZooKeeperServer) -> dict[str, float]:
    text = (zk.four_letter("mntr", timeout=2) or b"").decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"(\S+)\s+([-\d.]+)$", line)
        if m:
            out[m[1]] = float(m[2])
    return out


class Sampler:
    """``zk_packets_received`` every 0.25 s in a thread, to count the steady state only."""

    def __init__(self, zk: ZooKeeperServer) -> None:
        self.zk = zk
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), mntr(self.zk).get("zk_packets_received", 0.0)))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def rate(self, start: float, end: float) -> float | None:
        inside = [(t, v) for t, v in self.samples if start <= t <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1:
            return None
        return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def one_run(tree: Path, registry: str, jobs: int, seconds: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [
        sys.executable,
        str(tree / "benchmarks" / "core_embedded.py"),
        "lag",
        "--contender",
        "aioelastic",
        "--jobs",
        str(jobs),
        "--seconds",
        str(seconds),
        "--registry",
        registry,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tree)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    lags = sorted(result.pop("lags_ms", []))
    if lags:
        result |= {
            "n": len(lags),
            "p50": lags[len(lags) // 2],
            "p99": lags[int(len(lags) * 0.99)],
            "max": lags[-1],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--zk-jobs", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma list: memory,zookeeper")
    args = parser.parse_args()
    out_dir = HERE / "results" / "batch"
    out_dir.mkdir(parents=True, exist_ok=True)
    log = (out_dir / "ab.jsonl").open("a")
    trees = {"before": args.before.resolve(), "after": ROOT}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="batch-ab-") as tmp:
        zk = ZooKeeperServer(Path(tmp) / "zk")
        if "zookeeper" not in args.skip:
            zk.start()
        try:
            points = [("memory", args.jobs)] if "memory" not in args.skip else []
            if "zookeeper" not in args.skip:
                points.append(("zookeeper", args.zk_jobs))
            for backend, jobs in points:
                for rnd in range(args.rounds):
                    for label in ("before", "after") if rnd % 2 == 0 else ("after", "before"):
                        ns = f"ab{int(time.time() * 1000) % 10**9}"
                        url = f"memory://ab-{ns}/{ns}" if backend == "memory" else zk.url(ns)
                        load = os.getloadavg()[0]
                        sampler = Sampler(zk) if backend == "zookeeper" else None
                        launched = time.time()
                        result = one_run(trees[label], url, jobs, args.seconds)
                        if sampler is not None:
                            sampler.stop()
                            # the measured window, less a margin for interpreter start-up
                            begin = launched + result.get("start_s", 0) + 3.0 + 2.0
                            rate = sampler.rate(begin, begin + args.seconds - 3.0)
                            if rate is not None:
                                result["server_packets_per_fire"] = round(rate / jobs, 2)
                        row = {"backend": backend, "jobs": jobs, "label": label, "load": load}
                        row |= result
                        rows.append(row)
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                        print(json.dumps(row), flush=True)
        finally:
            zk.close()
    print()
    for backend in ("memory", "zookeeper"):
        for label in ("before", "after"):
            runs = [
                r for r in rows if r["backend"] == backend and r["label"] == label and "p50" in r
            ]
            if not runs:
                continue

            def spread(key: str, runs: list[dict[str, Any]] = runs) -> str:
                values = [float(r[key]) for r in runs if key in r]
                if not values:
                    return "-"
                return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"

            print(
                f"{backend:<10} {label:<7} p50 {spread('p50')}  p99 {spread('p99')} ms  "
                f"cpu/fire {spread('cpu_ms_per_run')} ms  "
                f"requests/fire {spread('registry_requests_per_run')}  "
                f"server packets/fire {spread('server_packets_per_fire')}  "
                f"load {spread('load')}"
            )


if __name__ == "__main__":
    main()
