"""The embedded scheduler end to end: the execution template, job kinds, shutdown."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic import (
    ConfigError,
    DataflowJob,
    ExecutionSource,
    JobListener,
    JobNotFoundError,
    RunState,
    Scheduler,
    ScriptJob,
    Settings,
    ShardingContext,
    ShardingContexts,
    State,
)
from aioelastic._layout import JobPaths
from aioelastic.registry import MemoryStore
from tests.harness.helpers import CaptureSink, completions, eventually, executions, statuses

from .conftest import Backend

pytestmark = pytest.mark.anyio

MakeScheduler = Callable[..., Scheduler]


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()


@pytest.fixture
def make_scheduler(sink: CaptureSink, request: pytest.FixtureRequest) -> MakeScheduler:
    """Schedulers on the embedded registry, or on the test's ``backend`` if it takes one."""
    if "backend" in request.fixturenames:
        url = request.getfixturevalue("backend").url
    else:
        store = f"sched-{request.node.name}"
        MemoryStore.reset(store)
        url = f"memory://{store}/ns"

    def make(**settings: Any) -> Scheduler:
        return Scheduler(settings=Settings(registry_url=url, **settings), sinks=[sink])

    return make


def states(sink: CaptureSink, job: str) -> list[tuple[State, str]]:
    return [(e.state, e.message) for e in statuses(sink.events, job)]


async def test_success_events_in_order_and_context_fields(
    make_scheduler: MakeScheduler, sink: CaptureSink, backend: Backend
) -> None:
    scheduler = make_scheduler()
    seen: list[ShardingContext] = []

    @scheduler.job(
        sharding_total_count=3,
        sharding_item_parameters="0=Beijing,1=Shanghai,2=Guangzhou",
        job_parameter="x",
    )
    async def settle(ctx: ShardingContext) -> None:
        seen.append(ctx)

    async with scheduler:
        await scheduler.trigger("settle")
        await sink.wait_for(lambda events: len(statuses(events, "settle")) == 3)

    assert [s for s, _ in states(sink, "settle")] == [
        State.TASK_STAGING,
        State.TASK_RUNNING,
        State.TASK_FINISHED,
    ]
    assert states(sink, "settle")[0][1] == "Job 'settle' execute begin."
    assert sorted((c.sharding_item, c.sharding_parameter) for c in seen) == [
        (0, "Beijing"),
        (1, "Shanghai"),
        (2, "Guangzhou"),
    ]
    task_id = seen[0].task_id
    assert {c.task_id for c in seen} == {task_id}
    job, items, kind, _instance, _uid = [*task_id.split("@-@", 4)[:4], task_id.rsplit("@-@", 1)[1]]
    assert (job, items, kind) == ("settle", "0,1,2", "READY")
    assert all(c.job_parameter == "x" and c.sharding_total_count == 3 for c in seen)
    execs = executions(sink.events, "settle")
    assert len(execs) == 6  # a start and a completion per item, sharing the event id
    for item in range(3):
        start, done = [e for e in execs if e.sharding_item == item]
        assert start.id == done.id and not start.is_completion and done.is_success
        assert done.execution_source is ExecutionSource.NORMAL_TRIGGER


