"""The Operations API: statistics, config, lifecycle and sharding operations on the embedded
registry and on a real ZooKeeper."""

from __future__ import annotations

import json
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from aioelastic import (
    ConfigError,
    ItemStatus,
    JobNotFoundError,
    JobStatus,
    NotFoundError,
    OperationRefusedError,
    Operations,
    Scheduler,
    ServerStatus,
    SessionLostError,
    ShardingContext,
)
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic.registry import MemoryRegistry, MemoryStore
from tests.harness.helpers import eventually
from tests.harness.zookeeper import free_port

pytestmark = pytest.mark.anyio


def memory_url() -> str:
    name = f"ops{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(name)
    return f"memory://{name}/ns"


# -- statuses, from hand-made registry trees (ElasticJob's rules) --------------------------


async def _tree(registry: MemoryRegistry, nodes: dict[str, bytes]) -> None:
    for path, data in nodes.items():
        await registry.create(path, data, make_parents=True)


CONFIG = json.dumps({"name": "j", "cron": None, "sharding_total_count": 2}).encode()
P = JobPaths("ns", "j")
BASE = {
    P.config: CONFIG,
    P.servers: b"",
    P.instances: b"",
    P.sharding: b"",
    P.leader_sharding: b"",
}
ALIVE = {
    P.server("h1"): b"ENABLED",
    P.instance("i1"): json.dumps({"instance_id": "i1", "host": "h1"}).encode(),
    P.item_instance(0): b"i1",
    P.item_instance(1): b"i1",
}


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({P.server("h1"): b"ENABLED"}, JobStatus.CRASHED),
        (ALIVE, JobStatus.OK),
        ({**ALIVE, P.server("h1"): b"DISABLED"}, JobStatus.DISABLED),
        ({**ALIVE, P.server("h2"): b"DISABLED"}, JobStatus.OK),
        ({**ALIVE, P.sharding_necessary: b""}, JobStatus.SHARDING_FLAG),
        ({**ALIVE, P.item_instance(1): b"dead"}, JobStatus.SHARDING_FLAG),
    ],
    ids=["no-instance", "ok", "all-disabled", "one-disabled", "necessary", "dead-owner"],
)
async def test_job_status_follows_elasticjob(extra: dict[str, bytes], status: JobStatus) -> None:
    async with AsyncExitStack() as stack:
        registry = MemoryRegistry(parse_registry_url(memory_url()))
        await registry.start(stack)
        await _tree(registry, {**BASE, **extra})
        ops = Operations.for_registry(registry, "ns")
        [brief] = await ops.jobs()
        assert (brief.name, brief.status, brief.sharding_total_count) == ("j", status, 2)


@pytest.mark.parametrize("timeout", [-1, float("nan")])
def test_an_operations_timeout_must_not_be_negative(timeout: float) -> None:
    # NaN never timed an operation out (0 times each out at once, as the test below uses).
    with pytest.raises(ConfigError) as info:
        Operations("memory://ops-timeout/ns", timeout=timeout)
    assert info.value.field == "timeout"


async def test_item_status_precedence() -> None:
    async with AsyncExitStack() as stack:
        registry = MemoryRegistry(parse_registry_url(memory_url()))
        await registry.start(stack)
        config = json.dumps({"name": "j", "sharding_total_count": 5}).encode()
        await _tree(
            registry,
            {
                **BASE,
                **ALIVE,
                P.config: config,
                P.item_disabled(0): b"",
                P.item_running(0): b"i1",  # disabled wins over running
                P.item_running(1): b"i1",
                P.item_failover(1): b"i2",
                P.item_instance(2): b"gone",
                P.item_misfire(3): b"",
                P.item_instance(3): b"i1",
            },
        )
        items = await Operations.for_registry(registry, "ns").sharding("j")
    assert [(i.item, i.status, i.instance, i.failover, i.misfire) for i in items] == [
        (0, ItemStatus.DISABLED, "i1", False, False),
        (1, ItemStatus.RUNNING, "i1", True, False),
        (2, ItemStatus.SHARDING_FLAG, "gone", False, False),
        (3, ItemStatus.PENDING, "i1", False, True),
        (4, ItemStatus.SHARDING_FLAG, None, False, False),  # never assigned
    ]


