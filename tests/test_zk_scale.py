"""The ZooKeeper side of scale: requests per fire counted by the server itself, the shared view
and its fallback for servers without persistent watches."""

from __future__ import annotations

import contextlib
import uuid
from contextlib import AsyncExitStack

import anyio
import pytest

from aioelastic import Observer, Scheduler, Settings, ShardingContext
from aioelastic.registry import _wire
from aioelastic.registry._view import JobView, TreeView
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper]


class Fires(Observer):
    def __init__(self) -> None:
        self.count = 0

    def fire_started(self, job: str, scheduled: object, started: object) -> None:
        self.count += 1


def counters(server: ZooKeeperServer, namespace: str) -> dict[str, int]:
    """The server's own counts of requests under ``/namespace`` (a multi-op's ops count one
    write each) and of every packet it received."""
    values: dict[str, int] = {}
    for line in (server.four_letter("mntr", timeout=5) or b"").decode().splitlines():
        key, _, value = line.partition("\t")
        with contextlib.suppress(ValueError):
            values[key] = int(float(value))
    return {
        "reads": values.get(f"zk_cnt_{namespace}_read_per_namespace", 0),
        "packets": values.get("zk_packets_received", 0),
    }


async def noop(ctx: ShardingContext) -> None:
    pass


def instances(url: str, fires: list[Fires], **job: object) -> list[Scheduler]:
    out = []
    for k, counter in enumerate(fires):
        s = Scheduler(
            settings=Settings(registry_url=url, instance_id=f"i{k}", shutdown_grace_period=1),
            observers=[counter],
        )
        s.add_job(noop, name="job", cron="* * * * * ?", sharding_total_count=4, **job)
        out.append(s)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("failover", "most"), [(False, 2), (True, 3)])
async def test_a_fire_costs_two_writes_and_no_read_on_the_server(
    zk_server: ZooKeeperServer, failover: bool, most: int
) -> None:
    namespace = f"t{uuid.uuid4().hex[:12]}"
    url = zk_server.url(namespace, session_timeout=10, connect_timeout=5)
    fires = [Fires(), Fires()]
    async with AsyncExitStack() as stack:
        for s in instances(url, fires, failover=failover):
            await stack.enter_async_context(s)
        # Settled: both instances fired since the assignment over both was committed.
        await eventually(
            lambda: [f.count for f in fires], 60, 0.1, until=lambda c: min(c) >= 3, what="fires"
        )
        before, fired = counters(zk_server, namespace), sum(f.count for f in fires)
        await eventually(
            lambda: sum(f.count for f in fires) - fired, 60, 0.1, until=lambda n: n >= 16
        )
        after, fired = counters(zk_server, namespace), sum(f.count for f in fires) - fired
    reads = after["reads"] - before["reads"]
    packets = after["packets"] - before["packets"]
    assert reads == 0, f"{reads} reads for {fired} fires"
    # Pings and the fires in flight at either count: a little slack, far below the old 8-10.
    assert packets <= most * fired + 6, f"{packets} packets for {fired} fires"


async def test_without_persistent_watches_every_job_keeps_a_view_of_its_own(
    zk_server: ZooKeeperServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An opcode no server knows: refused like addWatch by a ZooKeeper older than 3.6 (which
    # then drops the connection too).
    monkeypatch.setattr(_wire.AddWatchRequest, "opcode", 200)
    url = zk_server.url(f"t{uuid.uuid4().hex[:12]}", session_timeout=3, connect_timeout=5)
    fires = [Fires()]
    async with AsyncExitStack() as stack:
        (scheduler,) = instances(url, fires)
        await stack.enter_async_context(scheduler)
        await eventually(lambda: fires[0].count, 10, 0.05, until=lambda n: n >= 2, what="fires")
        runner = scheduler._runners["job"]
        assert isinstance(runner.coordinator.view, TreeView)


async def test_with_persistent_watches_jobs_share_one_view(zk_url: str) -> None:
    scheduler = Scheduler(settings=Settings(registry_url=zk_url, instance_id="one"))
    for name in ("a", "b"):
        scheduler.add_job(noop, name=name, sharding_total_count=2)
    async with scheduler:
        views = [r.coordinator.view for r in scheduler._runners.values()]
        assert all(isinstance(v, JobView) for v in views)
        assert len({id(v._shared) for v in views if isinstance(v, JobView)}) == 1
        await anyio.sleep(0)
