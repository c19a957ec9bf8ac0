"""Failover across instance processes on a real ZooKeeper: SIGKILL, SIGSTOP, whole-cluster death."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest

from tests.harness.cluster import (
    Cluster,
    Instance,
    ItemRun,
    check_no_overlap,
    expected,
    ready,
    trigger,
    url_with,
    wait_assignment,
    wait_sessions_expired,
    zk_client,
)
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.timeout(120)]

TIMEOUT = 3.0  # session timeout of these tests' instances
IDS = ["inst-a", "inst-b", "inst-c"]  # inst-c sorts first: it owns items 0 and 1 of 6


async def start_cluster(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster], **options: object
) -> tuple[Cluster, str, dict[str, Instance]]:
    url = url_with(zk_server, session_timeout=TIMEOUT)
    cluster = cluster_factory(url, sharding_total_count=6, failover=True, **options)
    procs = {i: cluster.start(i) for i in IDS}
    await ready(cluster, *procs.values())
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, 6, expected(IDS, 6), 15)
    return cluster, url, procs


def failover_runs(runs: list[ItemRun]) -> list[ItemRun]:
    return [r for r in runs if r.source == "FAILOVER"]


async def test_sigkill_mid_run_fails_over_unfinished_items_only(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    # Item 0 finishes fast, item 1 runs long: killing inst-c in between leaves only item 1.
    cluster, url, procs = await start_cluster(
        zk_server, cluster_factory, duration=0.2, durations={"1": 6, "0": 0.1, "2": 6}
    )
    await trigger(url, *IDS)
    await eventually(
        cluster.history,
        10,
        0.05,
        until=lambda runs: (
            any(r.instance == "inst-c" and r.item == 0 and r.end for r in runs)
            and any(r.instance == "inst-c" and r.item == 1 for r in runs)
        ),
        what="inst-c did not finish item 0 and start item 1",
        detail=cluster.history,
    )
    procs["inst-c"].signal(signal.SIGKILL)
    killed = time.time()
    runs = await eventually(
        cluster.history,
        TIMEOUT + 5,
        0.05,
        until=lambda runs: any(r.item == 1 for r in failover_runs(runs)),
        what="item 1 was not failed over",
        detail=cluster.history,
    )
    taken = [r for r in failover_runs(runs) if r.item == 1]
    assert len(taken) == 1 and taken[0].instance in {"inst-a", "inst-b"}
    assert taken[0].start - killed <= TIMEOUT + 1.5, "failover waited for more than the session"
    assert "@-@FAILOVER@-@" in taken[0].task_id
    # The marker: the failover run of item 1 lasted its seconds to the end; a failover of item 0
    # would have been claimed along with it, long before.
    await eventually(
        cluster.history,
        10,
        0.05,
        until=lambda runs: any(r.item == 1 and r.end for r in failover_runs(runs)),
        what="the failover run of item 1 ending",
        detail=cluster.history,
    )
    assert not [r for r in failover_runs(cluster.history()) if r.item == 0], "finished item re-run"
    check_no_overlap(cluster.history())


async def test_all_running_items_are_claimed_in_one_pass_spread_over_survivors(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster, url, procs = await start_cluster(zk_server, cluster_factory, duration=4)
    await trigger(url, "inst-c")
    await eventually(
        cluster.history,
        10,
        0.05,
        until=lambda runs: {r.item for r in runs if r.instance == "inst-c"} == {0, 1},
        what="inst-c did not start items 0 and 1",
        detail=cluster.history,
    )
    procs["inst-c"].signal(signal.SIGKILL)
    runs = await eventually(
        cluster.history,
        TIMEOUT + 5,
        0.05,
        until=lambda runs: {r.item for r in failover_runs(runs)} == {0, 1},
        what="items 0 and 1 were not both failed over",
        detail=cluster.history,
    )
    takers = {r.instance for r in failover_runs(runs)}
    assert takers == {"inst-a", "inst-b"}, f"not spread over the survivors: {failover_runs(runs)}"
    starts = sorted(r.start for r in failover_runs(runs))
    assert starts[-1] - starts[0] < 1.0, "claimed in several rounds"
    check_no_overlap(cluster.history())


async def test_cluster_restarted_after_everyone_died_recovers_running_items(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster, url, procs = await start_cluster(zk_server, cluster_factory, duration=5)
    await trigger(url, *IDS)
    await eventually(
        cluster.history,
        10,
        0.05,
        until=lambda runs: len({r.item for r in runs}) == 6,
        what="not every item started",
        detail=cluster.history,
    )
    for proc in procs.values():
        proc.signal(signal.SIGKILL)
    await wait_sessions_expired(url, IDS, TIMEOUT + 10)
    fresh = [cluster.start(name) for name in ("inst-x", "inst-y")]
    await ready(cluster, *fresh)
    runs = await eventually(
        cluster.history,
        15,
        0.05,
        until=lambda runs: {r.item for r in failover_runs(runs)} == set(range(6)),
        what="the restarted cluster did not recover every item left running",
        detail=cluster.history,
    )
    assert {r.instance for r in failover_runs(runs)} <= {"inst-x", "inst-y"}
    check_no_overlap(cluster.history())


async def test_paused_instance_does_not_go_on_after_waking(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    cluster, url, procs = await start_cluster(zk_server, cluster_factory, duration=8)
    await trigger(url, "inst-c")
    await eventually(
        cluster.history,
        10,
        0.05,
        until=lambda runs: {r.item for r in runs if r.instance == "inst-c"} == {0, 1},
        what="inst-c did not start its items",
        detail=cluster.history,
    )
    victim = procs["inst-c"]
    victim.signal(signal.SIGSTOP)
    await eventually(
        cluster.history,
        TIMEOUT + 6,
        0.05,
        until=lambda runs: {r.item for r in failover_runs(runs)} == {0, 1},
        what="the paused instance's items were not failed over",
        detail=cluster.history,
    )
    victim.signal(signal.SIGCONT)
    woke = time.time()
    runs = await eventually(
        cluster.history,
        5,
        0.05,
        until=lambda runs: all(r.end is not None for r in runs if r.instance == "inst-c"),
        what="the paused instance did not stop its items after waking",
        detail=cluster.history,
    )
    for run in (r for r in runs if r.instance == "inst-c" and r.item in {0, 1}):
        assert run.ok is False and run.end is not None and run.end - woke < 0.5
    assert victim.alive
    check_no_overlap(cluster.history())