# -- on a live embedded scheduler -----------------------------------------------------------


async def test_operations_on_embedded_scheduler() -> None:
    scheduler = Scheduler(registry=memory_url())
    runs: list[int] = []

    @scheduler.job(sharding_total_count=3, description="old")
    async def settle(ctx: ShardingContext) -> None:
        runs.append(ctx.sharding_item)

    with pytest.raises(RuntimeError):
        Operations.of(scheduler)  # not running yet
    async with scheduler:
        ops = Operations.of(scheduler)
        await eventually(lambda: _status(ops, "settle", JobStatus.OK))
        [brief] = await ops.jobs()
        assert (brief.cron, brief.description, brief.instance_count) == (None, "old", 1)

        [server] = await ops.servers("settle")
        assert server.status is ServerStatus.ENABLED
        assert server.instances == (scheduler.instance_id,)
        [instance] = await ops.instances("settle")
        assert (instance.instance_id, instance.host) == (scheduler.instance_id, server.host)
        assert instance.pid is not None and not instance.shutting_down
        items = await ops.sharding("settle")
        assert {(i.status, i.instance) for i in items} == {
            (ItemStatus.PENDING, scheduler.instance_id)
        }

        # config: validated, stored, picked up by the live instance
        new = await ops.update_job_config("settle", description="new", sharding_total_count=4)
        assert new["description"] == "new" and (await ops.job_config("settle")) == new
        await eventually(lambda: scheduler.jobs["settle"].sharding_total_count == 4)
        with pytest.raises(ConfigError, match="sharding_total_count"):
            await ops.update_job_config("settle", sharding_total_count=0)
        with pytest.raises(ConfigError, match="name"):
            await ops.update_job_config("settle", name="other")
        with pytest.raises(ConfigError, match="never fires"):  # as add_job refuses it
            await ops.update_job_config("settle", cron="0 0 0 30 2 ?")

        # items: a disabled item does not run
        await ops.disable_item("settle", 1)
        assert (await ops.sharding("settle"))[1].status is ItemStatus.DISABLED
        await eventually(lambda: len(scheduler._runners["settle"].coordinator.local_items()) == 3)
        assert await ops.trigger("settle") == [scheduler.instance_id]
        await eventually(lambda: sorted(runs) == [0, 2, 3])
        await ops.enable_item("settle", 1)
        assert (await ops.sharding("settle"))[1].status is not ItemStatus.DISABLED
        with pytest.raises(NotFoundError, match=r"items 0\.\.3"):
            await ops.disable_item("settle", 4)

        # servers: disabling every server makes the job DISABLED; enabling brings it back
        assert await ops.disable_server("settle") == [server.host]
        assert (await ops.job("settle")).status is JobStatus.DISABLED
        assert (await ops.servers("settle"))[0].status is ServerStatus.DISABLED
        await ops.enable_server("settle", server.host)
        await eventually(lambda: _status(ops, "settle", JobStatus.OK))
        with pytest.raises(NotFoundError, match="no server"):
            await ops.enable_server("settle", "nohost")

        tree = await ops.dump("settle")
        assert json.loads(tree["/ns/settle/config"])["description"] == "new"
        assert f"/ns/settle/instances/{scheduler.instance_id}" in tree

        with pytest.raises(OperationRefusedError, match="still runs on 1 instance"):
            await ops.remove_job("settle")
        with pytest.raises(NotFoundError):
            await ops.shutdown_instance("settle", "no-such-instance")
        for call in (ops.job, ops.sharding, ops.servers, ops.dump, ops.trigger, ops.job_config):
            with pytest.raises(JobNotFoundError):
                await call("nope")
    # stopped: the instance node is gone, the job CRASHED, removal allowed
    async with Operations(scheduler.registry_url) as ops:
        assert (await ops.job("settle")).status is JobStatus.CRASHED
        await ops.remove_job("settle")
        assert await ops.jobs() == []
        with pytest.raises(JobNotFoundError):
            await ops.remove_job("settle")


