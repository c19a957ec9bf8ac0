"""The ``Scheduler``: registers jobs and runs them on this instance."""

from __future__ import annotations

import contextlib
import enum
import gc
import logging
import math
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
from anyio.abc import TaskStatus

from ._batch import TransactionBatch
from ._config import JobConfig, Settings, load_settings
from ._coordination import InstanceIdentity, make_identity
from ._dependents import attach_dependents, check_dependencies
from ._errors import ConfigError, JobNotFoundError
from ._health import Health, scheduler_health
from ._jobs import ItemRunner, make_item_runner
from ._missed import MissedFireWatch
from ._observer import Observer, notify_observers
from ._owned import OwnedTasks
from ._pause import PauseDetector
from ._retention import TraceRetention, store_opener
from ._runner import JobRunner
from ._signals import handling_signals
from ._timer import Timer
from ._urls import RegistryURL, parse_tracing_url
from ._watchdog import STALL_EXIT_STATUS, LoopWatchdog, safe_stall_limit
from .registry import create_registry
from .registry._protocol import Registry, SessionEvent, SessionListener
from .registry._view import SharedView
from .tracing import TraceBus, create_sink
from .tracing._events import TraceSink

__all__ = ["RunState", "Scheduler"]

log = logging.getLogger("aioelastic.scheduler")
J = TypeVar("J")


@dataclass(frozen=True)
class _JobSpec:
    config: JobConfig
    run_item: ItemRunner


class RunState(enum.Enum):
    """Where a ``Scheduler`` stands: STOPPED -> STARTING -> STARTED -> STOPPING -> STOPPED (a
    start that fails goes from STARTING to STOPPING)."""

    STOPPED = "stopped"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"


#: Jobs registering with the registry at the same time when the scheduler starts.
_CONCURRENT_STARTS = 32
#: Jobs started between two ``gc.freeze()`` while the scheduler starts (see ``_Freezer``).
_FREEZE_EVERY = 100


