"""kazoo's ``SetPartitioner``: re-partition time after SIGKILL of a member (baselines venv).

    python baseline_kazoo.py run --hosts 127.0.0.1:2181 --session-timeout 3 [--rounds 3]

``run`` starts ``--members`` member processes (this script's ``member`` mode) that partition
``--items`` items under a fresh path, waits until they hold every item between them, SIGKILLs
one, and times until the survivors hold every item again (each survivor's last ``ACQUIRED`` after
the kill). Prints one JSON object: the times, the settings, and a timeline of the last round.

A member is kazoo's documented loop: release on ``RELEASE``, wait on ``ALLOCATING``, work on
``ACQUIRED``. ``--time-boundary`` is the partitioner's settle time after a membership change
(kazoo's default is 30 s; we use 1 s so that the figure is dominated by the session timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kazoo.client import KazooClient


def member(args: argparse.Namespace) -> None:
    log = open(args.log, "a", buffering=1)  # closed at process exit

    def write(event: str, **fields: Any) -> None:
        log.write(json.dumps({"ev": event, "t": time.time(), "id": args.id, **fields}) + "\n")

    client = KazooClient(hosts=args.hosts, timeout=args.session_timeout)
    client.start(timeout=10)
    partitioner = client.SetPartitioner(
        path=args.path,
        set=tuple(range(args.items)),
        identifier=args.id,
        time_boundary=args.time_boundary,
    )
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    held = False
    while not stop:
        if partitioner.failed:
            write("failed")
            break
        if partitioner.release:
            write("release")
            held = False
            partitioner.release_set()
        elif partitioner.acquired:
            if not held:
                write("acquired", items=sorted(partitioner))
                held = True
            time.sleep(0.005)
        else:
            partitioner.wait_for_acquire(timeout=0.2)
    partitioner.finish()
    client.stop()
    client.close()


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by SIGKILL
    return out


def holdings(logs: dict[str, Path], since: float, alive: list[str]) -> dict[str, list[int]]:
    """What each live member holds now, counting only acquisitions after ``since``."""
    held: dict[str, list[int]] = {}
    for name in alive:
        for r in records(logs[name]):
            if r["ev"] == "acquired" and r["t"] >= since:
                held[name] = r["items"]
            elif r["ev"] == "release" and r["t"] >= since:
                held.pop(name, None)
    return held


def wait_cover(
    logs: dict[str, Path], since: float, alive: list[str], items: int, timeout: float
) -> dict[str, list[int]]:
    """Until the live members hold every item (acquired after ``since``); the holdings."""
    deadline = time.monotonic() + timeout
    held: dict[str, list[int]] = {}
    while time.monotonic() < deadline:
        held = holdings(logs, since, alive)
        if set(held) == set(alive) and sorted(i for v in held.values() for i in v) == list(
            range(items)
        ):
            return held
        time.sleep(0.01)
    raise TimeoutError(f"members did not cover {items} items within {timeout}s: {held}")


def start_member(args: argparse.Namespace, name: str, path: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "member", "--hosts", args.hosts, "--path", path]
    cmd += ["--id", name, "--log", str(log), "--items", str(args.items)]
    cmd += ["--session-timeout", str(args.session_timeout)]
    cmd += ["--time-boundary", str(args.time_boundary)]
    with open(f"{log}.err", "ab") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def one_round(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    path = f"/kazoo-bench-{uuid.uuid4().hex[:8]}"
    names = [f"member-{k}" for k in range(args.members)]
    logs = {n: workdir / f"{path[1:]}-{n}.jsonl" for n in names}
    procs = {n: start_member(args, n, path, logs[n]) for n in names}
    try:
        wait_cover(logs, 0, names, args.items, 60)
        time.sleep(1.0)  # a steady second before the kill, for the timeline
        victim, survivors = names[-1], names[:-1]
        killed = time.time()
        procs[victim].kill()
        wait_cover(logs, killed, survivors, args.items, args.session_timeout + 60)
        acquired = [
            r["t"]
            for n in survivors
            for r in records(logs[n])
            if r["ev"] == "acquired" and r["t"] >= killed
        ]
        timeline = [{**r, "t": round(r["t"] - killed, 4)} for n in names for r in records(logs[n])]
        return {"recovery_s": max(acquired) - killed, "timeline": timeline, "victim": victim}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def run(args: argparse.Namespace) -> None:
    times, last = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            last = one_round(args, Path(tmp))
            times.append(round(last["recovery_s"], 3))
    out = {
        "session_timeout_s": args.session_timeout,
        "time_boundary_s": args.time_boundary,
        "members": args.members,
        "items": args.items,
        "sigkill_to_repartitioned_s": times,
        "over_timeout_s": [round(t - args.session_timeout, 3) for t in times],
        "timeline": last["timeline"],
        "victim": last["victim"],
    }
    json.dump(out, sys.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run", "member"])
    parser.add_argument("--hosts", required=True)
    parser.add_argument("--path", default="/kazoo-bench")
    parser.add_argument("--id", default=f"member-{os.getpid()}")
    parser.add_argument("--log", default="member.jsonl")
    parser.add_argument("--items", type=int, default=6)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--session-timeout", type=float, default=3.0)
    parser.add_argument("--time-boundary", type=float, default=1.0)
    args = parser.parse_args()
    if args.mode == "member":
        member(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
