"""Two processes with the same instance id (a copied env var, a reused pod name), on a real
ZooKeeper: the second logs one clear ERROR and takes no step as owner while another session
holds ``instances/{id}``; it fails its start after a bounded wait (twice the session timeout
plus 2 s), or joins once a restarted process's old session has expired. The first keeps its
items. Histories are labelled per process, so the checker sees the two as different runners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from tests.harness.cluster import (
    JOB,
    ROOT,
    Cluster,
    Instance,
    check_no_overlap,
    ready,
    url_with,
    wait_assignment,
    zk_client,
)
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.slow, pytest.mark.timeout(120)]

SAME = "same-id"
TOTAL = 4
CONFLICT = f"instance id {SAME!r} is already registered by another session"


class Labelled(Instance):
    """An instance process whose history records carry its label, not the shared id."""

    def records(self) -> list[dict[str, Any]]:
        return [{**r, "instance": self.instance_id} for r in super().records()]


def start_as(cluster: Cluster, label: str) -> Labelled:
    log = cluster.workdir / f"{label}.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.harness.cluster_instance",
            "--registry",
            cluster.registry_url,
            "--log",
            str(log),
            "--instance-id",
            SAME,
            "--job-options",
            json.dumps(cluster.job_options),
            "--grace",
            str(cluster.grace),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=open(cluster.workdir / f"{label}.stderr", "ab"),
    )
    inst = Labelled(label, log, proc)
    cluster.instances[label] = inst
    return inst


def session_of(inst: Instance) -> dict[str, Any]:
    return next(r for r in inst.records() if r["ev"] == "session" and r["state"] == "CONNECTED")


async def instance_owner(url: str) -> int | None:
    paths = JobPaths(parse_registry_url(url).namespace, JOB)
    async with zk_client(url) as reg:
        stat = await reg.exists(paths.instance(SAME))
    return None if stat is None else stat.ephemeral_owner


def cluster_for(cluster_factory: Any, url: str) -> Cluster:
    cluster: Cluster = cluster_factory(
        url, cron="0/1 * * * * ?", sharding_total_count=TOTAL, duration=0.3
    )
    return cluster


async def test_a_second_process_with_the_same_id_fails_its_start_and_takes_nothing(
    zk_server: ZooKeeperServer, cluster_factory: Any
) -> None:
    url = url_with(zk_server, session_timeout=2)  # the second waits 2 * 2 + 2 = 6 s
    cluster = cluster_for(cluster_factory, url)
    first = start_as(cluster, "first")
    await ready(cluster, first)
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, TOTAL, {SAME: list(range(TOTAL))}, 15)
    second = start_as(cluster, "second")
    started = time.time()
    await eventually(lambda: not second.alive, 40, 0.05, what="the second process's start failing")
    waited = time.time() - started
    exited = time.time()
    assert second.proc.returncode != 0
    assert not second.has("ready")
    err = cluster.stderr(second, tail=None)
    assert err.count(CONFLICT) == 1, err
    assert "start fails after 6s" in err and "InstanceIdConflictError" in err
    assert 6 <= waited < 6 + 20  # the bounded wait, plus start-up on a busy machine
    # The first still holds its node and every item, and keeps running them.
    assert await instance_owner(url) == session_of(first)["session_id"]
    await eventually(
        lambda: len({r.item for r in cluster.history() if r.start > exited}) == TOTAL,
        10,
        0.05,
        what="the first running all its items after the second gave up",
    )
    assert first.alive
    assert not any(r.instance == "second" for r in cluster.history())
    check_no_overlap(cluster.history())


async def test_a_restarted_process_waits_for_its_old_session_then_joins(
    zk_server: ZooKeeperServer, cluster_factory: Any
) -> None:
    url = url_with(zk_server, session_timeout=4)
    cluster = cluster_for(cluster_factory, url)
    old = start_as(cluster, "old")
    await ready(cluster, old)
    await eventually(
        lambda: any(r.instance == "old" for r in cluster.history()), 10, 0.05, what="a run"
    )
    old.signal(signal.SIGKILL)  # its session (and instance node) lives on for up to 4 s
    killed = time.time()
    new = start_as(cluster, "new")
    await ready(cluster, new)
    if session_of(new)["t"] < killed + 3:  # it started before the old session could expire
        assert CONFLICT in cluster.stderr(new, tail=None)
    assert await instance_owner(url) == session_of(new)["session_id"]
    await eventually(
        lambda: len({r.item for r in cluster.history() if r.instance == "new"}) == TOTAL,
        10,
        0.05,
        what="the restarted process running every item",
    )
    assert min(r.start for r in cluster.history() if r.instance == "new") > killed
    check_no_overlap(cluster.history())


async def test_a_re_registration_finding_the_id_taken_takes_no_items(
    zk_server: ZooKeeperServer, cluster_factory: Any
) -> None:
    url = url_with(zk_server, session_timeout=4)  # the second waits up to 10 s at start
    cluster = cluster_for(cluster_factory, url)
    first = start_as(cluster, "first")
    await ready(cluster, first)
    second = start_as(cluster, "second")
    await eventually(
        lambda: CONFLICT in cluster.stderr(second, tail=None),
        15,
        0.05,
        what="the second's conflict ERROR",
    )
    # The first freezes past its session timeout (a long GC pause, a partition): its session
    # expires and the waiting second gets the node. Woken, the first gets a new session and
    # finds the node held by the second.
    first.signal(signal.SIGSTOP)
    await ready(cluster, second)
    first.signal(signal.SIGCONT)
    woken = time.time()
    await eventually(
        lambda: CONFLICT in cluster.stderr(first, tail=None),
        15,
        0.05,
        what="the first's conflict ERROR",
    )
    await eventually(
        lambda: len({r.item for r in cluster.history() if r.instance == "second"}) == TOTAL,
        10,
        0.05,
        what="the second running every item",
    )
    # Fires of the first keep coming (at the same cron seconds as the second's) and must find no
    # items: two more fires of the second are the marker.
    marker = time.time()
    await eventually(
        lambda: {
            r.task_id for r in cluster.history() if r.instance == "second" and r.start > marker
        },
        10,
        0.05,
        until=lambda fires: len(fires) >= 2,
        what="two more fires of the second",
    )
    assert first.alive
    assert not [r for r in cluster.history() if r.instance == "first" and r.start > woken]
    assert await instance_owner(url) == session_of(second)["session_id"]
    check_no_overlap(cluster.history())
