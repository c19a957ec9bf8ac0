"""A real 3-server ZooKeeper quorum (issue 16): the harness itself, instances surviving the death
or freeze of the server they are connected to and of the leader, quorum loss past the session
timeout and back, a chroot in the connect string. One ensemble serves the whole module."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from functools import partial

import anyio
import pytest

from aioelastic._errors import NoNodeError
from aioelastic._layout import JobPaths
from aioelastic._urls import parse_registry_url
from aioelastic.registry import (
    CreateOp,
    SessionState,
    SetOp,
    WatchEvent,
    WatchEventType,
    ZooKeeperRegistry,
)
from tests.harness.cluster import (
    JOB,
    Cluster,
    Instance,
    ItemRun,
    current_session,
    expected,
    read_assignment,
    ready,
    session_events,
    wait_assignment,
    zk_client,
)
from tests.harness.ensemble_faults import EnsembleFaults
from tests.harness.helpers import eventually
from tests.harness.history import Fault, check_history
from tests.harness.zookeeper import EnsembleMember, Recorder, ZooKeeperEnsemble, barrier

pytestmark = [pytest.mark.anyio, pytest.mark.zookeeper, pytest.mark.slow, pytest.mark.timeout(120)]

#: Session timeout of the failover tests: long enough that moving to another server (after T/2
#: of silence from a frozen one) fits before the client declares its session lost (2/3·T).
FAILOVER_TIMEOUT = 8.0
#: Session timeout of the quorum-loss test: short, so the outage past it is short too.
QUORUM_TIMEOUT = 4.0
TOTAL = 6


def _url(ensemble: ZooKeeperEnsemble, session_timeout: float, hosts: str | None = None) -> str:
    namespace = f"t{uuid.uuid4().hex[:12]}"
    hosts = hosts or ensemble.hosts
    return f"zookeeper://{hosts}/{namespace}?session_timeout={session_timeout}&connect_timeout=5"


@pytest.fixture
async def raw(zk_ensemble: ZooKeeperEnsemble) -> AsyncIterator[ZooKeeperRegistry]:
    """A client without chroot, to look at the real paths."""
    async with zk_client(_url(zk_ensemble, 10)) as reg:
        yield reg


async def poll(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` (which may call the servers' four-letter words: off the event loop)
    within a deadline."""
    await eventually(partial(anyio.to_thread.run_sync, predicate), timeout, 0.1, what=what)


# -- 1. the harness -------------------------------------------------------------------------


async def test_harness_runs_a_quorum_with_one_leader(zk_ensemble: ZooKeeperEnsemble) -> None:
    members = zk_ensemble.members
    assert len(members) == 3
    assert len({m.port for m in members}) == 3
    for m in members:
        assert (m.workdir / "data" / "myid").read_text().strip() == str(m.myid)
        assert m.workdir.is_relative_to(members[0].workdir.parent)
        assert sum(line.startswith("server.") for line in m._cfg.read_text().splitlines()) == 3
    modes = sorted(m.mode or "" for m in members)
    assert modes == ["follower", "follower", "leader"], modes
    assert zk_ensemble.leader().mode == "leader"


async def test_harness_pause_restart_wipe_and_which_server_serves(
    zk_ensemble: ZooKeeperEnsemble,
) -> None:
    follower = zk_ensemble.followers()[0]
    # A client that knows only this follower: the harness tells where its session lives.
    only = _url(zk_ensemble, 10, hosts=follower.hosts)
    async with zk_client(_url(zk_ensemble, 10)) as writer:
        await writer.create("/data", b"replicated", make_parents=True)
    async with zk_client(only) as reg:
        assert reg.connected_host == follower.hosts
        await poll(lambda: zk_ensemble.serving(reg.session_id) is follower, 10, "cons")
    follower.pause()
    assert follower.mode is None  # frozen: no answer to srvr
    follower.resume()
    await poll(lambda: follower.mode == "follower", 20, "resumed follower serves again")
    await anyio.to_thread.run_sync(follower.restart)
    await anyio.to_thread.run_sync(zk_ensemble.wait_quorum)
    await anyio.to_thread.run_sync(follower.wipe)  # empty data dir, same myid: it resyncs
    assert (follower.workdir / "data" / "myid").read_text().strip() == str(follower.myid)
    await anyio.to_thread.run_sync(zk_ensemble.wait_quorum)
    async with zk_client(only) as reg:
        assert (await reg.get("/data"))[0] == b"replicated"


