"""Fault injection for cluster runs: kill, pause, server restart, session expiry, a blocked event
loop, corrupted registry nodes, a wiped server, a kill during a trace-database outage, and a
seeded random schedule of them. Used by ``tests/test_chaos.py`` and ``benchmarks/chaos_soak.py``.

``trace_report()`` compares the trace rows in PostgreSQL with the item runs the histories hold
(after the journals were replayed): a run may lack its row only if it started within the
journal window before a SIGKILL of its instance.
"""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncpg

from aioelastic._errors import RegistryError
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic._watchdog import STALL_EXIT_STATUS
from aioelastic.registry import ZooKeeperRegistry
from aioelastic.tracing import PostgresSink, TraceBus
from tests.harness.cluster import JOB, Cluster, Instance, read_assignment, zk_client
from tests.harness.helpers import eventually
from tests.harness.history import Fault, Report, check_history
from tests.harness.postgres import PostgresServer
from tests.harness.zookeeper import ZooKeeperServer, _close_session

__all__ = ["BASIC_KINDS", "CORRUPTIONS", "Chaos", "TraceReport"]

BASIC_KINDS = ("kill", "pause", "restart", "expire")
CORRUPTIONS = ("owner", "config", "ghost", "running")
#: The bus's documented loss bounds on kill -9 (tracing/_bus.py): during an outage, one
#: ``journal_window``; with a healthy sink, what was not yet written (``flush_interval`` plus
#: one write, itself journaled once pending for ``journal_window``).
JOURNAL_WINDOW = 0.1
HEALTHY_WINDOW = 0.2 + JOURNAL_WINDOW
#: Faults wait this long at most for the product's reaction (a repair, an exit, a rebuild).
REACTION = 30.0


@dataclass
class TraceReport:
    """Trace rows against the histories: ``lost_beyond_window`` must be 0."""

    runs: int = 0
    rows: int = 0
    lost_in_window: int = 0
    lost_beyond_window: list[str] = field(default_factory=list)
    incomplete_in_window: int = 0
    incomplete_beyond_window: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost_beyond_window and not self.incomplete_beyond_window

    def __str__(self) -> str:
        head = (
            f"{self.runs} item runs, {self.rows} JOB_EXECUTION_LOG rows; lost rows: "
            f"{self.lost_in_window} within the window before a kill, "
            f"{len(self.lost_beyond_window)} beyond; rows without completion: "
            f"{self.incomplete_in_window} within, {len(self.incomplete_beyond_window)} beyond"
        )
        bad = self.lost_beyond_window + self.incomplete_beyond_window
        return head + ("".join(f"\n  {b}" for b in bad[:20]) if bad else "")


