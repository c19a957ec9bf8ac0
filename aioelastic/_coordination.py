"""Per-job coordination over the registry: registration, election, sharding, running marks.

Every read on a fire's path comes from the job's ``TreeView``; writes are single requests or
one multi-op. Safety rests on three registry facts rather than on timing:

* running marks are *ephemeral* nodes created in one multi-op, so a second instance (or a
  second fire) trying to run an item that is running fails atomically and misfires instead;
* the leader is whoever holds the ephemeral ``leader/election/instance`` node *and* has a
  connected session: a suspended instance stops acting as leader before the server could expire
  its session and let another instance win;
* a reshard is one multi-op that writes every item's owner and deletes
  ``leader/sharding/necessary`` last, so a view that sees the flag gone sees the new owners.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

import anyio

from ._config import JobConfig
from ._errors import (
    BadVersionError,
    InstanceIdConflictError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RegistryError,
    TimeDiffError,
    TransactionFailedError,
)
from ._guarantee import Guarantee
from ._json import loads as loads_json
from ._layout import DISABLED, ENABLED, SHUTDOWN, JobPaths, is_leaf, is_number, item_of
from ._marks import RunMarks
from ._observer import Observer, notify_observers
from ._sharding import order_instances, shard
from .registry._limits import chunk_ops
from .registry._protocol import CheckOp, CreateOp, DeleteOp, Op, Registry, SetOp
from .registry._view import JobView, TreeView, View, shared_view_of
from .tracing._events import ExecutionSource, JobExecutionEvent

__all__ = ["InstanceIdentity", "JobCoordinator", "make_identity", "write_triggers"]

log = logging.getLogger("aioelastic.coordination")


@dataclass(frozen=True, slots=True)
class InstanceIdentity:
    instance_id: str
    host: str
    ip: str
    hostname: str
    pid: int

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "instance_id": self.instance_id,
                "host": self.host,
                "ip": self.ip,
                "hostname": self.hostname,
                "pid": self.pid,
            }
        ).encode()


_MEMBER_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared(members: frozenset[str]) -> frozenset[str]:
    """One object per distinct member set, for every job of the instance (two sets per job
    were 0.4 KiB); the table is forgotten when it fills (membership churn over months)."""
    got = _MEMBER_SETS.get(members)
    if got is None:
        if len(_MEMBER_SETS) >= 256:
            _MEMBER_SETS.clear()
        got = _MEMBER_SETS[members] = members
    return got


def _local_ip(hostname: str) -> str:
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return "127.0.0.1"


def make_identity(instance_id: str | None = None, host: str | None = None) -> InstanceIdentity:
    """This process's identity: ``{ip}@-@{pid}@-@{random}`` unless ``instance_id`` is given."""
    hostname = socket.gethostname()
    ip = _local_ip(hostname)
    pid = os.getpid()
    return InstanceIdentity(
        instance_id=instance_id or f"{ip}@-@{pid}@-@{uuid.uuid4().hex[:6]}",
        host=host or ip,
        ip=ip,
        hostname=hostname,
        pid=pid,
    )


@lru_cache(maxsize=4096)
def _instance_host(raw: bytes) -> str | None:
    try:
        host = loads_json(raw).get("host")
    except (ValueError, AttributeError):
        return None
    return host if isinstance(host, str) else None


#: The item nodes ``_suspicious`` checks (``sharding/{item}/{name}``).
_CHECKED_MARKS = frozenset({"running", "failover", "instance"})


def _node_text(raw: bytes | None) -> str | None:
    """A node's data as an instance id: None if empty, missing or not UTF-8."""
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _parse_intent(job: str, item: int, raw: bytes) -> tuple[str, JobExecutionEvent] | None:
    """The lost instance and the run's start event recorded in a failover intent, if any."""
    try:
        record = loads_json(raw)
        run = JobExecutionEvent(
            job_name=job,
            task_id=str(record["task_id"]),
            hostname=str(record["hostname"]),
            ip=str(record["ip"]),
            sharding_item=item,
            execution_source=ExecutionSource(record["source"]),
            start_time=datetime.fromisoformat(record["start_time"]),
            id=str(record["id"]),
        )
        return str(record["instance"]), run
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # an older version's intent, or no trace: nothing to complete


async def write_triggers(registry: Registry, paths: JobPaths) -> list[str]:
    """Ask every live instance of the job to run its items once now (ElasticJob's
    ``trigger/{instanceId}``); returns their ids, sorted. A queued trigger stays one."""
    try:
        instances = sorted(await registry.get_children(paths.instances))
    except NoNodeError:
        return []
    # Every node holds this trigger's id (its fire's key for dependent jobs), all at once.
    data = f"{round(time.time() * 1000)}-{uuid.uuid4().hex[:8]}".encode()
    ops: list[Op] = [CreateOp(paths.trigger(i), data) for i in instances]
    if len(chunk_ops(ops)) == 1:
        with contextlib.suppress(NodeExistsError, NoNodeError, TransactionFailedError):
            await registry.transaction(ops)
            return instances
    for inst in instances:
        with contextlib.suppress(NodeExistsError):
            await registry.create(paths.trigger(inst), data, make_parents=True)
    return instances


