"""Multi-instance test harness: instances as OS processes, their histories, and checks on them.

Each instance process (``tests/harness/cluster_instance.py``) appends JSON lines to its own history
file; ``Cluster.history()`` merges them into ``ItemRun`` records that ``check_no_overlap`` and the
other invariant checks read.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from aioelastic._layout import JobPaths
from aioelastic._sharding import ShardingStrategy, shard
from aioelastic._urls import parse_registry_url
from aioelastic.registry import ZooKeeperRegistry
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer

JOB = "cluster_job"

ROOT = Path(__file__).resolve().parents[2]
#: How soon after SIGCONT (or after its session was killed on the server) an instance must have
#: cancelled its items. Items in these tests have less than this left when the fault hits, so a
#: run that was not fenced would have completed (ok) instead.
WAKE_SLACK = 1.0


@dataclass
class ItemRun:
    instance: str
    job: str
    item: int
    task_id: str
    source: str
    start: float
    end: float | None = None
    ok: bool | None = None
    scheduled: float | None = None


@dataclass
class Instance:
    instance_id: str
    log: Path
    proc: subprocess.Popen[bytes]
    died_at: float | None = None
    pauses: list[tuple[float, float | None]] = field(default_factory=list)
    expiries: list[float] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by SIGKILL
        return out

    def has(self, event: str) -> bool:
        return any(r["ev"] == event for r in self.records())

    def signal(self, sig: int) -> None:
        now = time.time()
        if sig == signal.SIGKILL:
            self.died_at = now
        elif sig == signal.SIGSTOP:
            self.pauses.append((now, None))
        elif sig == signal.SIGCONT and self.pauses and self.pauses[-1][1] is None:
            self.pauses[-1] = (self.pauses[-1][0], now)
        self.proc.send_signal(sig)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Cluster:
    """Starts instance processes against one registry URL; stops them all on ``close()``."""

    registry_url: str
    workdir: Path
    job_options: dict[str, Any] = field(default_factory=dict)
    jobs: str = "cluster_job"
    grace: float = 2.0
    instances: dict[str, Instance] = field(default_factory=dict)
    #: Trace to this database, each instance with its own journal ``{instance_id}.journal``.
    tracing_url: str | None = None
    #: The instance process's module (its command line is ``cluster_instance``'s).
    module: str = "tests.harness.cluster_instance"

    def start(self, instance_id: str, **job_options: Any) -> Instance:
        log = self.workdir / f"{instance_id}.jsonl"
        options = {**self.job_options, **job_options}
        # Instances behave as in production: a stalled loop ends the process (conftest.py makes
        # the test process itself only warn).
        env = {**os.environ, "PYTHONPATH": str(ROOT), "AIOELASTIC_LOOP_STALL_ACTION": "exit"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                self.module,
                "--registry",
                self.registry_url,
                "--log",
                str(log),
                "--instance-id",
                instance_id,
                "--jobs",
                self.jobs,
                "--job-options",
                json.dumps(options),
                "--grace",
                str(self.grace),
                *self._tracing_args(instance_id),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{instance_id}.stderr", "ab"),
        )
        inst = Instance(instance_id, log, proc)
        self.instances[instance_id] = inst
        return inst

    def _tracing_args(self, instance_id: str) -> list[str]:
        if self.tracing_url is None:
            return []
        return ["--tracing-url", self.tracing_url, "--journal", str(self.journal(instance_id))]

    def journal(self, instance_id: str) -> Path:
        return self.workdir / f"{instance_id}.journal"

    def wait_ready(self, *instances: Instance, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        for inst in instances:
            while not inst.has("ready"):
                if not inst.alive:
                    raise AssertionError(f"{inst.instance_id} died:\n{self.stderr(inst)}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{inst.instance_id} not ready:\n{self.stderr(inst)}")
                time.sleep(0.05)

    def stderr_of_all(self) -> str:
        """Every instance's stderr tail, headed by its id (for a failure's detail)."""
        return "\n".join(
            f"--- {inst.instance_id}:\n{self.stderr(inst)}" for inst in self.instances.values()
        )

    def stderr(self, inst: Instance, tail: int | None = 4000) -> str:
        """The instance's stderr: its last ``tail`` characters, or all of it (``None``)."""
        path = self.workdir / f"{inst.instance_id}.stderr"
        text = path.read_text() if path.exists() else ""
        return text if tail is None else text[-tail:]

    def close(self) -> None:
        for inst in self.instances.values():
            if inst.alive:
                inst.proc.send_signal(signal.SIGCONT)
                inst.proc.kill()
        for inst in self.instances.values():
            inst.proc.wait(timeout=10)

    def history(self) -> list[ItemRun]:
        runs: dict[tuple[str, str, int], ItemRun] = {}
        for inst in self.instances.values():
            records = inst.records()
            lost = [r["t"] for r in records if r["ev"] == "session" and r["state"] == "LOST"]
            for r in records:
                key = (r["instance"], r.get("task_id", ""), r.get("item", -1))
                if r["ev"] == "start":
                    runs[key] = ItemRun(
                        r["instance"],
                        r["job"],
                        r["item"],
                        r["task_id"],
                        r["source"],
                        r["t"],
                        scheduled=r.get("scheduled"),
                    )
                elif r["ev"] == "end" and key in runs:
                    runs[key].end, runs[key].ok = r["t"], r["ok"]
            for run in runs.values():
                if run.instance != inst.instance_id:
                    continue
                if inst.died_at is not None and run.end is None:
                    run.end = inst.died_at  # SIGKILLed: unfinished runs ended with the process
                # A session killed on the server (not timed out) lets others start at once; the
                # instance learns of it when its connection drops, and cancels then.
                # A run that ended right after SIGCONT did no work after the SIGSTOP: it was
                # cancelled at once, or its timer had expired during the pause and it took its
                # last step (a short item cannot tell the two apart; tests/test_failover.py
                # checks the cancellation with items still pending at wake). It ended when the
                # process froze. A run that went on longer keeps its real end, and the overlap
                # check judges it. A session killed on the server: the run must be cancelled
                # once the instance was told (LOST); one that completed before it could know
                # (its connection was dropped, the resume or the refusal still to come) is the
                # same unpreventable overlap, bounded by WAKE_SLACK too.
                cut: list[tuple[float, float | None, bool | None]] = [
                    (t, t, False if any(t <= x <= (run.end or t) for x in lost) else None)
                    for t in inst.expiries
                ]
                cut += [(t0, t1, None) for t0, t1 in inst.pauses]
                for stopped, resumed, must_be in cut:
                    if (
                        resumed is not None
                        and run.start < stopped
                        and (must_be is None or run.ok is must_be)
                        and run.end is not None
                        and resumed <= run.end <= resumed + WAKE_SLACK
                    ):
                        run.end = stopped
        return sorted(runs.values(), key=lambda r: r.start)


