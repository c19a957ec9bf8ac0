"""Corrupted registry data written by another client (issue 11.2): the bad job refuses to run
with one ERROR naming the node, every other job keeps firing, and the bad job recovers once the
data is fixed (or repaired by the leader where it owns the node). Two jobs in one process on a
real ZooKeeper."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import anyio
import pytest

from aioelastic import JobConfig, Scheduler, ShardingContext
from aioelastic._errors import NoNodeError, RegistryError
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic.registry import CreateOp, DeleteOp, Op, Stat, ZooKeeperRegistry
from tests.harness.cluster import zk_client
from tests.harness.helpers import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.timeout(90)]

CRON = "0/1 * * * * ?"
TOTAL = 2
BAD_CONFIGS = {
    "not-json": b"{not json",
    "undecodable": b"\xff\xfe\x00",
    "list": b"[1, 2, 3]",
    "null": b"null",
    "wrong-type": b'{"sharding_total_count": "many"}',
    "huge-int": b'{"sharding_total_count": 123456789012345678901234567890}',
    "huge-literal": b'{"sharding_total_count": 1' + b"0" * 5000 + b"}",
    "too-many-items": b'{"sharding_total_count": 2000000000}',
    "bad-cron": b'{"cron": 5}',
    "deep-nesting": b"[" * 100_000,  # json.loads raises RecursionError, not a ValueError
}


@dataclass
class Cluster1:
    """One scheduler with jobs ``good`` and ``bad``, and a second client to corrupt nodes."""

    scheduler: Scheduler
    reg: ZooKeeperRegistry
    paths: JobPaths
    runs: list[tuple[str, int, float]] = field(default_factory=list)

    async def work(self, ctx: ShardingContext) -> None:
        self.runs.append((ctx.job_name, ctx.sharding_item, time.monotonic()))

    def fired(self, job: str, since: float, item: int | None = None) -> int:
        return sum(1 for j, i, t in self.runs if j == job and t >= since and item in (None, i))

    async def good_keeps_firing(self, fires: int = 2) -> None:
        now = time.monotonic()
        await eventually(lambda: self.fired("good", now, 0) >= fires, timeout=15)

    async def bad_fires_again(self, item: int | None = None) -> None:
        now = time.monotonic()
        await eventually(lambda: self.fired("bad", now, item) >= 2, timeout=20)


def bad_config() -> bytes:
    return JobConfig(name="bad", cron=CRON, sharding_total_count=TOTAL).to_registry()


@asynccontextmanager
async def cluster(zk_url: str, *, before: bytes | None = None) -> AsyncIterator[Cluster1]:
    paths = JobPaths(parse_registry_url(zk_url).namespace, "bad")
    async with AsyncExitStack() as stack:
        reg = await stack.enter_async_context(zk_client(zk_url))
        if before is not None:
            await reg.create(paths.config, before, make_parents=True)
        scheduler = Scheduler(registry=zk_url, instance_id="inst-a")
        c = Cluster1(scheduler, reg, paths)
        for name in ("good", "bad"):
            scheduler.add_job(c.work, name=name, cron=CRON, sharding_total_count=TOTAL)
        await stack.enter_async_context(scheduler)
        yield c


def errors(caplog: pytest.LogCaptureFixture, node: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and node in r.getMessage()
    ]


@pytest.fixture(autouse=True)
def _log_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aioelastic")


async def held_then_resumed(c: Cluster1, caplog: pytest.LogCaptureFixture) -> None:
    """The bad job logs one ERROR naming its config node, does not fire while the good one
    does, and fires again once the node holds a valid config."""
    await eventually(lambda: errors(caplog, c.paths.config), timeout=10)
    held = time.monotonic()
    await c.good_keeps_firing(3)
    assert c.fired("bad", held + 0.5) == 0
    assert len(errors(caplog, c.paths.config)) == 1, errors(caplog, c.paths.config)
    await c.reg.set(c.paths.config, bad_config())
    await c.bad_fires_again()
    assert len(errors(caplog, c.paths.config)) == 1


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
async def test_bad_config_at_start_holds_only_that_job(
    kind: str, zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(zk_url, before=BAD_CONFIGS[kind]) as c:
        await held_then_resumed(c, caplog)


@pytest.mark.parametrize("kind", ["not-json", "list", "null", "huge-int", "bad-cron"])
async def test_bad_config_while_running_holds_only_that_job(
    kind: str, zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        await c.reg.set(c.paths.config, BAD_CONFIGS[kind])
        await held_then_resumed(c, caplog)


async def test_garbage_owner_is_reported_and_resharded(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(zk_url) as c:
        await c.bad_fires_again(item=0)
        node = c.paths.item_instance(0)
        await c.reg.set(node, b"\xff\xfe garbage")
        await eventually(lambda: errors(caplog, node), timeout=10)
        # The leader finds the assignment invalid and writes a valid owner again.
        await eventually(
            partial(_get_or_none, c.reg, node),
            10,
            0.05,
            until=lambda got: got is not None and got[0] == b"inst-a",
        )
        await c.bad_fires_again(item=0)
        await c.good_keeps_firing()
        assert len(errors(caplog, node)) == 1


async def test_persistent_instance_node_is_deleted_by_the_leader(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        ghost = c.paths.instance("ghost")
        await c.reg.create(ghost, b'{"host": "nowhere"}')
        await eventually(lambda: errors(caplog, ghost), timeout=10)
        await eventually(partial(c.reg.exists, ghost), 10, 0.05, until=lambda stat: stat is None)
        await c.bad_fires_again(item=0)
        await c.bad_fires_again(item=1)
        await c.good_keeps_firing()
        assert len(errors(caplog, ghost)) == 1


async def test_persistent_instance_node_of_this_instance_does_not_block_its_start(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    paths = JobPaths(parse_registry_url(zk_url).namespace, "bad")
    async with zk_client(zk_url) as reg:
        await reg.create(paths.instance("inst-a"), b"stale", make_parents=True)
    with anyio.fail_after(20):
        async with cluster(zk_url) as c:
            stat = await c.reg.exists(paths.instance("inst-a"))
            assert stat is not None and stat.ephemeral_owner
            await c.bad_fires_again()


@pytest.mark.parametrize("child", [False, True], ids=["leaf", "with-a-child"])
@pytest.mark.parametrize("kind", ["running", "failover"])
async def test_persistent_item_mark_is_deleted_by_the_leader(
    kind: str, child: bool, zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A persistent running mark blocks the item (every fire misfires); a persistent takeover
    mark hides it from its owner. Both are ephemeral in ElasticJob: stale, so deleted (with
    what another client put under it: an ephemeral has no children, so it was left)."""
    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        mark = c.paths.item_running(1) if kind == "running" else c.paths.item_failover(1)
        # Replace whatever mark there is by a persistent one (as another client would).
        ops: list[Op] = [CreateOp(mark, b"\xffsomeone")]
        ops += [CreateOp(f"{mark}/child", b"x")] if child else []
        await eventually(lambda: attempt(c.reg.transaction(ops)), 10)
        await eventually(lambda: errors(caplog, mark), timeout=10)
        await c.bad_fires_again(item=1)
        await c.good_keeps_firing()
        stat = await c.reg.exists(mark)
        assert stat is None or stat.ephemeral_owner
        assert len(errors(caplog, mark)) == 1


