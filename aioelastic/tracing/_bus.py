"""The trace bus: a bounded, non-blocking hand-off from executors to sinks.

Each sink gets its own *lane*: a bounded in-memory queue, a writer task, and (optionally) an
overflow journal. ``post()`` appends the event to every lane; a lane whose queue is full appends
it to its journal instead (or, without a journal, drops it and says so). A lane's writer sends
batches (``batch_size`` events, or fewer after ``flush_interval`` seconds) and retries a failed
batch with capped exponential backoff until it is written, so one slow or broken sink delays only
its own lane. Journal backlogs (overflow, or files left by an earlier process) are replayed
alternately with the live queue once the sink accepts writes.

A sink whose ``concurrent_writes`` is above 1 (``PostgresSink``: 2) gets that many live batches
at once while it is healthy and the lane's journal works, so that one batch's commit overlaps
the next one's rows. Such a sink commits overlapping batches in posting order and fails a batch
whose predecessor (in progress when it began) failed; the lane retries a batch only once the
ones before it are done, and replays the journal only with nothing else in progress.

A sink with a ``max_batch_size`` above ``batch_size`` (``PostgresSink``) gets bigger batches while
a backlog waits: as many events as its recent writes got through in 25 % of ``journal_window``
(the slowest writes take several times the usual: they must stay within the window).

A failing sink loses nothing to a kill -9: once a write fails (or has been pending for more than
``journal_window``, 100 ms; a pipelined write counts from the end of the one before it; a stall
of the event loop itself, seen as the bus's tick coming late, does not count), the
lane's queue and the unconfirmed batches are appended to its journal at once, and every event
posted while the sink keeps failing goes straight to the journal (each line reaches the OS as it
is written; the journal is fsync'd every ``journal_window``). So a process killed during a
database outage loses at most the events of one ``journal_window``; with a healthy sink, at most
the events not yet written (``flush_interval`` plus the writes in progress). A journal that
cannot be written (full disk, unwritable path) keeps events in memory up to ``max_queue``, drops
the rest, logs one ERROR until it works again, and counts ``journal_errors``.

A sink fails by raising anything but cancellation: a ``SystemExit``, ``GeneratorExit`` or other
``BaseException`` from ``write()`` fails that write only (logged, retried or journaled like any
failure), never the owner or the other sinks. A ``KeyboardInterrupt`` from ``write()`` is Ctrl-C
that happened to land inside the sink: the write counts as failed (so the batch is kept), and
SIGINT is sent to the process again, outside the sink, so whoever handles it (``Scheduler.run``:
a graceful stop that flushes every sink) gets it. From ``aclose()`` it is re-raised once the
other sinks are closed.

Shutdown (the owner's exit stack unwinding): lanes flush their queues and journal backlogs for
up to ``grace_period`` seconds, then stop; a sink that was failing gets one prompt attempt (its
retry backoff is cut short), and once a write fails during shutdown the journal is left to the
next process. A failing write whose batch is journaled is not waited for; one that is only slow
(pending past ``journal_window``, none failed) is, for up to a second. Whatever is still queued
(including an unconfirmed batch) is appended to the lane's journal and fsync'd, to be replayed
by the next process. Finally the bus closes the sinks that have an ``aclose()`` method.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus

from .._errors import ConfigError
from ._events import TraceEvent, TraceSink
from ._journal import Journal

__all__ = ["ClosableSink", "SinkStats", "TraceBus"]

log = logging.getLogger("aioelastic.tracing")

#: Bound on each shutdown step that is not the flush itself (fsync, sink close, task exit).
_CLEANUP_TIMEOUT = 5.0
#: With a backlog, a write takes as many events as recent writes wrote in this share of the
#: journal window (a write pending past the whole window counts as stuck).
_BACKLOG_WRITE_SHARE = 0.25
#: At shutdown, a write that is only slow (pending past the journal window, none failed) gets
#: this long (within the grace period) before it is abandoned to the journal; after a failed
#: write, none.
_SHUTDOWN_PATIENCE = 1.0
#: Most events remembered as written twice (beyond, forgotten: replay writes them again, which the
#: sinks take, idempotent by event id).
_WRITTEN_TWICE_LIMIT = 100_000
#: Weight of the latest write in the recent write rate (an exponential moving average).
_RATE_WEIGHT = 0.25


@runtime_checkable
class ClosableSink(Protocol):
    """A sink with resources (a pool, a file) that the bus releases after its final flush."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkStats:
    """Counters of one sink's lane (since the bus was created)."""

    sink: str
    queued: int
    written: int
    journaled: int
    replayed: int
    dropped: int
    failed_writes: int
    journal: Path | None
    #: failed journal appends (full disk, unwritable path): events stayed in memory or dropped
    journal_errors: int = 0
    #: whether the sink's last write failed (events then go straight to the journal)
    failing: bool = False


