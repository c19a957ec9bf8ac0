"""Turning a batch of events into table rows (shared by the PostgreSQL and SQLite sinks).

- Execution events are merged by id: a completion supersedes a start of the same id, so a batch
  holding both becomes one row, and the database upsert never sees an id twice in a statement.
- A status row's ``original_task_id`` is ElasticJob's: the event's own if set, else that of the
  ``TASK_STAGING`` row of the same task. It is resolved from the batch and from a bounded cache
  of recent stagings; only misses (``None``) are looked up by the database, inside the insert.
  A staging that arrives after rows of its task (a replayed journal) back-fills their empty
  ``original_task_id`` (``PreparedBatch.backfill``), so the result does not depend on order.
- Text is made storable: NUL characters and lone surrogates (which PostgreSQL/UTF-8 reject and
  would make a row unwritable forever) are replaced by U+FFFD.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .._events import JobExecutionEvent, JobStatusTraceEvent, State, TraceEvent

__all__ = ["OriginalTaskIds", "PreparedBatch", "clean_text", "items_text", "prepare_batch"]


def clean_text(value: str) -> str:
    """``value`` without characters a UTF-8 database refuses (NUL, lone surrogates)."""
    if value.isascii():
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def items_text(items: Iterable[int]) -> str:
    """Sharding items as ElasticJob stores them in the status table: ``[0, 1, 2]``."""
    return "[" + ", ".join(str(item) for item in items) + "]"


class OriginalTaskIds:
    """Bounded memory of ``task_id -> original_task_id`` from recent TASK_STAGING events."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._known: OrderedDict[str, str] = OrderedDict()

    def remember(self, task_id: str, original: str) -> None:
        self._known[task_id] = original
        self._known.move_to_end(task_id)
        while len(self._known) > self._capacity:
            self._known.popitem(last=False)

    def resolve(self, event: JobStatusTraceEvent) -> str | None:
        """The row's original task id, or None when the database must look it up."""
        if event.state is State.TASK_STAGING:
            self.remember(event.task_id, event.original_task_id)
            return event.original_task_id
        if event.original_task_id:
            return event.original_task_id
        return self._known.get(event.task_id)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    executions: list[JobExecutionEvent]
    statuses: list[tuple[JobStatusTraceEvent, str | None]]
    #: ``(task_id, original_task_id)`` of stagings that name an original task
    backfill: list[tuple[str, str]]


def _merge_executions(events: Sequence[JobExecutionEvent]) -> list[JobExecutionEvent]:
    merged: dict[str, JobExecutionEvent] = {}
    for event in events:
        if event.id not in merged or event.is_completion:
            merged[event.id] = event
    return list(merged.values())


def _unique_statuses(events: Sequence[JobStatusTraceEvent]) -> list[JobStatusTraceEvent]:
    seen: dict[str, JobStatusTraceEvent] = {}
    for event in events:
        seen.setdefault(event.id, event)
    return list(seen.values())


def prepare_batch(batch: Sequence[TraceEvent], originals: OriginalTaskIds) -> PreparedBatch:
    """Split, merge and resolve a batch (stagings first, so later rows of the batch see them)."""
    executions = [event for event in batch if isinstance(event, JobExecutionEvent)]
    statuses = _unique_statuses([e for e in batch if isinstance(e, JobStatusTraceEvent)])
    ordered = sorted(statuses, key=lambda e: e.state is not State.TASK_STAGING)
    resolved = {event.id: originals.resolve(event) for event in ordered}
    backfill = [
        (clean_text(e.task_id), clean_text(e.original_task_id))
        for e in statuses
        if e.state is State.TASK_STAGING and e.original_task_id
    ]
    return PreparedBatch(
        executions=_merge_executions(executions),
        statuses=[(event, resolved[event.id]) for event in statuses],
        backfill=backfill,
    )