# -- 2. server failover ---------------------------------------------------------------------


def _serving(ensemble: ZooKeeperEnsemble, instances: Iterable[Instance]) -> dict[str, int]:
    """instance id -> myid of the member its session is connected to (those found)."""
    out = {}
    for inst in instances:
        session = current_session(inst)
        member = ensemble.serving(session) if session is not None else None
        if member is not None:
            out[inst.instance_id] = member.myid
    return out


async def _start_cluster(
    ensemble: ZooKeeperEnsemble,
    cluster_factory: Callable[..., Cluster],
    ids: list[str],
    session_timeout: float,
    **job_options: object,
) -> tuple[str, Cluster, list[Instance]]:
    url = _url(ensemble, session_timeout)
    options = {"cron": "0/1 * * * * ?", "sharding_total_count": TOTAL, "failover": True}
    cluster = cluster_factory(url, **{**options, **job_options})
    procs = [cluster.start(i) for i in ids]
    await ready(cluster, *procs)
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, TOTAL, expected(ids, TOTAL), 30)
    return url, cluster, procs


async def _just_after_a_fire(offset: float = 0.2) -> None:
    """Sleep until ``offset`` seconds past the next whole second: items of that fire run."""
    now = time.time()
    await anyio.sleep(1 - (now % 1) + offset)


def _assert_sessions_kept(procs: list[Instance]) -> None:
    for inst in procs:
        events = session_events(inst)
        states = [state for _, state, _ in events]
        assert "LOST" not in states, (inst.instance_id, events)
        assert len({sid for _, _, sid in events}) == 1, (inst.instance_id, events)
        assert inst.alive and not inst.has("stopping"), inst.instance_id


def _assert_each_item_once_per_fire(runs: list[ItemRun]) -> None:
    fires: dict[float, list[int]] = {}
    for run in runs:
        if run.scheduled is not None:
            fires.setdefault(run.scheduled, []).append(run.item)
    for when, items in fires.items():
        assert len(items) == len(set(items)), f"an item ran twice at fire {when}: {sorted(items)}"


async def _server_failover(
    ensemble: ZooKeeperEnsemble,
    cluster_factory: Callable[..., Cluster],
    pick: Callable[[dict[str, int]], EnsembleMember],
    fault: Callable[[EnsembleMember], None],
    kind: str,
) -> None:
    """Instances keep their sessions through ``fault`` on the member ``pick`` chooses."""
    ids = ["inst-a", "inst-b", "inst-c"]
    url, cluster, procs = await _start_cluster(
        ensemble, cluster_factory, ids, FAILOVER_TIMEOUT, duration=0.5
    )
    served: dict[str, int] = {}

    def all_found() -> bool:
        served.update(_serving(ensemble, procs))
        return len(served) == len(procs)

    await poll(all_found, 10, "every instance's session on some member (cons)")
    victim = pick(served)
    on_victim = [i for i, myid in served.items() if myid == victim.myid]
    paths = JobPaths(parse_registry_url(url).namespace, JOB)
    async with zk_client(url) as observer:
        changes = Recorder()
        await observer.get_children(paths.instances, changes)  # a reshard starts with a change
        await _just_after_a_fire()
        start = time.time()
        await anyio.to_thread.run_sync(fault, victim)
        moved: dict[str, int] = {}

        def all_moved() -> bool:
            moved.update(_serving(ensemble, procs))
            return len(moved) == len(procs) and victim.myid not in moved.values()

        await poll(all_moved, 20, f"every instance served by a member other than {victim!r}")
        end = time.time()
        await anyio.sleep(4.0)  # fires after the move
        until = time.time()
        await barrier(observer, observer, f"/{paths.namespace}")
        assert changes.calls == [], f"instance membership changed: {changes.calls}"
        await wait_assignment(observer, url, TOTAL, expected(ids, TOTAL), 5)

    _assert_sessions_kept(procs)
    runs = [r for r in cluster.history() if r.start < until]
    assert all(r.ok for r in runs if r.end is not None), [r for r in runs if r.ok is False]
    assert not [r for r in runs if r.source == "FAILOVER"], "an item was failed over"
    _assert_each_item_once_per_fire(runs)
    report = check_history(
        runs, total=TOTAL, faults=[Fault(kind, start, end)], settle=1.0, until=until
    )
    assert report.ok, str(report)
    assert report.fires_checked >= 2, str(report)
    crossing = [r for r in runs if r.start < start < (r.end or until)]
    assert crossing, "no item was running when the server failed"
    if kind != "leader-kill":  # the leader's death disconnects the followers' clients too
        assert on_victim, served