def overlaps(runs: Iterable[ItemRun], now: float | None = None) -> list[tuple[ItemRun, ItemRun]]:
    """Pairs of runs of the same job item on two instances at overlapping times."""
    now = now or time.time()
    by_item: dict[tuple[str, int], list[ItemRun]] = {}
    for run in runs:
        by_item.setdefault((run.job, run.item), []).append(run)
    bad = []
    for item_runs in by_item.values():
        item_runs.sort(key=lambda r: r.start)
        for i, a in enumerate(item_runs):
            for b in item_runs[i + 1 :]:
                if b.start >= (a.end or now):
                    break
                if a.instance != b.instance:
                    bad.append((a, b))
    return bad


def check_no_overlap(runs: Iterable[ItemRun]) -> None:
    bad = overlaps(runs)
    assert not bad, "item ran on two instances at once:\n" + "\n".join(
        f"  {a.job}#{a.item}: {a.instance} [{a.start:.3f}, {a.end}] vs "
        f"{b.instance} [{b.start:.3f}, {b.end}]"
        for a, b in bad[:10]
    )


# -- registry-side helpers for cluster tests --


@asynccontextmanager
async def zk_client(url: str) -> AsyncIterator[ZooKeeperRegistry]:
    async with AsyncExitStack() as stack:
        reg = ZooKeeperRegistry(parse_registry_url(url))
        await reg.start(stack)
        yield reg


async def read_assignment(
    reg: ZooKeeperRegistry, url: str, total: int
) -> dict[str, list[int]] | None:
    """The committed assignment (None while a reshard is pending or an item has no owner)."""
    paths = JobPaths(parse_registry_url(url).namespace, JOB)
    if await reg.exists(paths.sharding_necessary) is not None:
        return None
    out: dict[str, list[int]] = {}
    for item in range(total):
        try:
            owner, _ = await reg.get(paths.item_instance(item))
        except Exception:
            return None
        out.setdefault(owner.decode(), []).append(item)
    return out


def expected(
    instances: list[str], total: int, strategy: ShardingStrategy = ShardingStrategy.AVG_ALLOCATION
) -> dict[str, list[int]]:
    return {k: v for k, v in shard(strategy, instances, JOB, total).items() if v}


async def wait_assignment(
    reg: ZooKeeperRegistry,
    url: str,
    total: int,
    want: dict[str, list[int]],
    timeout: float,
    cluster: Cluster | None = None,
) -> float:
    """Wait until the committed assignment equals ``want``; return when it was first seen.
    With ``cluster``, a failure shows its instances' stderr."""
    await eventually(
        partial(read_assignment, reg, url, total),
        timeout,
        0.05,
        until=lambda got: got == want,
        what=f"the assignment {want}",
        detail=None if cluster is None else cluster.stderr_of_all,
    )
    return time.time()


async def wait_sessions_expired(url: str, instance_ids: Iterable[str], timeout: float) -> None:
    """Wait until the instance nodes of ``instance_ids`` are gone: their sessions expired."""
    paths = JobPaths(parse_registry_url(url).namespace, JOB)
    ids = list(instance_ids)
    async with zk_client(url) as reg:

        async def gone() -> bool:
            return all([await reg.exists(paths.instance(i)) is None for i in ids])

        await eventually(gone, timeout, 0.1, what=f"the sessions of {ids} expiring")


async def ready(cluster: Cluster, *instances: Instance) -> None:
    await anyio.to_thread.run_sync(lambda: cluster.wait_ready(*instances))


def url_with(zk_server: ZooKeeperServer, session_timeout: float) -> str:
    return zk_server.url(
        f"t{uuid.uuid4().hex[:12]}", session_timeout=session_timeout, connect_timeout=5
    )


async def trigger(url: str, *instance_ids: str) -> None:
    """Ask these instances to run their items of the cluster job once now."""
    paths = JobPaths(parse_registry_url(url).namespace, JOB)
    async with zk_client(url) as reg:
        for instance_id in instance_ids:
            await reg.create(paths.trigger(instance_id))


# -- sessions of instance processes (ensemble tests: which server serves whom) --


def session_events(inst: Instance) -> list[tuple[float, str, int]]:
    """The instance's session events so far: (time, state, session id)."""
    return [(r["t"], r["state"], r["session_id"]) for r in inst.records() if r["ev"] == "session"]


def current_session(inst: Instance) -> int | None:
    """The id of the instance's session if it is connected now, by its last session event."""
    events = session_events(inst)
    return events[-1][2] if events and events[-1][1] == "CONNECTED" else None
