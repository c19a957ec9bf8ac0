"""Fault injection for cluster runs: kill, pause, server restart, session expiry, and a seeded
random schedule of them. Used by ``tests/test_chaos.py`` and ``benchmarks/chaos_soak.py``."""

from __future__ import annotations

import random
import signal
import time
from dataclasses import dataclass, field

import anyio

from tests.cluster import Cluster, Instance, read_assignment, zk_client
from tests.harness.zookeeper import ZooKeeperServer, _close_session
from tests.history import Fault, Report, check_history

__all__ = ["Chaos"]


@dataclass
class Chaos:
    """Injects faults into a running ``Cluster`` and records them for the history checker."""

    cluster: Cluster
    server: ZooKeeperServer
    session_timeout: float
    total: int
    faults: list[Fault] = field(default_factory=list)
    _spawned: int = 0

    def live(self) -> list[Instance]:
        return [i for i in self.cluster.instances.values() if i.alive and i.died_at is None]

    async def replace(self) -> Instance:
        """Start a fresh instance (the cluster keeps its size after a kill)."""
        self._spawned += 1
        inst = self.cluster.start(f"inst-r{self._spawned}")
        await anyio.to_thread.run_sync(lambda: self.cluster.wait_ready(inst))
        return inst

    async def kill(self, inst: Instance) -> None:
        inst.signal(signal.SIGKILL)
        now = time.time()
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
        with anyio.fail_after(10):
            while await _close_session(
                host, int(port), session["session_id"], bytes.fromhex(session["password"])
            ):
                await anyio.sleep(0.01)
        self.faults.append(Fault("expire", start, time.time() + 2, inst.instance_id))

    async def random_fault(self, rng: random.Random) -> str:
        kind = rng.choice(["kill", "pause", "restart", "expire"])
        live = self.live()
        victim = rng.choice(live) if live else None
        if kind == "kill" and victim is not None and len(live) > 1:
            await self.kill(victim)
            await self.replace()
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
        return check_history(
            self.cluster.history(),
            total=self.total,
            faults=self.faults,
            settle=settle,
            until=until,
            assignment=assignment or {},
            live=live_ids,
        )
