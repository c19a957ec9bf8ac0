"""The execution template: one fire of one job on one instance (ElasticJob's, step by step)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

from ._catchup import CatchUp
from ._config import JobConfig
from ._context import ShardingContext, ShardingContexts
from ._coordination import JobCoordinator
from ._dependents import Dependents
from ._errors import ItemCancelled, NoNodeError, RegistryError, SessionLostError
from ._jobs import ItemRunner
from ._listeners import DistributedOnceListener
from ._logging import fields, short_task_id
from ._missed import RecentStarts
from ._observer import Observer, hook_name, notify_observers
from ._otel import Spans
from ._ownership import Ownerships
from ._retry import AttemptRows, ItemTimeoutError, run_with_retries
from ._task_id import make_task_id
from .registry._protocol import SessionState
from .tracing._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    State,
    TraceEvent,
    format_failure,
)

__all__ = ["JobExecutor", "is_cancellation", "make_task_id"]

log = logging.getLogger("aioelastic.executor")

Post = Callable[[TraceEvent], None]
Fatal = Callable[[BaseException], None]


def _current_asyncio_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None  # not on asyncio


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    """How one item's run ended."""

    failure: BaseException | None
    cleared: bool = False  # its marks were cleared already (failover: right after it completed)


def _shutdown_cancelled(item: int) -> ItemCancelled:
    return ItemCancelled(f"item {item} cancelled: shutdown grace period over")


