"""The trace bus with in-process sinks: non-blocking post, independent sinks, batching,
overflow to the journal, shutdown flush/spill, replay of a leftover journal."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic._errors import ConfigError
from aioelastic.tracing import MemorySink, TraceBus
from aioelastic.tracing._codec import decode_event, encode_event
from aioelastic.tracing._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    State,
    TraceEvent,
)
from aioelastic.tracing._journal import Journal
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


def execution(n: int, **changes: object) -> JobExecutionEvent:
    fields: dict[str, object] = {
        "job_name": "settlement",
        "task_id": f"settlement@-@{n}@-@READY@-@i1@-@u{n}",
        "hostname": "host-a",
        "ip": "10.0.0.1",
        "sharding_item": n % 10,
        "execution_source": ExecutionSource.NORMAL_TRIGGER,
        **changes,
    }
    return JobExecutionEvent(**fields)  # type: ignore[arg-type]


def status(n: int, state: State = State.TASK_RUNNING) -> JobStatusTraceEvent:
    return JobStatusTraceEvent(
        job_name="settlement",
        task_id=f"settlement@-@{n}@-@READY@-@i1@-@u{n}",
        slave_id="i1",
        execution_type=ExecutionType.READY,
        sharding_items=(0, 1),
        state=state,
        message=f"message {n}",
    )


def events(count: int) -> list[TraceEvent]:
    return [execution(n) if n % 2 else status(n) for n in range(count)]


def ids(items: Sequence[TraceEvent]) -> list[str]:
    return [event.id for event in items]


class BlockedSink:
    """A sink whose writes wait until ``release`` is set (a stalled database)."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.events: list[TraceEvent] = []
        self.calls = 0

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        self.calls += 1
        await self.release.wait()
        self.events.extend(batch)


