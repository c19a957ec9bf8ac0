"""The trace bus with a sink that is slow but healthy: a stalled event loop is not a stuck
write, a slow write at shutdown is waited for, a backlog is written in bigger batches (and a
failing big batch still goes to the journal, nothing lost)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from aioelastic.tracing import TraceBus
from aioelastic.tracing._events import TraceEvent
from aioelastic.tracing._journal import Journal
from tests.harness.helpers import eventually
from tests.test_tracing_bus import events, execution, ids

pytestmark = pytest.mark.anyio


class GatedSink:
    """Its first write waits for ``gate`` (``started`` is set once it waits); the rest go
    through. Records what it wrote and the size of each write."""

    def __init__(self, *, max_batch_size: int | None = None) -> None:
        self.gate = anyio.Event()
        self.started = anyio.Event()
        self.events: list[TraceEvent] = []
        self.batches: list[int] = []
        if max_batch_size is not None:
            self.max_batch_size = max_batch_size

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        if not self.started.is_set():
            self.started.set()
            await self.gate.wait()
        self.events.extend(batch)
        self.batches.append(len(batch))


async def test_a_stalled_event_loop_is_not_a_stuck_write(tmp_path: Path) -> None:
    """A write pending across a long stall of the event loop (a garbage collection, the CPU
    taken by other processes) is not taken for a stuck sink: no reply could be read
    meanwhile, so the lane does not send events through the journal."""
    sink = GatedSink()
    posted = events(10)
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink],
            batch_size=10,
            flush_interval=0.01,
            journal_path=tmp_path / "trace.journal",
            journal_window=0.5,
        )
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        with anyio.fail_after(5):
            await sink.started.wait()
        time.sleep(1.5)  # the stall under test: the event loop stands still
        await anyio.sleep(0.1)  # the journal tick, late, looks at the pending write
        sink.gate.set()
        await eventually(lambda: len(sink.events) == len(posted), timeout=10)
        stats = bus.stats()[0]
        assert stats.journaled == 0, "a stall of the loop sent events through the journal"
        assert not stats.failing
    assert ids(sink.events) == ids(posted)


async def test_a_write_that_hangs_is_still_stuck_without_a_stall(tmp_path: Path) -> None:
    """The stall excuse does not hide a write that hangs while the loop runs."""
    sink = GatedSink()
    posted = events(10)
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink],
            batch_size=10,
            flush_interval=0.01,
            journal_path=tmp_path / "trace.journal",
            journal_window=0.2,
        )
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        await eventually(lambda: bus.stats()[0].failing, timeout=5)
        assert bus.stats()[0].journaled == len(posted)  # the pending batch is on disk
        sink.gate.set()
        await eventually(lambda: not bus.stats()[0].failing, timeout=10)
        with anyio.fail_after(10):
            await bus.flush()
    assert set(ids(sink.events)) == set(ids(posted))  # from memory, and again replayed


async def test_a_slow_first_write_at_shutdown_is_waited_for(tmp_path: Path) -> None:
    """A write pending past the journal window but not failing (a first write that connects
    and creates the tables, under load) when the stop begins: the stop waits for it, so the
    trace is written by this process instead of being left in the journal for the next."""
    sink = GatedSink()
    posted = events(10)
    journal = tmp_path / "trace.journal"

    async def finish_soon() -> None:
        await anyio.sleep(0.3)
        sink.gate.set()

    async with AsyncExitStack() as stack:
        tg = await stack.enter_async_context(anyio.create_task_group())  # ends after the bus
        bus = TraceBus(
            [sink], batch_size=10, flush_interval=0.01, journal_path=journal, grace_period=5
        )
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        await eventually(lambda: bus.stats()[0].failing, timeout=5)  # journaled meanwhile
        tg.start_soon(finish_soon)  # the write finishes 0.3 s into the stop
    assert sink.events[: len(posted)] == posted
    leftover = Journal(journal)
    await anyio.to_thread.run_sync(leftover.open)
    try:
        assert not leftover.has_backlog, "the stop left the written events to the next process"
    finally:
        await anyio.to_thread.run_sync(leftover.close)


async def test_a_backlog_goes_in_bigger_batches(tmp_path: Path) -> None:
    """With more than ``batch_size`` events waiting, a sink that takes bigger batches
    (``max_batch_size``) gets them, fewer writes (and commits) for the backlog; a lone event
    still leaves after ``flush_interval``."""
    sink = GatedSink(max_batch_size=400)
    posted = events(2000)
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink], batch_size=100, flush_interval=0.01, journal_path=tmp_path / "trace.journal"
        )
        await bus.start(stack)
        for event in posted[:100]:
            bus.post(event)
        with anyio.fail_after(5):
            await sink.started.wait()
        for event in posted[100:]:  # a backlog builds up behind the first write
            bus.post(event)
        sink.gate.set()
        await eventually(lambda: len(sink.events) == len(posted), timeout=10)
        assert ids(sink.events) == ids(posted)
        assert max(sink.batches) == 400
        assert len(sink.batches) < len(posted) // 100
        lone = events(1)
        bus.post(lone[0])
        await eventually(lambda: len(sink.events) == len(posted) + 1, timeout=10)
        assert sink.batches[-1] == 1


async def test_a_sink_without_max_batch_size_keeps_batch_size(tmp_path: Path) -> None:
    sink = GatedSink()
    posted = events(1000)
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], batch_size=100, flush_interval=0.01)
        await bus.start(stack)
        for event in posted[:100]:
            bus.post(event)
        with anyio.fail_after(5):
            await sink.started.wait()
        for event in posted[100:]:
            bus.post(event)
        sink.gate.set()
        await eventually(lambda: len(sink.events) == len(posted), timeout=10)
    assert max(sink.batches) == 100


class FailsOneBigBatch(GatedSink):
    """Fails its first write bigger than ``batch_size`` (a database that goes away mid-backlog),
    then works."""

    def __init__(self, batch_size: int, max_batch_size: int) -> None:
        super().__init__(max_batch_size=max_batch_size)
        self.batch_size = batch_size
        self.failed: list[int] = []

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        if len(batch) > self.batch_size and not self.failed:
            self.failed.append(len(batch))
            raise ConnectionError("database unavailable")
        await super().write(batch)


async def test_a_failing_big_batch_goes_to_the_journal_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    sink = FailsOneBigBatch(batch_size=100, max_batch_size=400)
    posted = events(2000)
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink],
            batch_size=100,
            flush_interval=0.01,
            journal_path=tmp_path / "trace.journal",
            retry_initial=0.01,
            retry_max=0.05,
        )
        await bus.start(stack)
        for event in posted[:100]:
            bus.post(event)
        with anyio.fail_after(5):
            await sink.started.wait()
        for event in posted[100:]:
            bus.post(event)
        sink.gate.set()
        with anyio.fail_after(10):
            await eventually(lambda: bool(sink.failed), timeout=10)
            await bus.flush()
        stats = bus.stats()[0]
    assert sink.failed and sink.failed[0] > 100
    assert stats.journaled >= sink.failed[0]  # the failed batch went to the journal
    assert stats.dropped == 0
    assert set(ids(sink.events)) == set(ids(posted))


async def test_a_slow_write_that_succeeds_is_not_replayed_again(tmp_path: Path) -> None:
    """A write pending past the journal window sends its batch to the journal too; once it
    succeeds, replay skips that copy (no second write, no conflicts) but writes what was
    journaled meanwhile, including a completion sharing the id of a start it skips."""
    sink = GatedSink()
    start = execution(1)
    first = [start, *events(9)]
    completion = dataclasses.replace(start, complete_time=start.start_time, is_success=True)
    later = [completion, *events(9)]
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink],
            batch_size=10,
            flush_interval=0.01,
            journal_path=tmp_path / "trace.journal",
            journal_window=0.2,
        )
        await bus.start(stack)
        for event in first:
            bus.post(event)
        await eventually(lambda: bus.stats()[0].failing, timeout=5)
        for event in later:  # straight to the journal while the sink counts as failing
            bus.post(event)
        sink.gate.set()
        await eventually(lambda: not bus.stats()[0].failing, timeout=10)
        with anyio.fail_after(10):
            await bus.flush()
        stats = bus.stats()[0]
    assert stats.journaled == len(first) + len(later)
    assert sink.events == first + later  # each once, in posting order
    assert stats.written == len(first) + len(later)