class _Throttle:
    """Allows one log line per ``interval`` seconds; counts the suppressed ones."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self.suppressed = 0
        self._last = -interval

    def allow(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            return True
        self.suppressed += 1
        return False


@dataclass(frozen=True, slots=True)
class _LaneConfig:
    max_queue: int
    batch_size: int
    #: None: the sink's own ``max_batch_size`` (or ``batch_size`` if it has none)
    max_batch_size: int | None
    flush_interval: float
    write_timeout: float
    retry_initial: float
    retry_max: float
    journal_window: float


@dataclass(frozen=True, slots=True)
class _Write:
    """A live batch written while the lane goes on to the next one."""

    events: list[TraceEvent]
    finished: anyio.Event


def _sink_name(sink: TraceSink) -> str:
    return getattr(sink, "name", None) or type(sink).__name__


class _Lane:
    """Queue, writer and journal of one sink."""

    def __init__(self, sink: TraceSink, journal_path: Path | None, config: _LaneConfig) -> None:
        self.sink = sink
        self.name = _sink_name(sink)
        self.explicit_journal = journal_path is not None
        own = getattr(sink, "journal_path", None)
        self.wants_journal = own is not None
        self.journal_path = journal_path or (Path(own) if own is not None else None)
        self.journal: Journal | None = None
        self.config = config
        self.queue: deque[TraceEvent] = deque()
        #: live batches being written (taken from ``queue``, oldest first), and whether all of
        #: them are journaled
        self.outstanding: list[list[TraceEvent]] = []
        self._outstanding_events = 0  # their length (``offer`` reads it per event)
        self.inflight_journaled = False
        #: live batches at once (the sink's ``concurrent_writes``), while it is healthy
        self.depth = max(1, int(getattr(sink, "concurrent_writes", 1)))
        self._background: list[_Write] = []  # pipelined writes, oldest first
        self._attempts: dict[int, float] = {}  # start of each write attempt in progress
        self._foreground = False
        self.failing = False
        #: failing only because a write is pending past ``journal_window`` (none failed)
        self.slow_only = False
        self.written = self.dropped = self.failed_writes = self.journal_errors = 0
        self._journal_broken = False
        self.closing = self.closed = False
        #: set when shutdown begins (cuts short a retry backoff in progress, once)
        self._closing = anyio.Event()
        #: a write failed during shutdown: the sink is down, leave the journal to the next bus
        self._failed_while_closing = False
        self._write_scopes: set[anyio.CancelScope] = set()  # of the writes in progress
        self.running = False
        self.drained = anyio.Event()
        self.exited = anyio.Event()
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._idle_set = False  # mirrors ``_idle.is_set()`` (``offer`` reads it per event)
        self._max_queue, self._batch_size = config.max_queue, config.batch_size
        #: most events per write with a backlog (the bus's, or the sink's ``max_batch_size``)
        self.max_batch_size = max(
            config.batch_size,
            config.max_batch_size or int(getattr(sink, "max_batch_size", config.batch_size)),
        )
        #: recent events per second of a write's pending time (None: no write measured yet)
        self._write_rate: float | None = None
        #: events written from memory after they went to the journal too (a write pending past
        #: ``journal_window`` that then succeeded): replay skips them (equal events, not ids:
        #: a run's start and completion share its id)
        self._written_twice: set[TraceEvent] = set()
        self._replay_lines = 0  # lines of the journal batch being written
        self._prefer_journal = False
        self._journal_retry_at = 0.0
        self._drop_log = _Throttle()
        self._fail_log = _Throttle()

    @property
    def inflight(self) -> list[TraceEvent]:
        """The events of the live batches being written, in posting order."""
        if len(self.outstanding) == 1:
            return self.outstanding[0]
        return [event for batch in self.outstanding for event in batch]

    @property
    def busy(self) -> bool:
        return self._foreground or bool(self._background)

    # -- producer side (event loop, never awaits, never raises) -------------------------------

    def offer(self, event: TraceEvent) -> None:
        if self._idle_set:
            self._idle, self._idle_set = anyio.Event(), False
        queue = self.queue
        if self.closed:
            self._drop([event], "the trace bus is stopped")
        elif self.failing and self.journal is not None and not self._journal_broken:
            self.overflow([event])
        elif (
            len(queue) + (0 if self.inflight_journaled else self._outstanding_events)
            < self._max_queue
        ):  # ``in_memory``, inline: this runs for every event
            queue.append(event)
            if len(queue) == 1 or len(queue) == self._batch_size:
                self._wake.set()
        else:
            self.overflow([event])

    def overflow(self, events: Sequence[TraceEvent]) -> bool:
        """Append ``events`` to the journal; if it fails, keep them in memory while there is
        room (drop the rest). Returns whether the journal took them."""
        if not events:
            return True
        if self.journal is None:
            self._drop(events, "queue full and no journal")
            return False
        try:
            self.journal.append(events)
        except (OSError, ValueError) as exc:
            self._journal_failed(exc)
            room = max(self.config.max_queue - self.in_memory, 0)
            if not self.closed:
                self.queue.extend(events[:room])
            self._drop(events[room:] if not self.closed else events, "the journal failed")
            return False
        finally:
            self._wake.set()
        self._journal_works()
        return True

    @property
    def in_memory(self) -> int:
        """Events only this process holds (queue and an unjournaled in-flight batch)."""
        return len(self.queue) + (0 if self.inflight_journaled else self._outstanding_events)

    def _journal_failed(self, exc: BaseException) -> None:
        self.journal_errors += 1
        if not self._journal_broken:
            self._journal_broken = True
            log.error(
                "trace sink %s: journal %s cannot be written (%r); events stay in memory (up to "
                "%d) and are dropped beyond; logged once until it works again",
                self.name,
                self.journal.path if self.journal else None,
                exc,
                self.config.max_queue,
            )

    def spill_while_failing(self) -> None:
        """Move what is in memory (queue, unjournaled in-flight batch) to the journal; if the
        journal fails, everything stays where it is (retried at the next tick)."""
        if self.journal is None:
            return
        take_inflight = bool(self.inflight) and not self.inflight_journaled
        events = [*(self.inflight if take_inflight else ()), *self.queue]
        if not events:
            return
        try:
            self.journal.append(events)
        except (OSError, ValueError) as exc:
            self._journal_failed(exc)
            return
        self._journal_works()
        self.queue.clear()
        self.inflight_journaled = self.inflight_journaled or take_inflight
        self._wake.set()

    def _journal_works(self) -> None:
        if self._journal_broken and self.journal is not None:
            self._journal_broken = False
            log.warning("trace journal %s: writable again", self.journal.path)

    def excuse_stall(self, stalled: float, now: float) -> None:
        """Don't count ``stalled`` seconds of the writes' pending time: the event loop stood
        still (a long garbage collection, the CPU taken by other processes, a long callback),
        so no reply could be read, and no event posted, meanwhile. A write is stuck if it is
        pending for ``journal_window`` of the loop's running time."""
        if stalled > 0:
            self._attempts = {k: min(start + stalled, now) for k, start in self._attempts.items()}

    def degrade_if_stuck(self, now: float) -> None:
        """A write pending for more than ``journal_window``: treat the sink as failing."""
        started = min(self._attempts.values(), default=now)
        if self.busy and self.outstanding and now - started > self.config.journal_window:
            if not self.failing:
                log.warning(
                    "trace sink %s: a write is pending for more than %.1fs; journaling events",
                    self.name,
                    self.config.journal_window,
                )
            self.failing = self.slow_only = True
        if self.failing and (self.queue or (self.inflight and not self.inflight_journaled)):
            self.spill_while_failing()
        self.abandon_stuck_write()

    def abandon_stuck_write(self) -> None:
        """Shutdown: stop waiting for a failing write whose batch is journaled already (the
        next process replays it), so that a database that is down does not hold the stop for
        the whole grace period. A write that is only slow (no write failed: it is pending past
        ``journal_window``, as a first write that connects and creates the tables may be under
        load) gets ``_SHUTDOWN_PATIENCE`` seconds to finish first."""
        scopes = [scope for scope in self._write_scopes if not scope.cancel_called]
        if self.closing and self.failing and self.inflight_journaled and scopes:
            pending = time.monotonic() - min(self._attempts.values(), default=0.0)
            if self.slow_only and pending < _SHUTDOWN_PATIENCE:
                return  # the next tick looks again
            log.info(
                "trace sink %s: not waiting for a stuck write at shutdown; its %d event(s) "
                "are in the journal %s for the next process",
                self.name,
                len(self.inflight),
                self.journal.path if self.journal else None,
            )
            for scope in scopes:
                scope.cancel()

    def _drop(self, events: Sequence[TraceEvent], why: str) -> None:
        if not events:
            return
        self.dropped += len(events)
        if self._drop_log.allow():
            log.error(
                "trace sink %s: %d event(s) dropped (%s); %d dropped so far",
                self.name,
                len(events),
                why,
                self.dropped,
            )

    # -- writer ----------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer; an unexpected error restarts it (the trace never fails its owner)."""
        self.running = True
        task_status.started()
        try:
            while True:
                try:
                    await self._write_forever()
                except Exception:
                    self._reset_writes()
                    log.exception("trace sink %s: writer failed; restarting", self.name)
                    await anyio.sleep(self.config.retry_max)
        finally:
            self.exited.set()

    def _reset_writes(self) -> None:
        """After an unexpected writer error: unconfirmed live events go back to the queue."""
        if not self.inflight_journaled:
            self.queue.extendleft(reversed(self.inflight))
        self._set_outstanding([])
        self.inflight_journaled = False
        self._background = []
        self._attempts.clear()
        self._foreground = False

    async def _write_forever(self) -> None:
        async with anyio.create_task_group() as tg:
            while True:
                while len(self._background) >= self.depth:
                    await self._background[0].finished.wait()
                batch, from_journal = await self._next_batch()
                if not from_journal and self._may_pipeline():
                    after = self._background[-1].finished if self._background else None
                    write = _Write(batch, anyio.Event())
                    self._background.append(write)
                    tg.start_soon(self._write_behind, write, after)
                    continue
                while self._background:
                    await self._background[-1].finished.wait()
                self._foreground = True
                if await self._deliver(batch, from_journal):
                    self._confirm(batch, from_journal)
                if not from_journal:
                    self._finished(batch)
                self._foreground = False

    def _set_outstanding(self, batches: list[list[TraceEvent]]) -> None:
        self.outstanding = batches
        self._outstanding_events = sum(len(batch) for batch in batches)

    def _may_pipeline(self) -> bool:
        """Whether the next live batch may be written while others are: with a sink that takes
        overlapping writes, while it is healthy and a working journal holds nothing of ours."""
        journal_ok = self.journal is not None and not self._journal_broken
        return self.depth > 1 and journal_ok and not self.failing and not self.inflight_journaled

    async def _write_behind(self, write: _Write, after: anyio.Event | None) -> None:
        """A pipelined live batch (the sink commits overlapping writes in order)."""
        try:
            if await self._deliver(write.events, False, after):
                self._confirm(write.events, False)
            self._finished(write.events)
        finally:  # cancelled (shutdown): the batch stays outstanding, for ``spill()``
            self._background.remove(write)
            write.finished.set()
            self._wake.set()

    def _finished(self, batch: list[TraceEvent]) -> None:
        """``batch`` is written or journaled: no longer held by this lane."""
        self._set_outstanding([b for b in self.outstanding if b is not batch])
        now = time.monotonic()  # a later write's pending time counts from now (it waited)
        self._attempts = {key: max(started, now) for key, started in self._attempts.items()}
        if not self.outstanding:
            self.inflight_journaled = False

    async def _next_batch(self) -> tuple[list[TraceEvent], bool]:
        while True:
            if self._journal_turn():
                events = await self._read_journal()
                if events:
                    self._prefer_journal = False
                    return events, True
            may_take = not self.failing or self.journal is None or self._journal_broken
            if self.queue and may_take and not (self.outstanding and self.inflight_journaled):
                await self._fill()
                if self.queue and not (self.outstanding and self.inflight_journaled):
                    size = min(self.batch_limit(len(self.queue)), len(self.queue))
                    batch = [self.queue.popleft() for _ in range(size)]
                    self._set_outstanding([*self.outstanding, batch])
                    self._prefer_journal = True
                    return batch, False
                continue
            if self.closing and not self.busy:
                self.drained.set()
            if self.idle:
                self._idle.set()
                self._idle_set = True
            await self._sleep_until_woken(self._journal_retry_at - time.monotonic())

    def batch_limit(self, waiting: int) -> int:
        """Most events for the next write, ``waiting`` being written: ``batch_size``, or with a
        backlog as many as recent writes got through in ``_BACKLOG_WRITE_SHARE`` of
        ``journal_window`` (so a bigger batch is not mistaken for a stuck write), up to
        ``max_batch_size``."""
        size, rate = self.config.batch_size, self._write_rate
        if rate is None or self.failing or waiting <= size or self.max_batch_size == size:
            return size
        fits = int(rate * self.config.journal_window * _BACKLOG_WRITE_SHARE)
        return max(size, min(fits, self.max_batch_size))

    def _measured(self, events: int, pending: float) -> None:
        """A write of ``events`` succeeded after ``pending`` seconds (as ``degrade_if_stuck``
        counts them): update the recent write rate (from full batches: a few events'
        write is mostly its fixed cost)."""
        if events < self.config.batch_size:
            return
        rate = events / max(pending, 1e-4)
        last = self._write_rate
        self._write_rate = rate if last is None else last + (rate - last) * _RATE_WEIGHT

    def _journal_turn(self) -> bool:
        """Replay journal backlog, alternating with the live queue; while closing, only until a
        write fails (what the journal holds is safe on disk, the queue is not)."""
        journal = self.journal
        if journal is None or self._failed_while_closing or not journal.has_backlog:
            return False
        if self._background:  # how they end decides (a failure while closing: no replay)
            return False
        if time.monotonic() < self._journal_retry_at:
            return False
        return self._prefer_journal or not self.queue or self.failing

    async def _read_journal(self) -> list[TraceEvent]:
        """The next journal batch, without the events this lane wrote from memory after they
        were journaled (``_written_twice``); a disk error pauses replay (``retry_max``), never
        the lane."""
        journal = self.journal
        assert journal is not None
        try:
            journal.rotate()
            while True:
                events = await journal.read(self.batch_limit(self.max_batch_size))
                skip = self._written_twice
                kept = [event for event in events if event not in skip] if skip else events
                if kept or not events:
                    self._replay_lines = len(events)
                    if not journal.has_backlog or len(skip) > _WRITTEN_TWICE_LIMIT:
                        skip.clear()
                    return kept
                journal.commit(len(events))  # all written already
        except OSError as exc:
            self._journal_retry_at = time.monotonic() + self.config.retry_max
            log.error("trace journal %s: replay failed: %r", journal.path, exc)
            return []

    async def _fill(self) -> None:
        """Wait up to ``flush_interval`` for a full batch."""
        with anyio.move_on_after(self.config.flush_interval):
            while len(self.queue) < self.config.batch_size and not self.closing:
                await self._sleep_until_woken()

    async def _sleep_until_woken(self, timeout: float | None = None) -> None:
        if not self._wake.is_set():
            if timeout is not None and timeout > 0:
                with anyio.move_on_after(timeout):
                    await self._wake.wait()
            else:
                await self._wake.wait()
        self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    def begin_closing(self) -> None:
        """Shutdown: flush the queue and the journal backlog; a sink that was failing gets one
        prompt attempt (its backoff is cut short) to show it is back."""
        self.closing = True
        self._journal_retry_at = 0.0
        self._closing.set()
        self.wake()
        self.abandon_stuck_write()

    async def _pause(self, delay: float) -> None:
        """Back off ``delay`` seconds; shutdown beginning meanwhile ends the pause early."""
        if self.closing:
            await anyio.sleep(delay)
            return
        with anyio.move_on_after(delay):
            await self._closing.wait()

    async def _deliver(
        self, batch: list[TraceEvent], from_journal: bool, after: anyio.Event | None = None
    ) -> bool:
        """Write ``batch``; on failure retry with capped, jittered exponential backoff (a
        pipelined batch only once the writes before it, ``after``, are done).

        A live batch that fails is journaled (with the queue) instead of retried, when the
        lane has a working journal: returns False then (the batch will come back from there).
        """
        attempt = 0
        while True:
            self._attempts[id(batch)] = time.monotonic()
            scope = anyio.CancelScope()
            self._write_scopes.add(scope)
            try:
                with scope, anyio.fail_after(self.config.write_timeout):
                    await self.sink.write(batch)
                if scope.cancelled_caught:  # abandon_stuck_write(): the batch is journaled
                    self._failed_while_closing = True
                    return False
            except BaseException as exc:  # a sink's SystemExit, GeneratorExit... too
                if _is_cancellation(exc):
                    raise
                attempt += 1
                delay = self._failed(exc, len(batch), attempt, from_journal)
                if isinstance(exc, KeyboardInterrupt):  # the batch is safe: pass it on
                    _redeliver_interrupt(self.name)
                if delay is None:
                    return False
                await self._pause(delay)
                if after is not None:
                    await after.wait()
                continue
            finally:
                self._write_scopes.discard(scope)
                pending = time.monotonic() - self._attempts.pop(id(batch), time.monotonic())
            self._measured(len(batch), pending)
            if attempt or self.failing:
                log.info("trace sink %s: write succeeded after %d retries", self.name, attempt)
            self.failing = self.slow_only = False
            return True

    def _failed(
        self, exc: BaseException, size: int, attempt: int, from_journal: bool
    ) -> float | None:
        """Count and log a failed write and journal what is in memory; the delay before the
        batch's next attempt, or None if it is left to the journal (not retried from memory)."""
        self.failed_writes += 1
        self.failing, self.slow_only = True, False
        delay = self._backoff(attempt)
        self._log_failure(exc, size, attempt, delay)
        if self.closing:
            self._failed_while_closing = True
            if from_journal:  # it stays in the journal, for the next bus
                return None
        if not from_journal and self.journal is not None:
            self.spill_while_failing()
            if self.inflight_journaled:
                self._journal_retry_at = time.monotonic() + delay
                return None
        return delay

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.config.retry_max, self.config.retry_initial * 2.0 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)

    def _log_failure(self, exc: BaseException, size: int, attempt: int, delay: float) -> None:
        if attempt == 1 or self._fail_log.allow():
            log.warning(
                "trace sink %s: writing %d event(s) failed (attempt %d: %s: %s); "
                "retrying in %.1fs, %d queued",
                self.name,
                size,
                attempt,
                type(exc).__name__,
                exc,
                delay,
                len(self.queue),
            )
            log.debug("trace sink %s failure", self.name, exc_info=exc)

    def _confirm(self, batch: list[TraceEvent], from_journal: bool) -> None:
        self.written += len(batch)
        if from_journal:
            assert self.journal is not None
            self.journal.commit(self._replay_lines)
        elif self.inflight_journaled:  # a slow write that made it: its journal copy is spare
            self._written_twice.update(batch)

    # -- shutdown --------------------------------------------------------------------------

    def spill(self) -> int:
        """Move the whole queue (and an unconfirmed, unjournaled batch) to the journal (or count
        it dropped); the lane is then closed."""
        remaining = [] if self.inflight_journaled else list(self.inflight)
        remaining += self.queue
        self.queue.clear()
        self._set_outstanding([])
        self.closed = True
        self.overflow(remaining)
        return len(remaining)

    def save_before_exit(self) -> int:
        """Journal (and fsync) what only this process holds, from another thread while the event
        loop is stuck and the process is about to end; the queue is left as it is."""
        if self.journal is None or self._journal_broken:
            return 0
        held = [] if self.inflight_journaled else list(self.inflight)
        held += list(self.queue)
        try:
            if held:
                self.journal.append(held)
            self.journal.sync_now()
        except (OSError, ValueError):
            return 0
        return len(held)

    async def wait_idle(self) -> None:
        """Return once queue and journal backlog are written (the lane has nothing to do)."""
        while not self.idle:
            await self._idle.wait()

    @property
    def idle(self) -> bool:
        backlog = self.journal is not None and self.journal.has_backlog
        return not self.queue and not self.busy and not backlog

    def stats(self) -> SinkStats:
        journal = self.journal
        return SinkStats(
            sink=self.name,
            queued=self.in_memory,
            written=self.written,
            journaled=journal.appended if journal else 0,
            replayed=journal.replayed if journal else 0,
            dropped=self.dropped,
            failed_writes=self.failed_writes,
            journal=journal.path if journal else self.journal_path,
            journal_errors=self.journal_errors,
            failing=self.failing,
        )