class FlakySink:
    """Fails the first ``failures`` writes, then records batches."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.events: list[TraceEvent] = []
        self.batches: list[int] = []

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database unavailable")
        self.events.extend(batch)
        self.batches.append(len(batch))


class PipelinedSink:
    """Takes ``concurrent_writes`` writes at once and commits them in order, as PostgresSink
    does: a write that began while the previous one was in progress fails if that one fails.
    Fails the writes numbered in ``fail`` (1-based)."""

    concurrent_writes = 2

    def __init__(self, fail: Sequence[int] = ()) -> None:
        self.fail = set(fail)
        self.committed: list[TraceEvent] = []
        self.calls = self.active = self.most_active = self.refused = 0
        self._last: tuple[anyio.Event, list[bool]] | None = None

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        self.calls += 1
        call, previous = self.calls, self._last
        done, ok = anyio.Event(), [False]
        self._last = (done, ok)
        if previous is not None and previous[0].is_set():
            previous = None
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            await anyio.sleep(0.01)  # the statements take a while
            if call in self.fail:
                raise ConnectionError("database unavailable")
            if previous is not None:
                await previous[0].wait()
                if not previous[1][0]:
                    self.refused += 1
                    raise RuntimeError("the batch before this one failed")
            self.committed.extend(batch)
            ok[0] = True
        finally:
            self.active -= 1
            done.set()


class ClosingSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


def test_codec_round_trip() -> None:
    originals: list[TraceEvent] = [
        execution(1, complete_time=execution(0).start_time, is_success=False, failure_cause="x"),
        status(2, State.TASK_ERROR),
        execution(3, failure_cause="tab\t nul\x00 lone\udc80 é"),
    ]
    assert [decode_event(encode_event(e)) for e in originals] == originals


@pytest.mark.parametrize(
    "bad",
    [
        {"write_timeout": -1},  # every write timed out at once: all events to the journal
        {"write_timeout": float("nan")},
        {"retry_initial": 0},
        {"grace_period": float("nan")},
        {"flush_interval": -0.1},
        {"journal_window": 0},
    ],
)
def test_bus_durations_are_validated(bad: dict[str, Any]) -> None:
    (name,) = bad
    with pytest.raises(ConfigError) as info:
        TraceBus([MemorySink()], **bad)
    assert info.value.field == name


@pytest.mark.parametrize("line", ["{torn", "[1]", "[" * 100_000])
def test_a_damaged_journal_line_is_a_value_error(line: str) -> None:
    # The replay skips a line that raises ValueError; nesting too deep for json was a
    # RecursionError that stopped the replay instead.
    with pytest.raises(ValueError):
        decode_event(line)


async def test_post_never_blocks_on_a_stalled_sink_and_other_sinks_keep_going() -> None:
    stalled, healthy = BlockedSink(), MemorySink()
    posted = events(3000)
    elapsed = 0.0
    async with AsyncExitStack() as stack:
        bus = TraceBus([stalled, healthy], max_queue=1000, batch_size=50, grace_period=0.1)
        await bus.start(stack)
        for start in range(0, len(posted), 100):
            began = time.perf_counter()
            for event in posted[start : start + 100]:
                bus.post(event)
            elapsed += time.perf_counter() - began
            await eventually(lambda: len(healthy.events) == start + 100, timeout=10)  # noqa: B023 - awaited here
        assert ids(healthy.events) == ids(posted)
        assert stalled.calls == 1 and not stalled.events
        stats = {s.sink: s for s in bus.stats()}
        assert stats["BlockedSink"].dropped == len(posted) - 1000  # full, and no journal
        assert stats["MemorySink"].dropped == 0
    assert elapsed < 1.0, f"posting 3000 events took {elapsed:.3f}s"


async def test_a_failing_sink_is_retried_with_backoff_until_written() -> None:
    flaky = FlakySink(failures=3)
    async with AsyncExitStack() as stack:
        bus = TraceBus([flaky], batch_size=10, retry_initial=0.01, retry_max=0.05)
        await bus.start(stack)
        posted = events(25)
        for event in posted:
            bus.post(event)
        with anyio.fail_after(10):
            await bus.flush()
        assert ids(flaky.events) == ids(posted)
        assert bus.stats()[0].failed_writes == 3


async def test_batches_by_size_and_by_time() -> None:
    sink = FlakySink(failures=0)
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], batch_size=100, flush_interval=0.05)
        await bus.start(stack)
        for event in events(250):
            bus.post(event)
        await eventually(lambda: len(sink.events) == 250, timeout=10)
        assert sink.batches[:2] == [100, 100]
        bus.post(status(999))  # a lone event leaves after flush_interval, not batch_size
        started = time.perf_counter()
        await eventually(lambda: len(sink.events) == 251, timeout=10)
        assert time.perf_counter() - started < 2.0


async def test_overflow_goes_to_the_journal_and_is_replayed(tmp_path: Path) -> None:
    sink = BlockedSink()
    journal = tmp_path / "trace.journal"
    posted = events(500)
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], max_queue=50, batch_size=20, journal_path=journal)
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        assert journal.read_text().count("\n") == 450
        assert bus.stats()[0].journaled == 450
        sink.release.set()
        with anyio.fail_after(10):
            await bus.flush()
        assert sorted(ids(sink.events)) == sorted(ids(posted))
        assert len(sink.events) == len(posted)
        assert not list(tmp_path.glob("trace.journal*.replay"))


async def test_shutdown_flushes_the_queue_within_the_grace_period() -> None:
    sink = ClosingSink()
    posted = events(2000)
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], batch_size=100, flush_interval=10.0, grace_period=5.0)
        await bus.start(stack)
        for event in posted:
            bus.post(event)
    assert ids(sink.events) == ids(posted)
    assert sink.closed


async def test_shutdown_spills_what_was_not_written_and_next_start_replays_it(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "trace.journal"
    stuck = BlockedSink()
    posted = events(300)
    started = time.perf_counter()
    async with AsyncExitStack() as stack:
        bus = TraceBus([stuck], batch_size=50, grace_period=0.2, journal_path=journal)
        await bus.start(stack)
        for event in posted:
            bus.post(event)
    assert time.perf_counter() - started < 3.0
    assert journal.read_text().count("\n") == 300  # including the unconfirmed batch

    replayed = MemorySink()
    async with AsyncExitStack() as stack:
        bus = TraceBus([replayed], journal_path=journal)
        await bus.start(stack)
        with anyio.fail_after(10):
            await bus.flush()
    assert sorted(ids(replayed.events)) == sorted(ids(posted))
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


async def test_leftover_journal_with_a_torn_last_line_is_replayed(tmp_path: Path) -> None:
    path = tmp_path / "trace.journal"
    posted = events(10)
    path.write_text("".join(encode_event(e) + "\n" for e in posted) + '{"kind": "exec')
    sink = MemorySink()
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], journal_path=path)
        await bus.start(stack)
        with anyio.fail_after(10):
            await bus.flush()
    assert ids(sink.events) == ids(posted)


async def test_two_processes_sharing_a_journal_path_use_separate_slots(tmp_path: Path) -> None:
    path = tmp_path / "trace.journal"
    first, second = Journal(path), Journal(path)
    first.open()
    second.open()
    try:
        assert first.path != second.path
        first.append(events(3))
        second.append(events(4))
    finally:
        first.close()
        second.close()
    adopter = Journal(path)
    adopter.open()  # both slots are free now: their files are adopted for replay
    try:
        replayed: list[TraceEvent] = []
        while batch := await adopter.read(100):
            replayed.extend(batch)
            adopter.commit(len(batch))
        assert len(replayed) == 7
    finally:
        adopter.close()


async def test_post_never_raises_and_an_unusable_journal_degrades_to_dropping(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sink = BlockedSink()
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink], max_queue=5, grace_period=0.1, journal_path=blocker / "trace.journal"
        )
        await bus.start(stack)
        for event in events(20):
            bus.post(event)
        assert bus.stats()[0].dropped == 15
        assert bus.stats()[0].journal_errors == 1  # counted for metrics
        bus.post(object())  # type: ignore[arg-type]  # garbage must not raise either
    assert "journal" in caplog.text


async def test_post_after_stop_is_dropped_not_raised() -> None:
    sink = MemorySink()
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink])
        await bus.start(stack)
    bus.post(status(1))
    assert bus.stats()[0].dropped == 1 and sink.events == []


async def test_stop_is_bounded_even_when_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "aioelastic.tracing")
    stuck = BlockedSink()
    with anyio.move_on_after(0.1):
        async with AsyncExitStack() as stack:
            bus = TraceBus([stuck], grace_period=0.3)
            await bus.start(stack)
            bus.post(status(1))
            await anyio.sleep_forever()
    assert "not written within the 0.3s grace period" in caplog.text


async def test_the_bus_journal_path_goes_to_the_durable_sink(tmp_path: Path) -> None:
    class DurableSink(MemorySink):
        def __init__(self, journal_path: Path) -> None:
            super().__init__()
            self.journal_path = journal_path

    durable = DurableSink(tmp_path / "default.journal")
    plain, other = MemorySink(), DurableSink(tmp_path / "other.journal")
    async with AsyncExitStack() as stack:
        bus = TraceBus([plain, durable, other], journal_path=tmp_path / "chosen.journal")
        await bus.start(stack)
        assert [s.journal for s in bus.stats()] == [
            None,
            tmp_path / "chosen.journal",
            tmp_path / "other.journal",
        ]
    clash = TraceBus([MemorySink()], journal_path=tmp_path / "other.journal")
    clash.subscribe(MemorySink(), journal_path=tmp_path / "other.journal")
    with pytest.raises(ConfigError):
        async with AsyncExitStack() as stack:
            await clash.start(stack)


async def test_a_fully_written_journal_segment_is_not_left_for_the_next_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trace.journal"
    journal = Journal(path)
    journal.open()
    posted = events(10)
    journal.append(posted[:4])
    journal.append(posted[4:])
    journal.rotate()
    first = await journal.read(4)
    journal.commit(len(first))
    rest = await journal.read(100)  # reaches the end of the segment
    journal.commit(len(rest))
    assert ids(first + rest) == ids(posted)
    journal.close()  # before the next read() would have removed the segment
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


async def test_events_in_memory_are_journaled_before_a_watchdog_exit(tmp_path: Path) -> None:
    """The loop watchdog ends a stalled process with ``os._exit``: what the bus held only in
    memory (a batch stuck in a write, the queue) must be in the journal, fsync'd, first."""
    sink = BlockedSink()
    journal = tmp_path / "trace.journal"
    posted = events(30)
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink], batch_size=10, journal_path=journal, journal_window=3600, grace_period=0.2
        )
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        await eventually(lambda: sink.calls == 1)  # one batch in flight, the rest queued
        assert not journal.exists() or journal.read_text() == ""
        saved = await anyio.to_thread.run_sync(bus.save_before_exit)  # another thread
        assert saved == 30
        lines = [line for line in journal.read_text().splitlines() if line]
        assert sorted(decode_event(line).id for line in lines) == sorted(ids(posted))
        sink.release.set()


