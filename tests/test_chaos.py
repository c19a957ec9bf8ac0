"""Chaos: faults injected into a 3-process cluster on a real ZooKeeper; the history checker
must find no violated invariant (tests/harness/history.py). The hostile kinds (a blocked event loop,
corrupted nodes, a wiped server, a kill during a trace outage) have one short test each; the
soak (benchmarks/chaos_soak.py) mixes them all at random for minutes."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import pytest

from tests.harness.chaos import CORRUPTIONS, Chaos
from tests.harness.cluster import (
    Cluster,
    ItemRun,
    expected,
    ready,
    url_with,
    wait_assignment,
    zk_client,
)
from tests.harness.history import Fault, check_history
from tests.harness.postgres import PostgresServer
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.timeout(180)]

TIMEOUT = 3.0
TOTAL = 6
IDS = ["inst-a", "inst-b", "inst-c"]


async def start(
    server: ZooKeeperServer,
    cluster_factory: Callable[..., Cluster],
    tracing_url: str | None = None,
) -> tuple[Chaos, str]:
    url = url_with(server, session_timeout=TIMEOUT)
    cluster = cluster_factory(
        url, cron="0/1 * * * * ?", sharding_total_count=TOTAL, failover=True, duration=0.4
    )
    cluster.tracing_url = tracing_url
    procs = [cluster.start(i) for i in IDS]
    await ready(cluster, *procs)
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, TOTAL, expected(IDS, TOTAL), 15)
    return Chaos(cluster, server, TIMEOUT, TOTAL), url


@pytest.mark.parametrize("fault", ["kill", "pause", "restart", "expire"])
async def test_invariants_hold_under_fault(
    fault: str, zk_restartable_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    chaos, url = await start(zk_restartable_server, cluster_factory)
    await anyio.sleep(2.2)  # the workload: fires every second
    victim = chaos.cluster.instances["inst-c"]
    if fault == "kill":
        await chaos.kill(victim)
    elif fault == "pause":
        await chaos.pause(victim, TIMEOUT * 1.5)
    elif fault == "restart":
        await chaos.restart_server(1.0)
    else:
        await chaos.expire(victim)
    await anyio.sleep(TIMEOUT + 7)  # the workload goes on after the fault
    report = await chaos.finish(url, settle=2.0)
    assert report.ok, str(report)
    assert report.fires_checked >= 2, str(report)


async def test_invariants_hold_under_random_faults(
    zk_restartable_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    chaos, url = await start(zk_restartable_server, cluster_factory)
    rng = random.Random(20261121)
    kinds = []
    for _ in range(4):
        await anyio.sleep(rng.uniform(1.5, 3.0))
        kinds.append(await chaos.random_fault(rng))
    await anyio.sleep(TIMEOUT + 7)
    report = await chaos.finish(url, settle=2.0)
    assert report.ok, f"faults {kinds}: {report}"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["block", "corrupt", "wipe"])
async def test_invariants_hold_under_hostile_fault(
    fault: str, zk_restartable_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    chaos, url = await start(zk_restartable_server, cluster_factory)
    await anyio.sleep(2.2)
    if fault == "block":  # its watchdog ends it (status 70) before its session can expire
        assert await chaos.block_loop(chaos.cluster.instances["inst-c"])
        await chaos.replace()
    elif fault == "corrupt":  # each kind of garbage, fixed or repaired by the leader
        rng = random.Random(11)
        for what in CORRUPTIONS:
            await chaos.corrupt(what, rng)
    else:
        await chaos.wipe()
    await anyio.sleep(TIMEOUT + 5)
    report = await chaos.finish(url, settle=2.0)
    assert report.ok, str(report)
    assert report.fires_checked >= 1, str(report)


@pytest.mark.slow
@pytest.mark.postgres
async def test_a_kill_during_a_trace_outage_loses_no_row_beyond_the_window(
    zk_server: ZooKeeperServer,
    cluster_factory: Callable[..., Cluster],
    postgres_server: PostgresServer,
    postgres_url: str,
) -> None:
    chaos, url = await start(zk_server, cluster_factory, tracing_url=postgres_url)
    chaos.postgres = postgres_server
    await anyio.sleep(2.2)
    victim = chaos.cluster.instances["inst-c"]
    await chaos.kill_during_trace_outage(victim, down=2.5)
    journal = chaos.cluster.journal(victim.instance_id)
    assert journal.exists() and journal.stat().st_size > 0  # its runs in the outage
    await anyio.sleep(TIMEOUT + 2)
    report = await chaos.finish(url, settle=2.0)
    assert report.ok, str(report)
    await chaos.stop_all()
    trace = await chaos.trace_report(postgres_url)
    assert trace.ok, str(trace)
    assert trace.runs >= 20 and trace.rows >= trace.runs - trace.lost_in_window, str(trace)


def test_a_run_started_while_the_config_is_held_is_a_violation() -> None:
    hold = Fault("hold", 100.0, 104.0)
    early = ItemRun("inst-a", "cluster_job", 0, "t1", "NORMAL_TRIGGER", 100.5, 100.9, True)
    held = ItemRun("inst-b", "cluster_job", 1, "t2", "FAILOVER", 102.0, 102.4, True)
    after = ItemRun("inst-a", "cluster_job", 0, "t3", "NORMAL_TRIGGER", 104.1, 104.5, True)
    report = check_history([early, held, after], total=2, faults=[hold], failover=False)
    assert len(report.violations) == 1 and "inst-b" in report.violations[0], str(report)
