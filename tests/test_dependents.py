"""Dependent jobs (``after=``): once per completed upstream fire, across the cluster; the
request lives in the registry; policies; cycles and unknown upstream jobs refused."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic import (
    ConfigError,
    JobChain,
    JobConfig,
    Operations,
    Scheduler,
    Settings,
    ShardingContext,
)
from aioelastic._dependents import Dependents, fire_key, key_time
from aioelastic._errors import RegistryError, TransactionFailedError
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic.registry import MemoryRegistry, MemoryStore
from aioelastic.tracing._events import ExecutionSource, State
from tests.harness.cli import cli
from tests.harness.cluster import Cluster, ItemRun, check_no_overlap, ready, url_with
from tests.harness.helpers import CaptureSink, completions, eventually, statuses
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()


@pytest.fixture
def make_scheduler(sink: CaptureSink) -> Callable[..., Scheduler]:
    store = f"dependents-{uuid.uuid4().hex[:12]}"
    MemoryStore.reset(store)

    def make(instance_id: str = "inst-1", **settings: Any) -> Scheduler:
        s = Settings(registry_url=f"memory://{store}/ns", instance_id=instance_id, **settings)
        return Scheduler(settings=s, sinks=[sink])

    return make


@asynccontextmanager
async def memory_registry(prefix: str) -> AsyncIterator[MemoryRegistry]:
    """A started registry on an embedded store of its own."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(name)
    async with AsyncExitStack() as stack:
        registry = MemoryRegistry(parse_registry_url(f"memory://{name}/ns"))
        await registry.start(stack)
        yield registry


class Runs:
    def __init__(self) -> None:
        self.contexts: list[ShardingContext] = []

    def of(self, job: str) -> list[ShardingContext]:
        return [c for c in self.contexts if c.job_name == job]


def pipeline(scheduler: Scheduler, runs: Runs, fail_item: int | None = None, **dep: Any) -> None:
    @scheduler.job(sharding_total_count=3)
    async def extract(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)
        if ctx.sharding_item == fail_item:
            raise ValueError("extract failed")

    @scheduler.job(after="extract", sharding_total_count=2, **dep)
    async def load(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)