async def test_a_sink_taking_overlapping_writes_gets_two_batches_at_once(tmp_path: Path) -> None:
    sink = PipelinedSink()
    posted = events(1000)
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], batch_size=100, journal_path=tmp_path / "trace.journal")
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        with anyio.fail_after(10):
            await bus.flush()
        assert bus.stats()[0].written == len(posted) and bus.stats()[0].queued == 0
    assert sink.most_active == 2
    assert ids(sink.committed) == ids(posted)


async def test_a_write_failing_while_the_next_is_in_progress_loses_nothing_and_keeps_order(
    tmp_path: Path,
) -> None:
    sink = PipelinedSink(fail=[3])
    posted = events(1000)
    async with AsyncExitStack() as stack:
        bus = TraceBus(
            [sink], batch_size=100, journal_path=tmp_path / "trace.journal", retry_initial=0.01
        )
        await bus.start(stack)
        for event in posted:
            bus.post(event)
        with anyio.fail_after(10):
            await bus.flush()
        stats = bus.stats()[0]
    assert sink.refused >= 1  # the write after the failed one was in progress, and failed too
    assert stats.failed_writes >= 2 and stats.journaled >= 200 and stats.dropped == 0
    first_seen = list(dict.fromkeys(ids(sink.committed)))
    assert first_seen == ids(posted)  # all of them, never a batch before an earlier one