async def _status(ops: Operations, job: str, status: JobStatus) -> bool:
    return (await ops.job(job)).status is status


async def test_forced_removal_stops_live_instances_first() -> None:
    url = memory_url()
    scheduler = Scheduler(registry=url)

    @scheduler.job(sharding_total_count=2, cron="0/1 * * * * ?")
    async def doomed(ctx: ShardingContext) -> None: ...

    @scheduler.job()
    async def survivor(ctx: ShardingContext) -> None: ...

    async with scheduler:
        ops = Operations.of(scheduler)
        await eventually(lambda: _status(ops, "doomed", JobStatus.OK))
        await ops.remove_job("doomed", force=True)
        assert [j.name for j in await ops.jobs()] == ["survivor"]
        with pytest.raises(JobNotFoundError):
            await ops.dump("doomed")
        # the instance left the job before the tree went: nothing of it comes back
        store = MemoryStore.named(parse_registry_url(url).hosts)
        assert "/ns/survivor/config" in store.nodes
        assert not [path for path in store.nodes if path.startswith("/ns/doomed")]
        assert (await ops.job("survivor")).status is JobStatus.OK


# -- on ZooKeeper --------------------------------------------------------------------------


@pytest.mark.zookeeper
async def test_operations_on_zookeeper(zk_url: str) -> None:
    scheduler = Scheduler(registry=zk_url)
    runs: list[int] = []

    @scheduler.job(sharding_total_count=2, cron="0 0 0 1 1 ? 2099")
    async def report(ctx: ShardingContext) -> None:
        runs.append(ctx.sharding_item)

    async with scheduler, Operations(zk_url) as ops:
        await eventually(lambda: _status(ops, "report", JobStatus.OK))
        assert await ops.trigger("report") == [scheduler.instance_id]
        await eventually(lambda: sorted(runs) == [0, 1])

        await ops.update_job_config("report", cron="0/1 * * * * ?")
        await eventually(lambda: scheduler.jobs["report"].cron == "0/1 * * * * ?")
        await eventually(lambda: len(runs) >= 4, timeout=5)  # fires on the new schedule

        await ops.shutdown_instance("report", scheduler.instance_id)
        # the node says SHUTDOWN until the instance reacts (then it is gone)
        await eventually(lambda: _shutdown_or_gone(ops, "report", scheduler.instance_id))


async def _shutdown_or_gone(ops: Operations, job: str, instance_id: str) -> bool:
    found = {i.instance_id: i for i in await ops.instances(job)}
    return instance_id not in found or found[instance_id].shutting_down


@pytest.mark.zookeeper
async def test_shutdown_instance_stops_the_job_there(zk_url: str) -> None:
    scheduler = Scheduler(registry=zk_url)

    @scheduler.job(sharding_total_count=2)
    async def report(ctx: ShardingContext) -> None: ...

    async with scheduler, Operations(zk_url) as ops:
        await eventually(lambda: _status(ops, "report", JobStatus.OK))
        await ops.shutdown_instance("report", scheduler.instance_id)
        await eventually(lambda: _async_instances_empty(ops, "report"), timeout=5)
        assert (await ops.job("report")).status is JobStatus.CRASHED


async def _async_instances_empty(ops: Operations, job: str) -> bool:
    return not await ops.instances(job)


async def test_unreachable_registry_raises_session_lost() -> None:
    url = f"zookeeper://127.0.0.1:{free_port()}/ns?connect_timeout=0.5"
    with anyio.fail_after(10), pytest.raises(SessionLostError, match="cannot reach the registry"):
        async with Operations(url):
            pass