def _a_follower_serving_someone(
    ensemble: ZooKeeperEnsemble,
) -> Callable[[dict[str, int]], EnsembleMember]:
    def pick(served: dict[str, int]) -> EnsembleMember:
        leader = ensemble.leader()
        myids = [m for m in served.values() if m != leader.myid]
        if not myids:  # all three chose the leader (1 in 27): its death is covered below
            pytest.skip("every instance connected to the leader")
        return ensemble.members[myids[0] - 1]

    return pick


async def test_instances_survive_the_death_of_their_follower(
    zk_ensemble: ZooKeeperEnsemble, cluster_factory: Callable[..., Cluster]
) -> None:
    await _server_failover(
        zk_ensemble,
        cluster_factory,
        _a_follower_serving_someone(zk_ensemble),
        lambda m: m.stop(kill=True),
        "follower-kill",
    )


async def test_instances_survive_a_paused_server(
    zk_ensemble: ZooKeeperEnsemble, cluster_factory: Callable[..., Cluster]
) -> None:
    """SIGSTOP: the connection stays up but nothing answers; clients leave it after T/2."""
    paused: list[EnsembleMember] = []

    def pause(member: EnsembleMember) -> None:
        member.pause()
        paused.append(member)

    try:
        await _server_failover(
            zk_ensemble,
            cluster_factory,
            _a_follower_serving_someone(zk_ensemble),
            pause,
            "server-pause",
        )
    finally:
        for member in paused:
            member.resume()


async def test_instances_survive_the_death_of_the_leader(
    zk_ensemble: ZooKeeperEnsemble, cluster_factory: Callable[..., Cluster]
) -> None:
    """A new leader is elected; clients of the followers are disconnected meanwhile too."""
    await _server_failover(
        zk_ensemble,
        cluster_factory,
        lambda _served: zk_ensemble.leader(),
        lambda m: m.stop(kill=True),
        "leader-kill",
    )


# -- 3. quorum loss past the session timeout, and back --------------------------------------

#: From quorum back to every item fired again: a new session each, re-registration, election,
#: reshard; generous for a loaded machine.
RECOVERY_DEADLINE = 30.0


async def _a_fire_started(cluster: Cluster, after: float) -> None:
    """Wait until every item of a cron fire later than ``after`` started."""

    def started() -> bool:
        by_fire: dict[float, set[int]] = {}
        for run in cluster.history():
            if run.scheduled is not None and run.scheduled > after:
                by_fire.setdefault(run.scheduled, set()).add(run.item)
        return any(len(items) == TOTAL for items in by_fire.values())

    await eventually(started, 15, 0.02, what=f"every item of a fire after {after}")


async def _every_item_started_after(cluster: Cluster, since: float, timeout: float) -> float:
    """Wait until every item started again after ``since`` (a cron fire, or the misfire re-run
    of one); return when the last one did."""

    def first_starts() -> dict[int, float]:
        first: dict[int, float] = {}
        for run in cluster.history():
            if run.start > since:
                first[run.item] = min(first.get(run.item, run.start), run.start)
        return first

    first = await eventually(
        first_starts,
        timeout,
        0.1,
        until=lambda first: len(first) == TOTAL,
        what=f"every item fired again after {since}",
    )
    return max(first.values())


