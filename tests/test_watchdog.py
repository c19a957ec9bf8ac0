"""The loop watchdog thread: a blocked loop is reported with the blocking code's stack, a stall
past the limit calls the action, a frozen process (SIGSTOP, VM pause) does not."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import anyio
import pytest

from aioelastic import Scheduler, Settings
from aioelastic._watchdog import STALL_EXIT_STATUS, LoopWatchdog, safe_stall_limit
from tests.harness.cluster import (
    Cluster,
    check_no_overlap,
    expected,
    ready,
    trigger,
    url_with,
    wait_assignment,
    zk_client,
)
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.anyio


def blocking_call(until: threading.Event) -> None:
    until.wait(30)  # the blocking line the stack must name


class EventHandler(logging.Handler):
    def __init__(self, match: Callable[[logging.LogRecord], bool]) -> None:
        super().__init__()
        self.match, self.seen = match, threading.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.match(record):
            self.records.append(record)
            self.seen.set()


async def test_a_stall_past_warn_after_logs_the_blocking_stack() -> None:
    handler = EventHandler(lambda r: r.levelno == logging.WARNING and "blocked" in r.getMessage())
    logging.getLogger("aioelastic.watchdog").addHandler(handler)
    try:
        watchdog = LoopWatchdog(limit=None, on_limit=lambda s, st: None, warn_after=0.3)
        async with anyio.create_task_group() as tg:
            await tg.start(watchdog.run)
            blocking_call(handler.seen)  # blocks the loop until the watchdog thread warned
            tg.cancel_scope.cancel()
    finally:
        logging.getLogger("aioelastic.watchdog").removeHandler(handler)
    assert handler.seen.is_set(), "no warning while the loop was blocked"
    message = handler.records[0].getMessage()
    assert "event loop blocked for" in message
    assert "in blocking_call" in message and "until.wait(30)" in message
    assert not any(t.name == "aioelastic-loop-watchdog" for t in threading.enumerate())


async def test_a_stall_past_the_limit_calls_the_action_once_with_the_stack() -> None:
    called = threading.Event()
    calls: list[tuple[float, str]] = []

    def on_limit(stalled: float, stack: str) -> None:
        calls.append((stalled, stack))
        called.set()

    watchdog = LoopWatchdog(limit=0.3, on_limit=on_limit, warn_after=None)
    async with anyio.create_task_group() as tg:
        await tg.start(watchdog.run)
        blocking_call(called)
        await anyio.sleep(0.5)  # the loop runs again: no second call for the same stall
        tg.cancel_scope.cancel()
    assert len(calls) == 1
    stalled, stack = calls[0]
    assert stalled >= 0.3
    assert "blocking_call" in stack and "until.wait(30)" in stack


def synthetic(limit: float = 1.5) -> tuple[LoopWatchdog, list[float]]:
    acted: list[float] = []
    watchdog = LoopWatchdog(limit=limit, on_limit=lambda s, st: acted.append(s), warn_after=None)
    watchdog.check(0.0, 0.0)  # baseline
    watchdog.beat(0.0)
    return watchdog, acted


def test_a_blocked_loop_is_acted_on_when_the_limit_passes() -> None:
    watchdog, acted = synthetic()
    t = 0.0
    while t < 2.0:  # the thread wakes every 0.1 s, the loop never beats
        t += 0.1
        watchdog.check(t, 0.0)  # e.g. time.sleep: no CPU
    assert len(acted) == 1 and 1.5 <= acted[0] < 1.7


def test_a_frozen_process_is_left_to_the_pause_detector() -> None:
    watchdog, acted = synthetic()
    watchdog.check(0.1, 0.0)
    watchdog.check(5.1, 0.001)  # SIGSTOP for 5 s: this thread slept 5 s too, no CPU used
    watchdog.check(5.2, 0.001)
    watchdog.beat(5.25)  # the loop ran again
    watchdog.check(5.3, 0.002)
    assert acted == [] and watchdog.freezes == 1


def test_a_gil_holding_computation_is_a_stall_not_a_freeze() -> None:
    watchdog, acted = synthetic()
    watchdog.check(0.1, 0.1)
    watchdog.check(5.1, 5.05)  # this thread waited for the GIL while the process computed
    assert acted == [5.1] and watchdog.freezes == 0


def test_a_stall_after_a_freeze_counts_from_the_thaw() -> None:
    watchdog, acted = synthetic()
    watchdog.check(5.0, 0.0)  # frozen
    t = 5.0
    while t < 6.4:
        t += 0.1
        watchdog.check(t, 0.0)
    assert acted == []  # 1.4 s since the thaw
    for _ in range(3):
        t += 0.1
        watchdog.check(t, 0.0)
    assert len(acted) == 1


@pytest.mark.parametrize(
    ("timeout", "limit"), [(3.0, 1.7), (10.0, 10 * 2 / 3 - 1.0), (1.0, 0.4167)]
)
def test_safe_limit_is_before_the_earliest_expiry(timeout: float, limit: float) -> None:
    assert safe_stall_limit(timeout) == pytest.approx(limit, abs=1e-3)
    # The server can expire the session 2T/3 into a stall at the earliest (last ping T/3 before).
    assert safe_stall_limit(timeout) + 0.2 < timeout * 2 / 3


# -- three instance processes on a real ZooKeeper --


@pytest.mark.zookeeper
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_blocked_loop_never_runs_an_item_on_two_instances(
    zk_server: ZooKeeperServer, cluster_factory: Callable[..., Cluster]
) -> None:
    ids = ["inst-a", "inst-b", "inst-c"]
    url = url_with(zk_server, session_timeout=3.0)
    cluster = cluster_factory(url, sharding_total_count=3, failover=True, duration=0.5)
    blocked = cluster.start("inst-a", block_loop=6)  # its first item: time.sleep(6) on the loop
    others = [cluster.start(i) for i in ids[1:]]
    await ready(cluster, blocked, *others)
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, 3, expected(ids, 3), 15)
    await trigger(url, *ids)

    def taken_over() -> bool:
        runs = cluster.history()
        mine = [r for r in runs if r.instance == "inst-a"]
        return bool(mine) and any(r.item == mine[0].item and r.source == "FAILOVER" for r in runs)

    def settled() -> bool:
        if taken_over() and (not blocked.alive or blocked.has("end")):
            return True
        if blocked.died_at is None and not blocked.alive:
            blocked.died_at = time.time()  # its unfinished run ended no later than this
        return False

    # a survivor takes the item over once the session expired
    await eventually(settled, 30, 0.02, what="the takeover", detail=cluster.history)
    check_no_overlap(cluster.history())
    assert blocked.proc.poll() == STALL_EXIT_STATUS, cluster.stderr(blocked)
    err = cluster.stderr(blocked)
    assert "exiting now (status 70)" in err
    assert "time.sleep(seconds)" in err and "cluster_instance.py" in err
    assert "event loop blocked for" in err  # the ~1 s warning came first


def test_warn_action_logs_critical_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = Scheduler(
        settings=Settings(
            registry_url="zookeeper://127.0.0.1:1/ns?session_timeout=3", loop_stall_action="warn"
        )
    )
    with caplog.at_level(logging.CRITICAL, "aioelastic.scheduler"):
        scheduler._loop_stalled(1.8, "  File 'x.py', line 1, in job\n", limit=1.7)
    assert "UNSAFE" in caplog.text and "File 'x.py'" in caplog.text


async def test_embedded_mode_warns_only_and_zookeeper_mode_has_the_safe_limit() -> None:
    embedded = Scheduler(settings=Settings(registry_url="memory://wd/ns"))
    assert embedded._watchdog(object()).limit is None  # type: ignore[arg-type]
    zk = Scheduler(settings=Settings(registry_url="zookeeper://127.0.0.1:1/ns?session_timeout=3"))
    assert zk._watchdog(object()).limit == pytest.approx(1.7)  # type: ignore[arg-type]
    quiet = Scheduler(settings=Settings(loop_stall_warning=0))
    assert quiet._watchdog(object()).warn_after is None  # type: ignore[arg-type]
