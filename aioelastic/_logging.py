"""Structured log fields and the JSON formatter of ``aioelastic run --log-format json``.

The formatter is the standard library's (a ``logging.Formatter`` subclass) rather than
python-json-logger or structlog: one JSON object per line needs a dozen lines, not a dependency.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["JsonFormatter", "fields", "short_task_id"]

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


def fields(
    *,
    job: str | None = None,
    task_id: str | None = None,
    item: int | None = None,
    instance: str | None = None,
    execution_source: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    """``extra`` for a log call: the fields that apply (None ones left out)."""
    given = {
        "job": job,
        "task_id": task_id,
        "item": item,
        "instance": instance,
        "execution_source": execution_source,
        **more,
    }
    return {k: v for k, v in given.items() if v is not None}


def short_task_id(task_id: str) -> str:
    """The first 8 characters of the task id's run uuid (its last part), for log lines."""
    return task_id.rsplit("@-@", 1)[-1][:8]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, every
    ``extra`` field, and ``exc_info`` (the formatted traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)