async def test_quorum_loss_fences_everything_then_the_cluster_recovers(
    zk_ensemble: ZooKeeperEnsemble, cluster_factory: Callable[..., Cluster]
) -> None:
    ids = ["inst-a", "inst-b"]
    # Fires every 4 s whose items run 3.5 s; quorum goes as a fire's items start. The session
    # is declared lost 2/3·T after the last answer (an idle session pings every T/4 = 1 s):
    # 1.7-2.7 s into the fire, while every item still runs. So they all are fenced.
    url, cluster, procs = await _start_cluster(
        zk_ensemble, cluster_factory, ids, QUORUM_TIMEOUT, cron="0/4 * * * * ?", duration=3.5
    )
    await _a_fire_started(cluster, after=time.time() + 1)
    survivor, *down = zk_ensemble.members
    down_at = time.time()
    for member in down:
        member.stop(kill=True)

    def all_lost() -> bool:
        return all("LOST" in [s for _, s, _ in session_events(i)] for i in procs)

    await poll(all_lost, QUORUM_TIMEOUT + 10, "every instance declared its session lost")
    lost_at = {
        i.instance_id: next(t for t, s, _ in session_events(i) if s == "LOST") for i in procs
    }
    # Stay without quorum past the session timeout: the servers would expire the sessions.
    await anyio.sleep(max(0.0, down_at + QUORUM_TIMEOUT + 2 - time.time()))
    back_at = time.time()
    await anyio.to_thread.run_sync(lambda: zk_ensemble.start(*down))
    healed_at = await _every_item_started_after(cluster, back_at, RECOVERY_DEADLINE)
    await anyio.sleep(4.5)  # a fire after the recovery
    until = time.time()

    runs = [r for r in cluster.history() if r.start < until]
    # Nothing ran without quorum: no run started after the loss, none outlived it.
    started = [r for r in runs if lost_at[r.instance] < r.start < back_at]
    assert not started, f"ran without a session: {started}"
    for run in runs:
        if run.start < lost_at[run.instance] < (run.end or until):
            assert run.ok is False and run.end is not None, f"not fenced: {run}"
            assert run.end <= lost_at[run.instance] + 1.0, f"fenced late: {run}"
    fenced = [r for r in runs if r.ok is False]
    assert {r.item for r in fenced} == set(range(TOTAL)), f"not every running item fenced: {fenced}"
    # Rejoined with a new session each, without shutting down, and firing again.
    for inst in procs:
        events = session_events(inst)
        assert inst.alive and not inst.has("stopping"), inst.instance_id
        lost = [sid for _, s, sid in events if s == "LOST"]
        assert current_session(inst) not in (None, *lost), events
    after = [r for r in runs if r.start > back_at]
    assert {r.item for r in after} == set(range(TOTAL)), after
    async with zk_client(url) as reg:
        await wait_assignment(reg, url, TOTAL, expected(ids, TOTAL), 10)
    _assert_each_item_once_per_fire(runs)
    report = check_history(
        runs,
        total=TOTAL,
        faults=[Fault("quorum-loss", down_at, healed_at)],
        settle=1.0,
        until=until,
    )
    assert report.ok, str(report)
    # The skipped fires: logged once per outage (per instance), then counted once.
    for inst in procs:
        stderr = cluster.stderr(inst, tail=None)
        skipped = [
            line for line in stderr.splitlines() if "failed:" in line and "fire skipped" in line
        ]
        assert len(skipped) == 1, stderr[-3000:]
        # The lost session was closed on the server once quorum was back, not left to expire
        # (its ephemerals would hold the instance's nodes past the recovery).
        assert "could not close lost ZooKeeper session" not in stderr, stderr[-3000:]
        assert "fire(s) skipped while the registry session was not connected" in stderr, stderr[
            -3000:
        ]
    assert survivor.running


# -- the soak's server faults (tests/harness/ensemble_faults.py), briefly -------------------------