class JobExecutor:
    """Runs fires of one job through the template; owned by that job's ``JobRunner``."""

    def __init__(
        self,
        coordinator: JobCoordinator,
        run_item: ItemRunner,
        post: Post | None,
        fatal: Fatal,
        keep_going: Callable[[], bool],
        reshard_timeout: float = 10.0,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.coordinator = coordinator
        self.observers = list(observers)
        self._reshard_timeout = reshard_timeout
        self._run_item = run_item
        # None without a trace sink: events would be built only to be dropped.
        self._post = post
        self._fatal = fatal
        self._keep_going = keep_going
        self._limiters: dict[int, anyio.CapacityLimiter] = {}
        self.running: set[int] = set()
        """Items this instance is running now (authoritative for our own marks)."""
        self.active: set[int] = set()
        """Items whose job code runs now (``running`` keeps a fire's items until all end)."""
        self._item_scopes: dict[int, tuple[anyio.CancelScope, asyncio.Task[Any] | None]] = {}
        self._fenced: set[asyncio.Task[Any]] = set()  # item tasks fence() cancelled directly
        self._skipped = 0  # fires skipped in the current registry outage
        self._firing = 0  # fires between their start and the end of their misfire re-runs
        self._overlapping: list[ShardingContexts] | None = None  # ``overlapped``, being marked
        self.starts = RecentStarts()
        """The recent cron fires that found items to run here (run or misfired): the
        missed-fire watch reads no view for them."""
        self._spans = Spans(coordinator.identity.instance_id)
        self.ownerships = Ownerships(coordinator.paths, coordinator.identity.instance_id)
        self.dependents: Dependents | None = None  # set when the job has dependents/upstreams
        self.catchup: CatchUp | None = None

    @property
    def config(self) -> JobConfig:
        return self.coordinator.config

    @property
    def _me(self) -> str:
        return self.coordinator.identity.instance_id

    @property
    def _job(self) -> str:
        return self.coordinator.paths.job

    def fence(self, reason: str = "registry session lost") -> None:
        """Cancel every running item: the session is lost, so is our claim on the items."""
        self.ownerships.revoke_all(reason)  # job code sees ctx.lost before the cancellation
        for scope, task in list(self._item_scopes.values()):
            scope.cancel()
            # anyio delivers a scope's cancellation on a later loop turn; after a pause the item's
            # wake-up may be queued before that. Cancelling the task itself takes effect at its
            # very next step, so the item takes no step past the fence.
            if task is not None:
                task.cancel()
                self._fenced.add(task)

    # -- the template --

    async def fire(
        self,
        source: ExecutionSource = ExecutionSource.NORMAL_TRIGGER,
        scheduled: datetime | None = None,
        trigger: bytes | None = None,
        *,
        reserved: bool = False,
    ) -> None:
        """One fire, ElasticJob's execution template: check the clock against the registry;
        skip unless the session is connected; let a pending reshard finish; take this
        instance's items; misfire if one still runs; listeners before; run the items
        (``execute``); re-run misfired items; listeners after. ``reserved``: the caller
        counted it as ``firing`` already (``reserve``), when it started its task."""
        if not reserved:
            self._firing += 1
        try:
            items = await self._fire(source, scheduled, trigger)
        finally:
            self._firing -= 1
        if items is not None:
            await self._listeners(items, before=False)

    @property
    def firing(self) -> bool:
        """A fire of this job is in its template here (from its start to the end of its
        misfire re-runs; for a job without ``monitor_execution``, also a requested run): a
        fire that arrives meanwhile is ``overlapped`` (or, unmonitored, ``busy``)."""
        return self._firing > 0

    def reserve(self) -> None:
        """Count a fire or run as ``firing`` from now, before its task takes its first step
        (a check of ``firing`` in between must see it); ``release`` ends it, unless it is a
        ``fire(reserved=True)``, which ends it itself."""
        self._firing += 1

    def release(self) -> None:
        self._firing -= 1

    def overlapped(
        self,
        source: ExecutionSource = ExecutionSource.NORMAL_TRIGGER,
        scheduled: datetime | None = None,
        trigger: bytes | None = None,
    ) -> Coroutine[Any, Any, None] | None:
        """A fire that arrives while this job's previous fire is still ``firing`` here (only
        with ``monitor_execution``): misfired at once, as ElasticJob's job thread is busy and
        Quartz misfires the trigger; the fire in progress re-runs the items once after its
        run. Returns the coroutine that writes the misfire marks, or None when there is nothing
        to write (every mark exists) or a write is in flight (it writes this fire's too): any
        number of overdue fires cost one task and one write, however far behind an overloaded
        instance is."""
        coord = self.coordinator
        items = self._arrived(scheduled)
        contexts = self._staged(items, source, scheduled, trigger)
        if not items:
            self._status(
                contexts, State.TASK_FINISHED, f"Sharding item for job '{self._job}' is empty."
            )
            return None
        if self._overlapping is not None:
            self._overlapping.append(contexts)
            return None
        if self.config.misfire and (
            self.dependents is not None or not all(coord.is_misfired(i) for i in items)
        ):  # (a dependent job's marks take each fire's key)
            self._overlapping = [contexts]
            return self._write_misfires()
        self._misfired(contexts)
        return None

    def _arrived(self, scheduled: datetime | None) -> list[int]:
        """A fire that will not run now (``overlapped``, ``busy``) arrived: observers told, and
        the missed-fire watch, if it has items here (it was not missed); those items."""
        started = datetime.now(UTC)
        notify_observers(self.observers, "fire_started", self._job, scheduled, started)
        items = self.coordinator.local_items()
        if items and scheduled is not None:
            self.starts.add(scheduled, started)
        return items

    def busy(self, scheduled: datetime) -> None:
        """A cron fire that arrives while this job's previous fire is still ``firing`` here,
        without ``monitor_execution`` (no running marks, so nothing to misfire on): skipped, as
        ElasticJob's single job thread drops it (Quartz's misfire, "do nothing"); the same item
        never runs twice at once on one instance."""
        items = self._arrived(scheduled)
        if not items:
            return
        contexts = self.contexts(
            items, ExecutionType.READY, ExecutionSource.NORMAL_TRIGGER, scheduled
        )
        log.debug("job %r: previous fire still running here; fire skipped", self._job)
        self._status(
            contexts,
            State.TASK_FINISHED,
            f"Previous job '{self._job}' - shardingItems '{contexts.items}' is still running "
            "on this instance; fire skipped (monitor_execution is off: no misfire re-run).",
        )

    async def _write_misfires(self) -> None:
        """Write the misfire marks of the ``overlapped`` fires (those arriving meanwhile join
        the next write)."""
        try:
            while self._overlapping:
                fires, self._overlapping = self._overlapping, []
                await self._misfire(*fires)
        finally:
            self._overlapping = None

    def _staged(
        self,
        items: Sequence[int],
        source: ExecutionSource,
        scheduled: datetime | None,
        trigger: bytes | None,
    ) -> ShardingContexts:
        """A cron or requested fire's contexts, its staging status posted."""
        contexts = self.contexts(items, ExecutionType.READY, source, scheduled)
        if trigger:
            contexts = dataclasses.replace(contexts, trigger=trigger.decode(errors="replace"))
        self._status(contexts, State.TASK_STAGING, f"Job '{self._job}' execute begin.")
        return contexts

    async def _fire(
        self, source: ExecutionSource, scheduled: datetime | None, trigger: bytes | None
    ) -> ShardingContexts | None:
        """``fire`` up to the listeners after; the contexts they get (None: none)."""
        cfg, coord = self.config, self.coordinator
        started = datetime.now(UTC)
        notify_observers(self.observers, "fire_started", self._job, scheduled, started)
        try:
            await coord.check_time_diff()
        except Exception as exc:
            if await self.handle_error(exc):
                return None  # "raise": the fire stops before any item runs (ElasticJob's)
        if coord.registry.session_state is not SessionState.CONNECTED:
            self._skipped += 1
            if self._skipped == 1:  # once per outage: the next ones are only counted
                await self.handle_error(
                    SessionLostError(
                        f"job {self._job!r}: registry session not connected; fire skipped "
                        "(further fires are skipped silently until the session is back)"
                    )
                )
            return None
        if self._skipped:
            log.warning(
                "job %r: %d fire(s) skipped while the registry session was not connected",
                self._job,
                self._skipped,
                extra=self._fields(),
            )
            self._skipped = 0
        await coord.wait_for_sharding(self._reshard_timeout)
        items = coord.local_items()
        if items and scheduled is not None:
            self.starts.add(scheduled, datetime.now(UTC))  # after any wait for a reshard
        contexts = self._staged(items, source, scheduled, trigger)
        if cfg.monitor_execution and any(self.is_running(i) for i in items):
            await self._misfire(contexts)
            return None
        if not await self._listeners(contexts, before=True):
            return None
        await self.execute(contexts)
        while self._misfire_due(items):
            again = self.contexts(
                [i for i in items if coord.is_misfired(i) and coord.owner(i) == self._me],
                ExecutionType.READY,
                ExecutionSource.MISFIRE,
                None,
            )
            if not await self.execute(again, quiet_conflict=True):
                break
        return contexts

    async def run(
        self,
        contexts: ShardingContexts,
        lost: Mapping[int, tuple[str, JobExecutionEvent]] | None = None,
        claim: Callable[[int], str] | None = None,
    ) -> bool:
        """A run outside a cron fire (a failover takeover, a misfire re-run, a requested fire),
        between the listeners as ElasticJob's (its takeover is a whole fire). ``lost``: the
        dead runs of a takeover's items, whose trace rows are completed as failures first.
        ``claim``: a requested fire's claim node of an item, created with the running marks.
        False if the items did not run (a listener aborted it, another run holds an item, or
        another instance claimed one)."""
        failover_run = contexts.execution_type is ExecutionType.FAILOVER
        if lost:
            self._complete_lost_runs(contexts, lost)
        if not await self._listeners(contexts, before=True, cluster_once=False):
            if failover_run:  # the fire was aborted: give the takeover back
                with anyio.move_on_after(5, shield=True), contextlib.suppress(RegistryError):
                    await self.coordinator.marks.release_failover(contexts.sorted_items)
            return False
        ran = await self.execute(contexts, quiet_conflict=True, claim=claim)
        await self._listeners(contexts, before=False, cluster_once=False)
        return ran

    def _complete_lost_runs(
        self, contexts: ShardingContexts, lost: Mapping[int, tuple[str, JobExecutionEvent]]
    ) -> None:
        """Complete the dead runs' trace rows as failures naming the lost instance and us."""
        post = self._post
        if post is None:
            return
        now = datetime.now(UTC)
        for item, (instance, start) in sorted(lost.items()):
            cause = (
                f"instance {instance} lost its registry session; item {item} taken over by "
                f"{self._me} (task {contexts.task_id})"
            )
            post(
                dataclasses.replace(start, complete_time=now, is_success=False, failure_cause=cause)
            )

    def is_running(self, item: int) -> bool:
        return item in self.running or self.coordinator.marks.running_elsewhere(item)

    def _misfire_due(self, items: Sequence[int]) -> bool:
        coord, cfg = self.coordinator, self.config
        if not (cfg.misfire and cfg.monitor_execution):
            return False
        misfired = [i for i in items if coord.is_misfired(i)]  # usually none: one read each
        return (
            bool(misfired)
            and self._keep_going()  # not stopping, no reshard pending
            and any(coord.owner(i) == self._me for i in misfired)
        )

    async def _misfire(self, *fires: ShardingContexts) -> None:
        """Misfire ``fires`` (one, or the overlapped fires of a moment): one write of their
        items' marks holding the latest fire's key (its one re-run stands for them all), then
        each fire's status."""
        if self.config.misfire:
            latest = fires[-1]
            fire = self.dependents.misfire_key(latest) if self.dependents is not None else b""
            items = sorted({i for c in fires for i in c.sorted_items})
            await self.coordinator.marks.mark_misfire(items, fire)
        self._misfired(*fires)

    def _misfired(self, *fires: ShardingContexts) -> None:
        """Each misfired fire's status (ElasticJob's message)."""
        for contexts in fires:
            self._status(
                contexts,
                State.TASK_FINISHED,
                f"Previous job '{self._job}' - shardingItems '{contexts.items}' is still "
                "running, misfired job will start after previous job completed.",
            )

    async def execute(
        self,
        contexts: ShardingContexts,
        *,
        quiet_conflict: bool = False,
        claim: Callable[[int], str] | None = None,
    ) -> bool:
        """Run the items of ``contexts`` under running marks (and ``claim`` nodes, see
        ``run``). False if they could not be claimed (another fire holds one)."""
        items = contexts.sorted_items
        if not items:
            self._status(
                contexts, State.TASK_FINISHED, f"Sharding item for job '{self._job}' is empty."
            )
            return True
        monitor = self.config.monitor_execution
        misfire_run = contexts.execution_source is ExecutionSource.MISFIRE and not contexts.catch_up
        failover_run = contexts.execution_type is ExecutionType.FAILOVER
        # The items' trace events exist before the running marks: their ids go into the
        # failover intents, so a taker can complete the rows if this instance dies.
        starts = self._start_events(contexts)
        claims = [claim(i) for i in items] if claim is not None else []
        # A misfire re-run completes the fires its marks name (read before it consumes them).
        misfired = (
            self.coordinator.marks.misfire_fires(items)
            if misfire_run and self.dependents is not None
            else None
        )
        try:
            if monitor:
                claimed = await self.coordinator.marks.mark_running(
                    items, misfire_run=misfire_run, runs=starts, claims=claims
                )
            else:
                claimed = not claims or await self.coordinator.marks.claim(claims)
        except RegistryError:
            if failover_run:  # give the takeover back rather than block the items
                with anyio.move_on_after(5, shield=True), contextlib.suppress(RegistryError):
                    await self.coordinator.marks.release_failover(items)
            raise
        if not claimed:
            # Another fire (here or elsewhere) holds some item: misfire rather than run twice.
            if failover_run:
                # Someone runs the item already: give the takeover back.
                await self.coordinator.marks.release_failover(items)
            elif not quiet_conflict:
                await self._misfire(contexts)
            return False
        if self.dependents is not None or (
            self.catchup is not None and self.config.catchup_window > 0
        ):
            contexts = await self._fire_started(contexts, misfired, claims)
        outcomes: dict[int, _Outcome] = {}
        self.running.update(items)
        began = time.monotonic()
        span = self._spans.start_fire(contexts, items)

        async def run_one(item: int) -> None:
            outcomes[item] = await self._run_one(contexts, item, starts.get(item))

        try:
            self._status(contexts, State.TASK_RUNNING, "")
            if len(items) == 1:
                await run_one(items[0])  # in the fire's own task: no group, no extra task
            else:
                async with anyio.create_task_group() as tg:
                    for item in items:
                        tg.start_soon(run_one, item)
        finally:
            # An item without an outcome was cancelled by shutdown (its task re-raised).
            errors: dict[int, BaseException] = {
                i: failure
                for i in items
                if (failure := outcomes[i].failure if i in outcomes else _shutdown_cancelled(i))
                is not None
            }
            left = [i for i in items if not (i in outcomes and outcomes[i].cleared)]
            if monitor and left:
                # Items that did not complete (cancelled) keep their failover intents.
                with anyio.move_on_after(5, shield=True):
                    await self.coordinator.marks.clear_running(
                        left,
                        failover_run=failover_run,
                        keep_intents=any(isinstance(errors.get(i), ItemCancelled) for i in left),
                    )
            self.running.difference_update(items)
            if self.dependents is not None:
                self.dependents.run_ended(contexts)  # fenced items never reached item_done
            if errors:
                text = ", ".join(f"{i}={type(e).__name__}: {e}" for i, e in sorted(errors.items()))
                self._status(contexts, State.TASK_ERROR, "{" + text + "}")
            else:
                self._status(contexts, State.TASK_FINISHED, "")
            self._log_fire(contexts, errors, time.monotonic() - began)
            if span is not None:
                span.end(errors)
        for item, exc in sorted(errors.items()):
            await self.handle_error(exc, contexts, item)
        return True

    async def _fire_started(
        self,
        contexts: ShardingContexts,
        misfired: Mapping[int, str] | None,
        claims: Sequence[str],
    ) -> ShardingContexts:
        """The bookkeeping of a fire whose items hold their marks (dependents, catch-up). If
        it fails (a registry error), the items do not run: what the fire wrote is undone (marks,
        claims, dependents records; consumed misfire marks are put back) and the error raised."""
        try:
            if self.dependents is not None:
                contexts = await self.dependents.fire_started(contexts, misfired)
            if self.catchup is not None and self.config.catchup_window > 0:
                await self.catchup.fire_started(contexts)
        except BaseException:
            with anyio.move_on_after(5, shield=True):
                await self._undo_start(contexts, misfired, claims)
            raise
        return contexts

    async def _undo_start(
        self,
        contexts: ShardingContexts,
        misfired: Mapping[int, str] | None,
        claims: Sequence[str],
    ) -> None:
        items, marks = contexts.sorted_items, self.coordinator.marks
        failover_run = contexts.execution_type is ExecutionType.FAILOVER
        if self.dependents is not None:
            await self.dependents.fire_aborted(contexts)
        if self.config.monitor_execution:
            # A takeover keeps its intents: the items are taken over again.
            await marks.clear_running(items, failover_run=failover_run, keep_intents=failover_run)
        with contextlib.suppress(RegistryError):
            if misfired is not None:
                await marks.restore_misfire(items, misfired)
            for path in claims:  # the request's items run later
                with contextlib.suppress(NoNodeError):
                    await self.coordinator.registry.delete(path)

    def _log_fire(
        self, contexts: ShardingContexts, errors: Mapping[int, BaseException], duration: float
    ) -> None:
        """The fire's INFO line: job, short task id, items, source, duration, outcome."""
        if not log.isEnabledFor(logging.INFO):
            return  # its fields are not built for nothing
        source = contexts.execution_source.value.lower().removesuffix("_trigger")
        failed = sorted(errors)
        outcome = f"failed items {failed}" if failed else "ok"
        log.info(
            "%s: fire %s items %s (%s) took %.3fs: %s",
            self._job,
            short_task_id(contexts.task_id),
            list(contexts.sorted_items),
            source,
            duration,
            outcome,
            extra=self._fields(
                contexts,
                items=list(contexts.sorted_items),
                duration=round(duration, 6),
                outcome="failed" if failed else "ok",
                failed_items=failed,
            ),
        )

    def _fields(
        self, contexts: ShardingContexts | None = None, item: int | None = None, **more: Any
    ) -> dict[str, Any]:
        return fields(
            job=self._job,
            task_id=contexts.task_id if contexts is not None else None,
            item=item,
            instance=self._me,
            execution_source=contexts.execution_source.value if contexts is not None else None,
            **more,
        )

    def _start_events(self, contexts: ShardingContexts) -> dict[int, JobExecutionEvent]:
        if self._post is None:
            return {}
        ident = self.coordinator.identity
        return {
            item: JobExecutionEvent(
                job_name=self._job,
                task_id=contexts.task_id,
                hostname=ident.hostname,
                ip=ident.ip,
                sharding_item=item,
                execution_source=contexts.execution_source,
            )
            for item in contexts.sorted_items
        }

    async def _run_one(
        self, contexts: ShardingContexts, item: int, start: JobExecutionEvent | None
    ) -> _Outcome:
        """Run one item; its failure (None on success) and whether its marks were cleared.
        Cancelled by shutdown, it re-raises instead (``execute`` then knows it by no outcome)."""
        failover = contexts.execution_type is ExecutionType.FAILOVER
        lost = self.ownerships.hold(item, failover=failover)
        ctx = contexts.for_item(item, lost, self.coordinator.registry.session_id)
        if start is not None and self._post is not None:
            self._post(start)
        # With retries, each attempt has its own trace row.
        rows = AttemptRows(self._post, start, ctx) if self.config.retries else None
        failure: BaseException | None = None
        limiter = self._limiter()
        task = _current_asyncio_task()
        self.active.add(item)
        try:
            with anyio.CancelScope() as scope:
                self._item_scopes[id(scope)] = (scope, task)
                try:
                    if limiter is not None:
                        async with limiter:
                            if lost.is_set():  # its claim went while it waited for a slot
                                failure = ItemCancelled(f"item {item} not started: {lost.reason}")
                            else:
                                await self._attempts(ctx, contexts, rows)
                    elif rows is None:
                        await self._call(ctx, contexts)
                    else:
                        await self._attempts(ctx, contexts, rows)
                except BaseException as exc:
                    # Job code's own BaseException (SystemExit, KeyboardInterrupt,
                    # GeneratorExit, a CancelledError it raised) fails this item only.
                    if is_cancellation(exc, scope):
                        raise
                    failure = exc
                finally:
                    del self._item_scopes[id(scope)]
                    if not self._item_scopes:
                        self._item_scopes = {}  # an emptied dict keeps its table
            if scope.cancelled_caught:
                failure = ItemCancelled(f"item {item} cancelled: registry session lost")
        except anyio.get_cancelled_exc_class():
            if self._fence_caught(task):
                failure = ItemCancelled(f"item {item} cancelled: registry session lost")
            else:
                failure = _shutdown_cancelled(item)
                raise
        finally:
            self.ownerships.release(lost)
            self.active.discard(item)
            if task is not None:
                self._fenced.discard(task)
            if rows is not None:
                start = rows.current
            if start is not None and self._post is not None:
                self._post(
                    dataclasses.replace(
                        start,
                        complete_time=datetime.now(UTC),
                        is_success=failure is None,
                        failure_cause=format_failure(failure) if failure else None,
                    )
                )
        if isinstance(failure, ItemCancelled):
            return _Outcome(failure)  # fenced: its failover intent stays for a taker
        if self.dependents is not None:
            await self._dependents_done(contexts, item, failure)
        if self.config.failover and self.config.monitor_execution:
            # With failover, an item that completed must not be re-run if this instance dies
            # before its siblings finish: clear its marks now (one multi-op per item).
            with anyio.move_on_after(5, shield=True):
                await self.coordinator.marks.clear_running(
                    [item], failover_run=contexts.execution_type is ExecutionType.FAILOVER
                )
                return _Outcome(failure, cleared=True)
        return _Outcome(failure)

    async def _dependents_done(
        self, contexts: ShardingContexts, item: int, failure: BaseException | None
    ) -> None:
        """Record the item's completion for dependent jobs (before its marks are cleared)."""
        assert self.dependents is not None
        with anyio.move_on_after(5, shield=True):
            try:
                await self.dependents.item_done(contexts, item, failure, self._enabled_items)
            except RegistryError as exc:
                log.warning(
                    "%s: item %d's completion not recorded for dependent jobs: %s",
                    self._job,
                    item,
                    exc,
                    extra=self._fields(contexts, item),
                )

    def _enabled_items(self) -> set[int]:
        view, paths = self.coordinator.view, self.coordinator.paths
        total = self.config.sharding_total_count
        return {i for i in range(total) if not view.exists(paths.item_disabled(i))}

    def _fence_caught(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether the cancellation reaching the item's task was fence()'s own ``task.cancel()``
        only (which the item's scope does not absorb): undo it, and the item just ends."""
        if task is None or task not in self._fenced:
            return False
        self._fenced.discard(task)
        return task.uncancel() == 0

    async def _attempts(
        self, ctx: ShardingContext, contexts: ShardingContexts, rows: AttemptRows | None
    ) -> None:
        """The item's run, retried (``retries``) while it fails and this instance owns it."""
        cfg = self.config
        if rows is None:
            await self._call(ctx, contexts)
            return
        await run_with_retries(
            lambda: self._call(ctx, contexts),
            cfg.retries,
            cfg.retry_backoff,
            ctx.lost,
            rows.retry,
            rows.next,
        )

    async def _call(self, ctx: ShardingContext, contexts: ShardingContexts) -> None:
        with self._spans.item(contexts, ctx.sharding_item):
            await self._call_job(ctx)

    async def _call_job(self, ctx: ShardingContext) -> None:
        timeout = self.config.timeout
        if timeout is None:
            await self._run_item(ctx, self._keep_going)
            return
        try:
            with anyio.fail_after(timeout):
                await self._run_item(ctx, self._keep_going)
        except TimeoutError:
            raise ItemTimeoutError(f"item timed out after {timeout:g}s and was cancelled") from None

    def _limiter(self) -> anyio.CapacityLimiter | None:
        n = self.config.max_concurrency
        if n is None:
            return None
        if n not in self._limiters:
            self._limiters = {n: anyio.CapacityLimiter(n)}
        return self._limiters[n]

    # -- helpers --

    def contexts(
        self,
        items: Sequence[int],
        kind: ExecutionType,
        source: ExecutionSource,
        scheduled: datetime | None,
    ) -> ShardingContexts:
        cfg = self.config
        params = cfg.sharding_item_parameters
        return ShardingContexts(
            job_name=self._job,
            task_id=make_task_id(self._job, items, kind, self.coordinator.identity.instance_id),
            sharding_total_count=cfg.sharding_total_count,
            job_parameter=cfg.job_parameter,
            sharding_item_parameters={i: params.get(i, "") for i in items},
            execution_type=kind,
            execution_source=source,
            scheduled_fire_time=scheduled,
            props=dict(cfg.props),
        )

    def _status(self, contexts: ShardingContexts, state: State, message: str) -> None:
        if self._post is None:
            return
        self._post(
            JobStatusTraceEvent(
                job_name=self._job,
                task_id=contexts.task_id,
                slave_id=self.coordinator.identity.instance_id,
                execution_type=contexts.execution_type,
                sharding_items=contexts.sorted_items,
                state=state,
                message=message,
                original_task_id=contexts.task_id,
            )
        )

    async def _listeners(
        self, contexts: ShardingContexts, *, before: bool, cluster_once: bool = True
    ) -> bool:
        """Run the before (or after) hooks of every listener. False if the fire must stop: a
        hook raised and the error handler is ``"raise"``. Otherwise each listener's error is
        handled on its own and the others still run (ElasticJob skips the rest of the phase; a
        skipped distributed-once listener would leave the other instances waiting).

        ``cluster_once=False`` (out-of-fire runs) leaves distributed-once listeners out: their
        hooks belong to the cluster-wide fire, which a takeover or re-run of a few items on one
        instance cannot complete (it would only wait for the timeout)."""
        for listener in self.config.listeners:
            try:
                if isinstance(listener, DistributedOnceListener):
                    if cluster_once:
                        await self._distributed_once(listener, contexts, before=before)
                else:
                    hook = listener.before_job_executed if before else listener.after_job_executed
                    await hook(contexts)
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                phase = "before_job_executed" if before else "after_job_executed"
                log.debug(
                    "listener %s.%s raised",
                    hook_name(listener),
                    phase,
                    extra=self._fields(contexts),
                )
                if await self.handle_error(exc) and before:
                    self._status(
                        contexts,
                        State.TASK_ERROR,
                        f"Job '{self._job}' aborted: listener {hook_name(listener)} failed "
                        f"before the fire: {type(exc).__name__}: {exc}",
                    )
                    return False
        return True

    async def _distributed_once(
        self, listener: DistributedOnceListener, contexts: ShardingContexts, *, before: bool
    ) -> None:
        if not contexts.sorted_items:
            return
        kind = "started" if before else "completed"
        timeout = listener.started_timeout if before else listener.completed_timeout
        if await self.coordinator.once.wait_all(kind, contexts.sorted_items, timeout):
            hook = listener.before_all_started if before else listener.after_all_completed
            await hook(contexts)

    async def handle_error(
        self,
        exc: BaseException,
        contexts: ShardingContexts | None = None,
        item: int | None = None,
    ) -> bool:
        """Route a job error to the configured handler (log | raise | ignore | callable);
        ``contexts`` and ``item`` name the fire and item it failed in, if any.

        True for ``"raise"``: the caller stops the fire there (the scheduler is stopping, and
        ``run()`` raises ``exc``). A callable that raises is logged; the job keeps its schedule.
        """
        handler = self.config.error_handler
        if handler == "ignore":
            return False
        if handler == "raise":
            self._fatal(exc)
            return True
        if handler == "log":
            extra = self._fields(contexts, item)
            if contexts is not None and item is not None:
                log.error(
                    "%s: item %d failed (task %s): %s",
                    self._job,
                    item,
                    short_task_id(contexts.task_id),
                    _describe(exc),
                    exc_info=exc,
                    extra=extra,
                )
            else:
                # A registry failure (the session lost mid-fire, say) hits every job at once:
                # its message says it all, and formatting a thousand tracebacks in one loop
                # pass blocked the loop past the stall limit (the watchdog then killed us).
                trace = None if isinstance(exc, RegistryError) else exc
                log.error(
                    "job %r failed: %s", self._job, _describe(exc), exc_info=trace, extra=extra
                )
            return False
        try:
            result = handler(self._job, exc)
            if inspect.isawaitable(result):
                await result
        except BaseException as error:
            if is_cancellation(error):
                raise
            log.error(
                "error handler %s of job %r raised; ignored",
                hook_name(handler),
                self._job,
                exc_info=error,
                extra=self._fields(contexts, item),
            )
        return False


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def is_cancellation(exc: BaseException, scope: anyio.CancelScope | None = None) -> bool:
    """Whether ``exc`` is (or, as a group, holds) a real cancellation (of ``scope``, or of the
    running task by anyio, shutdown or fencing), as opposed to a ``CancelledError`` that job
    code raised itself."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        if exc.subgroup(lambda e: isinstance(e, cancelled)) is None:
            return False
    elif not isinstance(exc, cancelled):
        return False
    if scope is not None and scope.cancel_called:
        return True
    task = _current_asyncio_task()
    # anyio cancels through Task.cancel() on asyncio (and uncancels what it catches), so a
    # pending cancellation shows in cancelling(); on other loops treat it as real.
    return task is None or task.cancelling() > 0
