"""Turning a batch of events into table rows (shared by the PostgreSQL and SQLite sinks).

- Execution events are merged by id: a completion supersedes a start of the same id, so a batch
  holding both becomes one row, and the database upsert never sees an id twice in a statement.
- A status row's ``original_task_id`` is ElasticJob's: the event's own if set, else that of the
  ``TASK_STAGING`` row of the same task. It is resolved from the batch and from a bounded cache
  of recent stagings; only misses (``None``) are looked up by the database, inside the insert.
  A staging that arrives after rows of its task (a replayed journal) back-fills their empty
  ``original_task_id`` (``PreparedBatch.backfill``), so the result does not depend on order.
- Text is made storable: NUL characters and lone surrogates (which PostgreSQL/UTF-8 reject and
  would make a row unwritable forever) are replaced by U+FFFD, and fitted to the table's column
  widths (:func:`execution_values`, :func:`status_values`; see ``_schema``).
- A completion from another process (a survivor completing a dead instance's run) may arrive
  before or after the run's start: the start gives the row's identity columns (task, host,
  start time), the *first* completion its outcome; a later start never undoes a completion.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .._task_id import format_items
from ._events import JobExecutionEvent, JobStatusTraceEvent, State, TraceEvent
from ._schema import EXECUTION_COLUMNS, STATUS_COLUMNS, TableLayout, check_layouts

__all__ = [
    "MESSAGE_LIMIT",
    "FittedTexts",
    "OriginalTaskIds",
    "PreparedBatch",
    "WrittenColumns",
    "clean_text",
    "cut_text",
    "execution_values",
    "items_text",
    "long_text_fitter",
    "prepare_batch",
    "status_values",
    "text_fitter",
]

#: ElasticJob cuts messages and failure causes to this many characters.
MESSAGE_LIMIT = 4000
_CUT_MARKER = "\n... (truncated) ...\n"


def clean_text(value: str) -> str:
    """``value`` without characters a UTF-8 database refuses (NUL, lone surrogates)."""
    if value.isascii():
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in value)
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def cut_text(value: str, limit: int) -> str:
    """``value`` if it fits in ``limit`` characters, else its head and tail around a marker."""
    if len(value) <= limit:
        return value
    if limit <= len(_CUT_MARKER) * 2:
        return value[:limit]
    head = (limit - len(_CUT_MARKER)) // 2
    tail = limit - len(_CUT_MARKER) - head
    return value[:head] + _CUT_MARKER + value[-tail:]


def items_text(items: Iterable[int], width: int | None = None) -> str:
    """Sharding items as ElasticJob stores them in the status table: ``[0, 1, 2]``; if that
    exceeds ``width``, as ranges (``[0-69]``, ``[0,2,5-9,+40]``: see ``aioelastic._task_id``)."""
    listed = list(items)
    text = "[" + ", ".join(str(item) for item in listed) + "]"
    if width is None or len(text) <= width:
        return text
    return "[" + format_items(listed, max(width - 2, 1)) + "]"


def _fit(layout: TableLayout, column: str, value: str) -> str:
    value = clean_text(value)
    spec = layout.get(column)
    width = spec.width if spec is not None else None
    return value if width is None or len(value) <= width else value[:width]


def _long_limit(layout: TableLayout, column: str) -> int:
    spec = layout.get(column)
    return MESSAGE_LIMIT if spec is None or spec.width is None else min(spec.width, MESSAGE_LIMIT)


def _fit_long(layout: TableLayout, column: str, value: str | None) -> str | None:
    if value is None:
        return None
    return cut_text(clean_text(value), _long_limit(layout, column))


def text_fitter(layout: TableLayout, column: str) -> Callable[[str], str]:
    """``_fit`` for one column, its width looked up once (a row builder calls it per row)."""
    spec = layout.get(column)
    width = spec.width if spec is not None else None
    if width is None:
        return clean_text

    def fit(value: str) -> str:
        value = clean_text(value)
        return value if len(value) <= width else value[:width]

    return fit


def long_text_fitter(layout: TableLayout, column: str) -> Callable[[str | None], str | None]:
    """``_fit_long`` (messages, failure causes) for one column, its limit looked up once."""
    limit = _long_limit(layout, column)

    def fit(value: str | None) -> str | None:
        return None if value is None else cut_text(clean_text(value), limit)

    return fit


class FittedTexts(dict[str, str]):
    """``fit(value)`` by ``self[value]``, remembered: a column's texts mostly repeat (a job's
    name, a host, a task id for each event of its fire), and a hit is one dictionary lookup.
    Bounded: forgets everything past ``limit`` values; values longer than ``longest`` are
    fitted each time (long messages rarely repeat)."""

    __slots__ = ("_fit", "_limit", "_longest")

    def __init__(self, fit: Callable[[str], str], limit: int = 4096, longest: int = 512) -> None:
        super().__init__()
        self._fit, self._limit, self._longest = fit, limit, longest

    def __missing__(self, value: str) -> str:
        fitted = self._fit(value)
        if len(value) <= self._longest:
            if len(self) >= self._limit:
                self.clear()
            self[value] = fitted
        return fitted


def execution_values(e: JobExecutionEvent, layout: TableLayout) -> dict[str, object]:
    """The row of ``e`` by column name (times and booleans as Python values), fitted."""
    return {
        "id": _fit(layout, "id", e.id),
        "job_name": _fit(layout, "job_name", e.job_name),
        "task_id": _fit(layout, "task_id", e.task_id),
        "hostname": _fit(layout, "hostname", e.hostname),
        "ip": _fit(layout, "ip", e.ip),
        "sharding_item": e.sharding_item,
        "execution_source": _fit(layout, "execution_source", e.execution_source.value),
        "failure_cause": _fit_long(layout, "failure_cause", e.failure_cause),
        "is_success": e.is_success,
        "start_time": e.start_time,
        "complete_time": e.complete_time,
    }


def status_values(
    e: JobStatusTraceEvent, original: str | None, layout: TableLayout
) -> dict[str, object]:
    """The row of ``e`` by column name (``original_task_id`` None: looked up by the database)."""
    spec = layout.get("sharding_item")
    return {
        "id": _fit(layout, "id", e.id),
        "job_name": _fit(layout, "job_name", e.job_name),
        "original_task_id": (
            None if original is None else _fit(layout, "original_task_id", original)
        ),
        "task_id": _fit(layout, "task_id", e.task_id),
        "slave_id": _fit(layout, "slave_id", e.slave_id),
        "source": _fit(layout, "source", e.source.value),
        "execution_type": _fit(layout, "execution_type", e.execution_type.value),
        "sharding_item": items_text(e.sharding_items, spec.width if spec else None),
        "state": _fit(layout, "state", e.state.value),
        "message": _fit_long(layout, "message", e.message),
        "creation_time": e.creation_time,
    }


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
    #: ids of ``executions`` whose start is in this batch (rows the batch may create; the
    #: others are completions of rows started in an earlier batch or elsewhere)
    started: set[str] = dataclasses.field(default_factory=set)


def _merge(old: JobExecutionEvent, new: JobExecutionEvent) -> JobExecutionEvent:
    """Identity from a start, outcome from the first completion (as the database upsert)."""
    start = new if not new.is_completion and old.is_completion else old
    done = old if old.is_completion else new
    if not done.is_completion or start is done:
        return old
    if _same_run(start, done):  # the usual completion: the start with its outcome
        return done
    return JobExecutionEvent(  # not dataclasses.replace(): this runs for most item runs
        job_name=start.job_name,
        task_id=start.task_id,
        hostname=start.hostname,
        ip=start.ip,
        sharding_item=start.sharding_item,
        execution_source=start.execution_source,
        start_time=start.start_time,
        complete_time=done.complete_time,
        is_success=done.is_success,
        failure_cause=done.failure_cause,
        id=start.id,
    )


def _same_run(start: JobExecutionEvent, done: JobExecutionEvent) -> bool:
    """Whether ``done`` carries ``start``'s identity columns (then it is the merged row)."""
    return (
        done.start_time == start.start_time
        and done.task_id == start.task_id
        and done.sharding_item == start.sharding_item
        and done.hostname == start.hostname
        and done.ip == start.ip
        and done.job_name == start.job_name
        and done.execution_source == start.execution_source
    )