@dataclass
class Chaos:
    """Injects faults into a running ``Cluster`` and records them for the history checker."""

    cluster: Cluster
    server: ZooKeeperServer
    session_timeout: float
    total: int
    postgres: PostgresServer | None = None
    faults: list[Fault] = field(default_factory=list)
    #: What the product did wrong while a fault was injected (reported as violations).
    problems: list[str] = field(default_factory=list)
    #: Instance id -> when its trace could stop short: (time, loss window) of a SIGKILL or exit.
    deaths: dict[str, tuple[float, float]] = field(default_factory=dict)
    _spawned: int = 0
    _corrupted: int = 0

    def live(self) -> list[Instance]:
        return [i for i in self.cluster.instances.values() if i.alive and i.died_at is None]

    async def replace(self) -> Instance:
        """Start a fresh instance (the cluster keeps its size after a kill)."""
        self._spawned += 1
        inst = self.cluster.start(f"inst-r{self._spawned}")
        await anyio.to_thread.run_sync(lambda: self.cluster.wait_ready(inst))
        return inst

    async def kill(self, inst: Instance, *, window: float = HEALTHY_WINDOW) -> None:
        inst.signal(signal.SIGKILL)
        now = time.time()
        self.deaths[inst.instance_id] = (now, window)
        self.faults.append(Fault("kill", now, now + self.session_timeout + 1, inst.instance_id))

    async def pause(self, inst: Instance, seconds: float) -> None:
        inst.signal(signal.SIGSTOP)
        start = time.time()
        await anyio.sleep(seconds)
        inst.signal(signal.SIGCONT)
        self.faults.append(Fault("pause", start, time.time() + 1, inst.instance_id))

    async def restart_server(self, down: float = 1.0) -> None:
        start = time.time()
        await anyio.to_thread.run_sync(self.server.stop)
        await anyio.sleep(down)
        await anyio.to_thread.run_sync(self.server.start)
        self.faults.append(Fault("restart", start, time.time() + 2))

    async def expire(self, inst: Instance) -> None:
        sessions = [r for r in inst.records() if r["ev"] == "session" and r["state"] == "CONNECTED"]
        if not sessions:
            return
        session = sessions[-1]
        host, _, port = self.server.hosts.rpartition(":")
        start = time.time()
        inst.expiries.append(start)
        password = bytes.fromhex(session["password"])

        async def closed() -> bool:
            return not await _close_session(host, int(port), session["session_id"], password)

        await eventually(closed, 10, what=f"the session of {inst.instance_id} closed")
        self.faults.append(Fault("expire", start, time.time() + 2, inst.instance_id))

    async def block_loop(self, inst: Instance, seconds: float | None = None) -> bool:
        """The victim's next item blocks its event loop (``time.sleep``) for longer than the
        session timeout: its watchdog must end it (status 70) before the session can expire.
        False if it started no item within the reaction time (nothing was blocked)."""
        flag = inst.log.with_name(
            inst.log.name + ".block"
        )  # read by tests/harness/cluster_instance.py
        flag.write_text(str(seconds or self.session_timeout * 2))
        start = time.time()
        with anyio.move_on_after(REACTION):
            while inst.alive and flag.exists():
                await anyio.sleep(0.01)
        if flag.exists():
            flag.unlink(missing_ok=True)
            return False
        with anyio.move_on_after(REACTION):
            while inst.alive:
                await anyio.sleep(0.01)
        died = time.time()  # no earlier than the exit: its unfinished runs end here
        if inst.alive:
            self.problems.append(f"{inst.instance_id}: blocked loop, the watchdog did not act")
            inst.signal(signal.SIGKILL)
            died = time.time()
        elif inst.proc.returncode != STALL_EXIT_STATUS:
            self.problems.append(
                f"{inst.instance_id}: blocked loop ended it with status {inst.proc.returncode}"
            )
        inst.died_at = died
        # Its trace: the blocking item's start row is posted just before the loop stopped.
        self.deaths[inst.instance_id] = (start, HEALTHY_WINDOW)
        self.faults.append(Fault("block", start, died + self.session_timeout + 1, inst.instance_id))
        return True

    def _paths(self) -> JobPaths:
        return JobPaths(parse_registry_url(self.cluster.registry_url).namespace, JOB)

    async def corrupt(self, what: str, rng: random.Random) -> None:
        """Another client writes garbage into a node of the job (``what``: one of
        ``CORRUPTIONS``), and fixes it (the config) or waits for the leader to repair it."""
        paths = self._paths()
        item = rng.randrange(self.total)
        async with zk_client(self.cluster.registry_url) as reg:
            start = time.time()
            if what == "config":
                good, _ = await reg.get(paths.config)
                await reg.set(paths.config, b"{not json \xff")
                await anyio.sleep(rng.uniform(2.0, 4.0))  # the job is held meanwhile
                await reg.set(paths.config, good)
                self.faults.append(Fault("hold", start, time.time()))
                return
            if what == "owner":
                node = paths.item_instance(item)
                await reg.set(node, b"\xff\xfe garbage")
                repaired = self._owner_is_live(reg, paths, node)
            elif what == "ghost":
                node = paths.instance("ghost")
                await reg.create(node, b'{"host": "nowhere"}')  # persistent: no session ends it
                repaired = self._gone_or_ephemeral(reg, node)
            else:
                node = paths.item_running(item)
                await self._create_persistent(reg, node)
                repaired = self._gone_or_ephemeral(reg, node)
            with anyio.move_on_after(REACTION):
                while not await repaired():
                    await anyio.sleep(0.05)
            if not await repaired():
                self.problems.append(f"{node}: garbage ({what}) not repaired in {REACTION}s")
            self.faults.append(Fault(f"corrupt-{what}", start, time.time() + 1))

    @staticmethod
    def _owner_is_live(
        reg: ZooKeeperRegistry, paths: JobPaths, node: str
    ) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            data, _ = await reg.get(node)
            try:
                owner = data.decode()
            except UnicodeDecodeError:
                return False
            return await reg.exists(paths.instance(owner)) is not None

        return check

    @staticmethod
    def _gone_or_ephemeral(reg: ZooKeeperRegistry, node: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            stat = await reg.exists(node)
            return stat is None or bool(stat.ephemeral_owner)

        return check

    @staticmethod
    async def _create_persistent(reg: ZooKeeperRegistry, node: str) -> None:
        """Create ``node`` persistent, in place of the ephemeral one its owner may hold."""

        async def created() -> bool:
            try:
                await reg.create(node, b"\xffsomeone")
            except RegistryError:
                return False
            return True

        await eventually(created, REACTION, what=f"{node} created persistent")

    async def wipe(self) -> None:
        """Restart the server with an empty data dir; wait until the instances rebuilt an
        assignment of live owners."""
        start = time.time()
        await anyio.to_thread.run_sync(self.server.wipe)
        healed = await self._settled(REACTION + 10)
        if not healed:
            self.problems.append(f"no valid assignment {REACTION + 10}s after the wipe")
        self.faults.append(Fault("wipe", start, time.time() + 1))

    async def _settled(self, timeout: float) -> bool:
        live_ids = {i.instance_id for i in self.live()}
        with anyio.move_on_after(timeout):
            async with zk_client(self.cluster.registry_url) as reg:
                while True:
                    assignment = await read_assignment(reg, self.cluster.registry_url, self.total)
                    if assignment is not None and set(assignment) <= live_ids:
                        return True
                    await anyio.sleep(0.2)
        return False

    async def kill_during_trace_outage(self, inst: Instance, down: float) -> None:
        """Stop PostgreSQL, SIGKILL ``inst`` while it is down (fires go on meanwhile), start a
        replacement, start PostgreSQL again."""
        assert self.postgres is not None, "no trace database"
        start = time.time()
        await anyio.to_thread.run_sync(self.postgres.stop)
        await anyio.sleep(down)
        await self.kill(inst, window=JOURNAL_WINDOW)
        await self.replace()  # starts with the database down
        await anyio.to_thread.run_sync(self.postgres.start)
        self.faults.append(Fault("trace-outage", start, time.time()))

    def kinds(self) -> list[str]:
        """Every fault kind this chaos can inject."""
        return [
            *BASIC_KINDS,
            "block",
            "corrupt",
            "wipe",
            *(["trace-kill"] if self.postgres is not None else []),
        ]

    async def random_fault(self, rng: random.Random, kinds: Sequence[str] | None = None) -> str:
        """Inject one fault of a kind drawn from ``kinds`` (default: ``kinds()``); returns the
        kind injected (``corrupt-<what>`` for a corruption)."""
        kind = rng.choice(list(kinds or self.kinds()))
        live = self.live()
        victim = rng.choice(live) if live else None
        if kind in ("kill", "block", "trace-kill") and (victim is None or len(live) < 2):
            kind = "restart"  # never the last instance
        if kind == "kill" and victim is not None:
            await self.kill(victim)
            await self.replace()
        elif kind == "block" and victim is not None:
            if await self.block_loop(victim):
                await self.replace()
            else:
                kind = "block-idle"
        elif kind == "trace-kill" and victim is not None:
            await self.kill_during_trace_outage(victim, rng.uniform(1.0, 3.0))
        elif kind == "corrupt":  # each kind of garbage in turn
            what = CORRUPTIONS[self._corrupted % len(CORRUPTIONS)]
            self._corrupted += 1
            await self.corrupt(what, rng)
            kind = f"corrupt-{what}"
        elif kind == "wipe":
            await self.wipe()
        elif kind == "pause" and victim is not None:
            await self.pause(victim, self.session_timeout * rng.uniform(1.2, 2.0))
        elif kind == "restart":
            await self.restart_server(rng.uniform(0.5, 2.0))
        elif victim is not None:
            kind = "expire"
            await self.expire(victim)
        return kind

    async def finish(self, url: str, settle: float) -> Report:
        """Let the cluster settle, check the committed assignment and the whole history."""
        until = time.time()
        live_ids = {i.instance_id for i in self.live()}
        assignment = None
        with anyio.move_on_after(settle + 15):
            async with zk_client(url) as reg:
                while True:
                    assignment = await read_assignment(reg, url, self.total)
                    if assignment is not None and set(assignment) <= live_ids:
                        break
                    await anyio.sleep(0.2)
        report = check_history(
            self.cluster.history(),
            total=self.total,
            faults=self.faults,
            settle=settle,
            until=until,
            assignment=assignment or {},
            live=live_ids,
        )
        report.violations += self.problems
        return report

    async def stop_all(self, timeout: float = 30.0) -> None:
        """Stop every live instance gracefully (SIGTERM: they flush their trace)."""
        for inst in self.live():
            inst.proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(timeout):
            while any(i.alive for i in self.live()):
                await anyio.sleep(0.05)

    async def trace_report(self, tracing_url: str) -> TraceReport:
        """Replay every instance's journal (as a next process would), then compare the rows of
        ``JOB_EXECUTION_LOG`` with the item runs in the histories."""
        for inst in self.cluster.instances.values():
            await replay_journal(tracing_url, self.cluster.journal(inst.instance_id))
        conn = await asyncpg.connect(tracing_url)
        try:
            rows = await conn.fetch(
                "SELECT task_id, sharding_item, complete_time FROM JOB_EXECUTION_LOG"
            )
        finally:
            await conn.close()
        written = {(r["task_id"], r["sharding_item"]): r["complete_time"] for r in rows}
        out = TraceReport(rows=len(written))
        for inst in self.cluster.instances.values():
            death, window = self.deaths.get(inst.instance_id, (None, 0.0))
            starts: dict[tuple[str, int], float] = {}
            ends: dict[tuple[str, int], float] = {}
            for r in inst.records():
                if r["ev"] in ("start", "end"):
                    (starts if r["ev"] == "start" else ends)[(r["task_id"], r["item"])] = r["t"]
            out.runs += len(starts)
            for key, at in starts.items():
                near = death is not None and death - window <= at
                what = f"{inst.instance_id} {key[0]} item {key[1]} started {at:.3f}"
                if key not in written:
                    if near:
                        out.lost_in_window += 1
                    else:
                        out.lost_beyond_window.append(f"no row: {what} (death {death})")
                elif key in ends and written[key] is None:
                    if death is not None and death - window <= ends[key]:
                        out.incomplete_in_window += 1
                    else:
                        out.incomplete_beyond_window.append(
                            f"no completion: {what}, ended {ends[key]:.3f} (death {death})"
                        )
        return out


async def replay_journal(tracing_url: str, journal: Path, timeout: float = 60.0) -> None:
    """What the next process does with a journal left behind: write it to the database."""
    if not journal.exists() and not list(journal.parent.glob(journal.name + ".*")):
        return
    bus = TraceBus([PostgresSink(tracing_url)], journal_path=journal)
    async with AsyncExitStack() as stack:
        await bus.start(stack)
        with anyio.fail_after(timeout):
            await bus.flush()
