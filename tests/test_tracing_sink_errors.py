"""A trace sink raising a ``BaseException`` that is not cancellation, in a real scheduler run:
``SystemExit``, ``GeneratorExit`` or a custom ``BaseException`` fail that one write (it is
retried, nothing is lost) and neither the scheduler nor the other sinks notice; a
``KeyboardInterrupt`` inside a sink is Ctrl-C: the scheduler stops gracefully and every sink
gets every event; one from ``aclose()`` is re-raised after the other sinks are closed."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore
from aioelastic.tracing import MemorySink, TraceBus
from aioelastic.tracing._events import JobStatusTraceEvent, State, TraceEvent
from tests.harness.helpers import eventually


class Fatal(BaseException):
    """Neither an ``Exception`` nor cancellation."""


class RaisingSink:
    """Raises ``exc`` from its first ``raises`` writes, then keeps what it is given."""

    def __init__(self, exc: BaseException, raises: int = 1) -> None:
        self.exc = exc
        self.raises = raises
        self.calls = 0
        self.events: list[TraceEvent] = []

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        self.calls += 1
        if self.calls <= self.raises:
            raise self.exc
        self.events.extend(batch)


def ids(events: Sequence[TraceEvent]) -> set[str]:
    return {event.id for event in events}


def finished_fires(sink: MemorySink) -> int:
    return sum(
        1
        for e in sink.events
        if isinstance(e, JobStatusTraceEvent) and e.state is State.TASK_FINISHED
    )


def scheduler_with(namespace: str, sinks: list[object], tmp_path: Path) -> Scheduler:
    MemoryStore.reset(namespace)
    settings = Settings(
        registry_url=f"memory://{namespace}/ns",
        trace_journal_path=tmp_path / "trace.journal",
        shutdown_grace_period=10.0,
    )
    scheduler = Scheduler(settings=settings, sinks=sinks)  # type: ignore[arg-type]

    @scheduler.job(sharding_total_count=2)
    async def settle(ctx: ShardingContext) -> None:
        await anyio.sleep(0)

    return scheduler


@pytest.mark.anyio
@pytest.mark.parametrize(
    "exc", [SystemExit(3), GeneratorExit(), Fatal("sink bug")], ids=lambda e: type(e).__name__
)
async def test_a_base_exception_from_a_sink_fails_only_that_write(
    exc: BaseException, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raising, memory = RaisingSink(exc), MemorySink()
    scheduler = scheduler_with(f"sink-{type(exc).__name__}", [raising, memory], tmp_path)
    async with scheduler:
        await scheduler.trigger("settle")
        await eventually(lambda: raising.calls >= 1, what="the raising write")
        await eventually(lambda: finished_fires(memory) >= 1, what="the other sink's events")
        await scheduler.trigger("settle")  # the scheduler still fires
        await eventually(lambda: finished_fires(memory) >= 2, what="a second fire")
        await eventually(
            lambda: ids(raising.events) >= ids(memory.events), 30, what="the failed batch again"
        )
        stats = {s.sink: s for s in scheduler.trace_bus.stats()}
    assert ids(raising.events) == ids(memory.events)  # nothing lost, in either sink
    assert stats["RaisingSink"].failed_writes == 1 and stats["RaisingSink"].dropped == 0
    assert stats["MemorySink"].failed_writes == 0
    assert f"({type(exc).__name__}" in caplog.text or type(exc).__name__ in caplog.text


@pytest.mark.anyio
async def test_keyboard_interrupt_inside_a_sink_stops_the_scheduler_gracefully(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aioelastic")
    raising, memory = RaisingSink(KeyboardInterrupt()), MemorySink()
    scheduler = scheduler_with("sink-keyboard-interrupt", [raising, memory], tmp_path)
    returned = anyio.Event()

    async def run() -> None:
        await scheduler.run(handle_signals=True)  # handles SIGINT as on Ctrl-C
        returned.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await eventually(lambda: "settle" in scheduler._runners, what="the job started")
            await scheduler.trigger("settle")
            await returned.wait()  # stopped by the re-delivered SIGINT, not by us
    assert not scheduler.forced_stop
    assert "SIGINT is delivered to the process again" in caplog.text
    assert finished_fires(memory) == 1
    assert raising.calls >= 2  # the interrupted batch was written again before the stop
    assert ids(raising.events) == ids(memory.events)


class ClosingSink(MemorySink):
    def __init__(self, exc: BaseException | None = None) -> None:
        super().__init__()
        self.exc = exc
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True
        if self.exc is not None:
            raise self.exc


def test_keyboard_interrupt_from_aclose_is_raised_after_the_other_sinks_close() -> None:
    interrupting, systemexit, other = (
        ClosingSink(KeyboardInterrupt()),
        ClosingSink(SystemExit(1)),
        ClosingSink(),
    )

    async def main() -> None:
        async with AsyncExitStack() as stack:
            bus = TraceBus([interrupting, systemexit, other])
            await bus.start(stack)

    with pytest.raises(BaseException) as raised:
        anyio.run(main)
    exc = raised.value  # through the bus's task group, anyio may group it
    if isinstance(exc, BaseExceptionGroup):
        assert exc.subgroup(KeyboardInterrupt) is not None, exc
        assert exc.subgroup(SystemExit) is None, exc
    else:
        assert isinstance(exc, KeyboardInterrupt), exc
    assert interrupting.closed and systemexit.closed and other.closed
