"""Retries with backoff: every failed attempt is a trace row with its cause, a retry counts as
running (the next fire misfires), the last failure goes to the error handler, a timeout and a
lost claim are not retried."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aioelastic import ConfigError, ExecutionSource, JobConfig, Scheduler, Settings, ShardingContext
from aioelastic._layout import JobPaths
from aioelastic._retry import ItemTimeoutError, RetryBackoff
from aioelastic.registry import MemoryStore
from aioelastic.tracing._events import JobExecutionEvent, State
from tests.harness.helpers import CaptureSink, completions, statuses

pytestmark = pytest.mark.anyio

FAST = {"initial": 0.01, "factor": 1, "max": 0.01, "jitter": 0}


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()


@pytest.fixture
def make_scheduler(sink: CaptureSink) -> Callable[..., Scheduler]:
    store = f"retries-{uuid.uuid4().hex[:12]}"
    MemoryStore.reset(store)

    def make(**settings: Any) -> Scheduler:
        s = Settings(registry_url=f"memory://{store}/ns", **settings)
        return Scheduler(settings=s, sinks=[sink])

    return make


class Handler:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(self, job: str, exc: BaseException) -> None:
        self.errors.append(exc)


async def test_failed_attempts_are_recorded_and_retried_until_success(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler, handler, attempts = make_scheduler(), Handler(), []

    @scheduler.job(retries=3, retry_backoff=FAST, error_handler=handler)
    async def flaky(ctx: ShardingContext) -> None:
        attempts.append(ctx.task_id)
        if len(attempts) < 3:
            raise ValueError(f"boom {len(attempts)}")

    async with scheduler:
        await scheduler.trigger("flaky")
        await sink.wait_for(lambda events: any(e.is_success for e in completions(events)))
    rows = completions(sink.events, "flaky")
    assert [r.is_success for r in rows] == [False, False, True]
    assert len({r.id for r in rows}) == 3 and len(set(attempts)) == 1  # one task, three rows
    assert "attempt 1 failed; retrying in 0.01s" in (rows[0].failure_cause or "")
    assert "ValueError: boom 2" in (rows[1].failure_cause or "")
    assert handler.errors == []
    assert [s.state for s in statuses(sink.events, "flaky")][-1] is State.TASK_FINISHED


async def test_the_last_failure_goes_to_the_error_handler(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler, handler, attempts = make_scheduler(), Handler(), []

    @scheduler.job(retries=2, retry_backoff=FAST, error_handler=handler)
    async def broken(ctx: ShardingContext) -> None:
        attempts.append(1)
        raise RuntimeError(f"attempt {len(attempts)}")

    async with scheduler:
        await scheduler.trigger("broken")
        await sink.wait_for(lambda events: len(completions(events, "broken")) == 3)
        await sink.wait_for(lambda events: statuses(events, "broken")[-1].state is State.TASK_ERROR)
    assert [str(e) for e in handler.errors] == ["attempt 3"]
    rows = completions(sink.events, "broken")
    assert [r.is_success for r in rows] == [False] * 3
    assert rows[-1].failure_cause and "attempt 3" in rows[-1].failure_cause
    assert "retrying" not in rows[-1].failure_cause


async def test_a_timeout_is_not_retried(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler, handler = make_scheduler(), Handler()

    @scheduler.job(retries=3, retry_backoff=FAST, timeout=0.05, error_handler=handler)
    async def slow(ctx: ShardingContext) -> None:
        await anyio.sleep(30)

    async with scheduler:
        await scheduler.trigger("slow")
        await sink.wait_for(lambda events: len(handler.errors) == 1)
    assert len(completions(sink.events, "slow")) == 1
    (error,) = handler.errors
    assert isinstance(error, ItemTimeoutError) and isinstance(error, TimeoutError)


async def test_a_retry_counts_as_running_so_the_next_fire_misfires(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler = make_scheduler()
    running, most, sources = 0, 0, []
    retrying, release = anyio.Event(), anyio.Event()

    @scheduler.job(retries=1, retry_backoff=FAST)
    async def busy(ctx: ShardingContext) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        sources.append(ctx.execution_source)
        try:
            if len(sources) == 1:
                raise ValueError("first attempt fails")
            if len(sources) == 2:
                retrying.set()
                with anyio.fail_after(30):
                    await release.wait()
        finally:
            running -= 1

    async with scheduler:
        await scheduler.trigger("busy")
        with anyio.fail_after(30):
            await retrying.wait()
        await scheduler.trigger("busy")  # while the retry runs
        await sink.wait_for(
            lambda events: any("still running" in s.message for s in statuses(events, "busy"))
        )
        release.set()
        await sink.wait_for(lambda events: len(completions(events, "busy")) == 3)
    assert most == 1
    assert sources == [
        ExecutionSource.NORMAL_TRIGGER,
        ExecutionSource.NORMAL_TRIGGER,  # the retry
        ExecutionSource.MISFIRE,  # the misfired fire, after the retry ended
    ]


async def test_a_lost_claim_ends_the_backoff_without_a_retry(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    scheduler, handler, attempts = make_scheduler(), Handler(), []
    failed = anyio.Event()

    @scheduler.job(retries=5, retry_backoff={"initial": 30, "max": 30}, error_handler=handler)
    async def lonely(ctx: ShardingContext) -> None:
        attempts.append(1)
        failed.set()
        raise ValueError("fails")

    async with scheduler:
        await scheduler.trigger("lonely")
        with anyio.fail_after(30):
            await failed.wait()
    # Stopping revoked the claim: the 30 s backoff ended there, with no retry.
    assert len(attempts) == 1
    assert [str(e) for e in handler.errors] == ["fails"]
    (row,) = {e.id: e for e in completions(sink.events, "lonely")}.values()
    assert row.failure_cause and "retrying" not in row.failure_cause  # the final cause won


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    backoff = RetryBackoff(initial=1, factor=2, max=5, jitter=0.5)
    assert [backoff.delay(n, rand=lambda: 0.5) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert backoff.delay(1, rand=lambda: 0.0) == 0.5
    assert backoff.delay(3, rand=lambda: 1.0) == 6.0
    assert RetryBackoff.model_validate((0.5, 3)) == RetryBackoff(initial=0.5, factor=3)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"retries": -1}, "retries"),
        ({"retry_backoff": {"factor": 0.5}}, "retry_backoff.factor"),
        ({"retry_backoff": (5, 2, 1)}, "retry_backoff.max"),
        ({"retry_backoff": {"jitter": 1.5}}, "retry_backoff.jitter"),
        ({"retry_backoff": {"initial": -1}}, "retry_backoff.initial"),
        ({"retry_backoff": {"nope": 1}}, "retry_backoff.nope"),
    ],
)
def test_retry_settings_are_validated(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        JobConfig(name="j", **changes)
    assert info.value.field == field


async def test_the_open_row_during_a_retry_is_the_one_the_failover_intent_names(
    make_scheduler: Callable[..., Scheduler], sink: CaptureSink
) -> None:
    """If this instance dies during attempt 2, the taker completes the row its failover intent
    names: that must be the run's open row, or a RUNNING row would stay behind for ever."""
    scheduler, attempts = make_scheduler(), []
    second = anyio.Event()
    release = anyio.Event()

    @scheduler.job(retries=2, retry_backoff=FAST, failover=True)
    async def flaky(ctx: ShardingContext) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first attempt fails")
        second.set()
        await release.wait()

    async with scheduler:
        await scheduler.trigger("flaky")
        with anyio.fail_after(20):
            await second.wait()
        await sink.wait_for(lambda events: len(completions(events, "flaky")) == 1)
        paths = JobPaths(scheduler.registry_url.namespace, "flaky")
        raw, _ = await scheduler.registry.get(paths.failover_item(0))
        intent = json.loads(raw)
        rows = {e.id: e for e in sink.events if isinstance(e, JobExecutionEvent)}
        open_rows = [e for e in rows.values() if e.complete_time is None]
        (failed,) = completions(sink.events, "flaky")
        assert [e.id for e in open_rows] == [intent["id"]]
        assert failed.id != intent["id"] and "attempt 1 failed" in (failed.failure_cause or "")
        release.set()
        await sink.wait_for(lambda events: len(completions(events, "flaky")) == 2)
    final = [e for e in completions(sink.events, "flaky") if e.id == intent["id"]]
    assert len(final) == 1 and final[0].is_success
