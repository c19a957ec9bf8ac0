"""Trace events (ElasticJob's two event kinds), the values they carry, and the sink protocol."""

from __future__ import annotations

import enum
import traceback
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = [
    "FAILURE_CAUSE_LIMIT",
    "ExecutionSource",
    "ExecutionType",
    "JobExecutionEvent",
    "JobStatusTraceEvent",
    "Source",
    "State",
    "TraceEvent",
    "TraceSink",
    "format_failure",
]

#: Failure causes (tracebacks) longer than this many characters keep their head and tail.
FAILURE_CAUSE_LIMIT = 4000


class State(enum.StrEnum):
    TASK_STAGING = "TASK_STAGING"
    TASK_RUNNING = "TASK_RUNNING"
    TASK_FINISHED = "TASK_FINISHED"
    TASK_KILLED = "TASK_KILLED"
    TASK_LOST = "TASK_LOST"
    TASK_FAILED = "TASK_FAILED"
    TASK_ERROR = "TASK_ERROR"
    TASK_DROPPED = "TASK_DROPPED"
    TASK_GONE = "TASK_GONE"
    TASK_GONE_BY_OPERATOR = "TASK_GONE_BY_OPERATOR"
    TASK_UNREACHABLE = "TASK_UNREACHABLE"
    TASK_UNKNOWN = "TASK_UNKNOWN"


class Source(enum.StrEnum):
    CLOUD_SCHEDULER = "CLOUD_SCHEDULER"
    CLOUD_EXECUTOR = "CLOUD_EXECUTOR"
    LITE_EXECUTOR = "LITE_EXECUTOR"


class ExecutionType(enum.StrEnum):
    READY = "READY"
    FAILOVER = "FAILOVER"


class ExecutionSource(enum.StrEnum):
    NORMAL_TRIGGER = "NORMAL_TRIGGER"
    MISFIRE = "MISFIRE"
    FAILOVER = "FAILOVER"


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


def format_failure(exc: BaseException, limit: int = FAILURE_CAUSE_LIMIT) -> str:
    """The traceback of ``exc`` as text, truncated to ``limit`` characters (head and tail kept)."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    if len(text) <= limit:
        return text
    marker = "\n... (truncated) ...\n"
    head = (limit - len(marker)) // 2
    tail = limit - len(marker) - head
    return text[:head] + marker + text[-tail:]


@dataclass(frozen=True, slots=True)
class JobExecutionEvent:
    """One item's run. Posted twice with the same ``id``: at start (``complete_time`` None) and at
    completion (``complete_time`` set, ``is_success`` and ``failure_cause`` final)."""

    job_name: str
    task_id: str
    hostname: str
    ip: str
    sharding_item: int
    execution_source: ExecutionSource
    start_time: datetime = field(default_factory=_now)
    complete_time: datetime | None = None
    is_success: bool = False
    failure_cause: str | None = None
    id: str = field(default_factory=_new_id)

    @property
    def is_completion(self) -> bool:
        return self.complete_time is not None


@dataclass(frozen=True, slots=True)
class JobStatusTraceEvent:
    """A state change of one fire (a task) on one instance."""

    job_name: str
    task_id: str
    slave_id: str
    execution_type: ExecutionType
    sharding_items: tuple[int, ...]
    state: State
    message: str
    source: Source = Source.LITE_EXECUTOR
    original_task_id: str = ""
    creation_time: datetime = field(default_factory=_now)
    id: str = field(default_factory=_new_id)


TraceEvent = JobExecutionEvent | JobStatusTraceEvent


@runtime_checkable
class TraceSink(Protocol):
    """Where trace events go. ``write`` receives batches in posting order; it may raise, in which
    case the bus retries the batch later (so writes must be idempotent by event ``id``).

    A sink may declare ``concurrent_writes = n`` (n > 1) to get up to n overlapping ``write``
    calls; it must then commit them in call order and fail a call whose predecessor, still in
    progress when it began, fails (see ``TraceBus``)."""

    async def write(self, batch: Sequence[TraceEvent]) -> None: ...
