"""Fencing that reaches job code: ``ctx.lost`` is set when this instance loses its claim on an
item (session lost, SIGSTOP past the session timeout, a reshard, the scheduler stopping),
always before the item's cancellation; ``ctx.fencing_token`` names the run and its session."""

from __future__ import annotations

import json
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic import DataflowJob, Scheduler, Settings, ShardingContext
from aioelastic._ownership import ClaimLost
from tests.conftest import Backend
from tests.harness.cluster import Cluster, ready, trigger, url_with, wait_sessions_expired
from tests.harness.helpers import CaptureSink, eventually
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.anyio


def make(url: str, instance_id: str, sink: CaptureSink | None = None, **settings: Any) -> Scheduler:
    return Scheduler(
        settings=Settings(registry_url=url, instance_id=instance_id, **settings),
        sinks=[sink] if sink else [],
    )


class Seen:
    """What each item run saw: its token, and at its cancellation whether ``lost`` was set."""

    def __init__(self) -> None:
        self.started: dict[int, ShardingContext] = {}
        self.lost_at_cancel: dict[int, bool] = {}
        self.reasons: dict[int, str | None] = {}
        self.changed = anyio.Event()

    def note(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait(self, predicate: Any, timeout: float = 30) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()


def long_job(seen: Seen, release: anyio.Event | None = None) -> Any:
    async def job(ctx: ShardingContext) -> None:
        seen.started[ctx.sharding_item] = ctx
        seen.note()
        try:
            if release is None:
                await anyio.sleep(60)
                return
            await ctx.lost.wait()  # a reshard: the run is told, not cancelled
            seen.reasons[ctx.sharding_item] = ctx.lost.reason
            seen.note()
            with anyio.fail_after(30):
                await release.wait()
        except anyio.get_cancelled_exc_class():
            seen.lost_at_cancel[ctx.sharding_item] = ctx.lost.is_set()
            seen.reasons[ctx.sharding_item] = ctx.lost.reason
            seen.note()
            raise

    return job


async def test_claim_lost_is_an_event() -> None:
    lost = ClaimLost()
    assert not lost.is_set() and "owned" in repr(lost)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lost.wait)
        await anyio.sleep(0)
        lost._revoke("gone")
        lost._revoke("ignored: the first reason stays")
    assert lost.is_set() and lost.reason == "gone"
    with anyio.fail_after(1):
        await lost.wait()


async def test_session_loss_sets_lost_before_the_cancellation(backend: Backend) -> None:
    seen = Seen()
    scheduler = make(backend.url, "fenced-1")
    scheduler.add_job(long_job(seen), name="fenced", sharding_total_count=1)
    async with scheduler:
        await scheduler.trigger("fenced")
        await seen.wait(lambda: 0 in seen.started)
        ctx = seen.started[0]
        session = scheduler.registry.session_id
        assert ctx.still_owned()
        assert ctx.fencing_token == f"{ctx.task_id}@-@{session:x}"
        await backend.expire(scheduler.registry)
        await seen.wait(lambda: 0 in seen.lost_at_cancel)
    assert seen.lost_at_cancel == {0: True}
    assert seen.reasons[0] == "registry session lost"
    assert not ctx.still_owned()


async def test_stopping_sets_lost_before_the_grace_period_cancels(backend: Backend) -> None:
    seen = Seen()
    scheduler = make(backend.url, "stopping-1", shutdown_grace_period=0.5)
    scheduler.add_job(long_job(seen), name="stopping", sharding_total_count=1)
    async with scheduler:
        await scheduler.trigger("stopping")
        await seen.wait(lambda: 0 in seen.started)
    assert seen.lost_at_cancel == {0: True}
    assert seen.reasons[0] == "the scheduler is stopping"