class JobCoordinator:
    """One job's view of the cluster, from one instance."""

    def __init__(
        self,
        registry: Registry,
        paths: JobPaths,
        identity: InstanceIdentity,
        config: JobConfig,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.registry = registry
        self.observers = list(observers)
        self.paths = paths
        self.identity = identity
        self.config = config
        shared = shared_view_of(registry)  # one view for all jobs when the registry allows
        self.view: View = (
            shared.job(paths.root) if shared is not None else TreeView(registry, paths.root)
        )
        # Bound methods, not lambdas: a closure per job costs three objects.
        self.marks = RunMarks(registry, paths, self.view, identity.instance_id, self._config_now)
        """This instance's running, misfire and failover marks of the job."""
        self.once = Guarantee(registry, paths, self.view, self._total_now)
        """The job's distributed-once (guarantee) sets."""
        self.clock = time.time  # the local clock the time-diff check compares
        self._me = identity.instance_id.encode()
        # Serializes this instance's reshards of the job. asyncio's lock: 0.1 KiB against
        # anyio's 2.4, for a lock most jobs take once, at start.
        self._reshard_lock = asyncio.Lock()
        self._members_seen: frozenset[str] | None = None
        self._count_seen: int | None = None
        self._members_sharded: frozenset[str] | None = None  # of this leader's last reshard
        self.config_problem: str | None = None
        """Why the job is held (its registry config is invalid), or None."""
        self._reported: dict[str, str] = {}  # bad node path -> problem, as logged
        # A tuple: a set of these 13 paths cost 0.7 KiB per job; ``in`` stays cheap.
        self._structural = (*paths.persistent_skeleton(), paths.config)
        self._registered_once = False  # later registrations are re-registrations
        self._conflict_logged = 0  # the other session last reported as holding our node
        self._own_sessions: tuple[int, ...] = ()  # sessions that held our node (a stale one may)

    def _config_now(self) -> JobConfig:
        return self.config

    def _total_now(self) -> int:
        return self.config.sharding_total_count

    @property
    def log_fields(self) -> dict[str, str]:
        """``extra`` for this job's log records."""
        return {"job": self.paths.job, "instance": self.identity.instance_id}

    # -- registration --

    async def register(self) -> None:
        """Create the job's persistent nodes, settle its config, register this instance.

        A stored config that cannot be decoded does not fail the start: the job is held
        (``config_problem``, one ERROR) until the node holds a valid config again."""
        if not await self._register_new():
            await self._register(created=None)

    async def _register_new(self) -> bool:
        """A job the (fresh, shared) view does not know yet: create its skeleton, config,
        server and reshard flag in one multi-op, then the instance node. False if that does
        not apply or the multi-op failed (someone else registered it meanwhile)."""
        view, p = self.view, self.paths
        if not isinstance(view, JobView) or not view.fresh or view.exists(p.root):
            return False
        wanted = [*p.persistent_skeleton(), p.config, p.server(self.identity.host)]
        wanted.append(p.sharding_necessary)
        paths: set[str] = set()
        for path in wanted:  # with every missing ancestor (make_parents' nodes)
            while path not in paths and path.count("/") > 1 and not view.exists(path):
                paths.add(path)
                path = path.rsplit("/", 1)[0]
        if not view.exists(f"/{p.namespace}"):  # first, alone: every new job needs it
            with contextlib.suppress(NodeExistsError):
                await self.registry.create(f"/{p.namespace}")
        data = {
            p.config: self.config.to_registry(),
            p.server(self.identity.host): DISABLED if self.config.disabled else ENABLED,
        }
        ops = [CreateOp(x, data.get(x, b"")) for x in sorted(paths, key=lambda x: x.count("/"))]
        try:
            await self.registry.transaction(ops)
        except TransactionFailedError:
            return False
        await self.register_instance()
        return True

    async def heal(self) -> list[str]:
        """Re-create the job's nodes that are missing from the registry (a server restarted
        with an empty data directory, the job's root deleted): the skeleton, the config (the
        effective one), this server and instance, and the reshard flag. Returns their paths."""
        created: list[str] = []
        await self._register(created=created)
        return created

    def needs_heal(self) -> bool:
        """The view shows the job's root, its skeleton or its config missing."""
        return self.view.fresh and not all(self.view.exists(p) for p in self._structural)

    async def _register(self, *, created: list[str] | None) -> None:
        for path in self.paths.persistent_skeleton():
            if await self._ensure(path) and created is not None:
                created.append(path)
        stored = await self._create_or_get(self.paths.config, self.config.to_registry())
        if stored is None and created is not None:
            created.append(self.paths.config)
        if stored is not None:  # another instance (or an operator) wrote it first
            if self.config.overwrite and created is None:
                await self.registry.set(self.paths.config, self.config.to_registry())
            else:
                code = self.config
                self.adopt_config(stored)
                if created is None and self.config_problem is None:
                    self._warn_drift(code)
        server_status = DISABLED if self.config.disabled else ENABLED
        server = self.paths.server(self.identity.host)
        if await self._create_or_get(server, server_status) is None:
            if created is not None:
                created.append(server)
        elif self.config.overwrite and created is None:
            await self.registry.set(server, server_status)
        instance = self.paths.instance(self.identity.instance_id)
        stat = await self.registry.exists(instance)
        if stat is not None and not stat.ephemeral_owner:
            log.warning(
                "%s: deleting %s: a persistent node where this instance's ephemeral one goes "
                "(written by another client; no live instance holds it)",
                self.paths.job,
                instance,
                extra=self.log_fields,
            )
            await self._delete_if(instance, stat.version)
            stat = None
        await self.register_instance()
        if stat is None and created is not None:
            created.append(instance)
        if not (self.config.static_sharding and await self._fully_assigned()):
            if await self._ensure(self.paths.sharding_necessary) and created is not None:
                created.append(self.paths.sharding_necessary)

    def _warn_drift(self, code: JobConfig) -> None:
        """One WARNING if the code's config differs from the registry's, which wins."""
        ours, theirs = json.loads(code.to_registry()), json.loads(self.config.to_registry())
        differing = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if not differing:
            return
        log.warning(
            "%s: the code's config differs from the registry's in %s; the registry's wins "
            "(overwrite=False): %s",
            self.paths.job,
            ", ".join(differing),
            "; ".join(
                f"{k}: code {ours.get(k)!r}, registry {theirs.get(k)!r} (in effect)"
                for k in differing
            ),
            extra={
                **self.log_fields,
                "differing_fields": {
                    k: {"code": ours.get(k), "registry": theirs.get(k)} for k in differing
                },
            },
        )

    def adopt_config(self, raw: bytes) -> bool:
        """Take the registry's config ``raw`` as effective; if it is invalid, hold the job
        (``config_problem``) with one ERROR per bad value. True if the config changed."""
        try:
            new = self.config.merged_with_registry(raw)
        except ValueError as exc:
            text = str(exc)
            problem = f"{self.paths.config}: {text[:500]}{'...' if len(text) > 500 else ''}"
            if problem != self.config_problem:
                log.error(
                    "%s: not running the job: invalid config in the registry (%s); it resumes "
                    "once the node holds a valid config",
                    self.paths.job,
                    problem,
                    extra=self.log_fields,
                )
            self.config_problem = problem
            return False
        if self.config_problem is not None:
            log.info(
                "%s: config in the registry is valid again; resuming",
                self.paths.job,
                extra=self.log_fields,
            )
            self.config_problem = None
        changed = new != self.config
        self.config = new
        return changed

    async def _delete_if(self, path: str, version: int, *, recursive: bool = False) -> bool:
        """Delete ``path`` (with its subtree if ``recursive``) if it still is at ``version``;
        False if it changed or went."""
        try:
            await self.registry.delete(path, version=version, recursive=recursive)
        except (NoNodeError, BadVersionError, NotEmptyError):
            return False
        return True

    async def register_instance(self) -> None:
        """(Re)create this instance's ephemeral node.

        If another session holds it (a second process with the same instance id, or the old
        session of a restarted process that has not expired yet), log one ERROR and, at start,
        wait up to ``conflict_wait()`` seconds for it to go; later (re-registration after a new
        session) fail at once so the caller retries. Until this session holds the node the
        instance takes no step as owner (``holds_instance_node``). Raises
        ``InstanceIdConflictError``."""
        path = self.paths.instance(self.identity.instance_id)
        wait = 0.0 if self._registered_once else self.conflict_wait()
        deadline = anyio.current_time() + wait
        while True:
            other = await self._try_create_instance(path)
            if other is None:
                if self._conflict_logged:
                    log.warning(
                        "%s: instance id %r registered; the other session has ended",
                        self.paths.job,
                        self.identity.instance_id,
                        extra=self.log_fields,
                    )
                self._registered_once, self._conflict_logged = True, 0
                if self.registry.session_id not in self._own_sessions:
                    self._own_sessions += (self.registry.session_id,)
                return
            if other in self._own_sessions and self._conflict_logged != other:
                self._conflict_logged = other  # our own old session: it goes when it expires
                log.info(
                    "%s: waiting for this instance's previous session 0x%x to expire",
                    self.paths.job,
                    other,
                    extra=self.log_fields,
                )
            elif self._conflict_logged != other:
                self._conflict_logged = other
                log.error(
                    "%s: instance id %r is already registered by another session (0x%x; this "
                    "one is 0x%x): another process runs with the same instance id (a copied "
                    "AIOELASTIC_INSTANCE_ID or a reused pod name?), or a previous process's "
                    "session has not expired yet. Taking no items until it is gone%s.",
                    self.paths.job,
                    self.identity.instance_id,
                    other,
                    self.registry.session_id,
                    f" (start fails after {wait:g}s)" if wait else "",
                    extra=self.log_fields,
                )
            if anyio.current_time() >= deadline:
                raise InstanceIdConflictError(
                    f"job {self.paths.job!r}: instance id {self.identity.instance_id!r} is held "
                    f"by another session (0x{other:x}); every instance needs its own id"
                )
            await anyio.sleep(min(0.2, max(0.0, deadline - anyio.current_time())))

    async def _try_create_instance(self, path: str) -> int | None:
        """Create the instance node; None if this session holds it, else the holder's id."""
        with anyio.fail_after(30):
            while True:
                try:
                    await self.registry.create(path, self.identity.to_json(), ephemeral=True)
                    return None
                except NodeExistsError:
                    stat = await self.registry.exists(path)
                if stat is None:
                    continue  # gone in between: create again
                if stat.ephemeral_owner == self.registry.session_id:
                    return None
                return stat.ephemeral_owner

    def conflict_wait(self) -> float:
        """How long a start waits for another session's node of this instance id to go: twice
        the session timeout plus 2 s on ZooKeeper (a restarted process's old session expires
        within one timeout); 1 s embedded (a stopped scheduler's session ends at once)."""
        timeout = getattr(self.registry, "negotiated_timeout", None)
        return 2 * timeout + 2 if isinstance(timeout, int | float) and timeout > 0 else 1.0

    def holds_instance_node(self) -> bool:
        """This session holds ``instances/{id}`` (as the view shows it)."""
        stat = self.view.stat(self.paths.instance(self.identity.instance_id))
        return stat is not None and stat.ephemeral_owner == self.registry.session_id

    async def deregister(self) -> None:
        """Delete this instance's node (a graceful stop), so the others reshard at once; never
        another session's node of the same instance id."""
        path = self.paths.instance(self.identity.instance_id)
        try:
            # The shared view knows our own node (one request per job less at a stop); a
            # delete it raced with (the version moved) asks the registry.
            stat = self.view.stat(path) if self._view_shows(path) else None
            if stat is not None and stat.ephemeral_owner == self.registry.session_id:
                with contextlib.suppress(BadVersionError):
                    await self.registry.delete(path, version=stat.version)
                    return
            stat = await self.registry.exists(path)
            if stat is not None and stat.ephemeral_owner == self.registry.session_id:
                await self.registry.delete(path, version=stat.version)
        except RegistryError:
            pass

    async def _ensure(self, path: str) -> bool:
        """Create persistent ``path`` (and parents) unless it exists; True if created."""
        if self._view_shows(path):
            return False
        try:
            await self.registry.create(path, make_parents=True)
        except NodeExistsError:
            return False
        return True

    async def _create_or_get(self, path: str, data: bytes) -> bytes | None:
        """Create ``path`` with ``data``; if it exists already, return its data instead."""
        if self._view_shows(path) and (known := self.view.get(path)) is not None:
            return known
        while True:
            try:
                await self.registry.create(path, data, make_parents=True)
                return None
            except NodeExistsError:
                pass
            try:
                stored, _ = await self.registry.get(path)
                return stored
            except NoNodeError:
                continue  # deleted in between: try creating again

    def _view_shows(self, path: str) -> bool:
        """The shared view (loaded before any job registers) shows ``path``: no request needed
        to learn it exists. A per-job view is not loaded yet at registration."""
        return isinstance(self.view, JobView) and self.view.fresh and self.view.exists(path)

    async def _fully_assigned(self) -> bool:
        for item in range(self.config.sharding_total_count):
            if await self.registry.exists(self.paths.item_instance(item)) is None:
                return False
        return True

    # -- nodes other clients may have corrupted: report, and repair what is ours --

    def repair_relevant(self, path: str) -> bool:
        """Changes the repair loop acts on: the skeleton or config going, a suspicious node
        appearing, a reported node changing (cheap: a fire's own marks never match)."""
        if path in self._structural:
            return True
        if path in self._reported or self._suspicious(path) is not None:
            return True
        parts = self.paths.parts(path)
        return len(parts) > 1 and is_leaf(parts[:-1])  # a node under a leaf: garbage

    def _suspicious(self, path: str) -> str | None:
        """What is wrong with the node at ``path`` as the view shows it, or None."""
        parts = self.paths.parts(path)
        election = path == self.paths.leader_election_instance
        if not (
            election
            or (len(parts) == 2 and parts[0] == "instances")
            or (len(parts) == 3 and parts[0] == "sharding" and parts[2] in _CHECKED_MARKS)
        ):
            return None  # no node of another shape is checked (read nothing for it)
        stat = self.view.stat(path)
        raw = self.view.get(path) if stat is not None else None
        if stat is None or raw is None:
            return None
        persistent = not stat.ephemeral_owner
        if len(parts) == 2 and parts[0] == "instances" and persistent:
            return "persistent node where an instance's ephemeral node goes (no live instance)"
        if len(parts) == 3 and parts[0] == "sharding" and is_number(parts[1]):
            if parts[2] == "running" and persistent:
                return "persistent running mark (no run holds it): the item cannot start"
            if parts[2] == "failover" and persistent:
                return "persistent takeover mark (no instance holds it): the item cannot run"
            if parts[2] == "instance" and raw and _node_text(raw) is None:
                return f"owner is not an instance id ({raw[:40]!r}): the item cannot run"
        if election:
            if persistent:
                return "persistent election node (no session holds it): no leader"
            if _node_text(raw) is None:
                return (
                    f"a live session's election node holds {raw[:40]!r}, not an instance id: "
                    "no leader until that session ends"
                )
        return None

    def node_problems(self) -> dict[str, str]:
        """This job's nodes holding what no instance writes, path -> problem."""
        p = self.paths
        paths = [p.instance(i) for i in self.view.children(p.instances)]
        for name in self.view.children(p.sharding):
            if (item := item_of(name)) is not None:
                paths += [p.item_instance(item), p.item_running(item), p.item_failover(item)]
        paths.append(p.leader_election_instance)
        return {path: why for path in paths if (why := self._suspicious(path)) is not None}

    def report_problems(self) -> dict[str, str]:
        """Log each bad node once (ERROR), and once more (INFO) when it is fine again."""
        problems = self.node_problems()
        for path, problem in problems.items():
            if self._reported.get(path) != problem:
                log.error(
                    "%s: bad registry node %s: %s",
                    self.paths.job,
                    path,
                    problem,
                    extra=self.log_fields,
                )
        for path in sorted(self._reported.keys() - problems.keys()):
            log.info(
                "%s: registry node %s is fine again", self.paths.job, path, extra=self.log_fields
            )
        self._reported = problems
        return problems

    async def repair_stale(self) -> list[str]:
        """Delete persistent nodes where ElasticJob has ephemeral ones, which live only as long
        as their session, so no live instance, run or leader can hold them: the leader deletes
        stale instance nodes, running and takeover marks; anyone a stale election node (there is no
        leader to do it). Garbage owners need no delete: the leader reshards them. Returns the
        paths deleted."""
        p, view = self.paths, self.view
        candidates = [p.leader_election_instance]
        if self.is_leader:
            candidates += [p.instance(i) for i in view.children(p.instances)]
            for item in (i for i in map(item_of, view.children(p.sharding)) if i is not None):
                candidates += [p.item_running(item), p.item_failover(item)]
        deleted = []
        for path in candidates:
            stat = view.stat(path)
            if stat is not None and not stat.ephemeral_owner:
                # With what another client put under it (an ephemeral has no children).
                if await self._delete_if(path, stat.version, recursive=True):
                    log.warning(
                        "%s: deleted stale persistent node %s", p.job, path, extra=self.log_fields
                    )
                    deleted.append(path)
        return deleted

    async def prune_leaves(self) -> list[str]:
        """The leader deletes what other clients created under nodes the layout keeps
        childless (every delete of such a node fails: a reshard never ends, a mark never
        clears, a trigger is never consumed); one WARNING each. Returns the leaves pruned."""
        if not self.is_leader:
            return []
        pruned = []
        for leaf in self._leaves_with_children():
            children = []
            for name in sorted(self.view.children(leaf)):
                with contextlib.suppress(NoNodeError):  # (gone with its leaf, e.g. just now)
                    await self.registry.delete(f"{leaf}/{name}", recursive=True)
                    children.append(name)
            if not children:
                continue
            log.warning(
                "%s: deleted %s, created under %s by another client (a node that has no "
                "children in the layout)",
                self.paths.job,
                ", ".join(children),
                leaf,
                extra=self.log_fields,
            )
            pruned.append(leaf)
        return pruned

    def _leaves_with_children(self) -> list[str]:
        p, view = self.paths, self.view
        items = (i for i in map(item_of, view.children(p.sharding)) if i is not None)
        out = []
        for parent in p.leaf_parents(items):
            for name in view.children(parent):
                path = f"{parent}/{name}"
                if is_leaf(p.parts(path)) and view.children(path):
                    out.append(path)
        return out

    # -- reads from the view --

    def available_instances(self) -> list[str]:
        """Live instances whose server is not disabled."""
        out = []
        for inst in self.view.children(self.paths.instances):
            raw = self.view.get(self.paths.instance(inst))
            host = _instance_host(raw) if raw is not None else None
            if host is not None and self.view.get(self.paths.server(host)) == DISABLED:
                continue
            out.append(inst)
        return out

    def owner(self, item: int) -> str | None:
        """The item's owner; None if unassigned or unreadable (the leader then reassigns it)."""
        return _node_text(self.view.get(self.paths.item_instance(item)))

    def is_running(self, item: int) -> bool:
        return self.view.exists(self.paths.item_running(item))

    def is_misfired(self, item: int) -> bool:
        return self.view.exists(self.paths.item_misfire(item))

    def reshard_pending(self) -> bool:
        return self.view.exists(self.paths.sharding_necessary)

    def server_disabled(self) -> bool:
        """This instance's server is ``DISABLED`` (ElasticJob: no local items then)."""
        return self.view.get(self.paths.server(self.identity.host)) == DISABLED

    def local_items(self) -> list[int]:
        """Items this instance owns, minus disabled ones and ones another instance is failing
        over; none while this server is disabled or this session does not hold the instance
        node (another process with the same instance id holds it, or it is not re-created yet).
        """
        if self.server_disabled() or not self.holds_instance_node():
            return []
        # Compared as bytes: ``owner(i) == me`` and ``failover_taker(i) in (None, me)`` without
        # decoding each item's nodes (UTF-8 is one-to-one; an instance id is never empty).
        me = self.identity.instance_id.encode()
        view, paths = self.view, self.paths
        return [
            i
            for i in range(self.config.sharding_total_count)
            if view.get(paths.item_instance(i)) == me
            and not view.exists(paths.item_disabled(i))
            and view.get(paths.item_failover(i)) in (None, me)
        ]

    def shutdown_requested(self) -> bool:
        """An operator asked this instance to stop the job (ElasticJob's ``SHUTDOWN``)."""
        return self.view.get(self.paths.instance(self.identity.instance_id)) == SHUTDOWN

    # -- failover --

    def failover_taker(self, item: int) -> str | None:
        raw = self.view.get(self.paths.item_failover(item))
        if raw is None:
            return None
        return _node_text(raw) or raw.decode("utf-8", "backslashreplace")  # taken, by whom?

    def _runner_alive(self, raw: bytes) -> bool:
        """Whether the run recorded in a failover intent still has its runner's session."""
        try:
            record = loads_json(raw)
            instance, session = record["instance"], int(record["session"])
        except (ValueError, KeyError, TypeError):
            return False
        stat = self.view.stat(self.paths.instance(instance))
        return stat is not None and stat.ephemeral_owner in (0, session)

    def failover_candidates(self) -> list[int]:
        """Items whose run was left unfinished by a dead runner and that nobody has taken."""
        out = []
        for name in self.view.children(self.paths.failover_items):
            item = item_of(name)
            if item is None:
                continue
            raw = self.view.get(self.paths.failover_item(item))
            if (
                raw is not None
                and not self.view.exists(self.paths.item_running(item))
                and self.failover_taker(item) is None
                and not self._runner_alive(raw)
            ):
                out.append(item)
        return sorted(out)

    def failover_share(self, candidates: Sequence[int]) -> list[int]:
        """This instance's part of ``candidates``: item ``i`` goes to the ``i mod n``-th of the
        ``n`` available instances (in sharding order). Every instance computes the same
        taker, and it does not depend on which other candidates its view shows yet (a dead
        session's marks vanish one watch event at a time), so a dead instance's items, which
        are usually consecutive, spread over the survivors."""
        members = order_instances(self.available_instances())
        me = self.identity.instance_id
        if me not in members or not self.holds_instance_node():
            return []
        return [item for item in candidates if members[item % len(members)] == me]

    def lost_runs(self, items: Sequence[int]) -> dict[int, tuple[str, JobExecutionEvent]]:
        """The dead runs recorded in the failover intents of ``items``: per item the lost
        instance and the run's start event (intents without one, e.g. from an older version or
        a run without tracing, are left out)."""
        out: dict[int, tuple[str, JobExecutionEvent]] = {}
        for item in items:
            raw = self.view.get(self.paths.failover_item(item))
            run = _parse_intent(self.paths.job, item, raw) if raw is not None else None
            if run is not None:
                out[item] = run
        return out

    @property
    def is_leader(self) -> bool:
        stat = self.view.stat(self.paths.leader_election_instance)
        return (
            self.view.fresh
            and self.view.get(self.paths.leader_election_instance) == self._me
            and stat is not None
            and stat.ephemeral_owner in (0, self.registry.session_id)
        )

    def _assignment_valid(self) -> bool:
        live = set(self.available_instances())
        total = self.config.sharding_total_count
        for item in range(total):
            owner = self.owner(item)
            if owner is None or (not self.config.static_sharding and owner not in live):
                return False
        items = map(item_of, self.view.children(self.paths.sharding))
        return all(
            item < total or self._removed_but_running(item) for item in items if item is not None
        )

    def _removed_but_running(self, item: int) -> bool:
        """``item`` (past the sharding count) has nothing left but the running mark of a run
        still going on: its nodes go once that run ends (``_delete_item_ops``)."""
        kids = self.view.children(self.paths.item(item))
        return len(kids) == 1 and "running" in kids

    # -- which changes each loop cares about --

    def leader_relevant(self, path: str) -> bool:
        """Changes that can alter membership, leadership or the assignment."""
        parts = self.paths.parts(path)
        if not parts:
            return True
        head = parts[0]
        if head in {"instances", "servers", "config"}:
            return True
        if head == "sharding":
            if len(parts) <= 2 or parts[2] == "instance":
                return True
            # The run of a removed item ended: its node can go now.
            item = item_of(parts[1]) if parts[2] == "running" else None
            return item is not None and item >= self.config.sharding_total_count
        return head == "leader" and parts[1:2] in (("election",), ("sharding",))

    def watch_relevant(self, path: str, *, marks_pending: bool) -> bool:
        """Changes the watch loop acts on: config, triggers, operator requests, misfire and
        failover marks; running marks only while misfires or failovers wait for them."""
        parts = self.paths.parts(path)
        if not parts:
            return True
        head = parts[0]
        if head in {"config", "trigger", "instances", "servers"}:
            return True
        if head == "leader":
            return parts[1:2] == ("failover",)
        if head == "sharding" and len(parts) == 3:
            return parts[2] in {"misfire", "failover"} or (parts[2] == "running" and marks_pending)
        return False

    def marks_pending(self) -> bool:
        """Misfire marks or failover intents exist: running marks' changes matter then."""
        if self.view.children(self.paths.failover_items):
            return True
        return any(self.is_misfired(i) for i in range(self.config.sharding_total_count))

    # -- election and leader duties --

    async def leader_step(self) -> None:
        """One round of the leader loop: elect if vacant; as leader, flag and run reshards."""
        if not self.view.fresh or self.config_problem:
            return
        if not self.view.exists(self.paths.leader_election_instance):
            if not self.holds_instance_node():
                return  # not (yet) registered by this session: no campaign
            try:
                await self.registry.create(
                    self.paths.leader_election_instance, self._me, ephemeral=True
                )
                log.info(
                    "%s: %s is leader",
                    self.paths.job,
                    self.identity.instance_id,
                    extra=self.log_fields,
                )
            except NodeExistsError:
                pass
            return  # the view will show the outcome
        if not self.is_leader:
            self._members_seen = self._members_sharded = None
            return
        members = _shared(frozenset(self.available_instances()))
        total = self.config.sharding_total_count
        changed = self._members_seen is not None and (
            members != self._members_seen or total != self._count_seen
        )
        self._members_seen, self._count_seen = members, total
        if not self.reshard_pending() and (
            (changed and not self.config.static_sharding) or not self._assignment_valid()
        ):
            # The reshard overwrites bad owner nodes: report them first, or nobody may ever
            # see them (with a shared view it lands in this very step).
            self.report_problems()
            await self._ensure(self.paths.sharding_necessary)
            if not isinstance(self.view, JobView):
                return  # a per-job view shows the flag once its watch fired: the next step
        # (A shared view shows our own flag at the create's reply: reshard in this step.)
        if self.reshard_pending():
            await self.reshard()

    async def reshard(self) -> bool:
        """As leader: write the whole new assignment in one multi-op. True if written."""
        written = await self._reshard()
        if written or not self.is_leader:
            return written
        # The leader step that led here may have taken in a new member set that this call
        # did not write: its write raced (the view still showed a flag already consumed), or
        # a concurrent reshard had taken the flag with the members before. Judge the next
        # step against the members the committed assignment was made for, so it flags a
        # reshard again if they differ (else a joiner got no items until the reconcile
        # interval) and not if they don't (no churn).
        self._members_seen = self._members_sharded or _shared(
            frozenset(
                owner
                for item in range(self.config.sharding_total_count)
                if (owner := self.owner(item)) is not None
            )
        )
        return False

    async def _reshard(self) -> bool:
        async with self._reshard_lock:
            if not (self.is_leader and self.reshard_pending()):
                return False
            members = self.available_instances()
            if not members:
                return False
            total = self.config.sharding_total_count
            assignment = shard(self.config.sharding_strategy, members, self.paths.job, total)
            owners = {item: inst for inst, items in assignment.items() for item in items}
            ops: list[Op] = []
            for item in range(total):
                ops += self._owner_ops(item, owners[item])
            for name in self.view.children(self.paths.sharding):
                number = item_of(name)
                if number is not None and number >= total:
                    ops += self._delete_item_ops(number)
            ops.append(DeleteOp(self.paths.sharding_necessary))
            try:
                await self._write_reshard(ops)
            except TransactionFailedError as exc:
                log.info(
                    "%s: reshard raced with a change (%s); will retry",
                    self.paths.job,
                    exc,
                    extra=self.log_fields,
                )
                return False
            self._members_sharded = _shared(frozenset(members))
            log.info(
                "%s: resharded over %d instance(s): %s",
                self.paths.job,
                len(members),
                {
                    k: v if total <= 100 else f"{len(v)} items"
                    for k, v in sorted(assignment.items())
                },
                extra=self.log_fields,
            )
            notify_observers(
                self.observers, "reshard_committed", self.paths.job, len(members), total
            )
            return True

    async def _write_reshard(self, ops: list[Op]) -> None:
        """Write a reshard's ops (the flag's delete last) in multi-ops that fit a packet. With
        more than one, every chunk but the last first checks that the flag still exists (no
        chunk lands after another leader completed), and only the last deletes it: a view that
        sees the flag gone sees every owner written."""
        chunks = chunk_ops(ops)
        flag = self.paths.sharding_necessary
        for k, chunk in enumerate(chunks):
            guard: list[Op] = [CheckOp(flag, -1)] if k < len(chunks) - 1 else []
            await self.registry.transaction(guard + chunk)
        if len(chunks) > 1:
            log.info(
                "%s: reshard written in %d multi-ops",
                self.paths.job,
                len(chunks),
                extra=self.log_fields,
            )

    def _owner_ops(self, item: int, owner: str) -> list[Op]:
        p = self.paths
        if not self.view.exists(p.item(item)):
            return [CreateOp(p.item(item)), CreateOp(p.item_instance(item), owner.encode())]
        if not self.view.exists(p.item_instance(item)):
            return [CreateOp(p.item_instance(item), owner.encode())]
        if self.owner(item) != owner:
            return [SetOp(p.item_instance(item), owner.encode())]
        return []

    def _delete_item_ops(self, item: int) -> list[Op]:
        """The ops deleting a removed item's nodes, except the running mark of a run still
        going on (and so its item node): with the count raised again before that run ends,
        the item's new owner would not see it run and run it at the same time. The run's end
        deletes the mark; a reshard then the node."""
        base = self.paths.item(item)
        kids = self.view.children(base)
        ops: list[Op] = [DeleteOp(f"{base}/{kid}") for kid in kids if kid != "running"]
        return ops if "running" in kids else [*ops, DeleteOp(base)]

    def reshard_retryable(self) -> bool:
        """A reshard is pending and this leader can write it (there is someone to shard over)."""
        return self.is_leader and self.reshard_pending() and bool(self.available_instances())

    async def wait_for_sharding(self, timeout: float) -> bool:
        """Before a fire: let a pending reshard complete (the leader does it; others watch)."""
        if not self.reshard_pending():
            return True
        if self.is_leader:
            # Nobody else will do it: retry a reshard that raced (e.g. with this view still
            # catching up with our own writes) instead of waiting the timeout out.
            with anyio.move_on_after(timeout):
                while self.reshard_retryable() and not await self.reshard():
                    await self.view.wait_changed(0.1)
        if self.server_disabled() or not self.available_instances():
            # No items here whatever the outcome, or nobody to shard over (ElasticJob skips
            # sharding then): a fire must not wait for a reshard that cannot happen.
            return not self.reshard_pending()
        # Stopping deletes the instance node and ends the leader loop: nobody would reshard
        # for this fire then, so stop waiting (else a fire due as the scheduler stops holds
        # the stop for the whole timeout).
        done = await self.view.wait_for(
            lambda: not self.reshard_pending() or not self.holds_instance_node(), timeout
        )
        if not done:
            log.warning(
                "%s: reshard still pending after %.1fs; running with the current assignment",
                self.paths.job,
                timeout,
                extra=self.log_fields,
            )
        return done

    # -- clock and triggers --

    async def check_time_diff(self) -> None:
        """Raise ``TimeDiffError`` if the local clock is off the registry's by too much."""
        limit = self.config.max_time_diff_seconds
        if limit < 0:
            return
        try:
            stat = await self.registry.set(self.paths.system_time, b"")
        except NoNodeError:
            await self.registry.create(self.paths.system_time, make_parents=True)
            stat = await self.registry.set(self.paths.system_time, b"")
        diff = abs(self.clock() - stat.mtime)
        if diff > limit:
            raise TimeDiffError(
                f"time difference between this instance and the registry is {diff:.1f}s, "
                f"more than max_time_diff_seconds={limit}"
            )

    async def request_trigger(self) -> list[str]:
        """Ask every live instance to run its items once now (``trigger/{instanceId}``)."""
        return await write_triggers(self.registry, self.paths)

    def has_trigger(self) -> bool:
        # Not while another process with our instance id holds the node: the trigger is its.
        trigger = self.paths.trigger(self.identity.instance_id)
        return self.view.exists(trigger) and self.holds_instance_node()

    async def consume_trigger(self) -> bool:
        try:
            await self.registry.delete(self.paths.trigger(self.identity.instance_id))
        except NoNodeError:
            return False
        return True
