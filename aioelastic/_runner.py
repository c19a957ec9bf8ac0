"""One job's life on one instance: registration, its loops, its fires, its shutdown."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime
from functools import partial

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ._catchup import CatchUp
from ._config import JobConfig
from ._context import ShardingContexts
from ._coordination import InstanceIdentity, JobCoordinator
from ._cron import CronTrigger
from ._errors import RegistryError
from ._executor import Fatal, JobExecutor, Post, is_cancellation
from ._jobs import ItemRunner
from ._layout import JobPaths
from ._observer import Observer, notify_observers
from ._owned import OwnedTasks
from ._timer import CronEntry, Timer
from .registry._protocol import Registry, SessionEvent, SessionState
from .registry._view import JobView
from .tracing._events import ExecutionSource, ExecutionType, JobExecutionEvent

__all__ = ["JobRunner"]

log = logging.getLogger("aioelastic.runner")


_NO_GROUP: nullcontext[None] = nullcontext()  # ``async with`` where a job needs no task group


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: After the grace period, how long a job's stop re-cancels fires that keep running (job code
#: that swallows cancellation) before it gives up on them with an ERROR.
_CANCELLED_WAIT = 30.0


class JobRunner:
    """Owns one job's coordinator, executor, its entry in the instance's ``Timer`` (a timer of
    its own if none is given) and its steps (leader, watch, repair, ownership), which one task,
    the job's own (``run``), takes as the changes they act on arrive or their deadlines pass.
    An idle job is plain data plus that one task."""

    def __init__(
        self,
        *,
        config: JobConfig,
        run_item: ItemRunner,
        registry: Registry,
        namespace: str,
        identity: InstanceIdentity,
        post: Post | None,
        fatal: Fatal,
        grace_period: float,
        reshard_timeout: float,
        observers: Sequence[Observer] = (),
        timer: Timer | None = None,
    ) -> None:
        self.registry = registry
        paths = JobPaths(namespace, config.name)
        self.coordinator = JobCoordinator(registry, paths, identity, config, observers)
        self.executor = JobExecutor(
            self.coordinator, run_item, post, fatal, self.keep_going, reshard_timeout, observers
        )
        self._grace = grace_period
        self.in_flight = 0
        """Fires and runs of this job in progress on this instance."""
        self.claiming: frozenset[int] = frozenset()
        """Items of requested fires started here that may not hold their marks yet."""
        self._stop = False
        self._driving: anyio.CancelScope | None = None  # the steps' scope: stopping cancels it
        self._wake: asyncio.Future[None] | None = None  # while the steps sleep
        self._timer = timer
        self._cron: CronEntry | None = None
        self._trigger_of: tuple[JobConfig | None, CronTrigger | None] = (None, None)
        self._fires: OwnedTasks | None = None
        # An operator's trigger that came while an unmonitored fire ran (ElasticJob's Quartz
        # queues it for the job's one thread): its data, run when that fire ends.
        self._queued: tuple[bytes | None] | None = None
        self._cancel_at = math.inf  # when stopping cancels the fires left (after the grace)
        self._registered_session = 0
        self._failover_seen: dict[int, float] = {}
        # Each step wakes only for changes it acts on: a fire's own running marks would
        # otherwise wake the job on every fire.
        view, wake = self.coordinator.view, self._poke
        self._leader_changes = view.subscribe(self.coordinator.leader_relevant, wake)
        self._marks_pending = False
        self._watch_changes = view.subscribe(self._watch_relevant, wake)
        self._repair_changes = view.subscribe(self.coordinator.repair_relevant, wake)
        self._claim_changes = view.subscribe(self.executor.ownerships.relevant, wake)
        self._config_raw: bytes | None = None
        self.catchup = CatchUp(self)
        self.executor.catchup = self.catchup

    @property
    def name(self) -> str:
        return self.coordinator.paths.job

    @property
    def _extra(self) -> dict[str, str]:
        return self.coordinator.log_fields

    def keep_going(self) -> bool:
        """False once stopping or while a reshard is pending (streaming jobs stop looping)."""
        return not self._stopping and not self.coordinator.reshard_pending()

    @property
    def _stopping(self) -> bool:
        return self._stop

    def request_stop(self) -> None:
        self._stop = True
        if self._driving is not None:
            self._driving.cancel()

    def cancel_running(self) -> None:
        """Stop with no grace period: running items are cancelled once deregistered."""
        self._grace = 0.0
        self.request_stop()
        if self._fires is not None and self._cancel_at != math.inf:  # already in its grace
            self._cancel_at = anyio.current_time()
            self._fires.cancel()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        coord = self.coordinator
        await coord.register()
        self._registered_session = self.registry.session_id
        self.registry.add_session_listener(self._on_session)
        # Task groups only where a job has tasks of its own to run in them (a view of its own,
        # dependents or catch-up loops, a timer): each group's scopes were 1.3 KiB per job.
        infra_group = None if isinstance(coord.view, JobView) else anyio.create_task_group()
        try:
            async with infra_group or _NO_GROUP as infra:
                if infra is None:  # the shared view needs no task per job
                    await coord.view.wait_for(lambda: coord.view.fresh, math.inf)
                else:
                    await infra.start(coord.view.run)
                with anyio.move_on_after(10):  # a registry outage: no catch-up, start anyway
                    try:
                        await self.catchup.at_start()
                    except RegistryError as exc:
                        log.warning("%s: catch-up check failed: %s", self.name, exc)
                self._fires = fires = OwnedTasks(self.request_stop)
                drained = False
                dependents = self.executor.dependents if coord.config.after else None
                catchup = coord.config.catchup_window > 0
                needs_loops = dependents is not None or catchup or self._timer is None
                loops_group = anyio.create_task_group() if needs_loops else None
                try:
                    async with loops_group or _NO_GROUP as loops:
                        timer = self._timer
                        if loops is not None:
                            if dependents is not None:
                                loops.start_soon(dependents.run, self)
                            if catchup:
                                loops.start_soon(self.catchup.run)
                            if timer is None:
                                timer = Timer()
                                await loops.start(timer.run)
                        assert timer is not None
                        self._cron = timer.add(self._trigger, self._on_cron)
                        try:
                            task_status.started()
                            with anyio.CancelScope() as self._driving:
                                if self._stop or fires.error:
                                    self._driving.cancel()
                                await self._drive()
                        finally:
                            self._driving = None
                            self._cron.remove()
                            self._cron = None
                        if loops is not None:
                            loops.cancel_scope.cancel()
                    self.executor.ownerships.revoke_all("the scheduler is stopping")
                    with anyio.move_on_after(5, shield=True):
                        await coord.deregister()
                    # Running items get the grace period, then are cancelled.
                    self._cancel_at = anyio.current_time() + self._grace
                    await self._drain(fires)
                    drained = True  # (fires left now were given up on: not waited for again)
                finally:
                    if fires.tasks and not drained:  # cancelled from outside, or a step failed
                        self._cancel_at = anyio.current_time()
                        with anyio.CancelScope(shield=True):
                            await self._drain(fires)
                if fires.error is not None:
                    raise fires.error
                if infra is not None:
                    infra.cancel_scope.cancel()
        finally:
            self._fires = None
            self.registry.remove_session_listener(self._on_session)

    async def _drain(self, fires: OwnedTasks) -> None:
        """Wait for the fires left until ``_cancel_at``, then cancel them (their scopes keep
        re-delivering the cancellation to job code that swallows it) and wait up to
        ``_CANCELLED_WAIT`` for them to end."""
        while not await fires.wait(min(0.5, max(0.0, self._cancel_at - anyio.current_time()))):
            if anyio.current_time() >= self._cancel_at:  # (cancel_running moves it to now)
                break
        if not fires.tasks:
            return
        fires.cancel()
        if not await fires.wait(_CANCELLED_WAIT):
            log.error(
                "%s: %d fire(s) still running %.0fs after being cancelled; left behind",
                self.name,
                len(fires.tasks),
                _CANCELLED_WAIT,
                extra=self._extra,
            )

    def _on_session(self, event: SessionEvent) -> None:
        if event.state is SessionState.LOST:
            log.warning(
                "%s: registry session lost; cancelling running items", self.name, extra=self._extra
            )
            self.executor.fence()

    def take_start(self, due: datetime) -> datetime | None:
        """When the cron fire due at ``due`` found items to run here, if it is a recent one
        (it and earlier ones are forgotten: the missed-fire watch asks once per due time)."""
        return self.executor.starts.take(due)

    # -- fires --

    def start_fire(
        self,
        source: ExecutionSource = ExecutionSource.NORMAL_TRIGGER,
        scheduled: datetime | None = None,
        trigger: bytes | None = None,
    ) -> None:
        fires, executor = self._fires, self.executor
        if fires is None or self._stopping or self.coordinator.config_problem:
            return
        if executor.firing and self.coordinator.config.monitor_execution:
            # The previous fire still runs (or is still marking, or re-running a misfire):
            # this one misfires without a task of its own unless it has marks to write.
            work = executor.overlapped(source, scheduled, trigger)
            if work is not None:
                fires.start_soon(self._guarded(work))
            return
        if executor.firing:  # unmonitored: never run twice at once here
            if scheduled is not None:
                executor.busy(scheduled)  # a cron fire: skipped
            else:
                self._queued = (trigger,)  # an operator's: run once the fire in progress ends
            return
        executor.reserve()  # firing from now: a requested run checking meanwhile waits
        fires.start_soon(
            self._guarded(executor.fire(source, scheduled, trigger=trigger, reserved=True))
        )

    def _start_run(
        self,
        items: list[int],
        kind: ExecutionType,
        source: ExecutionSource,
        lost: Mapping[int, tuple[str, JobExecutionEvent]] | None = None,
    ) -> None:
        """Run ``items`` outside a cron fire (a misfire re-run or a failover takeover of the
        ``lost`` runs), listeners included."""
        if self._fires is None or self._stopping:
            return
        contexts = self.executor.contexts(items, kind, source, None)
        self._fires.start_soon(self._guarded(self.executor.run(contexts, lost)))

    def busy_unmonitored(self) -> bool:
        """A job without ``monitor_execution`` has a fire or requested run in progress here:
        with no running marks to conflict on, a requested run must wait for it (as a cron
        fire is skipped and an operator's queued), or an item would run twice at once."""
        return not self.coordinator.config.monitor_execution and self.executor.firing

    def start_contexts(self, contexts: ShardingContexts, claim: Callable[[int], str]) -> None:
        """Run the items of a requested fire's ``contexts`` (a dependent job's, a catch-up),
        listeners included, creating each item's ``claim`` node with its running mark. The
        caller checked ``busy_unmonitored`` since its last await."""
        if self._fires is not None and not self._stopping:
            self.claiming |= frozenset(contexts.sorted_items)
            # Unmonitored, the run counts as firing (its own marks guard a monitored one).
            counted = not self.coordinator.config.monitor_execution
            if counted:
                self.executor.reserve()
            self._fires.start_soon(self._guarded(self._run_requested(contexts, claim, counted)))

    async def _run_requested(
        self, contexts: ShardingContexts, claim: Callable[[int], str], counted: bool
    ) -> None:
        try:
            await self.executor.run(contexts, claim=claim)
        finally:
            self.claiming -= frozenset(contexts.sorted_items)
            if counted:
                self.executor.release()

    async def _guarded(self, work: Awaitable[object]) -> None:
        self.in_flight += 1
        try:
            await work
        except BaseException as exc:
            if is_cancellation(exc):
                raise
            await self.executor.handle_error(exc)  # e.g. the registry failed mid-fire
        finally:
            self.in_flight -= 1
            queued = self._queued
            if queued is not None and not self.executor.firing:
                self._queued = None
                self.start_fire(ExecutionSource.NORMAL_TRIGGER, trigger=queued[0])

    # -- cron --

    def _trigger(self) -> CronTrigger | None:
        """The current config's trigger (None: one-off job), made once per config."""
        config = self.coordinator.config
        if self._trigger_of[0] is not config:
            self._trigger_of = (config, config.trigger())
        return self._trigger_of[1]

    def _on_cron(self, scheduled: datetime) -> None:
        self.start_fire(ExecutionSource.NORMAL_TRIGGER, scheduled)

    # -- steps --

    def _watch_relevant(self, path: str) -> bool:
        return self.coordinator.watch_relevant(path, marks_pending=self._marks_pending)

    def _poke(self) -> None:
        """A subscription saw a change its step acts on: wake the steps."""
        wake = self._wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def _drive(self) -> None:
        """Take the job's steps until cancelled (``request_stop``): each when a change it acts
        on arrives or its deadline passes (0.5 s after a failed step, else 60 s; the leader's
        at the reconcile interval)."""
        coord = self.coordinator
        self._config_raw = coord.view.get(coord.paths.config)
        now = anyio.current_time()
        leader_at, repair_at, watch_at = now, now, now + 60.0
        self._marks_pending = coord.marks_pending()
        while True:
            if self._claim_changes.take():
                self.executor.ownerships.revoke_moved(coord.view)
            if self._watch_changes.take() or anyio.current_time() >= watch_at:
                watch_at = anyio.current_time() + await self._watch_step()
                self._marks_pending = coord.marks_pending()
            if self._leader_changes.take() or anyio.current_time() >= leader_at:
                leader_at = anyio.current_time() + await self._leader_step()
            if self._repair_changes.take() or anyio.current_time() >= repair_at:
                repair_at = anyio.current_time() + await self._repair_step()
            await self._sleep_until(min(leader_at, repair_at, watch_at))

    def _sleep_until(self, deadline: float) -> Awaitable[None]:
        """What the steps await until a relevant change or ``deadline``: a future on a loop
        timer (no cancel scope, no frame: an idle job sits here, and a scope is 0.6 KiB)."""
        subscriptions = (
            self._claim_changes,
            self._watch_changes,
            self._leader_changes,
            self._repair_changes,
        )
        if any(s.pending for s in subscriptions):
            return anyio.lowlevel.checkpoint()
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_at(deadline, _resolve, wake) if deadline < math.inf else None
        wake.add_done_callback(partial(self._woke, timer))  # also when cancelled
        return wake

    def _woke(self, timer: asyncio.TimerHandle | None, wake: asyncio.Future[None]) -> None:
        if self._wake is wake:
            self._wake = None
        if timer is not None:
            timer.cancel()

    async def _leader_step(self) -> float:
        """Elect, flag and run reshards; the delay until the next step."""
        coord = self.coordinator
        timeout: float = coord.config.reconcile_interval_minutes * 60 or 3600
        try:
            await coord.leader_step()
            if coord.reshard_retryable():
                timeout = 0.5  # the reshard raced: try again soon, not at the next change
        except RegistryError as exc:
            log.debug("%s: leader step failed (%s); retrying", self.name, exc, extra=self._extra)
            timeout = 0.5
        return timeout

    async def _watch_step(self) -> float:
        """Act on the job's nodes: shutdown requests, re-registration, config changes,
        triggers, misfire re-runs and failover; the delay until the next step."""
        coord = self.coordinator
        if not coord.view.fresh:
            return 60.0
        try:
            if coord.shutdown_requested():
                log.info("%s: shutdown requested by an operator", self.name, extra=self._extra)
                self.request_stop()
                return 60.0
            if self._registered_session != self.registry.session_id:
                await coord.register_instance()
                self._registered_session = self.registry.session_id
            if coord.marks.clears_pending():
                await coord.marks.retry_clears()
            raw = coord.view.get(coord.paths.config)
            if raw is not None and raw != self._config_raw:
                self._config_raw = raw
                self._apply_config(raw)
            trigger = coord.view.get(coord.paths.trigger(coord.identity.instance_id))
            if coord.has_trigger() and await coord.consume_trigger():
                self.start_fire(ExecutionSource.NORMAL_TRIGGER, trigger=trigger)
            if coord.config_problem:
                return 60.0  # held: no misfire re-runs or takeovers with an unknown config
            self._run_misfired_if_due()
            if await self._failover_if_due():
                return 0.5  # unclaimed candidates left: look again soon
        except RegistryError as exc:
            log.debug("%s: watch step failed (%s)", self.name, exc, extra=self._extra)
            return 0.5
        return 60.0

    def _apply_config(self, raw: bytes) -> None:
        """Adopt the registry's new config; an invalid one holds the job (one ERROR) until
        the node is valid again."""
        coord = self.coordinator
        held = coord.config_problem is not None
        if coord.adopt_config(raw):
            log.info("%s: config changed in the registry", self.name, extra=self._extra)
        if held != (coord.config_problem is not None) or not held:
            if self._cron is not None:
                self._cron.reschedule()  # e.g. a new cron, or held/resumed
            self._leader_changes.notify()  # e.g. a new sharding count

    async def _repair_step(self) -> float:
        """Heal missing nodes (an emptied server, a deleted root), report bad nodes once and
        delete stale persistent marks where ephemerals belong; the delay until the next step."""
        coord = self.coordinator
        if coord.view.fresh:
            try:
                await self._heal_if_needed()
                coord.report_problems()
                if not coord.config_problem and await coord.repair_stale():
                    self._leader_changes.notify()
                if await coord.prune_leaves():
                    self._leader_changes.notify()  # e.g. a reshard that could not finish
            except RegistryError as exc:
                log.debug("%s: repair step failed (%s)", self.name, exc, extra=self._extra)
                return 0.5
        return 60.0

    async def _heal_if_needed(self) -> None:
        coord = self.coordinator
        if not coord.needs_heal():
            return
        running = self.executor.running
        fenced = bool(running) and not coord.view.exists(coord.paths.sharding)
        if fenced:
            self._fence_for_deleted_marks(running)
        created = await coord.heal()
        # The view may show a deletion half applied (the job's root gone, its sharding nodes
        # not yet): what heal had to re-create is what the registry lacked.
        if not fenced and self.executor.running and coord.paths.sharding in created:
            self._fence_for_deleted_marks(self.executor.running)
        self._registered_session = self.registry.session_id
        if created:
            root = coord.paths.root
            log.warning(
                "%s: registry nodes were missing (server data lost, or the job's root deleted); "
                "re-created under %s: %s",
                self.name,
                root,
                ", ".join(p.removeprefix(root + "/") if p != root else "(root)" for p in created),
                extra=self._extra,
            )
            self._leader_changes.notify()

    def _fence_for_deleted_marks(self, running: set[int]) -> None:
        log.warning(
            "%s: the job's sharding nodes were deleted while items %s ran: their running "
            "marks are gone, so they are cancelled",
            self.name,
            sorted(running),
            extra=self._extra,
        )
        self.executor.fence("the job's sharding nodes were deleted")

    async def _failover_if_due(self) -> bool:
        """Claim and run at once this instance's share of a dead runner's unfinished items, and
        any candidate its preferred taker has not claimed within 2 s. True if some are left."""
        coord = self.coordinator
        if not coord.config.failover or self._stopping:
            return False
        candidates = coord.failover_candidates()
        now = anyio.current_time()
        self._failover_seen = {i: self._failover_seen.get(i, now) for i in candidates}
        if not candidates:
            return False
        mine = set(coord.failover_share(candidates))
        mine |= {i for i in candidates if now - self._failover_seen[i] > 2.0}
        claimed = await coord.marks.claim_failover(sorted(mine)) if mine else []
        if claimed:
            log.info("%s: failing over items %s", self.name, claimed, extra=self._extra)
            notify_observers(self.executor.observers, "failover_claimed", self.name, claimed)
            lost = coord.lost_runs(claimed)  # read before our own run overwrites the intents
            self._start_run(claimed, ExecutionType.FAILOVER, ExecutionSource.FAILOVER, lost)
        return len(claimed) < len(candidates)

    def _run_misfired_if_due(self) -> None:
        """Run owned misfired items once nothing runs them (e.g. after moving here)."""
        coord, cfg = self.coordinator, self.coordinator.config
        if self.in_flight or not (cfg.misfire and cfg.monitor_execution):
            return
        if coord.reshard_pending() or self._stopping:
            return
        items = [
            i
            for i in coord.local_items()
            if coord.is_misfired(i) and not self.executor.is_running(i) and not coord.is_running(i)
        ]
        if items:
            self._start_run(items, ExecutionType.READY, ExecutionSource.MISFIRE)