def prepare_batch(batch: Sequence[TraceEvent], originals: OriginalTaskIds) -> PreparedBatch:
    """Split, merge and resolve a batch (stagings first, so later rows of the batch see them)."""
    merged: dict[str, JobExecutionEvent] = {}
    started: set[str] = set()
    statuses: dict[str, JobStatusTraceEvent] = {}
    for event in batch:
        if isinstance(event, JobExecutionEvent):
            key = event.id
            old = merged.get(key)
            if event.complete_time is None:
                started.add(key)
                merged[key] = event if old is None else _merge(old, event)
            elif old is None:
                merged[key] = event
            elif old.complete_time is None and _same_run(old, event):
                merged[key] = event  # the usual completion: its start with the outcome
            else:
                merged[key] = _merge(old, event)
        elif event.id not in statuses:
            statuses[event.id] = event
    resolved: dict[str, str | None] = {}
    backfill = []
    for event in statuses.values():
        if event.state is State.TASK_STAGING:
            resolved[event.id] = originals.resolve(event)
            if event.original_task_id:
                backfill.append((clean_text(event.task_id), clean_text(event.original_task_id)))
    for event in statuses.values():
        if event.state is not State.TASK_STAGING:
            resolved[event.id] = originals.resolve(event)
    return PreparedBatch(
        executions=list(merged.values()),
        statuses=[(event, resolved[event.id]) for event in statuses.values()],
        backfill=backfill,
        started=started,
    )


class WrittenColumns:
    """The columns a sink writes, for the trace tables as they are (a column an older table
    lacks is left out); ``check_layouts`` refuses tables it cannot write."""

    def __init__(self, executions: TableLayout, statuses: TableLayout) -> None:
        check_layouts(executions, statuses)
        self.executions = executions
        self.statuses = statuses
        self.execution_columns = executions.present(EXECUTION_COLUMNS)
        self.status_columns = statuses.present(STATUS_COLUMNS)
