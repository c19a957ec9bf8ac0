"""No phantom RUNNING runs: a SIGKILLed instance's item runs are completed in the shared trace
as failures by whoever takes the items over (separate processes, real ZooKeeper, SQLite)."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import Cluster, check_no_overlap, ready, trigger, wait_sessions_expired
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer
from tests.test_failover import TIMEOUT, failover_runs, start_cluster

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.slow, pytest.mark.timeout(120)]


def rows(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM JOB_EXECUTION_LOG")]
    except sqlite3.OperationalError:
        return []  # the table is not there yet
    finally:
        conn.close()


def dead(row: dict[str, Any], instance: str) -> bool:
    return f"@-@READY@-@{instance}@-@" in row["task_id"]


@pytest.mark.parametrize("takeover", ["survivors", "restarted_cluster"])
async def test_killed_runs_are_completed_as_failures_naming_the_lost_instance_and_the_taker(
    zk_server: ZooKeeperServer,
    cluster_factory: Callable[..., Cluster],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    takeover: str,
) -> None:
    db = tmp_path / "trace.db"
    monkeypatch.setenv("AIOELASTIC_TRACING_URL", f"sqlite:///{db}")
    cluster, url, procs = await start_cluster(
        zk_server, cluster_factory, duration=0.2, durations={"0": 8, "1": 8}
    )
    await trigger(url, "inst-c")  # inst-c runs items 0 and 1, both long
    await eventually(
        lambda: rows(db),
        15,
        0.1,
        until=lambda found: len([r for r in found if dead(r, "inst-c")]) == 2,
        what="inst-c's runs of items 0 and 1 were not traced as started",
        detail=lambda: rows(db),
    )
    if takeover == "survivors":
        procs["inst-c"].signal(signal.SIGKILL)
        takers = {"inst-a", "inst-b"}
    else:
        for proc in procs.values():
            proc.signal(signal.SIGKILL)
        await wait_sessions_expired(url, procs, TIMEOUT + 10)
        fresh = [cluster.start(name) for name in ("inst-x", "inst-y")]
        await ready(cluster, *fresh)
        takers = {"inst-x", "inst-y"}
    await eventually(
        cluster.history,
        TIMEOUT + 25,
        0.05,
        until=lambda runs: {r.item for r in failover_runs(runs) if r.end is not None} == {0, 1},
        what="items 0 and 1 were not failed over and completed",
        detail=cluster.history,
    )
    found = await eventually(
        lambda: rows(db),
        10,
        0.1,
        until=lambda found: bool(found) and all(r["complete_time"] is not None for r in found),
        what="some run stayed unfinished in the trace",
        detail=lambda: rows(db),
    )
    lost = [r for r in found if dead(r, "inst-c")]
    assert sorted(r["sharding_item"] for r in lost) == [0, 1]
    for row in lost:
        assert row["is_success"] in (0, False)
        cause = row["failure_cause"]
        assert "instance inst-c lost its registry session" in cause, cause
        taker = cause.split("taken over by ")[1].split(" ")[0]
        assert taker in takers, cause
        assert f"@-@FAILOVER@-@{taker}@-@" in cause  # the taker's task id
        assert row["execution_source"] == "NORMAL_TRIGGER" and row["start_time"] is not None
    taken = [r for r in found if "@-@FAILOVER@-@" in r["task_id"]]
    assert sorted(r["sharding_item"] for r in taken) == [0, 1]
    assert all(r["is_success"] in (1, True) for r in taken)
    check_no_overlap(cluster.history())
