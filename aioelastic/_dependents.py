"""Dependent jobs (``after=``): a job that fires once per completed fire of its upstream jobs.

An upstream fire is identified across the cluster by its *fire key*: the scheduled fire time
in epoch milliseconds (every instance fires a cron job at the same scheduled time), or
``manual-{id}`` for a trigger (``write_triggers`` puts one id in every instance's trigger
node), or the upstream fire's key for a dependent job's own run. Every instance records each
item it completes under ``{upstream}/dependents/done/{key}/{item}``, right when the item
completes (so an instance dying later loses nothing); while a run lasts,
``dependents/fires/{item}/{instance}`` names its fire, so a failover run of it (elsewhere)
completes that fire. The instance that sees the set full (when the last item of its run is
recorded) claims it with one small multi-op that creates ``done/{key}/claimed`` and
``{dependent}/requests/{key}/up-{upstream}`` (its size does not grow with the item count),
then deletes the set: the request is in the registry, never in one instance's memory. A
dependent of several upstream jobs gets one request per scheduled time; a manual fire of one
of them fills the oldest manual request that has none of that job's fires yet, or else takes
the place of that job's earlier fire in the request still waiting for the others (coalesced
to the latest, like a misfire), or else opens its own: at most one manual request waits. Each
instance of the dependent job claims its own items of a complete request (``_requests``) and
runs them once, recording the upstream task ids in ``dependents/upstream/{item}/{instance}``
while the run lasts (a failover run of the item takes them from there).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from ._config import JobConfig
from ._context import ShardingContexts
from ._errors import (
    ConfigError,
    NodeExistsError,
    NoNodeError,
    RegistryError,
    TransactionFailedError,
)
from ._json import loads as loads_json
from ._layout import JobPaths, is_number, item_of
from ._requests import claimable_items, create_parents, drop, run_claiming, serve_requests
from .registry._limits import chunk_ops
from .registry._paths import invalid_path_reason
from .registry._protocol import CreateOp, DeleteOp, Op, Registry, SetOp
from .tracing._events import ExecutionSource, ExecutionType, State

if TYPE_CHECKING:
    from ._runner import JobRunner

__all__ = ["Dependents", "attach_dependents", "check_dependencies", "fire_key"]

log = logging.getLogger("aioelastic.dependents")

MANUAL = "manual"

#: Attempts at requesting a complete fire's dependents (each failed one: another change won).
_CLAIM_TRIES = 20


#: The longest trigger id a fire key holds as it is (ours: 13 digits, "-", 8 hex digits).
_KEY_ID_MAX = 100


def fire_key(scheduled: datetime | None, trigger: str | None = None) -> str:
    """The cluster-wide name of a fire: its scheduled time (epoch ms), or ``manual-{id}`` for
    a trigger (its id, written by the triggering side, is the same on every instance), or
    ``manual`` for a trigger without an id (an older version's). An id that no node name can
    hold (another client's data: a control character, over ``_KEY_ID_MAX`` characters) is
    named by its hash, the same on every instance."""
    if scheduled is not None:
        return str(round(scheduled.timestamp() * 1000))
    if not trigger:
        return MANUAL
    key = f"{MANUAL}-{trigger.replace('/', '_')}"
    if len(trigger) > _KEY_ID_MAX or invalid_path_reason(f"/{key}") is not None:
        digest = hashlib.sha256(trigger.encode(errors="surrogatepass")).hexdigest()
        key = f"{MANUAL}-{digest[:32]}"
    return key


def key_of(contexts: ShardingContexts) -> str:
    """The fire key of ``contexts``' fire (a dependent job's run: its upstream fire's)."""
    if contexts.upstream_fire is not None:
        return contexts.upstream_fire
    return fire_key(contexts.scheduled_fire_time, contexts.trigger)


def key_time(key: str) -> int:
    """The epoch ms a fire key names (a trigger's id starts with its time), -1 if none."""
    head = key.removeprefix(f"{MANUAL}-").split("-", 1)[0]
    return int(head) if is_number(head) else -1


def check_dependencies(jobs: Mapping[str, JobConfig], new: JobConfig) -> None:
    """``ConfigError`` if ``new`` runs after a job not registered (yet) or closes a cycle."""
    for upstream in new.after:
        if upstream not in jobs and upstream != new.name:
            raise ConfigError(
                "after", upstream, "unknown upstream job (register it before its dependents)"
            )
    graph = {name: cfg.after for name, cfg in jobs.items()} | {new.name: new.after}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join((*path[path.index(name) :], name))
            raise ConfigError("after", list(new.after), f"dependency cycle: {cycle}")
        for upstream in graph.get(name, ()):
            visit(upstream, (*path, name))

    visit(new.name, ())


def attach_dependents(
    runner: JobRunner, registry: Registry, namespace: str, jobs: Mapping[str, JobConfig]
) -> None:
    """Give the runner's executor its part in dependencies, if its job has any."""
    name = runner.name
    downstream = sorted(n for n, cfg in jobs.items() if name in cfg.after)
    if downstream or jobs[name].after:
        me = runner.coordinator.identity.instance_id
        joins = {n: jobs[n].after for n in downstream if len(jobs[n].after) > 1}
        runner.executor.dependents = Dependents(
            registry, namespace, jobs[name], downstream, me, joins
        )


async def _put(registry: Registry, path: str, data: bytes) -> None:
    """Create or overwrite ``path``."""
    if not await create_parents(registry, path, data):
        await registry.set(path, data)


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Dependents:
    """One job's part in dependencies on one instance: as an upstream (it records completed
    items and requests its dependents' fires) and as a dependent (it runs requested fires)."""

    def __init__(
        self,
        registry: Registry,
        namespace: str,
        config: JobConfig,
        downstream: Sequence[str],
        instance_id: str,
        joins: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.registry = registry
        self.paths = JobPaths(namespace, config.name)
        self._namespace = namespace
        self.downstream = list(downstream)
        self.instance_id = instance_id
        self.config = config
        self._joins = dict(joins or {})  # downstream job of several upstreams -> those
        self._upstream_runs: dict[tuple[str, int], str] = {}  # failover run -> dead instance
        self._keys: dict[tuple[str, int], str] = {}  # (task id, item) -> fire key
        # task id -> (items of that run not recorded yet, fire keys its items recorded): only
        # the last item looks whether those fires are complete (looking per item grows with
        # the item count squared).
        self._unrecorded: dict[str, tuple[set[int], set[str]]] = {}

    # -- as an upstream job --

    def misfire_key(self, contexts: ShardingContexts) -> bytes:
        """What a misfire mark of this fire holds: the fire's key, which the delayed re-run
        completes (on whichever instance runs it); empty without dependent jobs."""
        if self.downstream and contexts.execution_type is ExecutionType.READY:
            return key_of(contexts).encode()
        return b""

    async def fire_started(
        self, contexts: ShardingContexts, misfired: Mapping[int, str] | None = None
    ) -> ShardingContexts:
        """Record which fire each item's run completes, in ``dependents/fires/{item}/{me}``
        (while the run lasts): a failover run of it, elsewhere, completes that fire; a misfire
        re-run completes the fire its mark named (``misfired``; ``manual`` for a mark of an
        older version). A dependent job's run records its upstream task ids the same way; its
        failover run gets them back (the returned contexts)."""
        if self.config.after:
            contexts = await self._upstream_started(contexts)
        if not self.downstream:
            return contexts
        self._unrecorded[contexts.task_id] = (set(contexts.sorted_items), set())
        if contexts.execution_type is ExecutionType.FAILOVER:
            return contexts
        for item in contexts.sorted_items:
            key = key_of(contexts) if misfired is None else misfired.get(item, MANUAL)
            self._keys[(contexts.task_id, item)] = key
            path = self.paths.dependents_fire(item, self.instance_id)
            await _put(self.registry, path, key.encode())
        return contexts

    async def fire_aborted(self, contexts: ShardingContexts) -> None:
        """The fire's items do not run after all (its start failed): forget its bookkeeping
        and delete the records ``fire_started`` wrote (a failover run wrote none)."""
        self.run_ended(contexts)
        if contexts.execution_type is ExecutionType.FAILOVER:
            return
        paths: list[str] = []
        if self.config.after and contexts.upstream_fire is not None:
            paths += [
                self.paths.dependents_upstream(i, self.instance_id) for i in contexts.sorted_items
            ]
        if self.downstream:
            paths += [
                self.paths.dependents_fire(i, self.instance_id) for i in contexts.sorted_items
            ]
        with contextlib.suppress(RegistryError):
            for path in paths:
                with contextlib.suppress(NoNodeError):
                    await self.registry.delete(path)

    def run_ended(self, contexts: ShardingContexts) -> None:
        """Forget a run's bookkeeping once its items are over: an item that did not complete
        (fenced, cancelled by shutdown) never reaches ``item_done``; its records in the
        registry stay for a failover run elsewhere."""
        self._unrecorded.pop(contexts.task_id, None)
        for item in contexts.sorted_items:
            self._keys.pop((contexts.task_id, item), None)
            self._upstream_runs.pop((contexts.task_id, item), None)

    async def _upstream_started(self, contexts: ShardingContexts) -> ShardingContexts:
        """A dependent job's run: record its upstream fire in ``dependents/upstream/{item}/{me}``
        (while it lasts); a failover run takes the record of the dead run it replaces."""
        if contexts.execution_type is not ExecutionType.FAILOVER:
            if contexts.upstream_fire is not None:
                record = _dumps(
                    {"fire": contexts.upstream_fire, "task_ids": contexts.upstream_task_ids}
                )
                for item in contexts.sorted_items:
                    path = self.paths.dependents_upstream(item, self.instance_id)
                    await _put(self.registry, path, record)
            return contexts
        task_ids: list[str] = []
        fire: str | None = None
        for item in contexts.sorted_items:
            found = await self._dead_records(self.paths.dependents_upstream(item))
            if not found:
                continue
            raw, instance = found[-1]
            self._upstream_runs[(contexts.task_id, item)] = instance
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                record = loads_json(raw)
                fire = str(record.get("fire"))
                task_ids += [str(t) for t in record.get("task_ids", []) if str(t) not in task_ids]
        if not task_ids:
            return contexts
        return dataclasses.replace(contexts, upstream_task_ids=tuple(task_ids), upstream_fire=fire)

    async def _upstream_done(self, contexts: ShardingContexts, item: int) -> None:
        runner = self._upstream_runs.pop((contexts.task_id, item), self.instance_id)
        with contextlib.suppress(NoNodeError):
            await self.registry.delete(self.paths.dependents_upstream(item, runner))

    async def item_done(
        self,
        contexts: ShardingContexts,
        item: int,
        failure: BaseException | None,
        expected: Callable[[], set[int]],
    ) -> None:
        """Record the item's completion in its fire; claim the fire once every ``expected``
        item (the job's items minus disabled ones) is in."""
        if self.config.after:
            await self._upstream_done(contexts, item)
        if not self.downstream:
            return
        runner = self.instance_id
        key = self._keys.pop((contexts.task_id, item), None)
        if contexts.execution_type is ExecutionType.FAILOVER:
            runner, key = await self._lost_run(item)
        if key is not None:
            await self._record(contexts, item, key, runner, failure)
        left, keys = self._unrecorded.get(contexts.task_id, (set(), set()))
        left.discard(item)
        if key is not None:
            keys.add(key)
        if left:
            return  # the last item of this run looks (its record is the latest of them)
        self._unrecorded.pop(contexts.task_id, None)
        for fire in sorted(keys):
            try:
                names = await self.registry.get_children(self.paths.dependents_done(fire))
            except NoNodeError:
                continue  # claimed meanwhile
            if expected() <= {i for i in map(item_of, names) if i is not None}:
                await self._claim(fire, names)

    async def _record(
        self,
        contexts: ShardingContexts,
        item: int,
        key: str,
        runner: str,
        failure: BaseException | None,
    ) -> None:
        """Record the item's completion in fire ``key``'s set, ending ``runner``'s record of
        the run."""
        record = _dumps({"task_id": contexts.task_id, "ok": failure is None})
        done = self.paths.dependents_done(key, item)
        await create_parents(self.registry, self.paths.dependents_done(key))
        try:  # the completion and the end of the run's record, at once
            await self.registry.transaction(
                [CreateOp(done, record), DeleteOp(self.paths.dependents_fire(item, runner))]
            )
        except (TransactionFailedError, NoNodeError, NodeExistsError):
            await create_parents(self.registry, done, record)  # e.g. recorded by a lost run
            with contextlib.suppress(NoNodeError):
                await self.registry.delete(self.paths.dependents_fire(item, runner))

    async def _lost_run(self, item: int) -> tuple[str, str | None]:
        """The instance and fire key of the dead run that a failover run of ``item`` replaces:
        the record of a run whose instance is gone (the latest fire if several)."""
        keys = []
        for raw, instance in await self._dead_records(self.paths.dependents_fire(item)):
            with contextlib.suppress(UnicodeDecodeError):  # garbage names no fire
                keys.append((raw.decode(), instance))
        if not keys:
            return self.instance_id, None
        key, instance = max(keys, key=lambda k: (key_time(k[0]), k[0]))
        return instance, key

    async def _dead_records(self, parent: str) -> list[tuple[bytes, str]]:
        """The data of ``parent``'s children named after an instance that is gone (oldest
        first), with that instance. Both callers are failover runs, for which this instance's
        own record is a dead run's too: its session was lost mid-run (fenced) and the item
        failed over to it; the item's running mark keeps any other run of it here away."""
        found: list[tuple[float, bytes, str]] = []
        with contextlib.suppress(NoNodeError):
            for name in await self.registry.get_children(parent):
                if name != self.instance_id and await self.registry.exists(
                    self.paths.instance(name)
                ):
                    continue
                with contextlib.suppress(NoNodeError):
                    raw, stat = await self.registry.get(f"{parent}/{name}")
                    found.append((stat.mtime, raw, name))
        return [(raw, name) for _, raw, name in sorted(found)]

    async def _claim(self, key: str, done: Sequence[str]) -> None:
        """Request the dependents' fires of the complete fire ``key``: one small multi-op that
        creates the set's ``claimed`` node (only one instance's can) with the requests (its
        size does not grow with the item count); then the set is deleted, chunk by chunk."""
        items = [n for n in done if is_number(n)]
        records = await self._read_records(key, items)
        if records is None:
            return  # another instance is claiming it
        task_ids = sorted({str(r.get("task_id")) for r in records})
        failed = sorted(int(n) for n, r in zip(items, records, strict=True) if not r.get("ok"))
        up = _dumps({"task_ids": task_ids, "failed_items": failed})
        # A request node appeared or went meanwhile, or another fire changed a join's manual
        # requests (each such change lets one claim through): build the ops again.
        for _ in range(_CLAIM_TRIES):
            ops: list[Op] = [CreateOp(self.paths.dependents_claimed(key))]
            for name in self.downstream:
                ops += await self._request_ops(JobPaths(self._namespace, name), key, up)
            try:
                await self.registry.transaction(ops)
                break
            except TransactionFailedError as exc:
                if exc.index == 0:
                    return  # another instance claimed the fire first
        else:
            log.warning(
                "%s: fire %s completed on every item, but requesting %s failed %d times; "
                "its dependents do not run",
                self.paths.job,
                key,
                ", ".join(self.downstream),
                _CLAIM_TRIES,
            )
            return
        log.info(
            "%s: fire %s completed on every item%s; requested %s",
            self.paths.job,
            key,
            f" (failed items {failed})" if failed else "",
            ", ".join(self.downstream),
        )
        await self._delete_set(key)
        await self._drop_older(key)

    async def _read_records(self, key: str, items: Sequence[str]) -> list[dict[str, Any]] | None:
        """The completion records of fire ``key``'s ``items``, read in one pipelined call; None
        if one is gone or unreadable (the set is being claimed and deleted)."""
        paths = [self.paths.dependents_done(key, int(n)) for n in items]
        raws: dict[str, bytes | None] = {}

        def got(path: str, data: bytes | None, *_: object) -> None:
            raws[path] = data

        await self.registry.read_many(paths, got)
        records: list[dict[str, Any]] = []
        for path in paths:
            raw = raws.get(path)
            if raw is None:
                return None
            try:
                records.append(loads_json(raw))
            except ValueError:
                return None
        return records

    async def _request_ops(self, downstream: JobPaths, key: str, up: bytes) -> list[Op]:
        """The ops that put fire ``key`` into ``downstream``'s request: its own request, except
        a manual fire (not a scheduled time) for a dependent of several upstream jobs
        (``_join_ops``)."""
        mine = partial(downstream.request_upstream, upstream=self.paths.job)
        if downstream.job in self._joins and not is_number(key):
            return await self._join_ops(downstream, key, up)
        await create_parents(self.registry, downstream.request(key))
        exists = await self.registry.exists(mine(key))
        return [SetOp(mine(key), up) if exists else CreateOp(mine(key), up)]

    async def _join_ops(self, downstream: JobPaths, key: str, up: bytes) -> list[Op]:
        """A manual fire of one upstream of a join: it fills the oldest pending manual request
        without a fire of this job; else it replaces this job's earlier fire in the request
        that waits for the other upstream jobs (manual fires of one upstream coalesce to the
        latest, as a misfire's do: a waiting request never piles up behind them, nor joins a
        stale fire); else it opens its own. A complete request is never changed, so a
        dependent fire never mixes fires. The ops check and bump the version of the requests
        node, which every such change does: two fires at once cannot both open a request."""
        await create_parents(self.registry, downstream.requests)
        stat = await self.registry.exists(downstream.requests)
        guard: list[Op] = [SetOp(downstream.requests, b"", stat.version)] if stat else []
        upstreams = self._joins[downstream.job]
        waiting: str | None = None
        for request in await self._manual_requests(downstream):
            try:
                names = set(await self.registry.get_children(downstream.request(request)))
            except NoNodeError:
                continue
            has = {u for u in upstreams if f"up-{u}" in names}
            if self.paths.job not in has:
                return [*guard, CreateOp(downstream.request_upstream(request, self.paths.job), up)]
            if waiting is None and len(has) < len(upstreams):
                waiting = request
        if waiting is not None:
            log.info(
                "%s: manual fire %s replaces this job's earlier fire in %s's request %s, "
                "which waits for %s",
                self.paths.job,
                key,
                downstream.job,
                waiting,
                ", ".join(u for u in upstreams if u != self.paths.job),
            )
            return [*guard, SetOp(downstream.request_upstream(waiting, self.paths.job), up)]
        return [
            *guard,
            CreateOp(downstream.request(key)),
            CreateOp(downstream.request_upstream(key, self.paths.job), up),
        ]

    async def _manual_requests(self, downstream: JobPaths) -> list[str]:
        """``downstream``'s pending requests of manual fires, oldest first."""
        try:
            names = await self.registry.get_children(downstream.requests)
        except NoNodeError:
            return []
        return sorted((n for n in names if not is_number(n)), key=lambda n: (key_time(n), n))

    async def _delete_set(self, key: str) -> None:
        """Delete a claimed fire's record (chunked: thousands of items do not fit a packet)."""
        parent = self.paths.dependents_done(key)
        with contextlib.suppress(NoNodeError):
            names = await self.registry.get_children(parent)
            for chunk in chunk_ops([DeleteOp(f"{parent}/{n}") for n in names]):
                with contextlib.suppress(TransactionFailedError, NoNodeError):
                    await self.registry.transaction(chunk)
            await self.registry.delete(parent, recursive=True)

    async def _drop_older(self, key: str) -> None:
        """Drop the records of earlier fires that never completed on every item (a fire whose
        items could not all run: a dead instance without failover, a disabled server)."""
        at = key_time(key)
        if at < 0:
            return
        with contextlib.suppress(NoNodeError):
            for name in await self.registry.get_children(self.paths.dependents_done()):
                if 0 <= key_time(name) < at:
                    log.warning(
                        "%s: fire %s never completed on every item; its dependents do not run",
                        self.paths.job,
                        name,
                    )
                    with contextlib.suppress(NoNodeError):
                        await self.registry.delete(self.paths.dependents_done(name), recursive=True)

    # -- as a dependent job --

    async def run(self, runner: JobRunner) -> None:
        """Run this instance's share of each complete request (a loop of the job's runner)."""
        await serve_requests(runner, self.paths.requests, partial(self._serve, runner), log)

    def _upstreams(self, runner: JobRunner, key: str) -> dict[str, dict[str, Any]] | None:
        view, out = runner.coordinator.view, {}
        for upstream in runner.coordinator.config.after:
            raw = view.get(self.paths.request_upstream(key, upstream))
            if raw is None:
                return None
            try:
                out[upstream] = loads_json(raw)
            except ValueError:
                out[upstream] = {"task_ids": [], "failed_items": ["?"]}
        return out

    async def _serve(self, runner: JobRunner, key: str) -> bool:
        coord, executor = runner.coordinator, runner.executor
        cfg = coord.config
        upstreams = self._upstreams(runner, key)
        if upstreams is None:
            return False  # waiting for another upstream job's fire
        failed = {u: r["failed_items"] for u, r in upstreams.items() if r.get("failed_items")}
        if failed and cfg.after_policy == "all_succeeded":
            log.warning(
                "%s: not run after fire %s: upstream items failed %s (after_policy "
                "'all_succeeded')",
                self.paths.job,
                key,
                failed,
                extra=coord.log_fields,
            )
            await drop(self.registry, self.paths.request(key))
            return False
        ran = partial(self.paths.request_ran, key)
        items = await claimable_items(runner, self.paths.request(key), ran)
        if not items:
            return False
        task_ids = tuple(t for u in cfg.after for t in upstreams[u].get("task_ids", []))
        contexts = dataclasses.replace(
            executor.contexts(items, ExecutionType.READY, ExecutionSource.NORMAL_TRIGGER, None),
            upstream_task_ids=task_ids,
            upstream_fire=key,
        )
        executor._status(
            contexts,
            State.TASK_STAGING,
            f"Job '{self.paths.job}' execute begin after {', '.join(cfg.after)} "
            f"(fire {key}, upstream tasks {', '.join(task_ids)}).",
        )
        run_claiming(runner, ran, contexts)
        return True