async def test_a_reshard_sets_lost_on_the_moved_item_only(backend: Backend) -> None:
    seen, release = Seen(), anyio.Event()
    first = make(backend.url, "reshard-a")
    first.add_job(long_job(seen, release), name="moving", sharding_total_count=2)
    async with first:
        await first.trigger("moving")
        await seen.wait(lambda: len(seen.started) == 2)
        second = make(backend.url, "reshard-b")
        second.add_job(long_job(Seen(), release), name="moving", sharding_total_count=2)
        async with second:
            await seen.wait(lambda: len(seen.reasons) == 1)
            (moved,) = seen.reasons
            kept = 1 - moved
            assert (
                seen.reasons[moved] == f"item {moved} now belongs to instance reshard-b (resharded)"
            )
            assert seen.started[kept].still_owned()
            assert not seen.started[moved].still_owned()
            release.set()
    assert seen.lost_at_cancel == {}  # told, never cancelled (ElasticJob lets it finish)


async def test_a_streaming_dataflow_job_stops_between_batches_once_lost(backend: Backend) -> None:
    batches: list[int] = []
    first_batch = anyio.Event()
    proceed = anyio.Event()

    async def fetch(ctx: ShardingContext) -> list[int]:
        return [len(batches)]

    async def process(ctx: ShardingContext, data: Sequence[Any]) -> None:
        batches.extend(data)
        if len(batches) == 1:
            first_batch.set()
            with anyio.fail_after(30):
                await proceed.wait()
        else:
            await anyio.sleep(0.01)

    scheduler = make(backend.url, "stream-1")
    scheduler.add_job(
        DataflowJob(fetch, process, streaming=True), name="stream", sharding_total_count=1
    )
    async with scheduler:
        await scheduler.trigger("stream")
        with anyio.fail_after(30):
            await first_batch.wait()
        runner = scheduler._runners["stream"]
        runner.executor.ownerships.revoke_all("test: claim lost")
        proceed.set()
        await eventually(lambda: runner.executor.active == set(), 30, what="the stream to stop")
    assert batches == [0]


# -- a paused instance process (SIGSTOP past its session timeout) --


@pytest.mark.zookeeper
@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_sigstop_past_the_session_timeout_sets_lost_before_the_cancellation(
    zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    timeout = 2.0
    url = url_with(zk_server, session_timeout=timeout)
    cluster = Cluster(url, tmp_path, module="tests.harness.ownership_instance")
    try:
        inst = cluster.start("paused-a", sharding_total_count=1, duration=60)
        await ready(cluster, inst)
        await trigger(url, "paused-a")
        await eventually(
            inst.records, 20, 0.05, until=lambda rs: any(r["ev"] == "start" for r in rs)
        )
        inst.signal(signal.SIGSTOP)
        await wait_sessions_expired(url, ["paused-a"], 30)
        inst.signal(signal.SIGCONT)
        records = await eventually(
            inst.records, 20, 0.05, until=lambda rs: any(r["ev"] == "end" for r in rs)
        )
    finally:
        cluster.close()
    (end,) = [r for r in records if r["ev"] == "end"]
    assert end["cancelled"] is True and end["lost_at_cancel"] is True, json.dumps(records)
    assert end["reason"] == "registry session lost"


@pytest.mark.zookeeper
@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_suspended_past_the_session_timeout_sets_lost_before_the_cancellation(
    zk_restartable_server: ZooKeeperServer,
) -> None:
    seen = Seen()
    scheduler = make(url_with(zk_restartable_server, session_timeout=2.0), "suspended-1")
    scheduler.add_job(long_job(seen), name="suspended", sharding_total_count=1)
    async with scheduler:
        await scheduler.trigger("suspended")
        await seen.wait(lambda: 0 in seen.started)
        zk_restartable_server.pause()  # the server stops answering: SUSPENDED, then LOST
        try:
            await seen.wait(lambda: 0 in seen.lost_at_cancel)
        finally:
            zk_restartable_server.resume()
    assert seen.lost_at_cancel == {0: True}
    assert seen.reasons[0] == "registry session lost"
