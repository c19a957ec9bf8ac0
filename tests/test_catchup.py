"""Bounded catch-up (``catchup_window``): after fires were missed while no instance ran, the
first instance to start runs one catch-up fire (source MISFIRE) if the latest missed fire is
within the window; never more than one, never on two instances."""

from __future__ import annotations

import logging
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic import (
    ConfigError,
    CronTrigger,
    ExecutionSource,
    JobConfig,
    JobListener,
    RunState,
    Scheduler,
    Settings,
    ShardingContext,
    ShardingContexts,
)
from aioelastic._catchup import missed_fires
from aioelastic._layout import JobPaths
from aioelastic.tracing._events import State
from tests.conftest import Backend
from tests.harness.cluster import Cluster, ready, url_with
from tests.harness.helpers import CaptureSink, eventually, statuses
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.anyio

EVERY_SECOND = "* * * * * ?"


def test_missed_fires_are_the_due_ones_after_the_last() -> None:
    trigger = CronTrigger("0 0/10 * * * ?")
    last = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 25, tzinfo=UTC)
    assert missed_fires(trigger, last, now) == [last + timedelta(minutes=10 * n) for n in (1, 2)]
    assert missed_fires(trigger, last, now, limit=1) == [last + timedelta(minutes=20)]
    assert missed_fires(trigger, now, now) == []


def test_the_window_is_validated() -> None:
    with pytest.raises(ConfigError, match="catchup_window"):
        JobConfig(name="j", catchup_window=-1)


async def write_last(backend: Backend, job: str, at: datetime) -> None:
    async with backend.open() as reg:
        path = JobPaths(backend.namespace, job).catchup_last
        await reg.create(path, str(round(at.timestamp() * 1000)).encode(), make_parents=True)


def scheduler_for(backend: Backend, instance_id: str, sink: CaptureSink) -> Scheduler:
    settings = Settings(registry_url=backend.url, instance_id=instance_id)
    return Scheduler(settings=settings, sinks=[sink])


class Runs:
    def __init__(self) -> None:
        self.contexts: list[ShardingContext] = []

    def misfire_items(self) -> set[int]:
        """Items run as MISFIRE: by the catch-up fire, or by the misfire re-run it turned into
        where a cron fire held the item (or that a cron fire meeting it turned into)."""
        return {
            c.sharding_item for c in self.contexts if c.execution_source is ExecutionSource.MISFIRE
        }

    def catchup(self) -> list[ShardingContext]:
        # A catch-up run names the missed fire it stands for; a misfire re-run (a cron fire
        # that found the catch-up fire's items still running) names none.
        return [
            c
            for c in self.contexts
            if c.execution_source is ExecutionSource.MISFIRE and c.scheduled_fire_time is not None
        ]

    async def job(self, ctx: ShardingContext) -> None:
        self.contexts.append(ctx)


