"""Trace events as JSON lines (the journal's format) and back."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from .._json import loads as loads_json
from ._events import (
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    Source,
    State,
    TraceEvent,
)

__all__ = ["decode_event", "encode_event"]

_EXECUTION = "execution"
_STATUS = "status"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _execution_fields(event: JobExecutionEvent) -> dict[str, Any]:
    return {
        "kind": _EXECUTION,
        "id": event.id,
        "job_name": event.job_name,
        "task_id": event.task_id,
        "hostname": event.hostname,
        "ip": event.ip,
        "sharding_item": event.sharding_item,
        "execution_source": event.execution_source.value,
        "start_time": _time(event.start_time),
        "complete_time": _time(event.complete_time),
        "is_success": event.is_success,
        "failure_cause": event.failure_cause,
    }


def _status_fields(event: JobStatusTraceEvent) -> dict[str, Any]:
    return {
        "kind": _STATUS,
        "id": event.id,
        "job_name": event.job_name,
        "task_id": event.task_id,
        "slave_id": event.slave_id,
        "execution_type": event.execution_type.value,
        "sharding_items": list(event.sharding_items),
        "state": event.state.value,
        "message": event.message,
        "source": event.source.value,
        "original_task_id": event.original_task_id,
        "creation_time": _time(event.creation_time),
    }


def encode_event(event: TraceEvent) -> str:
    """One JSON line (without the newline) for ``event``."""
    if isinstance(event, JobExecutionEvent):
        fields = _execution_fields(event)
    else:
        fields = _status_fields(event)
    return json.dumps(fields, separators=(",", ":"))


def _decode_execution(data: dict[str, Any]) -> JobExecutionEvent:
    start = _parse_time(data["start_time"])
    if start is None:
        raise ValueError("execution event without start_time")
    return JobExecutionEvent(
        id=data["id"],
        job_name=data["job_name"],
        task_id=data["task_id"],
        hostname=data["hostname"],
        ip=data["ip"],
        sharding_item=int(data["sharding_item"]),
        execution_source=ExecutionSource(data["execution_source"]),
        start_time=start,
        complete_time=_parse_time(data["complete_time"]),
        is_success=bool(data["is_success"]),
        failure_cause=data["failure_cause"],
    )


def _decode_status(data: dict[str, Any]) -> JobStatusTraceEvent:
    created = _parse_time(data["creation_time"])
    if created is None:
        raise ValueError("status event without creation_time")
    return JobStatusTraceEvent(
        id=data["id"],
        job_name=data["job_name"],
        task_id=data["task_id"],
        slave_id=data["slave_id"],
        execution_type=ExecutionType(data["execution_type"]),
        sharding_items=tuple(int(item) for item in data["sharding_items"]),
        state=State(data["state"]),
        message=data["message"],
        source=Source(data["source"]),
        original_task_id=data["original_task_id"],
        creation_time=created,
    )


def decode_event(line: str) -> TraceEvent:
    """The event of one journal line; raises ``ValueError`` (or ``KeyError``) if it is damaged."""
    data = loads_json(line)
    if not isinstance(data, dict):
        raise ValueError("journal line is not an object")
    if data.get("kind") == _EXECUTION:
        return _decode_execution(data)
    if data.get("kind") == _STATUS:
        return _decode_status(data)
    raise ValueError(f"unknown event kind {data.get('kind')!r}")
