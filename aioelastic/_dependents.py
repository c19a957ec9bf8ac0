"""Dependent jobs (``after=``): a job that fires once per completed fire of its upstream jobs.

An upstream fire is identified across the cluster by its *fire key*: the scheduled fire time
in epoch milliseconds (every instance fires a cron job at the same scheduled time), or
``manual`` for a fire without one (a trigger). Every instance records each item it completes
under ``{upstream}/dependents/done/{key}/{item}``, right when the item completes (so an
instance dying later loses nothing); while a run lasts, ``dependents/fires/{item}/{instance}``
names its fire, so a failover run of it (elsewhere) completes that fire. The instance that
sees the set full claims it with one multi-op that deletes the set and creates
``{dependent}/requests/{key}/up-{upstream}``: the request is in the registry, never in one
instance's memory. Each instance of the dependent job claims its own items of a complete
request (``requests/{key}/ran/{item}``, one multi-op) and runs them once; once every item is
claimed, the request is deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
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
from ._layout import JobPaths
from .registry._protocol import CreateOp, DeleteOp, Op, Registry
from .tracing._events import ExecutionSource, ExecutionType, State

if TYPE_CHECKING:
    from ._runner import JobRunner

__all__ = ["Dependents", "attach_dependents", "check_dependencies", "fire_key"]

log = logging.getLogger("aioelastic.dependents")

MANUAL = "manual"


def fire_key(scheduled: datetime | None) -> str:
    """The cluster-wide name of a fire: its scheduled time (epoch ms), or ``manual``."""
    return MANUAL if scheduled is None else str(round(scheduled.timestamp() * 1000))


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
        runner.executor.dependents = Dependents(registry, namespace, jobs[name], downstream, me)


async def _create_parents(registry: Registry, path: str, data: bytes = b"") -> bool:
    """Create ``path`` (and missing parents); False if it existed."""
    try:
        await registry.create(path, data, make_parents=True)
    except NodeExistsError:
        return False
    return True


def may_free(path: str) -> bool:
    """A change that can let a requested run's items run here: a run ended, a reshard
    completed, a server was enabled."""
    parts = path.split("/")
    return (
        path.endswith(("/running", "/instance"))
        or parts[-1] == "necessary"
        or (len(parts) > 2 and parts[-2] == "servers")
    )


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
    ) -> None:
        self.registry = registry
        self.paths = JobPaths(namespace, config.name)
        self._namespace = namespace
        self.downstream = list(downstream)
        self.instance_id = instance_id
        self._keys: dict[tuple[str, int], str] = {}  # (task id, item) -> fire key
        self._misfired: dict[int, str] = {}  # item -> key of the fire it misfired in

    # -- as an upstream job --

    def misfired(self, contexts: ShardingContexts) -> None:
        """A fire found items still running: their delayed re-run completes this fire."""
        if self.downstream and contexts.execution_type is ExecutionType.READY:
            for item in contexts.items:
                self._misfired[item] = fire_key(contexts.scheduled_fire_time)

    async def fire_started(self, contexts: ShardingContexts) -> None:
        """Record which fire each item's run completes, in ``dependents/fires/{item}/{me}``
        (while the run lasts): a failover run of it, elsewhere, completes that fire."""
        if not self.downstream or contexts.execution_type is ExecutionType.FAILOVER:
            return
        misfire = contexts.execution_source is ExecutionSource.MISFIRE
        for item in contexts.items:
            key = (
                self._misfired.pop(item, MANUAL)
                if misfire
                else fire_key(contexts.scheduled_fire_time)
            )
            self._keys[(contexts.task_id, item)] = key
            path = self.paths.dependents_fire(item, self.instance_id)
            if not await _create_parents(self.registry, path, key.encode()):
                await self.registry.set(path, key.encode())

    async def item_done(
        self,
        contexts: ShardingContexts,
        item: int,
        failure: BaseException | None,
        expected: Callable[[], set[int]],
    ) -> None:
        """Record the item's completion in its fire; claim the fire once every ``expected``
        item (the job's items minus disabled ones) is in."""
        if not self.downstream:
            return
        runner = self.instance_id
        key = self._keys.pop((contexts.task_id, item), None)
        if contexts.execution_type is ExecutionType.FAILOVER:
            runner, key = await self._lost_run(item)
        if key is None:
            return
        record = _dumps({"task_id": contexts.task_id, "ok": failure is None})
        done = self.paths.dependents_done(key, item)
        await _create_parents(self.registry, self.paths.dependents_done(key))
        try:  # the completion and the end of the run's record, at once
            await self.registry.transaction(
                [CreateOp(done, record), DeleteOp(self.paths.dependents_fire(item, runner))]
            )
        except (TransactionFailedError, NoNodeError, NodeExistsError):
            await _create_parents(self.registry, done, record)  # e.g. recorded by a lost run
            with contextlib.suppress(NoNodeError):
                await self.registry.delete(self.paths.dependents_fire(item, runner))
        try:
            names = await self.registry.get_children(self.paths.dependents_done(key))
        except NoNodeError:
            return  # claimed meanwhile
        if expected() <= {int(n) for n in names if n.isdigit()}:
            await self._claim(key, names)

    async def _lost_run(self, item: int) -> tuple[str, str | None]:
        """The instance and fire key of the dead run that a failover run of ``item`` replaces:
        the record of a run whose instance is gone (the latest fire if several)."""
        found: list[tuple[str, str]] = []
        with contextlib.suppress(NoNodeError):
            for name in await self.registry.get_children(self.paths.dependents_fire(item)):
                if name == self.instance_id or await self.registry.exists(
                    self.paths.instance(name)
                ):
                    continue
                with contextlib.suppress(NoNodeError):
                    raw, _ = await self.registry.get(self.paths.dependents_fire(item, name))
                    found.append((raw.decode(), name))
        if not found:
            return self.instance_id, None
        key, instance = max(found, key=lambda f: (f[0] != MANUAL, f[0]))
        return instance, key

    async def _claim(self, key: str, done: Sequence[str]) -> None:
        records: list[dict[str, Any]] = []
        for name in done:
            try:
                raw, _ = await self.registry.get(self.paths.dependents_done(key, int(name)))
                records.append(json.loads(raw))
            except (NoNodeError, ValueError):
                return  # another instance is claiming it
        task_ids = sorted({str(r.get("task_id")) for r in records})
        failed = sorted(int(n) for n, r in zip(done, records, strict=True) if not r.get("ok"))
        up = _dumps({"task_ids": task_ids, "failed_items": failed})
        ops: list[Op] = [DeleteOp(self.paths.dependents_done(key, int(n))) for n in done]
        ops.append(DeleteOp(self.paths.dependents_done(key)))
        for name in self.downstream:
            paths = JobPaths(self._namespace, name)
            await _create_parents(self.registry, paths.request(key))
            ops.append(CreateOp(paths.request_upstream(key, self.paths.job), up))
        try:
            await self.registry.transaction(ops)
        except (TransactionFailedError, NoNodeError):
            return  # another instance claimed the fire first
        log.info(
            "%s: fire %s completed on every item%s; requested %s",
            self.paths.job,
            key,
            f" (failed items {failed})" if failed else "",
            ", ".join(self.downstream),
        )
        await self._drop_older(key)

    async def _drop_older(self, key: str) -> None:
        """Drop the records of earlier fires that never completed on every item (a fire whose
        items could not all run: a dead instance without failover, a disabled server)."""
        if not key.isdigit():
            return
        with contextlib.suppress(NoNodeError):
            for name in await self.registry.get_children(self.paths.dependents_done()):
                if name.isdigit() and int(name) < int(key):
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
        coord = runner.coordinator
        requests = self.paths.requests
        changes = coord.view.subscribe(lambda path: path.startswith(requests) or may_free(path))
        while True:
            if coord.view.fresh and not coord.config_problem:
                try:
                    for key in coord.view.children(requests):
                        await self._serve(runner, key)
                except RegistryError as exc:
                    log.debug("%s: request step failed (%s)", self.paths.job, exc)
            await changes.wait(30.0)

    def _upstreams(self, runner: JobRunner, key: str) -> dict[str, dict[str, Any]] | None:
        view, out = runner.coordinator.view, {}
        for upstream in runner.coordinator.config.after:
            raw = view.get(self.paths.request_upstream(key, upstream))
            if raw is None:
                return None
            try:
                out[upstream] = json.loads(raw)
            except ValueError:
                out[upstream] = {"task_ids": [], "failed_items": ["?"]}
        return out

    async def _serve(self, runner: JobRunner, key: str) -> None:
        coord, executor = runner.coordinator, runner.executor
        cfg = coord.config
        upstreams = self._upstreams(runner, key)
        if upstreams is None:
            return  # waiting for another upstream job's fire
        total = cfg.sharding_total_count
        ran = coord.view.children(self.paths.request_ran(key))
        if len(ran) >= total:
            with contextlib.suppress(NoNodeError):
                await self.registry.delete(self.paths.request(key), recursive=True)
            return
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
            with contextlib.suppress(NoNodeError):
                await self.registry.delete(self.paths.request(key), recursive=True)
            return
        items = [
            i
            for i in coord.local_items()
            if str(i) not in ran and not executor.is_running(i) and not coord.is_running(i)
        ]
        if not items or not runner.keep_going():
            return
        await _create_parents(self.registry, self.paths.request_ran(key))
        try:
            await self.registry.transaction(
                [
                    CreateOp(self.paths.request_ran(key, i), coord.identity.instance_id.encode())
                    for i in items
                ]
            )
        except (TransactionFailedError, NodeExistsError):
            return  # claimed elsewhere (the view will show it)
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
        runner.start_contexts(contexts, lambda: self._unclaim(key, items))

    async def _unclaim(self, key: str, items: list[int]) -> None:
        """Give the claims back: the items did not run (the loop claims them again later)."""
        for item in items:
            with contextlib.suppress(NoNodeError):
                await self.registry.delete(self.paths.request_ran(key, item))
