"""ZooKeeper's packet limit (``jute.maxbuffer``, 1,048,575 bytes): oversized values are
``ConfigError``s at registration, oversized requests a ``PacketTooLargeError`` on both registries
(the session lives on), and multi-ops that grow with the item count are split into chunks that
fit, keeping their invariants."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import anyio
import pytest

from aioelastic import ConfigError, JobConfig, Operations, Scheduler, Settings, ShardingContext
from aioelastic._coordination import JobCoordinator, make_identity
from aioelastic._errors import PacketTooLargeError
from aioelastic._layout import JobPaths
from aioelastic._sharding import ShardingStrategy, shard
from aioelastic._urls import parse_registry_url
from aioelastic.registry import (
    CheckOp,
    CreateOp,
    DeleteOp,
    MemoryRegistry,
    MemoryStore,
    Op,
    Registry,
    SessionState,
    SetOp,
    ZooKeeperRegistry,
)
from aioelastic.registry._limits import (
    CHUNK_BUDGET,
    NODE_DATA_LIMIT,
    PACKET_LIMIT,
    transaction_size,
)
from tests.harness.helpers import eventually
from tests.harness.zookeeper import ZooKeeperServer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]

BIG = "x" * (PACKET_LIMIT + 1)


# -- validation at registration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"job_parameter": BIG}, "job_parameter"),
        ({"sharding_total_count": 3, "sharding_item_parameters": {2: BIG}}, "item_parameters[2]"),
        ({"sharding_total_count": 2, "sharding_item_parameters": f"0=a,1={BIG}"}, "parameters[1]"),
        ({"description": BIG}, "description"),
        ({"props": {"k": BIG}}, "props"),
        # Each part fits, the whole stored config does not.
        ({"job_parameter": BIG[:600_000], "description": BIG[:600_000]}, "config"),
    ],
)
def test_oversized_values_are_config_errors_naming_the_field_and_the_limit(
    options: dict[str, object], field: str
) -> None:
    scheduler = Scheduler(registry="memory://limits/ns")

    async def work(ctx: ShardingContext) -> None: ...

    with pytest.raises(ConfigError) as err:
        scheduler.add_job(work, name="big", **options)
    assert err.value.field.endswith(field)
    assert str(NODE_DATA_LIMIT) in str(err.value) and "jute.maxbuffer" in str(err.value)
    assert len(str(err.value)) < 400  # the value itself is not echoed


def test_a_config_just_under_the_limit_is_accepted() -> None:
    config = JobConfig(name="j", job_parameter="x" * (NODE_DATA_LIMIT - 2000))
    assert len(config.to_registry()) <= NODE_DATA_LIMIT


def test_the_size_estimate_bounds_the_wire_size() -> None:
    """The estimate both registries enforce is never below what aiozk puts on the wire (with the
    world ACL) and at most ~100 bytes per op above it."""
    zk = ZooKeeperRegistry(parse_registry_url("zookeeper://127.0.0.1:1/ns"))
    ops: list[Op] = [
        CreateOp("/ns/job/sharding/9999/running", b"inst-a", ephemeral=True),
        CreateOp("/ns/job/sharding/9999", b""),
        SetOp("/ns/job/sharding/9999/instance", b"10.0.0.1@-@4242@-@abcdef"),
        DeleteOp("/ns/job/sharding/9999/misfire"),
        CheckOp("/ns/job/leader/sharding/necessary", -1),
    ]
    from aioelastic.registry._wire import MultiRequest

    for group in ([op] for op in ops):
        request = MultiRequest([zk._op_entry(op) for op in group], zk._acl_bytes)
        wire = len(request.serialize(1))
        assert wire <= transaction_size(group) <= wire + 100 * len(group)


# -- both registries refuse oversized requests, and the session lives on ----------------------


@pytest.fixture(params=["memory", pytest.param("zookeeper", marks=pytest.mark.zookeeper)])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[Registry]:
    if request.param == "zookeeper":
        url = str(request.getfixturevalue("zk_url"))
    else:
        name = f"lim{uuid.uuid4().hex[:8]}"
        MemoryStore.reset(name)
        url = f"memory://{name}/ns"
    parsed = parse_registry_url(url)
    async with AsyncExitStack() as stack:
        reg: Registry = (
            MemoryRegistry(parsed) if parsed.scheme == "memory" else ZooKeeperRegistry(parsed)
        )
        await reg.start(stack)
        yield reg


async def test_oversized_requests_are_refused_and_the_session_survives(registry: Registry) -> None:
    root = f"/lim{uuid.uuid4().hex[:6]}"
    await registry.create(root, make_parents=True)
    session = registry.session_id
    with pytest.raises(PacketTooLargeError, match=r"jute\.maxbuffer"):
        await registry.create(f"{root}/big", b"x" * PACKET_LIMIT)
    await registry.create(f"{root}/small", b"x")
    with pytest.raises(PacketTooLargeError):
        await registry.set(f"{root}/small", b"x" * PACKET_LIMIT)
    many = [CreateOp(f"{root}/n{i:05d}", b"y" * 100) for i in range(6000)]  # ~1.2 MB
    with pytest.raises(PacketTooLargeError, match="6000 ops"):
        await registry.transaction(many)
    assert sorted(await registry.get_children(root)) == ["small"]  # nothing applied
    # The limit is the real one: just under it goes through.
    await registry.create(f"{root}/edge", b"z" * (PACKET_LIMIT - 300))
    assert len((await registry.get(f"{root}/edge"))[0]) == PACKET_LIMIT - 300
    assert registry.session_state is SessionState.CONNECTED
    assert registry.session_id == session


# -- chunked multi-ops keep their invariants (embedded, one coordinator) ------------------------


class Recording(MemoryRegistry):
    """A memory registry that records every multi-op (``transactions``: the applied ones)."""

    def __init__(self, url: str) -> None:
        super().__init__(parse_registry_url(url))
        self.attempts: list[list[Op]] = []
        self.transactions: list[list[Op]] = []

    async def transaction(self, ops: Sequence[Op]) -> None:
        self.attempts.append(list(ops))
        await super().transaction(ops)
        self.transactions.append(list(ops))


async def _coordinator(
    stack: AsyncExitStack, total: int, tg: anyio.abc.TaskGroup, **options: object
) -> tuple[Recording, JobCoordinator]:
    name = f"chunk{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(name)
    registry = Recording(f"memory://{name}/ns")
    await registry.start(stack)
    config = JobConfig(name="job", sharding_total_count=total, **options)
    coord = JobCoordinator(registry, JobPaths("ns", "job"), make_identity("a", "h"), config)
    await coord.register()
    await tg.start(coord.view.run)
    return registry, coord


async def _sharded(coord: JobCoordinator, total: int) -> None:
    await eventually(coord.holds_instance_node)
    with anyio.fail_after(30):
        while coord.reshard_pending() or coord.owner(total - 1) is None:
            await coord.leader_step()
            await coord.view.wait_changed(0.5)


async def test_a_reshard_of_10000_items_is_chunked_and_drops_the_flag_last() -> None:
    total = 10_000
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        registry, coord = await _coordinator(stack, total, tg)
        flag = coord.paths.sharding_necessary
        await _sharded(coord, total)
        # (A leader step on a view that has not caught up yet may compute the reshard again:
        # its first chunk fails on the flag's check, so nothing of it is applied.)
        chunks = [
            t for t in registry.transactions if any(op.path.endswith("/instance") for op in t)
        ]
        assert len(chunks) >= 3  # 20,000 creates do not fit one packet
        assert all(transaction_size(t) <= CHUNK_BUDGET + 200 for t in chunks)
        # Every chunk but the last checks the flag; only the last deletes it, after the owners.
        assert all(t[0] == CheckOp(flag, -1) for t in chunks[:-1])
        assert [t for t in chunks if DeleteOp(flag) in t] == [chunks[-1]]
        assert chunks[-1][-1] == DeleteOp(flag)
        assert all(coord.owner(i) == "a" for i in range(total))
        tg.cancel_scope.cancel()


async def test_running_marks_stay_all_or_nothing_across_chunks() -> None:
    total = 10_000
    async with AsyncExitStack() as stack, anyio.create_task_group() as tg:
        registry, coord = await _coordinator(stack, total, tg, failover=True)
        await _sharded(coord, total)
        items = list(range(total))
        # Another runner holds the last item: the last chunk fails, the earlier ones are undone.
        other = MemoryRegistry(parse_registry_url(f"memory://{registry.url.hosts}/ns"))
        await other.start(stack)
        await other.create(coord.paths.item_running(total - 1), b"b", make_parents=True)
        await eventually(lambda: coord.view.exists(coord.paths.item_running(total - 1)))
        registry.attempts.clear()
        assert await coord.marks.mark_running(items) is False
        assert len(registry.attempts) >= 3  # chunks, the failing one, the undo
        store = MemoryStore.named(registry.url.hosts)
        running = [p for p in store.nodes if p.endswith("/running")]
        assert running == [coord.paths.item_running(total - 1)]
        assert not [p for p in store.nodes if p.startswith(coord.paths.failover_items + "/")]
        # Once free, all of them are marked, and clearing removes every mark again.
        await other.delete(coord.paths.item_running(total - 1))
        await eventually(lambda: not coord.view.exists(coord.paths.item_running(total - 1)))
        assert await coord.marks.mark_running(items) is True
        assert sum(p.endswith("/running") for p in store.nodes) == total
        await coord.marks.clear_running(items)
        assert not [p for p in store.nodes if p.endswith("/running")]
        assert not [p for p in store.nodes if p.startswith(coord.paths.failover_items + "/")]
        tg.cancel_scope.cancel()


# -- thousands of items on a real ZooKeeper, two instances ----------------------------------


@pytest.mark.zookeeper
@pytest.mark.slow
async def test_thousands_of_items_shard_fire_and_clear_on_zookeeper(
    zk_server: ZooKeeperServer,
) -> None:
    # A session timeout that outlasts a loaded CI machine's pauses: the point here is the packet
    # limit, not session loss (a lost session cancels the one-off run, which never comes back).
    zk_url = zk_server.url(f"t{uuid.uuid4().hex[:12]}", session_timeout=15, connect_timeout=5)
    # Long instance ids (the longest allowed) make every owner write big, so 6,000 items need a
    # reshard, running marks and clears over the packet limit (what 10,000 items with short ids
    # need) in a fraction of the time the views take to load 10,000 items on a shared machine.
    total = 6_000
    ids = {"a": "a" + "x" * 127, "b": "b" + "x" * 127}
    owner_bytes = sum(
        transaction_size(
            [
                CreateOp(f"/ns/wide/sharding/{i}"),
                CreateOp(f"/ns/wide/sharding/{i}/instance", ids["a"].encode()),
            ]
        )
        for i in range(total)
    )
    assert owner_bytes > PACKET_LIMIT  # one reshard multi-op would not fit
    runs: dict[str, list[int]] = {ids["a"]: [], ids["b"]: []}

    def make(instance_id: str) -> Scheduler:
        scheduler = Scheduler(
            settings=Settings(registry_url=zk_url, instance_id=instance_id, host=instance_id[:8])
        )

        @scheduler.job(name="wide", sharding_total_count=total)  # one-off: runs when triggered
        async def wide(ctx: ShardingContext) -> None:
            runs[instance_id].append(ctx.sharding_item)

        return scheduler

    want = shard(ShardingStrategy.AVG_ALLOCATION, list(ids.values()), "wide", total)
    a, b = make(ids["a"]), make(ids["b"])
    began = time.monotonic()
    async with a, b:
        coords = [s._runners["wide"].coordinator for s in (a, b)]

        def settled() -> bool:
            return all(
                not c.reshard_pending()
                and all(c.owner(i) == inst for inst, items in want.items() for i in items)
                for c in coords
            )

        await eventually(settled, timeout=150, step=0.5)
        sharded = time.monotonic() - began
        await a.trigger("wide")
        await eventually(lambda: sum(map(len, runs.values())) == total, timeout=120, step=0.1)
        assert {k: sorted(v) for k, v in runs.items()} == want
        for s in (a, b):
            await eventually(lambda: not s._runners["wide"].in_flight, timeout=30)  # noqa: B023 - awaited in this iteration
        paths = coords[0].paths
        for c in coords:  # every running mark is cleared
            await eventually(
                lambda: not any(c.is_running(i) for i in range(total)),  # noqa: B023 - awaited here
                timeout=30,
                step=0.1,
            )
        assert a.registry.session_state is SessionState.CONNECTED
        running = 0
        for item in range(0, total, 397):  # and the registry agrees (a sample)
            running += await a.registry.exists(paths.item_running(item)) is not None
        assert running == 0
    print(
        f"{total:,} items: sharded in {sharded:.1f}s, fired and cleared in total "
        f"{time.monotonic() - began:.1f}s"
    )


async def test_an_oversized_config_update_is_a_config_error() -> None:
    name = f"upd{uuid.uuid4().hex[:8]}"
    MemoryStore.reset(name)
    scheduler = Scheduler(registry=f"memory://{name}/ns")

    @scheduler.job(name="j")
    async def work(ctx: ShardingContext) -> None: ...

    async with scheduler:
        ops = Operations.of(scheduler)
        with pytest.raises(ConfigError) as err:
            await ops.update_job_config("j", job_parameter=BIG)
        assert err.value.field == "job_parameter"
        assert (await ops.job_config("j"))["job_parameter"] == ""