async def test_task_ids_are_unique_per_run(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    scheduler = make_scheduler()

    @scheduler.job()
    async def once(ctx: ShardingContext) -> None: ...

    async with scheduler:
        for n in range(1, 4):
            await scheduler.trigger("once")
            await sink.wait_for(lambda events: len(completions(events, "once")) == n)  # noqa: B023 - awaited in this iteration
    assert len({e.task_id for e in completions(sink.events, "once")}) == 3


async def test_failure_does_not_cancel_siblings(
    make_scheduler: MakeScheduler, sink: CaptureSink, backend: Backend
) -> None:
    scheduler = make_scheduler()
    handled: list[tuple[str, BaseException]] = []

    async def handler(job: str, exc: BaseException) -> None:
        handled.append((job, exc))

    @scheduler.job(sharding_total_count=3, error_handler=handler)
    async def flaky(ctx: ShardingContext) -> None:
        if ctx.sharding_item == 1:
            raise RuntimeError("boom on 1")
        await anyio.sleep(0.05)  # still running when item 1 fails

    async with scheduler:
        await scheduler.trigger("flaky")
        await sink.wait_for(lambda events: len(statuses(events, "flaky")) == 3)

    final_state, message = states(sink, "flaky")[-1]
    assert final_state is State.TASK_ERROR
    assert "1=RuntimeError: boom on 1" in message
    done = {e.sharding_item: e for e in completions(sink.events, "flaky")}
    assert done[0].is_success and done[2].is_success and not done[1].is_success
    assert "Traceback" in (done[1].failure_cause or "") and "boom on 1" in (
        done[1].failure_cause or ""
    )
    assert [(j, str(e)) for j, e in handled] == [("flaky", "boom on 1")]


async def test_empty_items(make_scheduler: MakeScheduler, sink: CaptureSink) -> None:
    scheduler = make_scheduler()

    @scheduler.job(sharding_total_count=1)
    async def idle(ctx: ShardingContext) -> None:
        raise AssertionError("no item should run")

    async with scheduler:
        paths = JobPaths("ns", "idle")
        await eventually(lambda: scheduler._runners["idle"].coordinator.owner(0) is not None)
        await scheduler.registry.create(paths.item_disabled(0))
        await eventually(lambda: scheduler._runners["idle"].coordinator.local_items() == [])
        await scheduler.trigger("idle")
        await sink.wait_for(lambda events: len(statuses(events, "idle")) == 2)
    assert states(sink, "idle") == [
        (State.TASK_STAGING, "Job 'idle' execute begin."),
        (State.TASK_FINISHED, "Sharding item for job 'idle' is empty."),
    ]


async def test_misfire_marks_and_reruns_once(
    make_scheduler: MakeScheduler, sink: CaptureSink, backend: Backend
) -> None:
    scheduler = make_scheduler()
    release = anyio.Event()
    runs: list[ExecutionSource] = []

    @scheduler.job(sharding_total_count=2)
    async def slow(ctx: ShardingContext) -> None:
        runs.append(ctx.execution_source)
        if len(runs) <= 2:
            await release.wait()

    async with scheduler:
        coord = scheduler._runners["slow"].coordinator
        await scheduler.trigger("slow")
        await eventually(lambda: len(runs) == 2)
        for n in range(1, 4):  # three fires while running collapse into one re-run
            await scheduler.trigger("slow")
            await eventually(
                lambda: sum("still running" in m for _, m in states(sink, "slow")) == n  # noqa: B023 - awaited in this iteration
            )
            assert coord.is_misfired(0) and coord.is_misfired(1)
        release.set()
        await eventually(lambda: len(runs) == 4)
        await sink.wait_for(lambda events: len(completions(events, "slow")) == 4)
        assert not coord.is_misfired(0) and not coord.is_misfired(1)

    assert runs == [ExecutionSource.NORMAL_TRIGGER] * 2 + [ExecutionSource.MISFIRE] * 2
    misfire_msgs = [m for s, m in states(sink, "slow") if "still running" in m]
    assert len(misfire_msgs) == 3
    assert misfire_msgs[0] == (
        "Previous job 'slow' - shardingItems '[0, 1]' is still running, "
        "misfired job will start after previous job completed."
    )
    sources = [e.execution_source for e in completions(sink.events, "slow")]
    assert sources.count(ExecutionSource.MISFIRE) == 2


async def test_no_misfire_skips_and_leaves_no_marks(
    make_scheduler: MakeScheduler, sink: CaptureSink, backend: Backend
) -> None:
    scheduler = make_scheduler()
    release = anyio.Event()
    runs = 0

    @scheduler.job(misfire=False)
    async def skip(ctx: ShardingContext) -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    async with scheduler:
        coord = scheduler._runners["skip"].coordinator
        await scheduler.trigger("skip")
        await eventually(lambda: runs == 1)
        await scheduler.trigger("skip")
        await eventually(lambda: any("still running" in m for _, m in states(sink, "skip")))
        assert not coord.is_misfired(0)
        release.set()
        await sink.wait_for(lambda events: len(completions(events, "skip")) == 1)
        # A later fire is the marker: a wrong re-run (a misfire) of the skipped trigger would
        # come before it.
        await eventually(lambda: not coord.is_running(0))
        await scheduler.trigger("skip")
        await sink.wait_for(lambda events: len(completions(events, "skip")) >= 2)
    assert runs == 2  # the first fire and the marker, nothing for the skipped trigger
    sources = [e.execution_source for e in completions(sink.events, "skip")]
    assert sources == [ExecutionSource.NORMAL_TRIGGER] * 2


async def test_items_run_concurrently(make_scheduler: MakeScheduler, sink: CaptureSink) -> None:
    scheduler = make_scheduler()
    n = 8
    active = 0
    all_in = anyio.Event()

    @scheduler.job(sharding_total_count=n)
    async def parallel(ctx: ShardingContext) -> None:
        nonlocal active
        active += 1
        if active == n:
            all_in.set()
        with anyio.fail_after(5):  # fails if items ran one after another
            await all_in.wait()

    async with scheduler:
        await scheduler.trigger("parallel")
        await sink.wait_for(lambda events: len(completions(events, "parallel")) == n)
    assert all(e.is_success for e in completions(sink.events, "parallel"))


async def test_max_concurrency_limits_items(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    active = peak = 0

    @scheduler.job(sharding_total_count=6, max_concurrency=2)
    async def limited(ctx: ShardingContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await anyio.sleep(0.02)
        active -= 1

    async with scheduler:
        await scheduler.trigger("limited")
        await sink.wait_for(lambda events: len(completions(events, "limited")) == 6)
    assert peak == 2


async def test_items_waiting_for_a_slot_do_not_start_once_the_scheduler_stops(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    # With max_concurrency, a fire's items wait for a slot. A stop gives the running ones the
    # grace period; the waiting ones kept starting during it (their claim was already lost,
    # ctx.lost set), only to be cancelled when it ended.
    scheduler = make_scheduler(shutdown_grace_period=5)
    started: list[int] = []
    first = anyio.Event()

    @scheduler.job(sharding_total_count=4, max_concurrency=1)
    async def queued(ctx: ShardingContext) -> None:
        started.append(ctx.sharding_item)
        first.set()
        await anyio.sleep(0.3)

    with anyio.fail_after(10):
        async with scheduler:
            await scheduler.trigger("queued")
            await first.wait()
    assert len(started) == 1  # the running item finished in its grace period; no other began
    done = {e.sharding_item: e for e in completions(sink.events, "queued")}
    assert sorted(done) == [0, 1, 2, 3]
    assert done[started[0]].is_success
    for item in set(done) - set(started):
        assert not done[item].is_success
        assert "not started: the scheduler is stopping" in (done[item].failure_cause or "")


async def test_timeout_cancels_item_and_records_failure(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    cancelled = anyio.Event()

    @scheduler.job(sharding_total_count=2, timeout=0.2)
    async def hangs(ctx: ShardingContext) -> None:
        if ctx.sharding_item == 0:
            try:
                await anyio.sleep_forever()
            finally:
                cancelled.set()

    async with scheduler:
        await scheduler.trigger("hangs")
        await sink.wait_for(lambda events: len(completions(events, "hangs")) == 2)
    assert cancelled.is_set()
    done = {e.sharding_item: e for e in completions(sink.events, "hangs")}
    assert done[1].is_success and not done[0].is_success
    assert "timed out after 0.2s" in (done[0].failure_cause or "")
    assert states(sink, "hangs")[-1][0] is State.TASK_ERROR


async def test_cron_fires_at_scheduled_times(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    fires: list[tuple[datetime, datetime]] = []

    @scheduler.job(cron="* * * * * ?")
    async def tick(ctx: ShardingContext) -> None:
        assert ctx.scheduled_fire_time is not None
        fires.append((ctx.scheduled_fire_time, datetime.now(UTC)))

    async with scheduler:
        await eventually(lambda: len(fires) >= 2, timeout=5)
    scheduled = [s for s, _ in fires]
    assert all(s.microsecond == 0 for s in scheduled)
    assert (scheduled[1] - scheduled[0]).total_seconds() == 1
    assert all(started >= s for s, started in fires)  # never early


async def test_graceful_stop_lets_items_finish(
    make_scheduler: MakeScheduler, sink: CaptureSink, backend: Backend
) -> None:
    scheduler = make_scheduler(shutdown_grace_period=5)
    started = anyio.Event()
    finished = False

    @scheduler.job()
    async def steady(ctx: ShardingContext) -> None:
        nonlocal finished
        started.set()
        await anyio.sleep(0.3)
        finished = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        await eventually(lambda: scheduler._runners.get("steady") is not None)
        await scheduler.trigger("steady")
        await started.wait()
        scheduler.stop()
    assert finished
    assert completions(sink.events, "steady")[0].is_success  # the trace was flushed on stop


async def test_cancelling_run_gives_grace_then_cancels(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    scheduler = make_scheduler(shutdown_grace_period=0.3)
    started = anyio.Event()
    cancelled = anyio.Event()

    @scheduler.job()
    async def forever(ctx: ShardingContext) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scheduler.run)
            await eventually(lambda: scheduler._runners.get("forever") is not None)
            await scheduler.trigger("forever")
            await started.wait()
            tg.cancel_scope.cancel()
    assert cancelled.is_set()
    assert not completions(sink.events, "forever")[0].is_success


async def test_listeners_run_around_the_fire(
    make_scheduler: MakeScheduler, sink: CaptureSink, backend: Backend
) -> None:
    calls: list[str] = []

    class Recorder(JobListener):
        async def before_job_executed(self, contexts: ShardingContexts) -> None:
            calls.append(f"before {contexts.items}")

        async def after_job_executed(self, contexts: ShardingContexts) -> None:
            calls.append(f"after {contexts.items}")

    scheduler = make_scheduler()

    @scheduler.job(sharding_total_count=2, listeners=[Recorder()])
    async def listened(ctx: ShardingContext) -> None:
        calls.append(f"item {ctx.sharding_item}")

    async with scheduler:
        await scheduler.trigger("listened")
        await eventually(lambda: len(calls) == 4)
    assert calls[0] == "before [0, 1]" and calls[-1] == "after [0, 1]"
    assert sorted(calls[1:3]) == ["item 0", "item 1"]


async def test_error_handler_raise_stops_the_scheduler(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler()

    @scheduler.job(error_handler="raise")
    async def fatal(ctx: ShardingContext) -> None:
        raise ValueError("stop everything")

    async def trigger_when_ready() -> None:
        await eventually(lambda: scheduler._runners.get("fatal") is not None)
        await scheduler.trigger("fatal")

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(trigger_when_ready)
            with pytest.raises(ValueError, match="stop everything"):
                await scheduler.run()


@pytest.mark.parametrize("how", ["run", "async with"])
async def test_a_raise_job_failing_while_cancelled_from_outside_is_raised_not_dropped(
    make_scheduler: MakeScheduler, how: str
) -> None:
    """The host cancels the scheduler (its task group, a lifespan's) while a job with
    ``error_handler="raise"`` runs; the item fails within the grace period. Its error comes out
    of ``run()`` / ``async with`` as a task group child's would, not a silent cancellation (it
    was neither raised nor logged), and the stop still leaves no running mark or instance."""
    scheduler = make_scheduler(shutdown_grace_period=5)
    started, go = anyio.Event(), anyio.Event()

    @scheduler.job(error_handler="raise", sharding_total_count=2)
    async def fatal(ctx: ShardingContext) -> None:
        started.set()
        await go.wait()
        raise ValueError("failed while stopping")

    async def serve(task_status: anyio.abc.TaskStatus[None]) -> None:
        if how == "run":
            await scheduler.run(task_status=task_status)
        else:
            async with scheduler:
                task_status.started()
                await anyio.sleep_forever()

    errors: list[BaseException] = []
    with anyio.fail_after(20):
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(serve)
                await scheduler.trigger("fatal")
                await started.wait()
                tg.cancel_scope.cancel()  # the host stops it: the items get the grace period
                go.set()  # and one fails meanwhile
        except BaseExceptionGroup as group:
            errors = list(group.exceptions)
    assert [type(e) for e in errors] == [ValueError] and "failed while stopping" in str(errors[0])
    store = MemoryStore.named(scheduler.settings.registry_url.get_secret_value().split("/")[2])
    assert [p for p in store.nodes if p.endswith("/running") or "/instances/" in p] == []


async def test_dataflow_jobs(make_scheduler: MakeScheduler, sink: CaptureSink) -> None:
    scheduler = make_scheduler()
    queue = {0: [[1, 2], [3], []], 1: [[10], []]}
    processed: dict[int, list[int]] = {0: [], 1: []}

    async def fetch(ctx: ShardingContext) -> list[int]:
        return queue[ctx.sharding_item].pop(0) if queue[ctx.sharding_item] else []

    async def process(ctx: ShardingContext, data: Sequence[int]) -> None:
        processed[ctx.sharding_item].extend(data)

    scheduler.add_job(
        DataflowJob(fetch, process, streaming=True), name="stream", sharding_total_count=2
    )

    class OneShot:
        calls = 0

        async def fetch_data(self, ctx: ShardingContext) -> list[str]:
            return ["a", "b"]

        async def process_data(self, ctx: ShardingContext, data: list[str]) -> None:
            OneShot.calls += 1

    scheduler.add_job(OneShot(), name="oneshot")

    async with scheduler:
        await scheduler.trigger("stream")
        await scheduler.trigger("oneshot")
        await sink.wait_for(lambda events: len(completions(events)) == 3)
    assert processed == {0: [1, 2, 3], 1: [10]}  # streaming looped until fetch returned nothing
    assert OneShot.calls == 1  # not streaming: one fetch, one process


async def test_script_jobs(
    make_scheduler: MakeScheduler, sink: CaptureSink, tmp_path: Path
) -> None:
    scheduler = make_scheduler()
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import json, sys, pathlib; ctx = json.loads(sys.argv[-1]);"
        f"pathlib.Path({str(out)!r}, str(ctx['sharding_item'])).write_text(sys.argv[-1]);"
        "sys.exit(0 if ctx['sharding_item'] == 0 else (sys.stderr.write('bad item\\n'), 3)[1])"
    )
    scheduler.add_job(
        ScriptJob([sys.executable, "-c", code]),
        name="script",
        sharding_total_count=2,
        sharding_item_parameters="0=zero,1=one",
    )
    async with scheduler:
        await scheduler.trigger("script")
        await sink.wait_for(lambda events: len(completions(events, "script")) == 2)
    ctx0 = json.loads((out / "0").read_text())
    assert ctx0["sharding_parameter"] == "zero" and ctx0["job_name"] == "script"
    done = {e.sharding_item: e for e in completions(sink.events, "script")}
    assert done[0].is_success and not done[1].is_success
    assert "status 3" in (done[1].failure_cause or "") and "bad item" in (
        done[1].failure_cause or ""
    )


@pytest.mark.parametrize("limit", [0, 10])
async def test_a_script_job_keeps_only_the_end_of_stderr_it_shows(
    make_scheduler: MakeScheduler, sink: CaptureSink, limit: int
) -> None:
    # stderr_limit=0 kept the whole stderr in memory (a chatty script's gigabytes) and put it
    # all into the failure cause; 0 now shows none of it.
    scheduler = make_scheduler()
    code = "import sys; sys.stderr.write('x' * 3_000_000 + 'END'); sys.exit(2)"
    scheduler.add_job(ScriptJob([sys.executable, "-c", code], stderr_limit=limit), name="loud")
    async with scheduler:
        await scheduler.trigger("loud")
        await sink.wait_for(lambda events: len(completions(events, "loud")) == 1)
    (done,) = completions(sink.events, "loud")
    cause = done.failure_cause or ""
    assert "status 2" in cause and len(cause) < 10_000
    assert ("END" in cause) == (limit > 0)


async def test_trigger_errors(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler()

    @scheduler.job()
    async def known(ctx: ShardingContext) -> None: ...

    with pytest.raises(RuntimeError, match="not running"):
        await scheduler.trigger("known")
    async with scheduler:
        with pytest.raises(JobNotFoundError):
            await scheduler.trigger("unknown")
        with pytest.raises(RuntimeError, match="before the scheduler starts"):
            scheduler.add_job(known, name="late")


async def test_registry_config_change_is_picked_up_live(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    seen: list[ShardingContext] = []

    @scheduler.job(sharding_total_count=2)
    async def live(ctx: ShardingContext) -> None:
        seen.append(ctx)

    async with scheduler:
        runner = scheduler._runners["live"]
        cfg = runner.coordinator.config.with_changes(sharding_total_count=4, job_parameter="new")
        await scheduler.registry.set(JobPaths("ns", "live").config, cfg.to_registry())
        await eventually(lambda: runner.coordinator.config.sharding_total_count == 4)
        await eventually(lambda: runner.coordinator.local_items() == [0, 1, 2, 3])
        await scheduler.trigger("live")
        await eventually(lambda: len(seen) == 4)
    assert {c.job_parameter for c in seen} == {"new"}


async def test_start_failure_is_reported(sink: CaptureSink) -> None:
    with pytest.raises(ConfigError, match="registry_url"):
        Scheduler(registry="zookeeper://127.0.0.1:notaport/ns")


async def test_async_context_manager_stops_cleanly(
    make_scheduler: MakeScheduler, backend: Backend
) -> None:
    scheduler = make_scheduler()

    @scheduler.job(cron="* * * * * ?")
    async def bg(ctx: ShardingContext) -> None: ...

    with anyio.fail_after(5):
        async with scheduler:
            assert "bg" in scheduler.jobs
    with pytest.raises(RuntimeError):
        _ = scheduler.registry  # closed


async def test_run_state_follows_the_lifetime(
    make_scheduler: MakeScheduler, backend: Backend
) -> None:
    scheduler = make_scheduler()

    @scheduler.job()
    async def idle(ctx: ShardingContext) -> None: ...

    def state() -> RunState:  # read afresh (a narrowed attribute would not be)
        return scheduler.state

    assert state() is RunState.STOPPED
    with anyio.fail_after(10):
        async with scheduler:
            assert state() is RunState.STARTED
            scheduler.stop()
            assert state() is RunState.STOPPING
            with pytest.raises(RuntimeError, match="already running"):
                await scheduler.run()
    assert state() is RunState.STOPPED


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> AsyncIterator[None]:
    import asyncio

    before = set(asyncio.all_tasks())
    yield
    await anyio.sleep(0)
    leftover = {
        t
        for t in asyncio.all_tasks() - before
        if not t.done() and "_call_in_runner_task" not in repr(t.get_coro())
    }
    assert not leftover, f"tasks left behind: {leftover}"


async def test_time_diff_violation_goes_to_the_error_handler(
    make_scheduler: MakeScheduler, sink: CaptureSink
) -> None:
    import time

    from aioelastic import TimeDiffError

    scheduler = make_scheduler()
    errors: list[BaseException] = []

    @scheduler.job(max_time_diff_seconds=5, error_handler=lambda job, exc: errors.append(exc))
    async def clocked(ctx: ShardingContext) -> None: ...

    async with scheduler:
        await scheduler.trigger("clocked")
        await sink.wait_for(lambda events: len(completions(events, "clocked")) == 1)
        assert errors == []  # in step with the registry's clock
        scheduler._runners["clocked"].coordinator.clock = lambda: time.time() + 60
        await scheduler.trigger("clocked")
        await eventually(lambda: len(errors) == 1)
    assert isinstance(errors[0], TimeDiffError)
    assert "max_time_diff_seconds=5" in str(errors[0])


async def test_unreachable_registry_fails_start_with_a_clear_error() -> None:
    from aioelastic import SessionLostError

    scheduler = Scheduler(registry="zookeeper://127.0.0.1:1/ns?connect_timeout=1")

    @scheduler.job()
    async def never(ctx: ShardingContext) -> None: ...

    with anyio.fail_after(10), pytest.raises(SessionLostError, match=r"127\.0\.0\.1:1"):
        async with scheduler:
            pass
    with anyio.fail_after(10), pytest.raises(SessionLostError):
        await scheduler.run()


async def test_task_group_start_returns_once_running(make_scheduler: MakeScheduler) -> None:
    scheduler = make_scheduler()

    @scheduler.job()
    async def ready(ctx: ShardingContext) -> None: ...

    async with anyio.create_task_group() as tg:
        await tg.start(scheduler.run)
        assert scheduler.registry.session_state.value == "CONNECTED"
        assert "ready" in scheduler._runners
        scheduler.stop()


async def test_runs_without_any_trace_sink() -> None:
    MemoryStore.reset("no-sink")
    scheduler = Scheduler(settings=Settings(registry_url="memory://no-sink/ns"))
    seen: list[int] = []

    @scheduler.job(sharding_total_count=2)
    async def quiet(ctx: ShardingContext) -> None:
        seen.append(ctx.sharding_item)

    async with scheduler:
        await scheduler.trigger("quiet")
        await eventually(lambda: sorted(seen) == [0, 1])


async def test_a_duplicate_job_name_fails_before_anything_is_written(
    make_scheduler: MakeScheduler, sink: CaptureSink, backend: Backend
) -> None:
    scheduler = make_scheduler()
    ran: list[tuple[str, int]] = []

    async def first(ctx: ShardingContext) -> None:
        ran.append(("first", ctx.sharding_item))

    async def second(ctx: ShardingContext) -> None:
        ran.append(("second", ctx.sharding_item))

    kept = scheduler.add_job(first, name="dup", sharding_total_count=2, job_parameter="one")
    attempts: list[Callable[[], object]] = [
        lambda: scheduler.add_job(second, name="dup", sharding_total_count=5, job_parameter="2"),
        lambda: scheduler.add_job(second, config=kept.model_copy(update={"job_parameter": "3"})),
        lambda: scheduler.job(name="dup", cron="0/5 * * * * ?")(second),
    ]
    for attempt in attempts:
        with pytest.raises(ConfigError, match="already registered") as info:
            attempt()
        assert info.value.field == "name" and "dup" in str(info.value)
    assert scheduler.jobs == {"dup": kept}
    async with scheduler:
        paths = JobPaths(scheduler.registry_url.namespace, "dup")
        stored = json.loads((await scheduler.registry.get(paths.config))[0])
        assert (stored["sharding_total_count"], stored["job_parameter"]) == (2, "one")
        await scheduler.trigger("dup")
        await sink.wait_for(lambda events: len(completions(events, "dup")) == 2)
        assert sorted(await scheduler.registry.get_children(paths.sharding)) == ["0", "1"]
    assert sorted(ran) == [("first", 0), ("first", 1)]
