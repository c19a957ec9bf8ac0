"""A job disabled on every server runs nothing, at once (ElasticJob's ``getLocalShardingItems``
returns no items on a disabled server, and sharding is skipped with no instance available);
enabling it again resumes at the next fire with nothing stale or misfired."""

from __future__ import annotations

import time
import uuid
from contextlib import AsyncExitStack
from datetime import datetime

import pytest

from aioelastic import Operations, Scheduler, Settings, ShardingContext, State
from aioelastic.registry import MemoryStore
from aioelastic.tracing import MemorySink
from tests.harness.helpers import eventually, statuses

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

TOTAL = 3
EMPTY = "Sharding item for job 'job' is empty."


def _url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "zookeeper":
        return str(request.getfixturevalue("zk_url"))
    name = f"dis{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(name)
    return f"memory://{name}/ns"


def _make(
    url: str, instance_id: str, host: str, sink: MemorySink, runs: list[tuple[str, float, float]]
) -> Scheduler:
    scheduler = Scheduler(
        settings=Settings(registry_url=url, instance_id=instance_id, host=host), sinks=[sink]
    )

    @scheduler.job(name="job", sharding_total_count=TOTAL, cron="0/1 * * * * ?")
    async def work(ctx: ShardingContext) -> None:
        scheduled = ctx.scheduled_fire_time
        assert scheduled is not None
        runs.append((instance_id, scheduled.timestamp(), time.time()))

    return scheduler


def _empty_fires(sink: MemorySink, since: datetime) -> list[float]:
    """Durations (s) of the fires since ``since`` that found no items: STAGING to FINISHED."""
    begun = {}
    out = []
    for e in statuses(sink.events, "job"):
        if e.creation_time < since:
            continue
        if e.state is State.TASK_STAGING:
            begun[e.task_id] = e.creation_time
        elif e.message == EMPTY and e.task_id in begun:
            out.append((e.creation_time - begun[e.task_id]).total_seconds())
    return out


@pytest.mark.parametrize(
    ("backend", "instances"),
    [
        ("memory", 1),
        ("memory", 2),
        pytest.param("zookeeper", 1, marks=pytest.mark.zookeeper),
        pytest.param("zookeeper", 2, marks=pytest.mark.zookeeper),
    ],
)
async def test_disabled_on_every_server_runs_nothing_then_resumes(
    backend: str, instances: int, request: pytest.FixtureRequest
) -> None:
    url = _url(backend, request)
    sink = MemorySink()
    runs: list[tuple[str, float, float]] = []
    schedulers = [_make(url, f"i{k}", f"h{k}", sink, runs) for k in range(instances)]
    async with AsyncExitStack() as stack:
        for s in schedulers:
            await stack.enter_async_context(s)
        coords = [s._runners["job"].coordinator for s in schedulers]
        await eventually(lambda: len({r[0] for r in runs}) == instances, timeout=10)

        ops = Operations.of(schedulers[0])
        assert len(await ops.disable_server("job")) == instances  # every server
        await eventually(
            lambda: all(c.view.get(c.paths.server(c.identity.host)) == b"DISABLED" for c in coords)
        )
        # A fire in flight when the change arrived may still finish: count from when none is.
        execs = [s._runners["job"] for s in schedulers]
        await eventually(lambda: not any(e.in_flight for e in execs))
        disabled_at, ran_before = datetime.now().astimezone(), len(runs)

        await eventually(lambda: len(_empty_fires(sink, disabled_at)) >= 3 * instances, 15)
        assert len(runs) == ran_before, "a disabled job ran items"
        # Each of those fires ended at once, not after reshard_wait_timeout (10 s).
        assert max(_empty_fires(sink, disabled_at)) < 1.0
        assert not any(c.is_misfired(i) for c in coords for i in range(TOTAL))

        enabled_at = time.time()
        await ops.enable_server("job")
        await eventually(lambda: len(runs) >= ran_before + 2 * TOTAL, timeout=10)
        resumed = runs[ran_before:]
        # No stale fire ran late: each run started within a second of its own fire time, and
        # the fires after the pause are the schedule's next ones (none scheduled before it).
        assert all(start - scheduled < 1.0 for _, scheduled, start in resumed)
        assert all(scheduled > enabled_at - 1.0 for _, scheduled, _ in resumed)
        assert {r[0] for r in resumed} == {f"i{k}" for k in range(instances)}
        # Nothing was misfired because of the pause.
        assert not any(c.is_misfired(i) for c in coords for i in range(TOTAL))
        registry = schedulers[0].registry
        for item in range(TOTAL):
            assert await registry.exists(coords[0].paths.item_misfire(item)) is None
        assert not [
            e
            for e in statuses(sink.events, "job")
            if e.state is State.TASK_FINISHED and "misfired" in e.message
        ]


async def test_a_job_registered_disabled_runs_nothing_until_enabled() -> None:
    name = f"dis{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(name)
    sink = MemorySink()
    runs: list[int] = []
    scheduler = Scheduler(settings=Settings(registry_url=f"memory://{name}/ns"), sinks=[sink])

    @scheduler.job(name="job", sharding_total_count=TOTAL, cron="0/1 * * * * ?", disabled=True)
    async def work(ctx: ShardingContext) -> None:
        runs.append(ctx.sharding_item)

    began = datetime.now().astimezone()
    async with scheduler:
        await eventually(lambda: len(_empty_fires(sink, began)) >= 2, timeout=10)
        assert runs == [] and max(_empty_fires(sink, began)) < 1.0
        await Operations.of(scheduler).enable_server("job")
        await eventually(lambda: sorted(runs[:TOTAL]) == list(range(TOTAL)), timeout=10)
