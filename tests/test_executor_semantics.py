"""The executor's contract with user code: error-handler semantics (ElasticJob's), listeners
around every run, hooks that cannot break jobs, BaseExceptions from jobs, return values."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from aioelastic import (
    DistributedOnceListener,
    ExecutionSource,
    JobListener,
    Observer,
    Scheduler,
    Settings,
    ShardingContext,
    ShardingContexts,
    TimeDiffError,
    TraceEvent,
)
from aioelastic._layout import JobPaths
from aioelastic.registry import MemoryRegistry, MemoryStore, SessionEvent, SessionState
from tests.harness.helpers import CaptureSink, completions, eventually, executions

pytestmark = pytest.mark.anyio


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()


@pytest.fixture
def make_scheduler(sink: CaptureSink, request: pytest.FixtureRequest) -> Callable[..., Scheduler]:
    store = f"semantics-{uuid.uuid4().hex[:12]}"
    MemoryStore.reset(store)

    def make(observers: tuple[Observer, ...] = (), **settings: Any) -> Scheduler:
        s = Settings(registry_url=f"memory://{store}/ns", **settings)
        return Scheduler(settings=s, sinks=[sink], observers=observers)

    return make


def skew_clock(scheduler: Scheduler, job: str) -> None:
    scheduler._runners[job].coordinator.clock = lambda: time.time() + 60


async def run_until_fatal(
    scheduler: Scheduler,
    job: str,
    prepare: Callable[[], None],
    error: type[BaseException],
    match: str,
) -> None:
    """Run ``scheduler``, trigger ``job`` once; ``run()`` must raise ``error`` (handler raise)."""

    async def trigger_when_ready() -> None:
        await eventually(lambda: scheduler._runners.get(job) is not None)
        prepare()
        await scheduler.trigger(job)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(trigger_when_ready)
            with pytest.raises(error, match=match):
                await scheduler.run()


async def trigger_until(scheduler: Scheduler, sink: CaptureSink, job: str, total: int) -> None:
    """Trigger ``job`` until ``total`` item runs completed (after a new session the instance
    node is back only once the job re-registered it: a trigger before that reaches nobody)."""

    def done(events: list[TraceEvent]) -> bool:
        return len(completions(events, job)) >= total

    with anyio.fail_after(20):
        while not done(sink.events):
            await scheduler.trigger(job)
            with anyio.move_on_after(2):  # the trigger reached nobody: again
                await sink.wait_for(done, timeout=math.inf)


class FailingBefore(JobListener):
    def __init__(self) -> None:
        self.after = 0

    async def before_job_executed(self, contexts: ShardingContexts) -> None:
        raise RuntimeError("before-listener broke")

    async def after_job_executed(self, contexts: ShardingContexts) -> None:
        self.after += 1


class Counting(JobListener):
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...], str]] = []

    async def before_job_executed(self, contexts: ShardingContexts) -> None:
        source = contexts.execution_source.value
        self.calls.append(("before", tuple(contexts.items), source))

    async def after_job_executed(self, contexts: ShardingContexts) -> None:
        self.calls.append(("after", tuple(contexts.items), contexts.execution_source.value))


# -- 1. error-handler semantics (ElasticJob's ElasticJobExecutorTest) --


async def test_raise_time_diff_failure_aborts_the_fire_before_any_item(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    ran: list[int] = []

    @scheduler.job(max_time_diff_seconds=5, error_handler="raise", sharding_total_count=2)
    async def clocked(ctx: ShardingContext) -> None:
        ran.append(ctx.sharding_item)

    await run_until_fatal(
        scheduler,
        "clocked",
        lambda: skew_clock(scheduler, "clocked"),
        TimeDiffError,
        "max_time_diff_seconds=5",
    )
    assert ran == [] and executions(sink.events, "clocked") == []


async def test_log_time_diff_failure_is_logged_and_the_fire_goes_on(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = make_scheduler()

    @scheduler.job(max_time_diff_seconds=5, error_handler="log", sharding_total_count=2)
    async def clocked(ctx: ShardingContext) -> None: ...

    async with scheduler:
        skew_clock(scheduler, "clocked")
        await scheduler.trigger("clocked")
        await sink.wait_for(lambda events: len(completions(events, "clocked")) == 2)
    assert all(e.is_success for e in completions(sink.events, "clocked"))
    logged = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and "TimeDiffError" in r.msg % r.args
    ]
    assert len(logged) == 1


async def test_raise_before_listener_failure_aborts_the_fire_before_any_item(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    ran: list[int] = []
    later = Counting()

    @scheduler.job(error_handler="raise", listeners=[FailingBefore(), later])
    async def guarded(ctx: ShardingContext) -> None:
        ran.append(ctx.sharding_item)

    await run_until_fatal(scheduler, "guarded", lambda: None, RuntimeError, "before-listener broke")
    assert ran == [] and executions(sink.events, "guarded") == []
    assert later.calls == []  # the fire stopped at the first raising listener


@pytest.mark.parametrize("handler", ["log", "ignore", "callable"])
async def test_other_handlers_before_listener_failure_goes_on(
    make_scheduler: Callable[..., Scheduler],
    sink: CaptureSink,
    caplog: pytest.LogCaptureFixture,
    handler: str,
) -> None:
    scheduler = make_scheduler()
    seen: list[BaseException] = []
    failing, later = FailingBefore(), Counting()

    @scheduler.job(
        error_handler=(lambda job, exc: seen.append(exc)) if handler == "callable" else handler,
        listeners=[failing, later],
    )
    async def guarded(ctx: ShardingContext) -> None: ...

    async with scheduler:
        for n in (1, 2):  # the schedule goes on
            await scheduler.trigger("guarded")
            await sink.wait_for(lambda events: len(completions(events, "guarded")) == n)  # noqa: B023 - awaited in this iteration
            await eventually(lambda: failing.after == n)  # noqa: B023 - awaited in this iteration
    assert all(e.is_success for e in completions(sink.events, "guarded"))
    assert [c[0] for c in later.calls] == ["before", "after"] * 2  # the others still run
    logged = [r for r in caplog.records if "before-listener broke" in r.getMessage()]
    if handler == "log":
        assert len(logged) == 2
    elif handler == "callable":
        assert [str(e) for e in seen] == ["before-listener broke"] * 2
    else:
        assert logged == []


# -- 2. out-of-fire runs go through the listeners --


async def test_misfire_rerun_outside_a_fire_goes_through_the_listeners(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    listener = Counting()

    @scheduler.job(sharding_total_count=2, listeners=[listener])
    async def late(ctx: ShardingContext) -> None: ...

    async with scheduler:
        coord = scheduler._runners["late"].coordinator
        await eventually(lambda: coord.local_items() == [0, 1])
        await scheduler.registry.create(coord.paths.item_misfire(1))
        await eventually(lambda: len(listener.calls) == 2)
        await sink.wait_for(lambda events: len(completions(events, "late")) == 1)
    assert listener.calls == [("before", (1,), "MISFIRE"), ("after", (1,), "MISFIRE")]
    assert completions(sink.events, "late")[0].execution_source is ExecutionSource.MISFIRE


def ghost_intent(job: str, item: int, **run: object) -> bytes:
    """A failover intent left by a dead instance ``ghost`` (a session that no longer exists)."""
    return json.dumps({"instance": "ghost", "session": 987654321, **run}).encode()


async def test_failover_takeover_goes_through_the_listeners_and_completes_the_dead_run(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    listener = Counting()
    once_hooks: list[str] = []

    class Once(DistributedOnceListener):
        async def before_all_started(self, contexts: ShardingContexts) -> None:
            once_hooks.append("started")

        async def after_all_completed(self, contexts: ShardingContexts) -> None:
            once_hooks.append("completed")

    ran: list[tuple[int, str]] = []

    @scheduler.job(
        sharding_total_count=2,
        failover=True,
        listeners=[listener, Once(started_timeout=60, completed_timeout=60)],
    )
    async def taken(ctx: ShardingContext) -> None:
        ran.append((ctx.sharding_item, ctx.execution_source.value))

    start = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    dead_run = {
        "task_id": "taken@-@1@-@READY@-@ghost@-@abc",
        "id": "dead-run-id",
        "start_time": start.isoformat(),
        "hostname": "ghost-host",
        "ip": "10.0.0.9",
        "source": "NORMAL_TRIGGER",
    }
    async with scheduler:
        coord = scheduler._runners["taken"].coordinator
        await eventually(lambda: coord.local_items() == [0, 1])
        with anyio.fail_after(10):  # the distributed-once listener must not make it wait 60 s
            await scheduler.registry.create(
                coord.paths.failover_item(1),
                ghost_intent("taken", 1, **dead_run),
                make_parents=True,
            )
            await eventually(lambda: len(listener.calls) == 2, timeout=10)
            await sink.wait_for(lambda events: len(completions(events, "taken")) == 2)
    assert ran == [(1, "FAILOVER")]  # once, no double run
    assert listener.calls == [("before", (1,), "FAILOVER"), ("after", (1,), "FAILOVER")]
    assert once_hooks == []  # cluster-wide hooks are not part of a takeover
    dead = [e for e in completions(sink.events, "taken") if e.id == "dead-run-id"]
    assert len(dead) == 1
    row = dead[0]
    assert (row.task_id, row.hostname, row.ip, row.sharding_item) == (
        dead_run["task_id"],
        "ghost-host",
        "10.0.0.9",
        1,
    )
    assert row.start_time == start and row.execution_source is ExecutionSource.NORMAL_TRIGGER
    assert row.is_success is False and row.complete_time is not None
    assert row.failure_cause is not None
    assert "instance ghost lost its registry session" in row.failure_cause
    assert f"taken over by {scheduler.instance_id}" in row.failure_cause
    takeover = next(e for e in completions(sink.events, "taken") if e.id != "dead-run-id")
    assert takeover.task_id in row.failure_cause and takeover.is_success


async def test_takeover_of_an_old_intent_without_run_fields_still_runs(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()

    @scheduler.job(sharding_total_count=1, failover=True)
    async def legacy(ctx: ShardingContext) -> None: ...

    async with scheduler:
        coord = scheduler._runners["legacy"].coordinator
        await eventually(lambda: coord.local_items() == [0])
        await scheduler.registry.create(
            coord.paths.failover_item(0), ghost_intent("legacy", 0), make_parents=True
        )
        await sink.wait_for(lambda events: len(completions(events, "legacy")) == 1)
    assert [e.execution_source for e in executions(sink.events, "legacy")] == [
        ExecutionSource.FAILOVER
    ] * 2


async def test_failover_intent_carries_the_run_and_stays_readable(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    gate = anyio.Event()
    intents: list[dict[str, Any]] = []

    @scheduler.job(sharding_total_count=1, failover=True)
    async def marked(ctx: ShardingContext) -> None:
        paths = JobPaths("ns", "marked")
        raw, _ = await scheduler.registry.get(paths.failover_item(0))
        intents.append(json.loads(raw))
        gate.set()

    async with scheduler:
        await scheduler.trigger("marked")
        await gate.wait()
        await sink.wait_for(lambda events: len(completions(events, "marked")) == 1)
    start = executions(sink.events, "marked")[0]
    (intent,) = intents
    assert intent["instance"] == scheduler.instance_id and isinstance(intent["session"], int)
    assert intent["id"] == start.id and intent["task_id"] == start.task_id
    assert datetime.fromisoformat(intent["start_time"]) == start.start_time
    assert (intent["hostname"], intent["ip"], intent["source"]) == (
        start.hostname,
        start.ip,
        "NORMAL_TRIGGER",
    )
    assert len(json.dumps(intent)) < 1024


# -- 3. hooks cannot break jobs --


class Exploding(Observer):
    def __init__(self) -> None:
        self.calls = 0

    def fire_started(self, job: str, scheduled: datetime | None, started: datetime) -> None:
        self.calls += 1
        raise RuntimeError("observer boom")

    def reshard_committed(self, job: str, instances: int, items: int) -> None:
        raise RuntimeError("observer boom")

    def failover_claimed(self, job: str, items: Any) -> None:
        raise RuntimeError("observer boom")

    def session_state_changed(self, state: str) -> None:
        raise RuntimeError("observer boom")


class Recording(Observer):
    def __init__(self) -> None:
        self.fires = 0
        self.states: list[str] = []

    def fire_started(self, job: str, scheduled: datetime | None, started: datetime) -> None:
        self.fires += 1

    def session_state_changed(self, state: str) -> None:
        self.states.append(state)


def boom_records(caplog: pytest.LogCaptureFixture, hook: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "aioelastic.observer" and f"Exploding.{hook}" in r.getMessage()
    ]


async def test_raising_observer_is_logged_and_jobs_keep_firing(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = Exploding(), Recording()
    scheduler = make_scheduler(observers=(bad, good))

    @scheduler.job(sharding_total_count=2, failover=True)
    async def observed(ctx: ShardingContext) -> None: ...

    async with scheduler:
        for n in (1, 2, 3):
            await scheduler.trigger("observed")
            await sink.wait_for(lambda events: len(completions(events, "observed")) == 2 * n)  # noqa: B023 - awaited in this iteration
        coord = scheduler._runners["observed"].coordinator
        await scheduler.registry.create(
            coord.paths.failover_item(0), ghost_intent("observed", 0), make_parents=True
        )
        await sink.wait_for(lambda events: len(completions(events, "observed")) == 7)
    assert all(e.is_success for e in completions(sink.events, "observed"))
    assert good.fires == 3 and bad.calls == 3  # the good observer still hears every fire
    assert len(boom_records(caplog, "fire_started")) == 3  # once per call, with its name
    assert len(boom_records(caplog, "reshard_committed")) >= 1
    assert len(boom_records(caplog, "failover_claimed")) == 1
    assert len(boom_records(caplog, "session_state_changed")) >= 1


async def test_raising_session_listener_on_memory_registry_is_isolated(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = Exploding(), Recording()
    scheduler = make_scheduler(observers=(bad, good))

    @scheduler.job(sharding_total_count=1)
    async def survivor(ctx: ShardingContext) -> None: ...

    def broken_listener(event: SessionEvent) -> None:
        raise RuntimeError("listener boom")

    async with scheduler:
        registry = scheduler.registry
        assert isinstance(registry, MemoryRegistry)
        registry.add_session_listener(broken_listener)
        registry.expire_session()  # LOST, then a new session: CONNECTED
        await eventually(lambda: good.states[-2:] == ["LOST", "CONNECTED"])
        logged = [r.getMessage() for r in caplog.records if "broken_listener" in r.getMessage()]
        # LOST and CONNECTED, one line each, naming the listener
        assert [m.split(" raised on ")[1] for m in logged] == [
            "LOST; ignored",
            "CONNECTED; ignored",
        ]
        await trigger_until(scheduler, sink, "survivor", 1)


async def test_raising_trace_sink_does_not_fail_fires(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    class BrokenSink:
        name = "broken"

        async def write(self, batch: Any) -> None:
            raise RuntimeError("sink boom")

    store = "semantics-broken-sink"
    MemoryStore.reset(store)
    scheduler = Scheduler(
        settings=Settings(registry_url=f"memory://{store}/ns", shutdown_grace_period=0.5),
        sinks=[BrokenSink(), sink],
    )
    ran = 0

    @scheduler.job(sharding_total_count=1)
    async def sunk(ctx: ShardingContext) -> None:
        nonlocal ran
        ran += 1

    async with scheduler:
        for n in (1, 2):
            await scheduler.trigger("sunk")
            await eventually(lambda: ran == n)  # noqa: B023 - awaited in this iteration
        await sink.wait_for(lambda events: len(completions(events, "sunk")) == 2)


# -- 4. BaseException from job code --


@pytest.mark.parametrize(
    "exc",
    [SystemExit(3), KeyboardInterrupt(), GeneratorExit(), asyncio.CancelledError("job's own")],
    ids=lambda e: type(e).__name__,
)
async def test_job_base_exception_fails_its_item_only(
    make_scheduler: Callable[..., Scheduler],
    sink: CaptureSink,
    caplog: pytest.LogCaptureFixture,
    exc: BaseException,
) -> None:
    scheduler = make_scheduler()
    sibling_done = 0

    @scheduler.job(sharding_total_count=2)
    async def hostile(ctx: ShardingContext) -> None:
        nonlocal sibling_done
        if ctx.sharding_item == 0:
            raise exc
        await anyio.sleep(0.3)  # still running when item 0 raises
        sibling_done += 1

    @scheduler.job(sharding_total_count=1)
    async def bystander(ctx: ShardingContext) -> None: ...

    async with scheduler:
        for n in (1, 2):  # the schedule goes on
            await scheduler.trigger("hostile")
            await scheduler.trigger("bystander")
            await sink.wait_for(lambda events: len(completions(events, "hostile")) == 2 * n)  # noqa: B023 - awaited in this iteration
            await sink.wait_for(lambda events: len(completions(events, "bystander")) == n)  # noqa: B023 - awaited in this iteration
    runs = completions(sink.events, "hostile")
    failed = [e for e in runs if not e.is_success]
    assert sibling_done == 2
    assert [e.sharding_item for e in failed] == [0, 0]
    assert all(type(exc).__name__ in (e.failure_cause or "") for e in failed)
    assert all(e.is_success for e in completions(sink.events, "bystander"))
    assert [r for r in caplog.records if r.levelno == logging.ERROR and "hostile" in r.getMessage()]


async def test_real_cancellation_is_still_honoured_when_a_job_reraises_its_own(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    """Shutdown past the grace period cancels the item, even if the job turns the cancellation
    into a fresh CancelledError of its own: the run is cancelled, not "failed and went on"."""
    scheduler = make_scheduler(shutdown_grace_period=0.2)
    started = anyio.Event()
    after_cancel: list[str] = []

    @scheduler.job(sharding_total_count=1)
    async def stubborn(ctx: ShardingContext) -> None:
        started.set()
        try:
            await anyio.sleep(60)
        except asyncio.CancelledError:
            raise asyncio.CancelledError("mine now") from None
        after_cancel.append("went on")

    with anyio.fail_after(10):
        async with scheduler:
            await scheduler.trigger("stubborn")
            await started.wait()
    (done,) = completions(sink.events, "stubborn")
    assert not done.is_success and "shutdown grace period over" in (done.failure_cause or "")
    assert after_cancel == []


async def test_session_loss_fencing_is_still_honoured_and_keeps_the_failover_intent(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    started = anyio.Event()
    sources: list[str] = []

    @scheduler.job(sharding_total_count=1, failover=True)
    async def fenced(ctx: ShardingContext) -> None:
        sources.append(ctx.execution_source.value)
        started.set()
        if ctx.execution_source is ExecutionSource.NORMAL_TRIGGER:
            await anyio.sleep(60)

    async with scheduler:
        await scheduler.trigger("fenced")
        await started.wait()
        registry = scheduler.registry
        assert isinstance(registry, MemoryRegistry)
        registry.expire_session()  # fenced; a new session at once
        # The cut run's intent survives the fence, so the item is failed over (to us).
        await sink.wait_for(lambda events: len(completions(events, "fenced")) == 3)
    cut = [e for e in completions(sink.events, "fenced") if "READY" in e.task_id]
    assert {e.is_success for e in cut} == {False}
    assert any("registry session lost" in (e.failure_cause or "") for e in cut)
    assert sources == ["NORMAL_TRIGGER", "FAILOVER"]


async def test_a_returned_value_is_ignored_and_logged_once(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink, caplog: pytest.LogCaptureFixture
) -> None:
    scheduler = make_scheduler()

    async def helper() -> int:
        return 1

    @scheduler.job(sharding_total_count=1)
    async def returner(ctx: ShardingContext) -> object:
        return helper()  # a mistake: not awaited

    with _no_unawaited_warning():
        async with scheduler:
            for n in (1, 2):
                await scheduler.trigger("returner")
                await sink.wait_for(lambda events: len(completions(events, "returner")) == n)  # noqa: B023 - awaited in this iteration
    assert all(e.is_success for e in completions(sink.events, "returner"))
    warned = [r for r in caplog.records if "returned" in r.getMessage()]
    assert len(warned) == 1 and "un-awaited coroutine" in warned[0].getMessage()
    assert "returner" in warned[0].getMessage()


class _no_unawaited_warning:
    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self._seen = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: object) -> None:
        import gc

        gc.collect()
        self._catch.__exit__(None, None, None)
        assert not [w for w in self._seen if "never awaited" in str(w.message)]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_raising_error_handler_is_logged_and_the_job_keeps_its_schedule(
    make_scheduler: Callable[..., Scheduler],
    sink: CaptureSink,
    caplog: pytest.LogCaptureFixture,
    kind: str,
) -> None:
    def sync_handler(job: str, exc: BaseException) -> None:
        raise RuntimeError("handler boom")

    async def async_handler(job: str, exc: BaseException) -> None:
        await anyio.sleep(0)
        raise RuntimeError("handler boom")

    scheduler = make_scheduler()

    @scheduler.job(
        sharding_total_count=1,
        error_handler=sync_handler if kind == "sync" else async_handler,
        listeners=[FailingBefore()],
    )
    async def failing(ctx: ShardingContext) -> None:
        raise ValueError("job boom")

    async with scheduler:
        for n in (1, 2):
            await scheduler.trigger("failing")
            await sink.wait_for(lambda events: len(completions(events, "failing")) == n)  # noqa: B023 - awaited in this iteration
    logged = [r for r in caplog.records if "error handler" in r.getMessage()]
    # per fire: the before-listener's error and the item's error reach the raising handler
    assert len(logged) == 4
    assert all(f"{kind}_handler" in r.getMessage() for r in logged)


@pytest.mark.zookeeper
async def test_zookeeper_session_state_and_listener_faults_are_isolated(
    zk_url: str, sink: CaptureSink, caplog: pytest.LogCaptureFixture
) -> None:
    """The same isolation on a real ZooKeeper: a raising observer and session listener, a
    session expired on the server; jobs keep firing and each error is logged with its name."""
    from aioelastic.registry import ZooKeeperRegistry
    from tests.harness.zookeeper import expire_session

    bad, good = Exploding(), Recording()
    scheduler = Scheduler(
        settings=Settings(registry_url=zk_url, shutdown_grace_period=1),
        sinks=[sink],
        observers=[bad, good],
    )

    @scheduler.job(sharding_total_count=2)
    async def zk_observed(ctx: ShardingContext) -> None: ...

    def broken_listener(event: SessionEvent) -> None:
        raise RuntimeError("listener boom")

    async with scheduler:
        registry = scheduler.registry
        assert isinstance(registry, ZooKeeperRegistry)
        registry.add_session_listener(broken_listener)
        await scheduler.trigger("zk_observed")
        await sink.wait_for(lambda events: len(completions(events, "zk_observed")) == 2, timeout=10)
        await expire_session(registry)
        await eventually(lambda: good.states[-1:] == ["CONNECTED"] and "LOST" in good.states, 15)
        await eventually(lambda: registry.session_state is SessionState.CONNECTED, 15)

        await trigger_until(scheduler, sink, "zk_observed", 4)
    assert good.fires >= 2 and bad.calls >= 2
    listener_lines = [r for r in caplog.records if "broken_listener" in r.getMessage()]
    assert {r.getMessage().rsplit(" on ", 1)[1].split(";")[0] for r in listener_lines} >= {
        "LOST",
        "CONNECTED",
    }
    assert len(boom_records(caplog, "session_state_changed")) >= 2
    assert len(boom_records(caplog, "fire_started")) == bad.calls


async def test_is_cancellation_tells_a_jobs_own_cancelled_error_from_a_real_cancel() -> None:
    from aioelastic._executor import is_cancellation

    own = asyncio.CancelledError("raised by job code")
    assert not is_cancellation(own)
    assert not is_cancellation(BaseExceptionGroup("g", [own]))
    assert not is_cancellation(SystemExit(1))
    seen: list[bool] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        try:
            await anyio.sleep(1)
        except asyncio.CancelledError as exc:
            seen += [is_cancellation(exc, scope), is_cancellation(exc)]
            seen.append(is_cancellation(BaseExceptionGroup("g", [exc, ValueError()])))
            raise
    assert seen == [True, True, True]


class _Blocking:
    """A job body that blocks until ``release`` is set, counting its runs and the most
    running at once (``job`` is the ``async def`` to register)."""

    def __init__(self) -> None:
        self.running = self.peak = self.runs = 0
        self.release = anyio.Event()

    async def job(self, ctx: ShardingContext) -> None:
        self.running += 1
        self.runs += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1


async def test_without_monitor_execution_a_busy_job_skips_its_cron_fires(sink: CaptureSink) -> None:
    """ElasticJob runs each job on a Quartz scheduler of one thread: with monitorExecution off
    (no running marks to misfire on) a fire that comes while the previous one still runs is
    dropped, so an item never runs twice at once on one instance. Ours too: the skipped fire
    leaves a status row saying so and is not reported as a missed fire."""
    MemoryStore.reset("unmonitored")
    missed: list[datetime] = []

    class Missed(Observer):
        def missed_fire(self, job: str, due: datetime, reason: str) -> None:
            missed.append(due)

    scheduler = Scheduler(
        settings=Settings(registry_url="memory://unmonitored/ns", shutdown_grace_period=5),
        sinks=[sink],
        observers=[Missed()],
    )
    slow = _Blocking()

    scheduler.add_job(slow.job, name="slow", cron="* * * * * ?", monitor_execution=False)
    skipped = "is still running on this instance; fire skipped"
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        await sink.wait_for(
            lambda events: sum(skipped in getattr(e, "message", "") for e in events) >= 2,
            timeout=15,
            what="two fires skipped while the first runs",
        )
        assert (slow.runs, slow.peak) == (1, 1)
        slow.release.set()
        await eventually(lambda: slow.runs >= 2, 15)  # the job's next fire after it ended runs
        scheduler.stop()
    assert slow.peak == 1
    assert not missed


async def test_without_monitor_execution_a_trigger_while_busy_runs_once_the_fire_ends(
    sink: CaptureSink,
) -> None:
    """An operator's trigger is not dropped while the job is busy (ElasticJob's Quartz queues
    it for the job's one thread): it runs once the fire in progress ends, never alongside it;
    triggers arriving meanwhile collapse into that one run."""
    MemoryStore.reset("unmonitored-trigger")
    scheduler = Scheduler(
        settings=Settings(registry_url="memory://unmonitored-trigger/ns", shutdown_grace_period=5),
        sinks=[sink],
    )
    slow = _Blocking()

    scheduler.add_job(slow.job, name="oneoff", monitor_execution=False)  # runs only when triggered
    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        runner = scheduler._runners["oneoff"]
        await scheduler.trigger("oneoff")
        await eventually(lambda: slow.runs == 1, 15)
        for _ in range(2):
            await scheduler.trigger("oneoff")
            await eventually(lambda: not runner.coordinator.has_trigger(), 15)  # consumed
        assert (slow.runs, slow.peak) == (1, 1)  # neither ran alongside the first
        slow.release.set()
        await eventually(lambda: slow.runs == 2 and runner.in_flight == 0, 15)
        # Nothing is left that could run it again: no trigger node, none queued.
        assert runner._queued is None and not runner.coordinator.has_trigger()
        scheduler.stop()
    assert (slow.runs, slow.peak) == (2, 1)


def _unmonitored_dependent(
    name: str, sink: CaptureSink, listeners: list[JobListener] | None = None
) -> tuple[Scheduler, _Blocking]:
    """A scheduler with ``extract`` and a dependent ``load`` without ``monitor_execution``
    (its body blocks, see ``_Blocking``)."""
    MemoryStore.reset(name)
    scheduler = Scheduler(
        settings=Settings(registry_url=f"memory://{name}/ns", shutdown_grace_period=5),
        sinks=[sink],
    )
    slow = _Blocking()

    @scheduler.job()
    async def extract(ctx: ShardingContext) -> None:
        pass

    scheduler.add_job(
        slow.job,
        name="load",
        after="extract",
        monitor_execution=False,
        listeners=listeners or [],
    )
    return scheduler, slow


async def test_without_monitor_execution_a_trigger_waits_for_a_dependent_run(
    sink: CaptureSink,
) -> None:
    """A dependent job's requested run is a fire of it like any other: without running marks,
    an operator's trigger arriving while it runs waits for it (it used to run alongside, the
    same item twice at once), and a second upstream fire's run waits too; none is lost."""
    scheduler, slow = _unmonitored_dependent("unmonitored-dependent", sink)
    async with scheduler:
        runner = scheduler._runners["load"]
        await scheduler.trigger("extract")
        await eventually(lambda: slow.runs == 1, 15, what="the dependent's run")
        await scheduler.trigger("load")
        await eventually(lambda: runner._queued is not None, 15, what="the trigger queued")
        await scheduler.trigger("extract")
        await sink.wait_for(lambda events: len(completions(events, "extract")) == 2)
        await anyio.sleep(1)  # the request loop looks again every 0.5 s: give it two looks
        assert (slow.runs, slow.peak) == (1, 1)
        slow.release.set()
        await eventually(lambda: slow.runs == 3, 15, what="the trigger's and the second run")
    assert slow.peak == 1