def _unwrap(exc: Exception) -> Exception:
    """The one error inside (nested) single-exception groups, for a readable ``run()`` error."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _session_forwarder(observer: Observer) -> SessionListener:
    def forward(event: SessionEvent) -> None:
        notify_observers([observer], "session_state_changed", event.state.value)

    return forward


class Scheduler:
    """Runs registered jobs on this instance, sharing their items with the other instances that
    use the same registry namespace.

    ``Scheduler()`` runs embedded (``memory://``) in one process. ``registry`` and ``tracing``
    are URLs; ``settings`` gives everything at once (and reads ``AIOELASTIC_*`` variables when
    omitted). ``sinks`` are extra trace sinks (anything with ``async def write(batch)``);
    ``observers`` get scheduler-level hooks (see ``Observer``), e.g. for metrics.
    """

    def __init__(
        self,
        registry: str | None = None,
        tracing: str | None = None,
        *,
        settings: Settings | None = None,
        instance_id: str | None = None,
        sinks: Sequence[TraceSink] = (),
        observers: Sequence[Observer] = (),
    ) -> None:
        overrides = {"registry_url": registry, "tracing_url": tracing, "instance_id": instance_id}
        if settings is None:
            settings = load_settings(**overrides)
        elif any(v is not None for v in overrides.values()):
            settings = Settings(
                **{**settings.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
            )
        self.settings = settings
        self.registry_url: RegistryURL = settings.registry()
        self.identity: InstanceIdentity = make_identity(settings.instance_id, settings.host)
        self._sinks = list(sinks)
        self.observers = list(observers)
        if settings.tracing_url is not None:
            self._sinks.append(
                create_sink(parse_tracing_url(settings.tracing_url.get_secret_value()))
            )
        self._jobs: dict[str, _JobSpec] = {}
        self._upstreams_of: tuple[int, frozenset[str]] = (-1, frozenset())
        self._runners: dict[str, JobRunner] = {}
        self._registry: Registry | None = None
        self._bus: TraceBus | None = None
        self._state = RunState.STOPPED
        self._state_changed: anyio.Event | None = None  # set at the next change (on the loop)
        self._stop_event: anyio.Event | None = None  # of the current (or last) run
        self._error: BaseException | None = None
        self._exit_stack: AsyncExitStack | None = None  # of ``async with scheduler``
        self._signalled = False
        self._forced = False
        self.loop_watchdog: LoopWatchdog | None = None
        """The running loop watchdog (its heartbeat tells ``health()`` the loop answers)."""

    # -- registration --

    @property
    def instance_id(self) -> str:
        return self.identity.instance_id

    @property
    def state(self) -> RunState:
        """Where the scheduler stands (``RunState``)."""
        return self._state

    def _set_state(self, state: RunState) -> None:
        self._state = state
        if self._state_changed is not None:
            self._state_changed.set()
        self._state_changed = anyio.Event()

    @property
    def jobs(self) -> dict[str, JobConfig]:
        """The registered jobs' configs (as effective on this instance once running)."""
        return {
            name: self._runners[name].coordinator.config if name in self._runners else spec.config
            for name, spec in self._jobs.items()
        }

    @property
    def registered_jobs(self) -> list[str]:
        """The jobs registered with the registry and running on this instance."""
        return list(self._runners)

    def health(self) -> Health:
        """Liveness and readiness now, with reasons (see ``aioelastic.health``)."""
        return scheduler_health(self)

    @property
    def trace_bus(self) -> TraceBus:
        """The running trace bus (its ``stats()`` give queue depths and spill counts)."""
        if self._bus is None:
            raise RuntimeError("the scheduler is not running")
        return self._bus

    @property
    def registry(self) -> Registry:
        """The running registry session (for operations and tests)."""
        if self._registry is None:
            raise RuntimeError("the scheduler is not running")
        return self._registry

    def add_job(self, job: object, name: str | None = None, **config: Any) -> JobConfig:
        """Register ``job`` (an ``async def``, a ``DataflowJob``, a ``ScriptJob`` or an object with
        async ``fetch_data``/``process_data``) with ``JobConfig`` fields as keywords."""
        if self._state is not RunState.STOPPED:
            raise RuntimeError("add jobs before the scheduler starts")
        if name is None:
            name = getattr(job, "__name__", None) or type(job).__name__
        if "name" in config:
            raise ConfigError("name", config["name"], "pass the name as the 'name' argument")
        cfg = config.pop("config", None)
        if cfg is not None:
            if not isinstance(cfg, JobConfig) or config:
                raise ConfigError("config", cfg, "pass either a JobConfig or keyword fields")
            job_config = cfg
        else:
            job_config = JobConfig(name=name, **config)
        if job_config.name in self._jobs:
            raise ConfigError("name", job_config.name, "a job with this name is already registered")
        job_config.check_fires()
        check_dependencies({n: s.config for n, s in self._jobs.items()}, job_config)
        self._jobs[job_config.name] = _JobSpec(job_config, make_item_runner(job))
        return job_config

    def job(self, name: str | None = None, **config: Any) -> Callable[[J], J]:
        """Decorator form of ``add_job``: ``@scheduler.job(cron=..., sharding_total_count=...)``."""

        def register(job: J) -> J:
            self.add_job(job, name, **config)
            return job

        return register

    # -- running --

    async def run(
        self,
        *,
        handle_signals: bool | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until ``stop()``, a stop signal or cancellation; running items get
        ``settings.shutdown_grace_period`` seconds to finish before they are cancelled.

        Signals: the first SIGTERM/SIGINT stops gracefully (``run()`` then returns normally),
        a second one cancels running items at once (``stop(force=True)``). By default
        (``handle_signals=None``) they are handled when ``run()`` runs in the main thread on
        asyncio and no one else handles them (``asyncio.run``/``anyio.run``'s Ctrl-C handler is
        taken over); ``False`` never touches signals (hosts that own them, e.g. uvicorn),
        ``True`` takes them over whatever was there. Previous handlers are restored on return.

        ``await task_group.start(scheduler.run)`` returns once every job is registered and
        running (and raises if starting failed)."""
        if self._state is not RunState.STOPPED:
            raise RuntimeError("the scheduler is already running")
        # Before any await, so that a signal is never caught by a default handler once we run.
        with (
            handling_signals(self._on_signal, force=bool(handle_signals))
            if handle_signals is not False
            else nullcontext()
        ):
            await self._run(task_status)

    async def _run(self, task_status: TaskStatus[None]) -> None:
        self._set_state(RunState.STARTING)
        self._error = None
        self._signalled = False
        self._forced = False
        self._stop_event = anyio.Event()
        done = anyio.Event()
        core = anyio.CancelScope(shield=True)

        async def body() -> None:
            with core:
                try:
                    await self._run_core()
                except Exception as exc:
                    self._error = self._error or _unwrap(exc)
                finally:
                    self._set_state(RunState.STOPPING)
                    done.set()

        try:
            async with _single_errors(anyio.create_task_group()) as tg:
                tg.start_soon(body)
                try:
                    if await self._wait_started():
                        task_status.started()
                    await done.wait()
                except anyio.get_cancelled_exc_class():
                    self.stop()
                    with anyio.move_on_after(self.settings.shutdown_grace_period + 10, shield=True):
                        await done.wait()
                    core.cancel()
                    if self._error is None:
                        raise
                    # A job's "raise" met the cancellation (it failed while stopping): its
                    # error wins, as a task group child's does, rather than vanish.
                    raise self._error from None
        finally:
            self._set_state(RunState.STOPPED)
        if self._error is not None:
            raise self._error

    async def _run_core(self) -> None:
        assert self._stop_event is not None
        async with AsyncExitStack() as stack:
            registry = create_registry(self.registry_url)
            await registry.start(stack)
            self._registry = registry
            for observer in self.observers:
                listener = _session_forwarder(observer)
                registry.add_session_listener(listener)
                notify_observers([observer], "session_state_changed", registry.session_state.value)
            stack.callback(setattr, self, "_registry", None)
            bus = TraceBus(
                self._sinks,
                grace_period=self.settings.shutdown_grace_period,
                journal_path=self.settings.trace_journal_path,
            )
            await bus.start(stack)
            self._bus = bus
            stack.callback(setattr, self, "_bus", None)
            timer = Timer()  # every job's cron fires from this one task
            stack.callback(self._runners.clear)  # also when a job failed
            async with anyio.create_task_group() as guards:
                self.loop_watchdog = self._watchdog(registry)
                await guards.start(self.loop_watchdog.run)
                await guards.start(timer.run)
                # The running marks of all jobs' fires of a tick: one multi-op, not one each.
                await guards.start(TransactionBatch(registry).run)
                if self.registry_url.scheme == "zookeeper":
                    detector = PauseDetector(
                        self.registry_url.session_timeout * 2 / 3,
                        lambda gap: registry.abandon_session(f"process paused for {gap:.1f}s"),
                    )
                    await guards.start(detector.run)
                # One view of the namespace for every job (ZooKeeper < 3.6: a view per job).
                await SharedView(registry, f"/{self.registry_url.namespace}").start(guards)
                # Each job's runner in a plain task of its own (a task group's per-task handle
                # was 3.5 KiB per job); a runner that fails stops the scheduler.
                jobs = OwnedTasks(self._stop_event.set)
                try:
                    # Registering a job is a few dozen registry round trips: do many at once.
                    limiter = anyio.CapacityLimiter(_CONCURRENT_STARTS)
                    freezer = _Freezer()
                    stack.callback(freezer.undo)

                    async def start(spec: _JobSpec) -> None:
                        async with limiter:
                            freezer.starting_one()
                            runner = self._make_runner(spec, registry, bus, timer)
                            await jobs.start(runner.run)
                            self._runners[spec.config.name] = runner

                    async with anyio.create_task_group() as starting:
                        for spec in self._jobs.values():
                            starting.start_soon(start, spec)
                    self._set_state(RunState.STARTED)
                    guards.start_soon(self._missed_fire_watch().run)
                    retention = self._retention(registry)
                    if retention is not None:
                        guards.start_soon(retention.run)
                    freezer.freeze()
                    log.info(
                        "instance %s started with %d job(s) on %s",
                        self.instance_id,
                        len(self._runners),
                        self.registry_url,
                        extra={"instance": self.instance_id},
                    )
                    await self._stop_event.wait()
                    self._log_stopping()
                    for runner in self._runners.values():
                        runner.request_stop()
                        if self._forced:
                            runner.cancel_running()
                    # No deadline of its own: each runner bounds its stop (deregistration 5 s,
                    # the grace period, then _CANCELLED_WAIT for fires that ignore cancellation).
                    await jobs.wait(math.inf)
                finally:
                    if jobs.tasks:  # cancelled from outside, or a start failed
                        jobs.cancel()
                        with anyio.CancelScope(shield=True):
                            await jobs.wait(math.inf)
                if jobs.error is not None:
                    raise jobs.error
                guards.cancel_scope.cancel()
        log.info("instance %s stopped", self.instance_id, extra={"instance": self.instance_id})

    def _log_stopping(self) -> None:
        running = {n: sorted(r.executor.active) for n, r in self._runners.items()}
        running = {n: items for n, items in running.items() if items}
        count = sum(map(len, running.values()))
        if not count:
            log.info(
                "instance %s stopping: nothing running",
                self.instance_id,
                extra={"instance": self.instance_id},
            )
            return
        log.info(
            "instance %s stopping: waiting up to %gs for %d running item(s): %s",
            self.instance_id,
            0 if self._forced else self.settings.shutdown_grace_period,
            count,
            "; ".join(f"{n} {items}" for n, items in sorted(running.items())),
            extra={"instance": self.instance_id, "running_items": running},
        )

    def _missed_fire_watch(self) -> MissedFireWatch:
        return MissedFireWatch(
            self._runners,
            self.observers,
            tolerance=self.settings.missed_fire_tolerance,
            active=lambda: self._state is RunState.STARTED,
        )

    def _retention(self, registry: Registry) -> TraceRetention | None:
        days, url = self.settings.trace_retention_days, self.settings.tracing_url
        if days is None or url is None:
            return None
        secret = url.get_secret_value()
        if parse_tracing_url(secret).scheme not in ("postgresql", "sqlite"):
            return None  # nothing stored to purge (memory://, log://)
        return TraceRetention(
            registry, self.registry_url.namespace, self.instance_id, store_opener(secret), days=days
        )

    def _watchdog(self, registry: Registry) -> LoopWatchdog:
        limit = None
        if self.registry_url.scheme == "zookeeper":
            timeout = self.registry_url.session_timeout
            negotiated = getattr(registry, "negotiated_timeout", None)
            if isinstance(negotiated, float | int) and negotiated > 0:
                timeout = min(timeout, negotiated)
            limit = safe_stall_limit(timeout)
        return LoopWatchdog(
            limit=limit,
            on_limit=partial(self._loop_stalled, limit=limit),
            warn_after=self.settings.loop_stall_warning or None,
        )

    def _loop_stalled(self, stalled: float, stack: str, *, limit: float | None) -> None:
        """Called by the watchdog thread: the session may expire before the loop runs again."""
        why = (
            f"event loop blocked for {stalled:.1f}s, past the safe limit of {limit:.1f}s: "
            "the registry session may expire and another instance take this process's items "
            "over while it is still inside one"
        )
        if self.settings.loop_stall_action == "warn":
            log.critical(
                "%s; loop_stall_action='warn': carrying on (UNSAFE). Blocking code:\n%s",
                why,
                stack,
            )
            return
        log.critical(
            "%s; exiting now (status %d) so that no item runs twice. Blocking code:\n%s",
            why,
            STALL_EXIT_STATUS,
            stack,
        )
        bus = self._bus
        if bus is not None:
            try:
                saved = bus.save_before_exit()
                log.critical("saved %d trace event(s) to the journal before exiting", saved)
            except Exception:  # the process ends either way
                log.exception("saving trace events before exiting failed")
        _flush_logs()
        os._exit(STALL_EXIT_STATUS)

    def _make_runner(
        self, spec: _JobSpec, registry: Registry, bus: TraceBus, timer: Timer
    ) -> JobRunner:
        runner = JobRunner(
            config=spec.config,
            run_item=spec.run_item,
            registry=registry,
            namespace=self.registry_url.namespace,
            identity=self.identity,
            post=bus.post if self._sinks else None,
            fatal=self._fatal,
            grace_period=self.settings.shutdown_grace_period,
            reshard_timeout=self.settings.reshard_wait_timeout,
            observers=self.observers,
            timer=timer,
        )
        if spec.config.after or spec.config.name in self._upstreams():
            attach_dependents(runner, registry, self.registry_url.namespace, self.jobs)
        return runner

    def _upstreams(self) -> frozenset[str]:
        """Jobs others depend on (scanning ``self.jobs`` per runner was quadratic at start)."""
        key = len(self._jobs)
        if self._upstreams_of[0] != key:
            names = frozenset(n for s in self._jobs.values() for n in s.config.after)
            self._upstreams_of = (key, names)
        return self._upstreams_of[1]

    def _fatal(self, exc: BaseException) -> None:
        """An ``error_handler="raise"`` job failed: stop, and make ``run()`` raise ``exc``."""
        if self._error is None:
            self._error = exc
        self.stop()

    def stop(self, *, force: bool = False) -> None:
        """Stop triggering, let running items finish within the grace period, then return;
        with ``force`` running items are cancelled at once (the trace is still flushed)."""
        if self._stop_event is not None:
            self._stop_event.set()
        if self._state is RunState.STARTED:
            self._set_state(RunState.STOPPING)
        if force and not self._forced:
            self._forced = True
            for runner in list(self._runners.values()):
                runner.cancel_running()

    @property
    def forced_stop(self) -> bool:
        """True if the last run was stopped with ``force`` (e.g. by a second signal)."""
        return self._forced

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self._signalled:
            self._signalled = True
            log.warning("%s: stopping gracefully (again to cancel running items)", sig.name)
            self.stop()
        elif not self._forced:
            log.warning("%s again: cancelling running items", sig.name)
            self.stop(force=True)

    async def wait_started(self) -> None:
        """Wait until every job is registered and its loops run (raises if start failed)."""
        if not await self._wait_started():
            raise self._error or RuntimeError("the scheduler stopped before it started")

    async def _wait_started(self) -> bool:
        """Wait until the scheduler started (True) or ended without starting (False)."""
        if self._stop_event is None:
            raise RuntimeError("the scheduler is not running")
        while self._state is RunState.STARTING and self._state_changed is not None:
            await self._state_changed.wait()
        return self._error is None

    async def trigger(self, name: str) -> None:
        """Run job ``name`` once now on every live instance (a one-off job's only way to run)."""
        runner = self._runners.get(name)
        if runner is None:
            if name in self._jobs:
                raise RuntimeError("the scheduler is not running")
            raise JobNotFoundError(name)
        await runner.coordinator.request_trigger()

    async def __aenter__(self) -> Self:
        async with AsyncExitStack() as stack:
            tg = await stack.enter_async_context(_single_errors(anyio.create_task_group()))
            await tg.start(partial(self.run, handle_signals=False))
            self._exit_stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        stack, self._exit_stack = self._exit_stack, None
        if stack is not None:
            await stack.__aexit__(exc_type, exc, tb)


@asynccontextmanager
async def _single_errors(group: anyio.abc.TaskGroup) -> AsyncIterator[anyio.abc.TaskGroup]:
    """``group``, raising the one error of a single-exception group as itself."""
    try:
        async with group:
            yield group
    except BaseExceptionGroup as eg:
        if len(eg.exceptions) == 1:
            raise eg.exceptions[0] from None
        raise


class _Freezer:
    """Moves what the started jobs keep for the scheduler's lifetime (runners, views, configs:
    hundreds of objects per job) out of the garbage collector's sight (``gc.freeze``), every
    ``_FREEZE_EVERY`` jobs while starting and once all have: its full collections then stop
    sweeping them again and again (at 1000 jobs that halved the collector's time per fire; a
    start of 2000 jobs went from over 60 s to 5 s). Does nothing if something else in the
    process froze objects first (``undo`` cannot tell theirs from ours)."""

    def __init__(self) -> None:
        self._ours = gc.get_freeze_count() == 0
        self._starting = 0

    def starting_one(self) -> None:
        self._starting += 1
        if self._starting % _FREEZE_EVERY == 0:
            self.freeze()

    def freeze(self) -> None:
        if self._ours:
            gc.collect()  # the unfrozen objects only: cheap after the first time
            gc.freeze()

    def undo(self) -> None:
        if self._ours:
            gc.unfreeze()


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers + log.handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    with contextlib.suppress(Exception):
        sys.stderr.flush()
