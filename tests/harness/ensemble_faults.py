"""ZooKeeper-server faults for cluster runs on a ``ZooKeeperEnsemble`` (issue 16): kill, pause,
restart or wipe one member, kill the leader, lose the quorum. Recorded as ``Fault``s (cluster-wide:
``instance=None``) for the history checker, next to the instance faults of
``tests.harness.chaos.Chaos``.

``EnsembleServer`` lets ``Chaos`` (written for one server) drive an ensemble unchanged: its
``restart_server`` restarts every member, its ``expire`` attaches through a serving member.
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass

import anyio

from tests.harness.history import Fault
from tests.harness.zookeeper import EnsembleMember, ZooKeeperEnsemble

__all__ = ["SERVER_FAULTS", "EnsembleFaults", "EnsembleServer"]

SERVER_FAULTS = ("zk-kill", "zk-pause", "zk-leader-kill", "zk-wipe", "zk-quorum-loss")


class EnsembleServer:
    """The ``ZooKeeperServer`` surface ``Chaos`` and ``url_with`` use, over a whole ensemble."""

    def __init__(self, ensemble: ZooKeeperEnsemble) -> None:
        self.ensemble = ensemble

    @property
    def hosts(self) -> str:
        """One serving member's ``host:port`` (``Chaos.expire`` attaches there)."""
        return self.ensemble.leader().hosts

    def url(self, namespace: str, **options: float) -> str:
        return self.ensemble.url(namespace, **options)

    def start(self) -> None:
        self.ensemble.heal()

    def stop(self) -> None:
        self.ensemble.close()

    def wipe(self) -> None:
        """Every member emptied at once: a rebuilt ensemble (``Chaos.wipe``)."""
        for member in self.ensemble.members:
            member.stop(kill=True)
            member.clear_data()
        self.ensemble.start()

    def close(self) -> None:
        self.ensemble.close()


@dataclass
class EnsembleFaults:
    """Injects server faults; ``faults`` is shared with ``Chaos.faults``."""

    ensemble: ZooKeeperEnsemble
    faults: list[Fault]
    session_timeout: float
    kinds: tuple[str, ...] = SERVER_FAULTS

    def _record(self, kind: str, start: float, lost_sessions: bool) -> None:
        # The effect is over once the quorum is back, plus a session timeout and a reshard
        # where sessions may have been lost (a frozen leader stalls the election first).
        tail = self.session_timeout + 2 if lost_sessions else 1.0
        self.faults.append(Fault(kind, start, time.time() + tail))

    async def _heal(self) -> None:
        await anyio.to_thread.run_sync(self.ensemble.heal)

    async def kill(self, member: EnsembleMember, down: float, kind: str = "zk-kill") -> None:
        """SIGKILL one member, restart it ``down`` seconds later."""
        start = time.time()
        await anyio.to_thread.run_sync(lambda: member.stop(kill=True))
        await anyio.sleep(down)
        await self._heal()
        self._record(kind, start, lost_sessions=kind == "zk-leader-kill")

    async def pause(self, member: EnsembleMember, seconds: float) -> None:
        """SIGSTOP one member for ``seconds`` (its clients must move; a frozen leader means an
        election once the followers give up on it)."""
        start = time.time()
        member.pause()
        try:
            await anyio.sleep(seconds)
        finally:
            member.resume()
        await self._heal()
        self._record("zk-pause", start, lost_sessions=True)

    async def wipe(self, member: EnsembleMember) -> None:
        """Restart one member with an empty data dir: it resyncs from the leader."""
        start = time.time()
        await anyio.to_thread.run_sync(member.wipe)
        await self._heal()
        self._record("zk-wipe", start, lost_sessions=False)

    async def quorum_loss(self, seconds: float) -> None:
        """Two of three members down for ``seconds`` (past the session timeout: all lost)."""
        start = time.time()
        for member in self.ensemble.members[1:]:
            await anyio.to_thread.run_sync(functools.partial(member.stop, kill=True))
        await anyio.sleep(seconds)
        await self._heal()
        self._record("zk-quorum-loss", start, lost_sessions=True)

    async def random_fault(self, rng: random.Random) -> str:
        """One fault of ``kinds``, at random; returns its kind."""
        kind = rng.choice(self.kinds)
        member = rng.choice(self.ensemble.members)
        if kind == "zk-kill":
            await self.kill(member, rng.uniform(0.5, 3.0))
        elif kind == "zk-leader-kill":
            leader = await anyio.to_thread.run_sync(self.ensemble.leader)
            await self.kill(leader, rng.uniform(0.5, 3.0), kind)
        elif kind == "zk-pause":
            await self.pause(member, self.session_timeout * rng.uniform(0.5, 1.5))
        elif kind == "zk-wipe":
            await self.wipe(member)
        else:
            await self.quorum_loss(self.session_timeout * rng.uniform(1.2, 2.0))
        return kind