async def test_a_dependent_runs_once_per_upstream_fire_with_its_task_id(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler, runs = make_scheduler(), Runs()
    pipeline(scheduler, runs)
    async with scheduler:
        for n in (1, 2):
            await scheduler.trigger("extract")
            await eventually(lambda: len(runs.of("load")) == 2 * n, 20, what="the dependent")  # noqa: B023
            await sink.wait_for(lambda events: len(completions(events, "load")) == 2 * n)  # noqa: B023
    extract_tasks = [c.task_id for c in runs.of("extract")]
    loads = runs.of("load")
    assert len(loads) == 4 and len({c.task_id for c in loads}) == 2
    assert loads[0].upstream_task_ids == (extract_tasks[0],)
    assert loads[2].upstream_task_ids == (extract_tasks[3],)
    staging = [s for s in statuses(sink.events, "load") if s.state is State.TASK_STAGING]
    assert "after extract" in staging[0].message and extract_tasks[0] in staging[0].message


@pytest.mark.parametrize(("policy", "expected"), [("all_succeeded", 0), ("all_done", 2)])
async def test_all_succeeded_skips_the_dependent_and_all_done_runs_it(
    make_scheduler: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
    policy: str,
    expected: int,
) -> None:
    scheduler, runs = make_scheduler(), Runs()
    pipeline(scheduler, runs, fail_item=1, after_policy=policy)
    async with scheduler:
        await scheduler.trigger("extract")
        if expected:
            await eventually(lambda: len(runs.of("load")) == expected, 20, what="load")
        else:
            await eventually(
                lambda: any("not run after fire" in r.getMessage() for r in caplog.records),
                20,
                what="the skip",
            )
    assert len(runs.of("load")) == expected


async def test_two_upstreams_join(make_scheduler: Callable[..., Scheduler]) -> None:
    scheduler, seen = make_scheduler(), Runs()

    @scheduler.job(sharding_total_count=2)
    async def a(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    @scheduler.job()
    async def b(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    @scheduler.job(after=["a", "b"])
    async def joined(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    async with scheduler:
        await scheduler.trigger("a")
        await eventually(lambda: len(seen.of("a")) == 2, 20, what="a")
        await anyio.sleep(0)  # b has not run: joined must wait for it
        assert seen.of("joined") == []
        await scheduler.trigger("b")
        await eventually(lambda: len(seen.of("joined")) == 1, 20, what="joined")
    (run,) = seen.of("joined")
    assert set(run.upstream_task_ids) == {seen.of("a")[0].task_id, seen.of("b")[0].task_id}


async def test_unknown_upstreams_cycles_and_crons_are_config_errors(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    scheduler = make_scheduler()

    async def job(ctx: ShardingContext) -> None:
        pass

    with pytest.raises(ConfigError, match="unknown upstream job"):
        scheduler.add_job(job, name="orphan", after="missing")
    with pytest.raises(ConfigError, match="cannot run after itself"):
        scheduler.add_job(job, name="selfish", after="selfish")
    scheduler.add_job(job, name="up", cron="0 0 * * * ?")
    with pytest.raises(ConfigError, match="no cron of its own"):
        scheduler.add_job(job, name="both", after="up", cron="0 0 * * * ?")
    with pytest.raises(ConfigError, match="twice"):
        scheduler.add_job(job, name="twice", after=["up", "up"])


def test_a_cycle_through_the_registered_graph_is_refused() -> None:
    from aioelastic import JobConfig
    from aioelastic._dependents import check_dependencies

    jobs = {"a": JobConfig(name="a", after=("c",)), "b": JobConfig(name="b", after=("a",))}
    with pytest.raises(ConfigError, match="dependency cycle: c -> b -> a -> c"):
        check_dependencies(jobs, JobConfig(name="c", after=("b",)))


def test_fire_keys_name_the_scheduled_time() -> None:
    assert fire_key(None) == "manual"
    assert fire_key(datetime(2026, 1, 1, tzinfo=UTC)) == "1767225600000"
    assert fire_key(None, "1767225600000-ab12cd34") == "manual-1767225600000-ab12cd34"
    assert key_time("manual-1767225600000-ab12cd34") == key_time("1767225600000") > 0
    assert key_time("manual") == -1


@pytest.mark.parametrize("trigger", [b"\x01", b"\xff\xfe", b"x" * 300_000])
async def test_a_trigger_id_that_names_no_node_still_fires_the_dependent(
    make_scheduler: Callable[..., Scheduler], trigger: bytes
) -> None:
    # A trigger node written by another client with data no node name can hold (a control
    # character, bytes that are not UTF-8, too long for a name): the fire's key was that data,
    # its completions could not be recorded, and the dependent never fired.
    assert fire_key(None, trigger.decode(errors="replace")).startswith("manual-")
    scheduler, runs = make_scheduler(), Runs()
    pipeline(scheduler, runs)
    async with scheduler:
        runner = scheduler._runners["extract"]
        await runner.coordinator.view.wait_for(lambda: bool(runner.coordinator.local_items()), 10)
        node = runner.coordinator.paths.trigger("inst-1")
        await scheduler.registry.create(node, trigger, make_parents=True)
        await eventually(lambda: len(runs.of("load")) == 2, 20, what="the dependent")
    assert len(runs.of("extract")) == 3


# -- across instance processes on a real ZooKeeper --

IDS = ["inst-a", "inst-b", "inst-c"]  # inst-c sorts first: it owns extract's items 0 and 1
MODULE = "tests.harness.pipeline_instance"


@pytest.mark.zookeeper
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_the_dependent_runs_once_per_fire_when_an_upstream_instance_dies_mid_run(
    zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    url = url_with(zk_server, session_timeout=3.0)
    options = {
        "cron": "0/5 * * * * ?",
        "sharding_total_count": 6,
        "failover": True,
        "duration": 1.0,
        "durations": {"0": 0.2, "1": 3.0},
    }
    cluster = Cluster(url, tmp_path, job_options=options, module=MODULE, jobs="extract")
    try:
        procs = {i: cluster.start(i) for i in IDS}
        await ready(cluster, *procs.values())

        # A cron fire in which inst-c (holding items 0 and 1 only: the first fire may run all
        # six on one instance) finished item 0 and is running item 1 (not a misfire re-run of
        # them, which names no fire time): kill it there.
        def victim(runs: list[ItemRun]) -> ItemRun | None:
            for r in runs:
                if r.instance == "inst-c" and r.item == 1 and r.end is None and r.scheduled:
                    if "@-@0,1@-@READY@-@" in r.task_id and any(
                        o.task_id == r.task_id and o.item == 0 and o.end for o in runs
                    ):
                        return r
            return None

        run = await eventually(
            lambda: victim(cluster.history()),
            30,
            0.02,
            what="inst-c running item 1 after item 0",
            detail=cluster.history,
        )
        assert run is not None
        victim_fire = run.scheduled
        procs["inst-c"].signal(signal.SIGKILL)
        # The killed fire completes through the failover of item 1; one more fire after it.
        await eventually(
            lambda: loads_done(cluster),
            40,
            0.1,
            until=lambda fires: victim_fire in fires and any(f > victim_fire for f in fires),
            what="the dependent after the killed fire and the next",
            detail=cluster.history,
        )
    finally:
        cluster.close()
    runs = cluster.history()
    check_no_overlap(runs)
    fires = loads_done(cluster, all_runs=True)
    assert len(fires) == len(set(fires)), f"a fire's dependent ran twice: {fires}"
    item1 = [r for r in runs if r.job == "extract" and r.item == 1 and r.source == "FAILOVER"]
    assert item1 and item1[0].instance in {"inst-a", "inst-b"}


@pytest.mark.zookeeper
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_failover_run_of_a_dependent_item_has_its_upstream_task_ids(
    zk_server: ZooKeeperServer, tmp_path: Path
) -> None:
    url = url_with(zk_server, session_timeout=3.0)
    options = {"cron": "0/5 * * * * ?", "sharding_total_count": 2, "load_duration": 60.0}
    cluster = Cluster(url, tmp_path, job_options=options, module=MODULE, jobs="extract")
    try:
        procs = {i: cluster.start(i) for i in IDS[:2]}
        await ready(cluster, *procs.values())
        runs = await eventually(
            cluster.history,
            40,
            0.05,
            until=lambda runs: any(r.job == "load" for r in runs),
            what="load running",
            detail=cluster.history,
        )
        victim = next(r for r in runs if r.job == "load")
        procs[victim.instance].signal(signal.SIGKILL)
        survivor = cluster.instances[next(i for i in procs if i != victim.instance)]
        started = await eventually(
            survivor.records,
            40,
            0.1,
            until=lambda recs: any(
                r["ev"] == "start" and r["job"] == "load" and r["source"] == "FAILOVER"
                for r in recs
            ),
            what="the failover run of load's item",
            detail=cluster.history,
        )
    finally:
        cluster.close()
    killed = next(
        r
        for r in cluster.instances[victim.instance].records()
        if r["ev"] == "start" and r["job"] == "load"
    )
    (failover,) = (r for r in started if r.get("job") == "load" and r.get("source") == "FAILOVER")
    assert killed["upstream"] and failover["upstream"] == killed["upstream"]


def loads_done(cluster: Cluster, all_runs: bool = False) -> list[float]:
    """The upstream fire (scheduled time) of each load run so far (started runs if
    ``all_runs``, else completed ones), as the run's listener recorded it (a fire's items may
    be run by misfire re-runs and failover runs, which name no scheduled time); a failover
    run of load serves the fire of the run it replaces, so it is left out."""
    runs = cluster.history()
    ended = {(r.instance, r.task_id) for r in runs if r.job == "load" and r.end and r.ok}
    records = [rec for inst in cluster.instances.values() for rec in inst.records()]
    keys = {rec["task_id"]: rec["upstream_fire"] for rec in records if rec["ev"] == "fire"}
    out = []
    for rec in records:
        if rec["ev"] != "start" or rec["job"] != "load" or rec["source"] == "FAILOVER":
            continue
        if not all_runs and (rec["instance"], rec["task_id"]) not in ended:
            continue
        key = keys.get(rec["task_id"])
        assert key and key.isdigit(), f"load's run names no cron fire: {rec}, {key}; {runs}"
        out.append(int(key) / 1000)
    return sorted(out)


async def test_the_request_outlives_the_instance_that_made_it(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    runs = Runs()
    # The first instance completes extract's fire but cannot run load (its server is disabled):
    # the request waits in the registry, and a later instance runs it.
    first = make_scheduler(instance_id="inst-first")
    pipeline(first, runs, disabled=True)
    async with first:
        await first.trigger("extract")
        paths = first._runners["load"].coordinator.paths
        await eventually(
            lambda: bool(first._runners["load"].coordinator.view.children(paths.requests)),
            20,
            what="the request in the registry",
        )
    assert runs.of("load") == []
    second = make_scheduler(instance_id="inst-second")
    pipeline(second, runs, disabled=False, overwrite=True)
    async with second:
        await eventually(lambda: len(runs.of("load")) == 2, 20, what="load on the new instance")
    assert {c.upstream_task_ids for c in runs.of("load")} == {(runs.of("extract")[0].task_id,)}


@pytest.mark.slow
async def test_the_pipeline_example_runs_the_chain() -> None:
    example = Path(__file__).resolve().parents[1] / "examples" / "dependent_pipeline.py"
    done = await anyio.run_process(
        [sys.executable, str(example), "--seconds", "5"], check=False, stderr=subprocess.STDOUT
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "retrying in" in out and "transform after 1 extract run(s): items [0, 1, 2, 3]" in out
    assert "load after transform task transform@-@0@-@READY" in out


async def test_disabled_items_do_not_hold_the_fire_and_stale_fires_are_dropped(
    make_scheduler: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    scheduler, runs = make_scheduler(), Runs()

    @scheduler.job(sharding_total_count=3, cron="* * * * * ?")
    async def tick(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    @scheduler.job(after="tick")
    async def tock(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    async with scheduler:
        paths = scheduler._runners["tick"].coordinator.paths
        view = scheduler._runners["tick"].coordinator.view
        await scheduler.registry.create(paths.item_disabled(2), make_parents=True)
        # A fire from long ago that never completed (item 1 never ran for it).
        await scheduler.registry.create(paths.dependents_done("1000", 0), make_parents=True)
        await eventually(lambda: view.exists(paths.item_disabled(2)), 20, what="item 2 disabled")
        # A fire of items 0 and 1 only (2 is disabled) completes the fire.
        await eventually(
            lambda: any("@-@0,1@-@" in t for c in runs.of("tock") for t in c.upstream_task_ids),
            20,
            what="tock after a fire of tick's enabled items",
        )
        await eventually(
            lambda: "1000" not in view.children(paths.dependents_done()), 20, what="stale dropped"
        )
    assert any("fire 1000 never completed" in r.getMessage() for r in caplog.records)


@pytest.mark.zookeeper
async def test_operations_and_the_cli_show_the_chain(zk_url: str) -> None:
    scheduler, runs = Scheduler(registry=zk_url), Runs()
    pipeline(scheduler, runs)

    @scheduler.job(after=["extract", "load"])
    async def report(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    async with scheduler, Operations(zk_url) as ops:
        assert await ops.chain("extract") == JobChain((), ("load", "report"))
        assert await ops.chain("load") == JobChain(("extract",), ("report",))
        assert await ops.chain("report") == JobChain(("extract", "load"), ())
        shown = await cli("--registry", zk_url, "job", "show", "load")
        assert shown.code == 0, shown.err
        rows = {line.split()[0]: line.split()[1:] for line in shown.out.splitlines() if line}
        assert rows["runs_after"] == ["extract"] and rows["runs_before"] == ["report"]
        as_json = (await cli("--registry", zk_url, "--json", "job", "show", "report")).json()
        assert as_json["chain"] == {"upstream": ["extract", "load"], "downstream": []}


async def _set_servers(scheduler: Scheduler, job: str, data: bytes, *others: Scheduler) -> None:
    """Enable or disable every server of ``job``; disabled: until no instance owns an item."""
    coord = scheduler._runners[job].coordinator
    for host in await scheduler.registry.get_children(coord.paths.servers):
        await scheduler.registry.set(coord.paths.server(host), data)
    if data == b"DISABLED":
        coords = [s._runners[job].coordinator for s in (scheduler, *others)]
        await eventually(lambda: not any(c.local_items() for c in coords), 20, what="disabled")


async def test_two_triggers_before_the_dependent_ran_are_two_dependent_fires(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler, runs = make_scheduler(), Runs()
    pipeline(scheduler, runs)
    async with scheduler:
        await _set_servers(scheduler, "load", b"DISABLED")  # requests wait: nothing runs load
        for n in (1, 2):
            await scheduler.trigger("extract")
            await sink.wait_for(lambda events: len(completions(events, "extract")) == 3 * n)  # noqa: B023
        await _set_servers(scheduler, "load", b"ENABLED")
        await eventually(lambda: len(runs.of("load")) == 4, 20, what="two dependent fires")
    extract_tasks = sorted({c.task_id for c in runs.of("extract")})
    assert len(extract_tasks) == 2
    assert sorted(c.upstream_task_ids for c in runs.of("load")) == sorted(
        [(t,) for t in extract_tasks] * 2
    )


@pytest.mark.timeout(120)
async def test_an_upstream_fire_of_thousands_of_items_requests_its_dependent(
    make_scheduler: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    # The memory registry refuses a multi-op over ZooKeeper's packet limit, as ZooKeeper does:
    # one op per item of 3,000 (with a long job name in each path) would not fit one.
    scheduler, runs, done = make_scheduler(), Runs(), []
    big = "big_" + "x" * 236

    async def upstream(ctx: ShardingContext) -> None:
        done.append(ctx.sharding_item)

    async def dependent(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    scheduler.add_job(upstream, name=big, sharding_total_count=3000)
    scheduler.add_job(dependent, name="after_big", after=big)
    async with scheduler:
        await scheduler.trigger(big)
        await eventually(lambda: len(runs.of("after_big")) == 1, 90, what="the dependent")
        coord = scheduler._runners[big].coordinator
        await eventually(
            lambda: not coord.view.children(coord.paths.dependents_done()),
            30,
            what="the done set deleted",
        )
    assert sorted(done) == list(range(3000))
    assert not [r for r in caplog.records if "packet limit" in r.getMessage()]


async def test_overlapping_triggers_on_two_instances_are_two_dependent_fires(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    runs = Runs()
    schedulers = [make_scheduler(instance_id=f"inst-{n}") for n in (1, 2)]
    for scheduler in schedulers:

        @scheduler.job(sharding_total_count=4)
        async def extract(ctx: ShardingContext) -> None:
            runs.contexts.append(ctx)
            await anyio.sleep(0.5)  # the second trigger may come while items run: they misfire

        @scheduler.job(after="extract")
        async def load(ctx: ShardingContext) -> None:
            runs.contexts.append(ctx)

    first, second = schedulers
    async with first, second:
        coord = first._runners["extract"].coordinator
        await eventually(lambda: len(coord.local_items()) == 2, 20, what="two items each")
        await _set_servers(first, "load", b"DISABLED", second)  # both requests wait
        await first.trigger("extract")
        await eventually(lambda: len(runs.of("extract")) == 4, 20, what="the first fire")
        await second.trigger("extract")
        await eventually(lambda: len(runs.of("extract")) == 8, 20, what="both fires")
        runners = [s._runners["extract"] for s in schedulers]
        await eventually(lambda: not any(r.executor.running for r in runners), 20, what="idle")
        await _set_servers(first, "load", b"ENABLED")
        await eventually(lambda: len(runs.of("load")) == 2, 20, what="two dependent fires")
        await anyio.sleep(0.5)  # no third load run follows
    ups = [c.upstream_task_ids for c in runs.of("load")]
    assert len(ups) == 2 and ups[0] != ups[1] and all(len(u) == 2 for u in ups), ups


async def test_a_fenced_upstream_run_leaves_no_bookkeeping_behind(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    # A fenced item never reaches item_done: its run's entries must still go (they grew by one
    # per fenced run), and the failover run still completes the fire for the dependent.
    scheduler, runs = make_scheduler(), Runs()
    started = anyio.Event()

    @scheduler.job(sharding_total_count=2, failover=True)
    async def extract(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)
        started.set()
        if ctx.execution_source is ExecutionSource.NORMAL_TRIGGER and ctx.sharding_item == 1:
            await anyio.sleep(60)

    @scheduler.job(after="extract")
    async def load(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    async with scheduler:
        await scheduler.trigger("extract")
        await eventually(lambda: len(runs.of("extract")) == 2, 20, what="both items started")
        registry = scheduler.registry
        assert isinstance(registry, MemoryRegistry)
        registry.expire_session()  # item 1 is fenced; a new session at once fails it over
        await eventually(lambda: len(runs.of("load")) == 1, 20, what="the dependent")
        dependents = scheduler._runners["extract"].executor.dependents
        assert dependents is not None
        await eventually(
            lambda: not scheduler._runners["extract"].executor.running, 20, what="idle"
        )
        assert dependents._unrecorded == {} and dependents._keys == {}
    sources = [c.execution_source for c in runs.of("extract") if c.sharding_item == 1]
    assert sources == [ExecutionSource.NORMAL_TRIGGER, ExecutionSource.FAILOVER]


def requested(caplog: pytest.LogCaptureFixture, job: str, n: int) -> Callable[[], bool]:
    """Whether ``n`` fires of ``job`` have requested the dependent ``joined``."""

    def probe() -> bool:
        messages = [r.getMessage() for r in caplog.records]
        return n == sum(1 for m in messages if m.startswith(f"{job}: fire ") and "joined" in m)

    return probe


async def test_manual_fires_of_joined_upstreams_pair_coalesce_and_are_never_mixed(
    make_scheduler: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # (a1, b1): a1 failed an item, so all_succeeded skips it. a2 and a3 come before b2: a3
    # takes a2's place in the waiting request, and the dependent runs once, with (a3, b2).
    scheduler, seen = make_scheduler(), Runs()
    caplog.set_level(logging.INFO, logger="aioelastic.dependents")

    @scheduler.job(sharding_total_count=2)
    async def a(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)
        if ctx.sharding_item == 1 and ctx.task_id == seen.of("a")[0].task_id:
            raise ValueError("a's first fire fails item 1")

    @scheduler.job()
    async def b(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    @scheduler.job(after=["a", "b"])
    async def joined(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    def skipped() -> bool:
        return any("not run after fire" in r.getMessage() for r in caplog.records)

    async with scheduler:
        for job, n in (("a", 1), ("b", 1)):
            await scheduler.trigger(job)
            await eventually(requested(caplog, job, n), 20, what=f"{job}'s fire {n} requested")
        await eventually(skipped, 20, what="(a1, b1) skipped")
        for job, n in (("a", 2), ("a", 3), ("b", 2)):
            await scheduler.trigger(job)
            await eventually(requested(caplog, job, n), 20, what=f"{job}'s fire {n} requested")
        await eventually(lambda: len(seen.of("joined")) == 1, 20, what="the dependent")
        coord = scheduler._runners["joined"].coordinator
        await eventually(lambda: not coord.view.children(coord.paths.requests), 20, what="done")
    *_, a3 = dict.fromkeys(c.task_id for c in seen.of("a"))
    _, b2 = dict.fromkeys(c.task_id for c in seen.of("b"))
    (run,) = seen.of("joined")
    assert sorted(run.upstream_task_ids) == sorted([a3, b2])
    (skip,) = [r.getMessage() for r in caplog.records if "not run after fire" in r.getMessage()]
    assert "{'a': [1]}" in skip


async def test_manual_fires_of_a_join_on_two_instances_are_each_used_once(
    make_scheduler: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    # Two fires of a, each over both instances (the second misfires and runs right after the
    # first), coalesce: the dependent joins b1 with the second. Then b2 waits for a3. No fire
    # is mixed with another or used twice.
    runs = Runs()
    caplog.set_level(logging.INFO, logger="aioelastic.dependents")
    schedulers = [make_scheduler(instance_id=f"inst-{n}") for n in (1, 2)]
    for scheduler in schedulers:

        @scheduler.job(sharding_total_count=4)
        async def a(ctx: ShardingContext) -> None:
            runs.contexts.append(ctx)
            await anyio.sleep(0.3)

        @scheduler.job()
        async def b(ctx: ShardingContext) -> None:
            runs.contexts.append(ctx)

        @scheduler.job(after=["a", "b"])
        async def joined(ctx: ShardingContext) -> None:
            runs.contexts.append(ctx)

    first, second = schedulers
    async with first, second:
        coord = first._runners["a"].coordinator
        await eventually(lambda: len(coord.local_items()) == 2, 20, what="two items each")
        await first.trigger("a")
        await eventually(lambda: len(runs.of("a")) == 4, 20, what="the first fire of a")
        await second.trigger("a")
        await eventually(requested(caplog, "a", 2), 20, what="both fires of a requested")
        await second.trigger("b")
        await eventually(lambda: len(runs.of("joined")) == 1, 20, what="joined 1")
        await second.trigger("b")
        await eventually(requested(caplog, "b", 2), 20, what="b's second fire requested")
        await first.trigger("a")
        await eventually(lambda: len(runs.of("joined")) == 2, 20, what="joined 2")
        await anyio.sleep(0.5)  # no third run follows
    a_runs = [c.task_id for c in runs.of("a")]
    fires = [set(a_runs[4:8]), set(a_runs[8:])]  # each fire: one run on each instance
    ups = [set(c.upstream_task_ids) for c in runs.of("joined")]
    assert len(ups) == 2 and all(len(f) == 2 for f in fires)
    assert [u - set(a_runs) for u in ups] == [{c.task_id} for c in runs.of("b")]
    assert [u & set(a_runs) for u in ups] == fires, ups


async def test_a_misfire_rerun_on_another_instance_completes_its_own_fire(
    make_scheduler: Callable[..., Scheduler],
) -> None:
    # inst-1's item of extract still runs fire 1 when fire 2 comes: it misfires there (inst-2's
    # item runs fire 2). inst-1 stops before re-running it; inst-2 takes the item over and
    # re-runs the misfire, which must complete fire 2 (its key is in the misfire mark): under
    # the key "manual" fire 2 never completed and load ran once.
    runs = Runs()
    schedulers = [make_scheduler(instance_id=f"inst-{n}") for n in (1, 2)]
    for scheduler in schedulers:

        @scheduler.job(sharding_total_count=2)
        async def extract(ctx: ShardingContext) -> None:
            runs.contexts.append(ctx)
            if "@-@inst-1@-@" in ctx.task_id:
                await ctx.lost.wait()  # until inst-1 stops

        @scheduler.job(after="extract")
        async def load(ctx: ShardingContext) -> None:
            runs.contexts.append(ctx)

    first, second = schedulers
    async with second:
        async with first:
            coord = first._runners["extract"].coordinator
            await eventually(lambda: len(coord.local_items()) == 1, 20, what="one item each")
            (held,) = coord.local_items()
            await first.trigger("extract")
            await eventually(lambda: len(runs.of("extract")) == 2, 20, what="fire 1")
            await first.trigger("extract")
            await eventually(lambda: len(runs.of("extract")) == 3, 20, what="fire 2 on inst-2")
            await eventually(lambda: coord.is_misfired(held), 20, what="the misfire on inst-1")
        await eventually(
            lambda: len(runs.of("load")) == 2,
            20,
            what="load after both fires",
            detail=lambda: [(c.job_name, c.execution_source.value) for c in runs.contexts],
        )
    rerun = [c for c in runs.of("extract") if c.execution_source is ExecutionSource.MISFIRE]
    assert [c.sharding_item for c in rerun] == [held] and "@-@inst-2@-@" in rerun[0].task_id
    fire2 = {runs.of("extract")[2].task_id, rerun[0].task_id}
    assert set(runs.of("load")[1].upstream_task_ids) == fire2


async def test_a_misfire_mark_names_the_latest_fire_and_an_old_mark_still_reruns(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    # Fires 2 and 3 misfire while fire 1 runs: the mark names fire 3 (its one re-run stands for
    # both), and load runs after fires 1 and 3. A mark without a key (an older version's) is
    # re-run as fire "manual".
    scheduler, runs, release = make_scheduler(), Runs(), anyio.Event()

    @scheduler.job()
    async def extract(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)
        if len(runs.of("extract")) == 1:
            await release.wait()

    @scheduler.job(after="extract")
    async def load(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    def fires() -> list[str]:
        staged = [s for s in statuses(sink.events, "load") if s.state is State.TASK_STAGING]
        return [s.message.split("(fire ")[1].split(",")[0] for s in staged]

    async with scheduler:
        coord = scheduler._runners["extract"].coordinator
        mark = coord.paths.item_misfire(0)
        await scheduler.trigger("extract")
        await eventually(lambda: len(runs.of("extract")) == 1, 20, what="fire 1")
        keys: list[bytes] = []
        for n in (2, 3):
            await scheduler.trigger("extract")
            keys.append(
                await eventually(
                    lambda: coord.view.get(mark) or b"",
                    20,
                    until=lambda raw: raw and raw not in keys,
                    what=f"fire {n}'s misfire mark",
                )
            )
        release.set()
        await eventually(lambda: len(fires()) == 2, 20, what="load after fires 1 and 3")
        assert fires()[1] == keys[1].decode() and key_time(fires()[1]) > 0
        await eventually(lambda: len(runs.of("load")) == 2, 20, what="load ran")
        await scheduler.registry.create(mark, b"")
        await eventually(lambda: len(fires()) == 3, 20, what="load after the old mark's re-run")
    assert fires()[2] == "manual"
    assert [c.execution_source for c in runs.of("extract")][1:] == [ExecutionSource.MISFIRE] * 2


async def test_a_fire_whose_start_fails_leaves_nothing_behind(
    make_scheduler: Callable[..., Scheduler],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The registry fails once mid-fire (moving catchup/last on, after the dependents' records
    # were written): the fire's running mark, its dependents records and their bookkeeping must
    # go. The mark was left, so every later fire misfired: the job never ran again.
    scheduler, runs = make_scheduler(), Runs()

    @scheduler.job(cron="* * * * * ?", sharding_total_count=2, catchup_window=60)
    async def extract(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    @scheduler.job(after="extract")
    async def load(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    async with scheduler:
        runner = scheduler._runners["extract"]
        paths, registry = runner.coordinator.paths, scheduler.registry
        get, failed = registry.get, anyio.Event()

        async def get_failing_once(path: str, watcher: Any = None) -> Any:
            if path == paths.catchup_last and not failed.is_set():
                failed.set()
                raise RegistryError("connection lost (injected)")
            return await get(path, watcher)

        monkeypatch.setattr(registry, "get", get_failing_once)
        with anyio.fail_after(20):
            await failed.wait()
        before = len(runs.of("extract"))
        await eventually(lambda: len(runs.of("load")) >= 1, 20, what="load after a later fire")
        assert len(runs.of("extract")) > before
        dependents = runner.executor.dependents
        assert dependents is not None
    assert any("connection lost (injected)" in r.getMessage() for r in caplog.records)
    assert dependents._unrecorded == {} and dependents._keys == {}
    assert not [c for c in runs.of("extract") if c.execution_source is ExecutionSource.MISFIRE]


async def test_manual_fires_of_one_upstream_of_a_join_coalesce_to_the_latest(
    make_scheduler: Callable[..., Scheduler], caplog: pytest.LogCaptureFixture
) -> None:
    # a is triggered 4 times while b never is: one request waits (with a's latest fire), not
    # one per trigger; b's fire then runs the dependent once, with a's latest fire.
    scheduler, seen = make_scheduler(), Runs()
    caplog.set_level(logging.INFO, logger="aioelastic.dependents")

    @scheduler.job(sharding_total_count=2)
    async def a(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    @scheduler.job()
    async def b(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    @scheduler.job(after=["a", "b"])
    async def joined(ctx: ShardingContext) -> None:
        seen.contexts.append(ctx)

    async with scheduler:
        coord = scheduler._runners["joined"].coordinator
        for n in range(1, 5):
            await scheduler.trigger("a")
            await eventually(requested(caplog, "a", n), 20, what=f"a's fire {n} requested")
        assert len(coord.view.children(coord.paths.requests)) == 1
        await scheduler.trigger("b")
        await eventually(lambda: len(seen.of("joined")) == 1, 20, what="the dependent")
        await eventually(
            lambda: not coord.view.children(coord.paths.requests), 20, what="no request left"
        )
    (run,) = seen.of("joined")
    assert sorted(run.upstream_task_ids) == sorted(
        [seen.of("a")[-1].task_id, seen.of("b")[0].task_id]
    )


async def test_two_manual_fires_of_a_join_at_once_open_one_request() -> None:
    # Fires of a and b complete at once on two instances; each finds no request waiting and
    # would open its own (two requests, each waiting for the other job forever): the version
    # check of the requests node fails the later one, which then fills the first.
    async with memory_registry("join") as registry:
        joins = {"joined": ("a", "b")}
        da, db = (
            Dependents(registry, "ns", JobConfig(name=n), ["joined"], f"inst-{n}", joins)
            for n in ("a", "b")
        )
        joined = JobPaths("ns", "joined")
        ops_a = await da._request_ops(joined, "manual-1-x", b"{}")
        ops_b = await db._request_ops(joined, "manual-2-y", b"{}")
        await registry.transaction(ops_a)
        with pytest.raises(TransactionFailedError):
            await registry.transaction(ops_b)
        await registry.transaction(await db._request_ops(joined, "manual-2-y", b"{}"))
        assert await registry.get_children(joined.requests) == ["manual-1-x"]
        ups = await registry.get_children(joined.request("manual-1-x"))
        assert sorted(ups) == ["up-a", "up-b"]


async def test_completing_a_fire_reads_its_records_in_one_pipelined_call(
    make_scheduler: Callable[..., Scheduler], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The instance that sees a fire complete reads every item's record: one get each before.
    scheduler, runs = make_scheduler(), Runs()

    @scheduler.job(sharding_total_count=40)
    async def extract(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    @scheduler.job(after="extract")
    async def load(ctx: ShardingContext) -> None:
        runs.contexts.append(ctx)

    async with scheduler:
        registry, done = scheduler.registry, scheduler._runners["extract"].coordinator.paths
        get, read_many, gets, reads = registry.get, registry.read_many, [], []

        async def counted_get(path: str, watcher: Any = None) -> Any:
            if path.startswith(done.dependents_done() + "/"):
                gets.append(path)
            return await get(path, watcher)

        async def counted_read_many(paths: Any, on_result: Any, **kw: Any) -> None:
            reads.append(len(paths))
            await read_many(paths, on_result, **kw)

        monkeypatch.setattr(registry, "get", counted_get)
        monkeypatch.setattr(registry, "read_many", counted_read_many)
        await scheduler.trigger("extract")
        await eventually(lambda: len(runs.of("load")) == 1, 20, what="the dependent")
    assert gets == [] and 40 in reads


async def test_a_failover_run_ignores_an_undecodable_fire_record_of_a_dead_run() -> None:
    # The dead runs' fire records of an item name the upstream fire a takeover completes;
    # bytes that are not UTF-8 (another client's garbage) raised UnicodeDecodeError from the
    # takeover's completion, so the fire was never recorded and its dependents never fired.
    async with memory_registry("lost") as registry:
        up = Dependents(registry, "ns", JobConfig(name="up"), ["down"], "inst-b")
        parent = up.paths.dependents_fire(0)
        await registry.create(f"{parent}/inst-dead", b"1733000000000", make_parents=True)
        await registry.create(f"{parent}/inst-gone", b"\xff\xfe garbage")
        assert await up._lost_run(0) == ("inst-dead", "1733000000000")
        await registry.delete(f"{parent}/inst-dead")
        assert await up._lost_run(0) == ("inst-b", None)  # nothing readable: as if none
