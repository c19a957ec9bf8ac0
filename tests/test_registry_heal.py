"""ZooKeeper restarted with an empty data directory (issue 11.6): instances notice the missing
nodes, re-create what they own, elect, reshard and fire again, with no item run twice."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

from aioelastic.registry import SessionState
from tests.harness.cluster import Cluster, expected, ready, url_with, wait_assignment, zk_client
from tests.harness.history import Fault, check_history
from tests.harness.zookeeper import Recorder, ZooKeeperServer

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.slow, pytest.mark.timeout(120)]

TIMEOUT = 3.0
TOTAL = 4
IDS = ["inst-a", "inst-b"]


async def test_instances_rebuild_their_nodes_after_the_server_lost_its_data(
    zk_restartable_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    server = zk_restartable_server
    url = url_with(server, session_timeout=TIMEOUT)
    cluster = cluster_factory(
        url, cron="0/1 * * * * ?", sharding_total_count=TOTAL, failover=True, duration=0.3
    )
    procs = [cluster.start(i) for i in IDS]
    await ready(cluster, *procs)
    want = expected(IDS, TOTAL)
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, TOTAL, want, 15)
    await anyio.sleep(2.0)

    wiped_at = time.time()
    await anyio.to_thread.run_sync(server.wipe)
    async with zk_client(url) as reg:
        healed_at = await wait_assignment(reg, url, TOTAL, want, 30, cluster)
    await anyio.sleep(4.0)  # fires after the recovery
    until = time.time()

    runs = cluster.history()
    report = check_history(
        runs,
        total=TOTAL,
        faults=[Fault("wipe", wiped_at, healed_at)],
        settle=2.0,
        until=until,
        assignment=want,
        live=IDS,
    )
    assert report.ok, str(report)
    # Items fire again after the recovery, each on exactly one instance (its owner).
    owners = {item: inst for inst, items in want.items() for item in items}
    after = [r for r in runs if r.start > healed_at + 1.0 and r.scheduled is not None]
    fires = {r.scheduled for r in after}
    assert len(fires) >= 2, f"no fires after the recovery: {runs[-10:]}"
    for run in after:
        assert run.instance == owners[run.item], run
    for when in fires:
        items = sorted(r.item for r in after if r.scheduled == when)
        assert len(items) == len(set(items)), f"an item ran twice at fire {when}: {items}"
    stderr = "".join(cluster.stderr(p) for p in procs)
    assert "re-created" in stderr, stderr


async def test_session_resumes_after_a_restart_that_follows_a_wipe(
    zk_restartable_server: ZooKeeperServer,
) -> None:
    """After a wipe the client must forget the old server's zxid: presenting it later makes
    the new server refuse every resume (the client has seen a zxid ahead of it)."""
    server = zk_restartable_server
    url = url_with(server, session_timeout=10)  # outlives a JVM restart on a loaded machine
    rec = Recorder()
    async with zk_client(url) as reg:
        reg.add_session_listener(rec)
        for i in range(50):  # the old server's zxid moves well ahead of the new one's
            await reg.create(f"/n{i}")
        await anyio.to_thread.run_sync(server.wipe)
        await rec.until(lambda calls: SessionState.LOST in rec.states(), timeout=30)
        await rec.until(lambda calls: rec.states()[-1] is SessionState.CONNECTED, timeout=15)
        await reg.create("/after-wipe")
        session = reg.session_id
        rec.calls.clear()
        await anyio.to_thread.run_sync(server.restart)
        await rec.until(lambda calls: SessionState.CONNECTED in rec.states(), timeout=15)
        assert SessionState.LOST not in rec.states(), rec.calls
        assert reg.session_id == session