async def attempt(
    op: Awaitable[object], errors: type[Exception] | tuple[type[Exception], ...] = RegistryError
) -> bool:
    """Await ``op``; False if it raised one of ``errors`` (to be tried again)."""
    try:
        await op
    except errors:
        return False
    return True


async def _get_or_none(reg: ZooKeeperRegistry, path: str) -> tuple[bytes, Stat] | None:
    try:
        return await reg.get(path)
    except NoNodeError:  # between the leader's delete and its re-election
        return None


async def _swap_election(c: Cluster1, data: bytes, *, ephemeral: bool) -> None:
    node = c.paths.leader_election_instance
    ops: list[Op] = [DeleteOp(node), CreateOp(node, data, ephemeral=ephemeral)]
    await eventually(lambda: attempt(c.reg.transaction(ops), Exception), 10)


async def test_persistent_garbage_election_node_is_deleted(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        node = c.paths.leader_election_instance
        await _swap_election(c, b"\x00\xffgarbage", ephemeral=False)
        await eventually(lambda: errors(caplog, node), timeout=10)
        await eventually(
            partial(_get_or_none, c.reg, node),
            10,
            0.05,
            until=lambda got: got is not None and got[0] == b"inst-a" and got[1].ephemeral_owner,
        )
        await c.bad_fires_again()
        await c.good_keeps_firing()
        assert len(errors(caplog, node)) == 1


async def test_garbage_election_node_of_a_live_session_is_reported_until_it_ends(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        node = c.paths.leader_election_instance
        async with zk_client(zk_url) as other:
            ops: list[Op] = [DeleteOp(node), CreateOp(node, b"\xffjunk", ephemeral=True)]
            await eventually(lambda: attempt(other.transaction(ops), Exception), 10)
            await eventually(lambda: errors(caplog, node), timeout=10)
            await c.good_keeps_firing()
            await c.bad_fires_again()  # no leader: the committed assignment still runs
            assert (await c.reg.get(node))[0] == b"\xffjunk"  # left to its session
        # The other client's session ended: the node went with it and inst-a is elected.

        async def elected() -> bool:
            stat = await c.reg.exists(node)
            return stat is not None and (await c.reg.get(node))[0] == b"inst-a"

        await eventually(elected, 10, 0.05, what="inst-a elected")
        assert len(errors(caplog, node)) == 1


async def delete_tree_at_once(reg: ZooKeeperRegistry, root: str) -> None:
    """Delete ``root``'s subtree in one multi-op (a node-by-node delete races with healing)."""

    async def walk(path: str) -> list[str]:
        below = []
        for kid in await reg.get_children(path):
            below += await walk(f"{path}/{kid}")
        return [*below, path]

    async def walk_and_delete() -> None:
        await reg.transaction([DeleteOp(path) for path in await walk(root)])

    async def delete() -> bool:
        # A RegistryError (a node came or went while walking, e.g. a fire's marks or the
        # reshard flag): walk again.
        return await attempt(walk_and_delete())

    await eventually(delete, 10)


async def test_job_root_deleted_while_running_is_rebuilt(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        await delete_tree_at_once(c.reg, c.paths.root)
        await eventually(
            lambda: any("re-created" in r.getMessage() for r in caplog.records), timeout=10
        )
        await c.bad_fires_again(item=0)
        await c.bad_fires_again(item=1)
        await c.good_keeps_firing()
        assert await c.reg.exists(c.paths.instance("inst-a")) is not None
        assert await c.reg.exists(c.paths.config) is not None


async def test_items_running_when_the_root_is_deleted_are_cancelled(
    zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Their running marks went with the root: another instance could start them after the
    rebuild, so they must not go on here."""
    started, cancelled = anyio.Event(), []
    scheduler = Scheduler(registry=zk_url, instance_id="inst-a")

    async def slow(ctx: ShardingContext) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            cancelled.append(ctx.sharding_item)
            raise

    scheduler.add_job(slow, name="slow", sharding_total_count=2)  # one-off: runs when triggered
    root = JobPaths(parse_registry_url(zk_url).namespace, "slow").root
    async with zk_client(zk_url) as reg, scheduler:
        await scheduler.trigger("slow")
        with anyio.fail_after(10):
            await started.wait()
        await delete_tree_at_once(reg, root)
        await eventually(lambda: sorted(cancelled) == [0, 1], timeout=10)
        assert any(
            "were cancelled" in r.getMessage() or "are cancelled" in r.getMessage()
            for r in caplog.records
        )
        await eventually(lambda: any("re-created" in r.getMessage() for r in caplog.records))


GARBAGE_NAMES = {
    "superscript-digit": "\u00b2",  # str.isdigit() is True, int() refuses it
    "arabic-indic-digit": "\u0661",  # int() reads it as 1
    "leading-zero": "01",  # int() reads it as 1
    "5000-digits": "1" + "0" * 5000,  # int() refuses more than 4300 digits
}


@pytest.mark.parametrize("name", list(GARBAGE_NAMES))
@pytest.mark.parametrize("under", ["sharding", "failover-items"])
async def test_a_node_whose_name_only_looks_like_an_item_is_ignored(
    name: str, under: str, zk_url: str
) -> None:
    # One such node under a job's sharding killed the whole scheduler (a ValueError in the
    # leader's assignment check), every job of the process with it; the CLI's sharding and
    # status commands failed on it too. Only what str(item) writes names an item.
    from aioelastic import Operations

    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        parent = c.paths.sharding if under == "sharding" else c.paths.failover_items
        garbage = f"{parent}/{GARBAGE_NAMES[name]}"
        await c.reg.create(garbage, b"0", make_parents=True)
        await c.bad_fires_again()
        await c.good_keeps_firing()
        async with Operations(zk_url) as ops:
            items = await ops.sharding("bad")
            assert [i.item for i in items] == list(range(TOTAL))
            assert (await ops.job("bad")).name == "bad"
        assert await _get_or_none(c.reg, garbage) is not None  # not taken for an item's node


@pytest.mark.parametrize("leaf", ["necessary", "misfire", "trigger", "disabled"])
async def test_a_node_created_under_a_leaf_is_deleted_by_the_leader(
    leaf: str, zk_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A child under a node the layout keeps childless (zkCli's `create` one level too deep)
    # made each delete of that node fail with NotEmptyError: a reshard never finished (the
    # job stopped firing, without a word), every fire's marks failed (misfire), a trigger was
    # never consumed, an item could never be enabled again.
    from aioelastic import Operations

    async with cluster(zk_url) as c:
        await c.bad_fires_again()
        node = {
            "necessary": c.paths.sharding_necessary,
            "misfire": c.paths.item_misfire(0),
            "trigger": c.paths.trigger("inst-a"),
            "disabled": c.paths.item_disabled(0),
        }[leaf]
        ops: list[Op] = [CreateOp(node, b""), CreateOp(f"{node}/child", b"x")]
        await eventually(lambda: attempt(c.reg.transaction(ops)), 10)

        def warned() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if r.levelno == logging.WARNING and f"under {node}" in r.getMessage()
            ]

        await eventually(warned, timeout=10)
        assert await c.reg.exists(f"{node}/child") is None
        if leaf == "disabled":
            async with Operations(zk_url) as ops_api:
                await ops_api.enable_item("bad", 0)
        await c.bad_fires_again(item=0)
        await c.bad_fires_again(item=1)
        await c.good_keeps_firing()
        assert len(warned()) == 1