async def test_without_monitor_execution_a_dependent_run_waits_for_a_fire_in_progress(
    sink: CaptureSink,
) -> None:
    """The other way round: an upstream fire completing while the dependent's own fire (an
    operator's) is still in its template here, even before its items started (a listener
    still runs), does not start the requested run alongside; it runs once that fire ends."""
    entered, leave = anyio.Event(), anyio.Event()

    class Slow(JobListener):
        async def before_job_executed(self, contexts: ShardingContexts) -> None:
            if contexts.execution_source is ExecutionSource.NORMAL_TRIGGER and not (
                contexts.upstream_fire
            ):
                entered.set()
                await leave.wait()

    scheduler, slow = _unmonitored_dependent("unmonitored-dependent-2", sink, [Slow()])
    async with scheduler:
        await scheduler.trigger("load")
        with anyio.fail_after(15):
            await entered.wait()
        await scheduler.trigger("extract")
        await sink.wait_for(lambda events: len(completions(events, "extract")) == 1)
        await anyio.sleep(1)  # two looks of the request loop
        assert slow.runs == 0  # the requested run did not start during the listener
        leave.set()
        await eventually(lambda: slow.runs == 1, 15, what="the operator's fire")
        await anyio.sleep(1)
        assert slow.runs == 1  # nor while the fire's item runs
        slow.release.set()
        await eventually(lambda: slow.runs == 2, 15, what="the dependent's run after it")
    assert slow.peak == 1