async def test_a_catch_up_fire_whose_item_a_cron_fire_took_runs_after_it(
    backend: Backend,
) -> None:
    """The catch-up fire starts while its item is free, but the cron fire takes the item
    before it marks it: the catch-up fire must not count as run (claimed) and be lost; it
    runs once the cron fire ends. (Claims used to be taken before the marks and given back
    after a lost race; a pass of the request loop in between saw every item claimed and
    deleted the request.)"""
    await write_last(backend, "held", datetime.now(UTC) - timedelta(seconds=5))
    at_catchup, go_catchup, catchup_over = anyio.Event(), anyio.Event(), anyio.Event()
    cron_running, go_cron = anyio.Event(), anyio.Event()
    runs = Runs()

    class HoldFirstCatchUp(JobListener):
        async def before_job_executed(self, contexts: ShardingContexts) -> None:
            if contexts.catch_up and not at_catchup.is_set():
                at_catchup.set()
                await go_catchup.wait()

        async def after_job_executed(self, contexts: ShardingContexts) -> None:
            if contexts.catch_up:
                catchup_over.set()

    async def job(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)
        if ctx.execution_source is ExecutionSource.NORMAL_TRIGGER and not cron_running.is_set():
            cron_running.set()
            await go_cron.wait()

    scheduler = scheduler_for(backend, "held-1", CaptureSink())
    scheduler.add_job(
        job,
        name="held",
        cron=EVERY_SECOND,
        sharding_total_count=1,
        catchup_window=60,
        listeners=[HoldFirstCatchUp()],
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        with anyio.fail_after(30):
            await at_catchup.wait()  # the catch-up fire started; the item was free
            await cron_running.wait()  # a cron fire took the item meanwhile
        go_catchup.set()  # the catch-up fire meets the cron fire's mark: it does not run
        with anyio.fail_after(10):
            await catchup_over.wait()
        assert runs.catchup() == []
        go_cron.set()
        await eventually(lambda: runs.catchup() != [], 30, what="the catch-up fire")
        scheduler.stop()
    assert len(runs.catchup()) == 1


async def test_two_instances_starting_at_once_run_one_catch_up_fire(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioelastic")  # a failure shows every fire and reshard
    await write_last(backend, "nightly", datetime.now(UTC) - timedelta(seconds=5))
    sink, runs = CaptureSink(), Runs()
    schedulers = [scheduler_for(backend, f"cu-{n}", sink) for n in (1, 2)]
    for s in schedulers:
        # Cron every second; the fires of the last 5 s were missed.
        s.add_job(
            runs.job, name="nightly", cron=EVERY_SECOND, sharding_total_count=4, catchup_window=60
        )
    async with anyio.create_task_group() as tg:
        for s in schedulers:
            tg.start_soon(s.run)
        await eventually(
            lambda: all(s.state is RunState.STARTED for s in schedulers), 30, what="both started"
        )
        await eventually(
            lambda: runs.misfire_items() == {0, 1, 2, 3},
            30,
            what="the catch-up fire's items",
            detail=lambda: [
                (c.task_id.split("@-@")[3], c.sharding_item, c.execution_source.name)
                for c in runs.contexts
            ],
        )
        # Both instances have run fires since: a second catch-up would have come by now.
        await eventually(
            lambda: (
                {
                    c.task_id.split("@-@")[3]
                    for c in runs.contexts
                    if c.execution_source is ExecutionSource.NORMAL_TRIGGER
                }
                >= {"cu-1", "cu-2"}
            ),
            30,
            what="regular fires on both instances",
        )
        for s in schedulers:
            s.stop()
    caught_up = runs.catchup()
    items = [c.sharding_item for c in caught_up]
    assert len(items) == len(set(items)), "no item of the catch-up fire ran twice"
    assert len({c.scheduled_fire_time for c in caught_up}) == 1, "one catch-up fire"
    staging = [
        s.message
        for s in statuses(sink.events, "nightly")
        if s.state is State.TASK_STAGING and "catch-up" in s.message
    ]
    assert staging and "missed fire(s)" in staging[0] and "catchup_window 60s" in staging[0]
    assert staging[0].count("T") >= 2  # names at least two missed fire times (ISO)


async def test_a_missed_fire_outside_the_window_is_not_caught_up(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    await write_last(backend, "yearly", datetime(2019, 1, 1, tzinfo=UTC))
    sink, runs = CaptureSink(), Runs()
    scheduler = scheduler_for(backend, "cu-out", sink)
    # Leap days only: the missed fires (2020-02-29, 2024-02-29, ...) lie outside the window.
    scheduler.add_job(runs.job, name="yearly", cron="0 0 0 29 2 ?", catchup_window=3600)
    async with scheduler:
        pass
    assert runs.catchup() == []
    assert any("outside catchup_window" in r.getMessage() for r in caplog.records)


async def test_without_a_window_nothing_is_caught_up(backend: Backend) -> None:
    await write_last(backend, "plain", datetime.now(UTC) - timedelta(seconds=5))
    sink, runs = CaptureSink(), Runs()
    scheduler = scheduler_for(backend, "cu-off", sink)
    scheduler.add_job(runs.job, name="plain", cron="0 0 0 1 1 ? 2099")
    async with scheduler:
        pass
    assert runs.catchup() == []


# -- the whole cluster stopped across two fire times, on a real ZooKeeper --


@pytest.mark.zookeeper
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_cluster_restarted_after_missed_fires_runs_one_catch_up_fire(
    zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    url = url_with(zk_server, session_timeout=3.0)
    options: dict[str, Any] = {
        "cron": "0/2 * * * * ?",
        "catchup_window": 60,
        "sharding_total_count": 2,
        "duration": 0.1,
    }
    cluster = Cluster(url, tmp_path, job_options=options)
    try:
        first = cluster.start("inst-a")
        await ready(cluster, first)
        await eventually(
            cluster.history,
            30,
            0.05,
            until=lambda rs: any(r.scheduled and r.end for r in rs),
            what="a cron fire before the stop",
            detail=cluster.history,
        )
        first.signal(signal.SIGTERM)
        await anyio.to_thread.run_sync(lambda: first.proc.wait(20))
        last = max(r.scheduled for r in cluster.history() if r.scheduled)
        # Nothing runs across the next two fire times (every 2 s): they are missed.
        missed_by = last + 2 * 2 + 0.5
        await anyio.sleep(max(0.0, missed_by - time.time()))
        restarted = [cluster.start(i) for i in ("inst-b", "inst-c")]  # at once
        await ready(cluster, *restarted)
        await eventually(
            cluster.history,
            30,
            0.05,
            until=lambda rs: (
                {
                    r.instance
                    for r in rs
                    if r.source == "NORMAL_TRIGGER"
                    and r.scheduled
                    and r.scheduled > missed_by
                    and r.end
                }
                >= {"inst-b", "inst-c"}
                and {r.item for r in rs if r.source == "MISFIRE"} == {0, 1}
            ),
            what="the catch-up fire and regular fires on both restarted instances",
            detail=cluster.history,
        )
    finally:
        cluster.close()
    # The catch-up fire's runs name the missed fire; a misfire re-run (a cron fire met the
    # catch-up fire's items, or the other way round) names none.
    catchup = [r for r in cluster.history() if r.source == "MISFIRE" and r.scheduled]
    items = [r.item for r in catchup]
    assert len(items) == len(set(items)), f"not one catch-up fire: {catchup}"
    assert len({r.scheduled for r in catchup}) == 1, f"not one catch-up fire: {catchup}"
    assert {r.instance for r in catchup} <= {"inst-b", "inst-c"}
    assert all(r.scheduled and r.scheduled > last for r in catchup)  # the latest missed fire


async def test_a_catch_up_fire_of_an_upstream_job_requests_its_dependents_under_its_time(
    backend: Backend,
) -> None:
    """The catch-up fire stands for the latest missed fire: its dependents' fire is that
    time's (it was requested as a fire named ``manual``)."""
    await write_last(backend, "up", datetime.now(UTC) - timedelta(seconds=5))
    sink, runs = CaptureSink(), Runs()
    scheduler = scheduler_for(backend, "cu-dep", sink)
    scheduler.add_job(runs.job, name="up", cron=EVERY_SECOND, catchup_window=60)
    scheduler.add_job(runs.job, name="down", after="up")

    def fires() -> list[str]:
        staged = [s for s in statuses(sink.events, "down") if s.state is State.TASK_STAGING]
        return [s.message.split("(fire ")[1].split(",")[0] for s in staged]

    async with scheduler:
        (catchup,) = await eventually(runs.catchup, 20, what="the catch-up fire")
        assert catchup.scheduled_fire_time is not None
        key = str(round(catchup.scheduled_fire_time.timestamp() * 1000))
        await eventually(lambda: key in fires(), 20, what="down after it", detail=fires)
    assert "manual" not in fires()