async def test_server_faults_of_the_soak_keep_the_invariants(
    zk_ensemble: ZooKeeperEnsemble, cluster_factory: Callable[..., Cluster]
) -> None:
    """A kill, a pause and a wipe of members, as ``benchmarks/chaos_soak.py --ensemble``
    injects them: no overlap, every settled fire started, one owner per item at the end."""
    ids = ["inst-a", "inst-b", "inst-c"]
    url, cluster, procs = await _start_cluster(
        zk_ensemble, cluster_factory, ids, FAILOVER_TIMEOUT, duration=0.4
    )
    faults: list[Fault] = []
    server_faults = EnsembleFaults(zk_ensemble, faults, FAILOVER_TIMEOUT)
    members = zk_ensemble.members
    await anyio.sleep(1.5)
    await server_faults.kill(members[0], down=1.0)
    await server_faults.pause(members[1], FAILOVER_TIMEOUT * 0.6)
    await server_faults.wipe(members[2])
    await anyio.sleep(3.0)
    until = time.time()
    async with zk_client(url) as reg:
        assignment = await read_assignment(reg, url, TOTAL)
    report = check_history(
        cluster.history(),
        total=TOTAL,
        faults=faults,
        settle=1.0,
        until=until,
        assignment=assignment or {},
        live=ids,
    )
    assert report.ok, str(report)
    assert [f.kind for f in faults] == ["zk-kill", "zk-pause", "zk-wipe"]
    _assert_sessions_kept(procs)  # the session timeout outlasts each fault


# -- 4. connect-string details on the ensemble ----------------------------------------------


async def test_a_chroot_prefixes_every_path(
    zk_ensemble: ZooKeeperEnsemble, raw: ZooKeeperRegistry
) -> None:
    chroot = f"/apps{uuid.uuid4().hex[:8]}/prod"
    url = f"zookeeper://{zk_ensemble.hosts}{chroot}/ns?session_timeout=10"
    parsed = parse_registry_url(url)
    assert (parsed.chroot, parsed.namespace) == (chroot, "ns")
    async with AsyncExitStack() as stack:
        reg = ZooKeeperRegistry(parsed)
        await reg.start(stack)
        seen = Recorder()
        assert await reg.exists("/ns/job/a", seen) is None
        await reg.create("/ns/job/a", b"1", make_parents=True)  # creates the chroot too
        await seen.until(lambda calls: len(calls) == 1)
        assert seen.calls == [WatchEvent(WatchEventType.CREATED, "/ns/job/a")]
        seq = await reg.create("/ns/job/s-", sequential=True)
        assert seq.startswith("/ns/job/s-"), seq
        await reg.transaction([CreateOp("/ns/job/b", b"2"), SetOp("/ns/job/a", b"3")])
        assert sorted(await reg.get_children("/ns/job")) == ["a", "b", seq.rsplit("/", 1)[1]]
        assert (await raw.get(f"{chroot}/ns/job/a"))[0] == b"3"  # really under the chroot
        assert await raw.exists("/ns") is None
        await reg.delete("/ns", recursive=True)
        # Another session may read from a follower that has not applied the delete yet.
        await eventually(
            partial(raw.exists, f"{chroot}/ns"), 10, 0.05, until=lambda stat: stat is None
        )
        with pytest.raises(NoNodeError):
            await reg.get("/ns")
    await raw.delete(chroot.rsplit("/", 1)[0], recursive=True)


async def test_host_names_and_dead_hosts_in_the_connect_string(
    zk_ensemble: ZooKeeperEnsemble,
) -> None:
    """``localhost`` works as a host; hosts that do not answer are skipped."""
    from tests.harness.zookeeper import free_port

    live = zk_ensemble.members[0]
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    hosts = ",".join([*dead, f"localhost:{live.port}"])
    async with zk_client(_url(zk_ensemble, 10, hosts=hosts)) as reg:
        assert reg.session_state is SessionState.CONNECTED
        assert reg.connected_host == f"localhost:{live.port}"
        await poll(lambda: live.session_ids() >= {reg.session_id}, 10, "session on the live one")
