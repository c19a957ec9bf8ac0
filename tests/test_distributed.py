"""Distributed mode: instance processes sharing a job's items through a real ZooKeeper."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import anyio
import pytest

from aioelastic._sharding import ShardingStrategy
from tests.harness.cluster import (
    Cluster,
    check_no_overlap,
    expected,
    read_assignment,
    ready,
    url_with,
    wait_assignment,
    zk_client,
)
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer, _close_session

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.timeout(120)]


@pytest.mark.parametrize("strategy", list(ShardingStrategy))
async def test_three_instances_share_items_by_strategy(
    zk_url: str, cluster_factory: Callable[..., Cluster], strategy: ShardingStrategy
) -> None:
    total = 10
    cluster = cluster_factory(
        zk_url,
        cron="0/1 * * * * ?",
        sharding_total_count=total,
        sharding_strategy=strategy.value,
        duration=0.05,
    )
    ids = ["inst-a", "inst-b", "inst-c"]
    procs = [cluster.start(i) for i in ids]
    await ready(cluster, *procs)
    async with zk_client(zk_url) as reg:
        committed = await wait_assignment(reg, zk_url, total, expected(ids, total, strategy), 15)
        # Every fire after the commit ran each item once, on its owner.
        owner = {i: inst for inst, items in expected(ids, total, strategy).items() for i in items}
        await anyio.sleep(2.2)
    runs = [r for r in cluster.history() if r.start > committed + 0.01]
    assert runs, "no fire after the assignment was committed"
    assert all(owner[r.item] == r.instance for r in runs)
    check_no_overlap(cluster.history())


async def test_join_and_graceful_leave_reshard_within_one_fire(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    total = 10
    url = url_with(zk_server, session_timeout=10)  # long: a reshard must not wait for it
    cluster = cluster_factory(url, cron="0/1 * * * * ?", sharding_total_count=total, duration=0.05)
    ids = ["inst-a", "inst-b", "inst-c"]
    procs = {i: cluster.start(i) for i in ids}
    await ready(cluster, *procs.values())
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, total, expected(ids, total), 15)

        fourth = cluster.start("inst-d")
        await ready(cluster, fourth)
        joined = time.time()
        committed = await wait_assignment(reg, url, total, expected([*ids, "inst-d"], total), 5)
        assert committed - joined < 1.5, f"join reshard took {committed - joined:.2f}s"

        procs["inst-b"].signal(signal.SIGTERM)
        left = time.time()
        remaining = ["inst-a", "inst-c", "inst-d"]
        committed = await wait_assignment(reg, url, total, expected(remaining, total), 5)
        assert committed - left < 2.5, f"leave reshard took {committed - left:.2f}s (timeout 10)"
        await anyio.to_thread.run_sync(lambda: procs["inst-b"].proc.wait(10))
        assert procs["inst-b"].has("stopped")

        await anyio.sleep(1.5)
        after = [r for r in cluster.history() if r.start > committed + 0.01]
        owners = {i: inst for inst, items in expected(remaining, total).items() for i in items}
        assert after and all(owners[r.item] == r.instance for r in after)
    check_no_overlap(cluster.history())


async def test_sigkilled_instance_is_dropped_after_session_timeout(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    total = 6
    timeout = 4.0
    url = url_with(zk_server, session_timeout=timeout)
    cluster = cluster_factory(url, cron="0/1 * * * * ?", sharding_total_count=total, duration=0.05)
    ids = ["inst-a", "inst-b", "inst-c"]
    procs = {i: cluster.start(i) for i in ids}
    await ready(cluster, *procs.values())
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, total, expected(ids, total), 15)
        procs["inst-c"].signal(signal.SIGKILL)
        killed = time.time()
        await anyio.sleep(timeout / 2)
        # Its session (and so its instance node) outlives the process until the timeout.
        assert await read_assignment(reg, url, total) == expected(ids, total)
        committed = await wait_assignment(reg, url, total, expected(ids[:2], total), timeout + 5)
        assert timeout / 2 <= committed - killed <= timeout + 3
    check_no_overlap(cluster.history())


async def test_server_restart_is_survived_without_double_runs(
    zk_restartable_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    total = 6
    url = url_with(zk_restartable_server, session_timeout=6)
    cluster = cluster_factory(url, cron="0/1 * * * * ?", sharding_total_count=total, duration=0.3)
    ids = ["inst-a", "inst-b", "inst-c"]
    procs = [cluster.start(i) for i in ids]
    await ready(cluster, *procs)
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, total, expected(ids, total), 15)
    await anyio.to_thread.run_sync(zk_restartable_server.restart)
    restarted = time.time()
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, total, expected(ids, total), 20)
    # Fires go on after the restart, on every instance.
    await eventually(
        lambda: {r.instance for r in cluster.history() if r.start > restarted + 1} == set(ids),
        15,
        0.2,
        what="fires resuming on every instance",
    )
    assert all(p.alive for p in procs)
    check_no_overlap(cluster.history())


async def test_forced_session_expiry_is_survived(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    total = 6
    url = url_with(zk_server, session_timeout=4)
    cluster = cluster_factory(url, cron="0/1 * * * * ?", sharding_total_count=total, duration=0.3)
    ids = ["inst-a", "inst-b", "inst-c"]
    procs = {i: cluster.start(i) for i in ids}
    await ready(cluster, *procs.values())
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, total, expected(ids, total), 15)
        victim = procs["inst-a"]
        session = next(r for r in victim.records() if r["ev"] == "session")
        host, _, port = zk_server.hosts.rpartition(":")
        victim.expiries.append(time.time())

        async def closed() -> bool:
            password = bytes.fromhex(session["password"])
            return not await _close_session(host, int(port), session["session_id"], password)

        await eventually(closed, 10, what="the session closed")
        expired = time.time()
        # It gets a new session, re-registers, and the cluster settles on all three again.
        await eventually(
            lambda: any(
                r["ev"] == "session"
                and r["session_id"] != session["session_id"]
                and r["state"] == "CONNECTED"
                for r in victim.records()
            ),
            20,
            0.1,
            what="a new session",
            detail=lambda: cluster.stderr(victim),
        )
        await wait_assignment(reg, url, total, expected(ids, total), 20)
    await eventually(
        lambda: any(r.instance == "inst-a" and r.start > expired + 1 for r in cluster.history()),
        10,
        0.2,
        what="the expired instance resuming its items",
    )
    check_no_overlap(cluster.history())