OPERATIONS_CALLS: list[tuple[str, tuple[object, ...]]] = [
    ("jobs", ()),
    ("job", ("j",)),
    ("servers", ("j",)),
    ("instances", ("j",)),
    ("sharding", ("j",)),
    ("dump", ("j",)),
    ("job_config", ("j",)),
    ("update_job_config", ("j",)),
    ("remove_job", ("j",)),
    ("trigger", ("j",)),
    ("disable_server", ("j",)),
    ("enable_server", ("j",)),
    ("disable_item", ("j", 0)),
    ("enable_item", ("j", 0)),
    ("shutdown_instance", ("j", "i1")),
    ("job_config_version", ("j",)),
    ("update_job_config_at", ("j", 0)),
    ("schedule", ("j",)),
    ("missed_fires", (None, "j")),  # its registry read has the deadline
    ("chain", ("j",)),
]


@pytest.mark.parametrize(("method", "args"), OPERATIONS_CALLS, ids=[m for m, _ in OPERATIONS_CALLS])
async def test_every_operation_has_the_deadline(method: str, args: tuple[object, ...]) -> None:
    url = parse_registry_url(memory_url())
    registry = MemoryRegistry(url)
    async with AsyncExitStack() as stack:
        await registry.start(stack)
        await _tree(registry, {**BASE, **ALIVE})
        ops = Operations.for_registry(registry, "ns", timeout=0)  # due at the first request
        with pytest.raises(SessionLostError, match="did not answer within 0s"):
            await getattr(ops, method)(*args)


def test_the_deadline_test_covers_every_operation() -> None:
    import inspect

    public = {
        name
        for name, member in vars(Operations).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    assert public == {method for method, _ in OPERATIONS_CALLS}


async def test_job_brief_gives_the_next_fire_time_in_the_stored_zone() -> None:
    scheduler = Scheduler(registry=memory_url())

    @scheduler.job(cron="0 0 3 * * ?", time_zone="Asia/Tokyo")
    async def nightly(ctx: ShardingContext) -> None:
        pass

    @scheduler.job()
    async def on_demand(ctx: ShardingContext) -> None:
        pass

    async with scheduler:
        ops = Operations.of(scheduler)
        briefs = {b.name: b for b in await ops.jobs()}
        due = briefs["nightly"].next_fire_time
        assert due is not None and briefs["nightly"].time_zone == "Asia/Tokyo"
        assert (due.hour, due.minute, due.second) == (3, 0, 0)
        assert due.utcoffset() == timedelta(hours=9)
        assert timedelta(0) < due - datetime.now(UTC) <= timedelta(days=1)
        assert briefs["on_demand"].next_fire_time is None


async def test_a_config_update_refuses_a_cron_that_never_fires_but_not_other_fields() -> None:
    """Setting a cron with no fire time ahead is refused (Quartz: "will never fire"); a
    stored cron that expired since (its last year went by) does not block other changes."""
    url = memory_url()
    scheduler = Scheduler(registry=url)

    @scheduler.job(cron="0 0 0 1 1 ? 2099")
    async def yearly(ctx: ShardingContext) -> None:
        pass

    async with scheduler:
        ops = Operations.of(scheduler)
        with pytest.raises(ConfigError, match="never fires"):
            await ops.update_job_config("yearly", cron="0 0 0 1 1 ? 2020")
        with pytest.raises(ConfigError, match="never fires"):
            await ops.update_job_config("yearly", cron="0 0 0 30 2 ?")
        assert (await ops.job_config("yearly"))["cron"] == "0 0 0 1 1 ? 2099"
        # The stored cron expires (written as another writer would): other fields still change.
        paths = JobPaths(parse_registry_url(url).namespace, "yearly")
        stored = {**await ops.job_config("yearly"), "cron": "0 0 0 1 1 ? 2020"}
        await scheduler.registry.set(paths.config, json.dumps(stored).encode())
        new = await ops.update_job_config("yearly", description="expired")
        assert (new["cron"], new["description"]) == ("0 0 0 1 1 ? 2020", "expired")
