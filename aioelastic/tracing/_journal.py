"""The overflow journal of one sink: an append-only JSON-lines file, replayed into the sink.

Layout, for a journal path ``P`` (e.g. ``~/.cache/aioelastic/trace-1a2b.journal``):

- ``P`` is the *active* file. ``post()`` appends one line per event that does not fit in memory
  (line-buffered: each line reaches the OS at once, so a killed process loses none of them).
- ``P.<n>.replay`` are *segments*: the active file is renamed to a segment before it is read back.
  Each segment is read in batches and deleted once every batch was written to the sink. A segment
  left by a crash is replayed again from its start (sinks are idempotent by event id).
- Fsync policy: the active file is fsync'd by the bus at most ``journal_fsync_interval`` seconds
  after a line was appended, and on shutdown; a power loss can lose that last interval.
- Files are created with mode 0600 in a 0700 directory (events carry job data).
- Several processes may share a journal path (two instances on one host): each one claims a
  *slot* (``P``, ``P.2``, ``P.3``... by ``flock`` on ``<slot>.lock``), and on start adopts the
  files of every slot whose lock is free (its owner has exited), so nothing is left behind.

File operations that must be atomic with ``post()`` (append, rename) run on the event loop
thread and are single, short syscalls; fsync and reading run in worker threads.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
import anyio.to_thread

from ._codec import decode_event, encode_event
from ._events import TraceEvent

__all__ = ["Journal"]

log = logging.getLogger("aioelastic.tracing")

_MAX_SLOTS = 32


def _slot_path(base: Path, slot: int) -> Path:
    return base if slot == 0 else base.with_name(f"{base.name}.{slot + 1}")


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _segments_of(path: Path) -> list[Path]:
    found = path.parent.glob(path.name + ".*.replay")
    return sorted(found, key=lambda p: p.name)


def _try_lock(path: Path) -> IO[bytes] | None:
    handle = open(_lock_path(path), "ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


@dataclass
class _Segment:
    """A file being replayed: read position and the position after the last read batch."""

    path: Path
    offset: int = 0
    pending: int = 0
    #: the last read reached the end of the file (its commit finishes the segment)
    at_end: bool = False
    done: bool = False
    handle: IO[bytes] | None = field(default=None, repr=False)


class Journal:
    """Overflow file of one sink (see the module docstring for layout and fsync policy)."""

    def __init__(self, path: Path) -> None:
        self.requested = path
        self.path = path
        self.appended = 0
        self.replayed = 0
        self.damaged = 0
        self._file: IO[str] | None = None
        self._retired: list[IO[str]] = []
        self._lock: IO[bytes] | None = None
        self._active_lines = 0
        self._dirty = False
        self._torn = False
        self._segments: deque[_Segment] = deque()
        self._seq = 0
        self._sync_lock = anyio.Lock()

    # -- lifetime (blocking; run in a worker thread) ------------------------------------------

    def open(self) -> None:
        """Claim a slot, adopt files left by exited processes, queue them for replay."""
        self.requested.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        for slot in range(_MAX_SLOTS):
            candidate = _slot_path(self.requested, slot)
            self._lock = _try_lock(candidate)
            if self._lock is not None:
                self.path = candidate
                break
        else:
            raise OSError(f"all {_MAX_SLOTS} journal slots of {self.requested} are in use")
        for slot in range(_MAX_SLOTS):
            self._adopt(_slot_path(self.requested, slot))
        if self._segments:
            log.info("trace journal %s: %d file(s) to replay", self.path, len(self._segments))

    def _adopt(self, path: Path) -> None:
        if path == self.path:
            self._take_files(path)
            return
        if not path.exists() and not _segments_of(path):
            return
        lock = _try_lock(path)
        if lock is None:  # a live process owns it
            return
        try:
            self._take_files(path)
        finally:
            lock.close()

    def _take_files(self, path: Path) -> None:
        for segment in _segments_of(path):
            self._segments.append(_Segment(self._rename_to_segment(segment)))
        if path.exists():
            if path.stat().st_size > 0:
                self._segments.append(_Segment(self._rename_to_segment(path)))
            else:
                path.unlink()

    def _rename_to_segment(self, source: Path) -> Path:
        self._seq += 1
        target = self.path.with_name(
            f"{self.path.name}.{time.time_ns():020d}{self._seq:04d}.replay"
        )
        os.replace(source, target)
        return target

    def close(self) -> None:
        """Flush, fsync and close every file; release the slot."""
        for handle in [*self._retired, *([self._file] if self._file else [])]:
            with contextlib.suppress(OSError, ValueError):
                handle.flush()
                os.fsync(handle.fileno())
            handle.close()
        self._retired.clear()
        self._file = None
        for segment in self._segments:
            if segment.done:  # fully written: the next process must not replay it again
                with contextlib.suppress(OSError):
                    _remove(segment)
            elif segment.handle is not None:
                segment.handle.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- appending (event loop thread; never awaits) ----------------------------------------

    def append(self, events: Iterable[TraceEvent]) -> int:
        """Append events as lines; returns how many. Raises ``OSError`` if the disk refuses."""
        lines = [encode_event(event) + "\n" for event in events]
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8", buffering=1, opener=_private)
                if self._torn:  # end a line a failed write may have cut short
                    self._file.write("\n")
                    self._torn = False
            self._file.write("".join(lines))  # one write: a line-buffered file flushes it at once
        except (OSError, ValueError):
            self._discard_file()
            raise
        count = len(lines)
        self._active_lines += count
        self.appended += count
        self._dirty = self._dirty or count > 0
        return count

    def _discard_file(self) -> None:
        """Drop the active handle after a failed write (its buffer would repeat the failure);
        the next append reopens the file."""
        handle, self._file = self._file, None
        self._torn = True
        if handle is not None:
            with contextlib.suppress(OSError, ValueError):
                handle.close()

    async def sync(self) -> None:
        """Fsync what was appended (and close rotated-out files)."""
        async with self._sync_lock:
            handles = [*self._retired, *([self._file] if self._file else [])]
            if not self._dirty and not self._retired:
                return
            self._dirty = False
            fds = [handle.fileno() for handle in handles]
            await anyio.to_thread.run_sync(_fsync_all, fds)
            for handle in handles:
                if handle in self._retired:
                    handle.close()
                    self._retired.remove(handle)

    def sync_now(self) -> None:
        """Fsync the open files at once, in the calling thread (the process is about to end)."""
        _fsync_all([handle.fileno() for handle in [*self._retired, *filter(None, [self._file])]])

    # -- replay (reads in a worker thread) ----------------------------------------------------

    @property
    def has_backlog(self) -> bool:
        """Whether events wait in the journal (active file or segments)."""
        return self._active_lines > 0 or bool(self._segments)

    def rotate(self) -> None:
        """Turn the active file into a segment (if it has lines), so it can be replayed."""
        if self._file is None or self._active_lines == 0:
            return
        self._retired.append(self._file)
        self._file = None
        self._active_lines = 0
        self._segments.append(_Segment(self._rename_to_segment(self.path)))

    async def read(self, limit: int) -> list[TraceEvent]:
        """The next batch of up to ``limit`` events from the segments ([] when none is left).

        The batch stays "pending" until ``commit()``; reading again without a commit re-reads it.
        """
        while self._segments:
            segment = self._segments[0]
            if segment.done:
                await anyio.to_thread.run_sync(_remove, segment)
                self._segments.popleft()
                continue
            try:
                events, damaged = await anyio.to_thread.run_sync(_read_lines, segment, limit)
            except FileNotFoundError:
                log.error("trace journal segment %s vanished; skipping it", segment.path)
                self._segments.popleft()
                continue
            if damaged:
                self.damaged += damaged
                log.warning("trace journal %s: skipped %d damaged line(s)", segment.path, damaged)
            if events:
                return events
        return []

    def commit(self, count: int) -> None:
        """The last batch read was written: move past it."""
        if self._segments:
            segment = self._segments[0]
            segment.offset = segment.pending
            segment.done = segment.done or segment.at_end
        self.replayed += count


def _private(path: str, flags: int) -> int:
    """Open with mode 0600: events carry job data and failure causes."""
    return os.open(path, flags, 0o600)


def _fsync_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.fsync(fd)


def _remove(segment: _Segment) -> None:
    if segment.handle is not None:
        segment.handle.close()
    segment.path.unlink(missing_ok=True)


def _read_lines(segment: _Segment, limit: int) -> tuple[list[TraceEvent], int]:
    """Read up to ``limit`` events from ``segment.offset``; mark the segment done at its end."""
    if segment.handle is None:
        segment.handle = open(segment.path, "rb")
    handle = segment.handle
    handle.seek(segment.offset)
    events: list[TraceEvent] = []
    damaged = 0
    while len(events) < limit:
        raw = handle.readline()
        if not raw:
            break
        if not raw.strip():
            continue
        try:
            events.append(decode_event(raw.decode("utf-8")))
        except (ValueError, KeyError, TypeError):
            damaged += 1
    segment.pending = handle.tell()
    segment.at_end = segment.pending >= os.fstat(handle.fileno()).st_size
    if not events:
        segment.done = True
    return events, damaged