class TraceBus:
    """Bounded, non-blocking delivery of trace events to one or more sinks.

    Args:
        sinks: where events go; each gets every event, independently.
        max_queue: events kept in memory per sink; beyond it they go to the sink's journal.
        batch_size: most events per ``write()`` (but see ``max_batch_size``).
        max_batch_size: with more than ``batch_size`` events waiting, a write may take up to
            this many, as many as recent writes got through in 25 % of ``journal_window``
            (fewer transactions for a backlog; light load keeps ``batch_size`` and
            ``flush_interval``). None (default): the sink's own ``max_batch_size`` attribute
            if it has one (``PostgresSink``), else ``batch_size``.
        flush_interval: longest wait (seconds) for a batch to fill before it is sent.
        grace_period: seconds allowed at shutdown to flush queues before spilling to journals.
        journal_path: the overflow journal of the bus's durable sink: the first sink that
            has a ``journal_path`` attribute (sinks from :func:`create_sink` do, defaulting to
            :func:`default_journal_path`), which it overrides; without one, the first sink.
            Other sinks keep their own ``journal_path`` (or ``subscribe(sink, journal_path=)``);
            a sink without any journal drops overflow (and logs it).
        write_timeout: deadline of one ``sink.write()`` call.
        retry_initial, retry_max: backoff between failed writes (doubling, capped, jittered).
        journal_fsync_interval: how often (seconds) appended journal lines are fsync'd.
        journal_window: while a sink fails, or a write has been pending this long (seconds),
            events go to the journal within this window, and it is fsync'd as often: the most
            a kill -9 during an outage can lose.
    """

    def __init__(
        self,
        sinks: Sequence[TraceSink],
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        max_batch_size: int | None = None,
        flush_interval: float = 0.2,
        grace_period: float = 5.0,
        journal_path: Path | None = None,
        write_timeout: float = 30.0,
        retry_initial: float = 0.2,
        retry_max: float = 10.0,
        journal_fsync_interval: float = 1.0,
        journal_window: float = 0.1,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ConfigError("max_queue/batch_size", (max_queue, batch_size), "must be >= 1")
        if max_batch_size is not None and max_batch_size < batch_size:
            raise ConfigError("max_batch_size", max_batch_size, f"must be >= {batch_size=}")
        durations = {
            "flush_interval": (flush_interval, 0.0),
            "grace_period": (grace_period, 0.0),
            "journal_fsync_interval": (journal_fsync_interval, 0.0),
            "write_timeout": (write_timeout, None),
            "retry_initial": (retry_initial, None),
            "retry_max": (retry_max, None),
            "journal_window": (journal_window, None),
        }
        for name, (value, low) in durations.items():
            # (``not >`` refuses NaN, which passes every ``<`` check and never times out)
            if not (value >= low if low is not None else value > 0):
                raise ConfigError(name, value, f"must be {'>= 0' if low is not None else '> 0'} s")
        self._config = _LaneConfig(
            max_queue=max_queue,
            batch_size=batch_size,
            max_batch_size=max_batch_size,
            flush_interval=flush_interval,
            write_timeout=write_timeout,
            retry_initial=retry_initial,
            retry_max=retry_max,
            journal_window=journal_window,
        )
        self._grace = grace_period
        self._fsync_interval = journal_fsync_interval
        self._journal_path = journal_path
        self._lanes: list[_Lane] = []
        self._started = False
        for sink in sinks:
            self.subscribe(sink)

    @property
    def sinks(self) -> list[TraceSink]:
        """The subscribed sinks, in subscription order."""
        return [lane.sink for lane in self._lanes]

    def subscribe(self, sink: TraceSink, *, journal_path: Path | None = None) -> None:
        """Add a sink (before ``start``); ``journal_path`` overrides any other choice."""
        if self._started:
            raise RuntimeError("subscribe() after start()")
        self._lanes.append(_Lane(sink, journal_path, self._config))

    def _assign_journals(self) -> None:
        """Give the bus's ``journal_path`` to its sink; refuse two sinks sharing one file."""
        if self._journal_path is not None:
            free = [lane for lane in self._lanes if not lane.explicit_journal]
            target = next((lane for lane in free if lane.wants_journal), None)
            target = target or (free[0] if free else None)
            if target is not None:
                target.journal_path = self._journal_path
        paths = [lane.journal_path for lane in self._lanes if lane.journal_path is not None]
        if len(set(paths)) != len(paths):
            raise ConfigError("journal_path", [str(p) for p in paths], "two sinks share a journal")

    def post(self, event: TraceEvent) -> None:
        """Hand ``event`` to every sink. Synchronous; never blocks on a sink, never raises."""
        try:
            for lane in self._lanes:
                lane.offer(event)
        except Exception:
            log.exception("trace bus: post() failed for %r", event)

    @property
    def max_queue(self) -> int:
        """Events each sink's lane keeps in memory at most (beyond: its journal)."""
        return self._config.max_queue

    def stats(self) -> list[SinkStats]:
        """Counters of every sink's lane."""
        return [lane.stats() for lane in self._lanes]

    def save_before_exit(self) -> int:
        """Journal every event still in memory, safe to call from another thread while the event
        loop is blocked (the loop watchdog calls it before ending the process). Returns how many
        events were saved; a later process replays them."""
        return sum(lane.save_before_exit() for lane in self._lanes)

    async def flush(self) -> None:
        """Wait until every queue and journal backlog is written (callers set the deadline:
        ``with anyio.fail_after(5): await bus.flush()``)."""
        while not all(lane.idle for lane in self._lanes):
            for lane in self._lanes:
                await lane.wait_idle()

    # -- lifetime ----------------------------------------------------------------------------

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Open journals (queueing leftovers for replay) and start the writers.

        Everything stops when ``exit_stack`` unwinds: see the module docstring.
        """
        self._assign_journals()
        self._started = True
        for lane in self._lanes:
            await self._open_journal(lane)
        tg = await exit_stack.enter_async_context(anyio.create_task_group())
        exit_stack.push_async_callback(self._stop, tg)
        for lane in self._lanes:
            await tg.start(lane.run)
        if any(lane.journal for lane in self._lanes):
            await tg.start(self._sync_journals)

    async def _open_journal(self, lane: _Lane) -> None:
        if lane.journal_path is None:
            return
        journal = Journal(lane.journal_path)
        try:
            with anyio.fail_after(_CLEANUP_TIMEOUT):
                await anyio.to_thread.run_sync(journal.open)
        except OSError as exc:  # TimeoutError included
            lane.journal_errors += 1
            log.error(
                "trace sink %s: journal %s unusable (%r); overflow will be dropped",
                lane.name,
                lane.journal_path,
                exc,
            )
            return
        lane.journal = journal

    async def _sync_journals(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        tick = min(self._config.journal_window, self._fsync_interval)
        last_sync = time.monotonic()
        while True:
            slept_at = time.monotonic()
            await anyio.sleep(tick)
            now = time.monotonic()
            stalled = max(now - slept_at - tick, 0.0)  # the loop stood still (see excuse_stall)
            periodic = now - last_sync >= self._fsync_interval
            if periodic:
                last_sync = now
            for lane in self._lanes:
                if lane.journal is None:
                    continue
                lane.excuse_stall(stalled, now)
                lane.degrade_if_stuck(now)
                if periodic or lane.failing:
                    await self._sync_journal(lane.journal)

    @staticmethod
    async def _sync_journal(journal: Journal) -> None:
        try:
            with anyio.fail_after(_CLEANUP_TIMEOUT):
                await journal.sync()
        except Exception as exc:
            log.error("trace journal %s: fsync failed: %r", journal.path, exc)

    async def _stop(self, tg: TaskGroup) -> None:
        await self._drain_queues()
        tg.cancel_scope.cancel()
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            for lane in self._lanes:
                if lane.running:
                    await lane.exited.wait()
        await self._spill_and_close_journals()
        await self._close_sinks()

    async def _drain_queues(self) -> None:
        for lane in self._lanes:
            lane.begin_closing()
        with anyio.move_on_after(self._grace, shield=True):
            for lane in self._lanes:
                await lane.drained.wait()

    async def _spill_and_close_journals(self) -> None:
        for lane in self._lanes:
            spilled = lane.spill()
            if spilled:
                where = lane.journal.path if lane.journal else "nowhere (no journal)"
                log.warning(
                    "trace sink %s: %d event(s) not written within the %.1fs grace period; "
                    "saved to %s",
                    lane.name,
                    spilled,
                    self._grace,
                    where,
                )
            journal = lane.journal
            if journal is not None:
                with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                    await self._sync_journal(journal)
                    await anyio.to_thread.run_sync(journal.close)

    async def _close_sinks(self) -> None:
        interrupted: KeyboardInterrupt | None = None
        for lane in self._lanes:
            if isinstance(lane.sink, ClosableSink):
                try:
                    await _bounded_cleanup(lane.sink.aclose, f"closing trace sink {lane.name}")
                except KeyboardInterrupt as exc:
                    interrupted = exc
        if interrupted is not None:  # every other sink is closed now
            raise interrupted


async def _bounded_cleanup(fn: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``fn`` (a sink's code) for at most ``_CLEANUP_TIMEOUT``; its failure is logged, a
    ``KeyboardInterrupt`` from it re-raised (after the caller closed the other sinks)."""
    with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True) as scope:
        try:
            await fn()
        except BaseException as exc:
            if _is_cancellation(exc) or isinstance(exc, KeyboardInterrupt):
                raise
            log.warning("%s failed: %r", what, exc)
    if scope.cancelled_caught:
        log.warning("%s timed out after %.1fs", what, _CLEANUP_TIMEOUT)


def _is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is (or groups) the cancellation of the task running it."""
    cancelled = anyio.get_cancelled_exc_class()
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(cancelled) is not None
    return isinstance(exc, cancelled)


def _redeliver_interrupt(sink: str) -> None:
    """A ``KeyboardInterrupt`` raised inside a sink is Ctrl-C meant for the process, not a
    failure of the sink: send SIGINT again, now outside the sink (``Scheduler.run()``'s handler
    then stops gracefully, flushing every sink; with Python's default handler it is raised
    again here, as on any Ctrl-C)."""
    log.warning(
        "trace sink %s: KeyboardInterrupt inside write(); the batch is kept for a retry and "
        "SIGINT is delivered to the process again",
        sink,
    )
    signal.raise_signal(signal.SIGINT)
