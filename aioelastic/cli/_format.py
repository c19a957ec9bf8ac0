"""Output for people (aligned tables) and for scripts (JSON), and time arguments."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from .._errors import ConfigError
from .._escape import printable

__all__ = [
    "cause_line",
    "compact_time",
    "format_duration",
    "parse_time",
    "short_source",
    "short_task_id",
    "short_time",
    "table_width",
    "to_jsonable",
    "write_json",
    "write_table",
]

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, datetimes and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def write_json(out: TextIO, value: Any) -> None:
    json.dump(to_jsonable(value), out, indent=2, sort_keys=False)
    out.write("\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    if isinstance(value, list | tuple):
        return printable(",".join(map(str, value))) or "-"
    return printable(str(value).replace("\n", " ").replace("\t", " "))


def write_table(
    out: TextIO,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    width: int | None = None,
) -> None:
    """Columns padded to their widest cell; the last column is not padded. With ``width``, a
    line longer than that has its last column cut (ending in ``...``)."""
    cells = [list(headers), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        line = "  ".join([*padded, row[-1]]).rstrip()
        if width is not None and len(line) > width:
            line = _cut(line, width, len(line) - len(row[-1]))
        out.write(line + "\n")


def _cut(line: str, width: int, last_start: int) -> str:
    """``line`` cut to ``width``, keeping at least a few characters of the last column."""
    keep = max(width, last_start + 6)
    return line[: keep - 3] + "..."


def table_width() -> int:
    """The terminal's width (``$COLUMNS`` first); 100 when stdout is not a terminal."""
    return shutil.get_terminal_size((100, 24)).columns


def short_time(value: datetime | None) -> str | None:
    """A UTC time to the second (tables in their narrow form)."""
    return None if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def compact_time(value: datetime | None) -> str | None:
    """``MM-DD HH:MM:SS`` in UTC (the jobs table's narrow form)."""
    return None if value is None else value.astimezone(UTC).strftime("%m-%d %H:%M:%S")


def short_task_id(task_id: str) -> str:
    """The first 8 hex digits of the task id's uuid (the whole id if it has none)."""
    last = task_id.rsplit("@-@", 1)[-1]
    return last[:8] if last != task_id and len(last) >= 8 else task_id


def short_source(source: str) -> str:
    """``NORMAL_TRIGGER`` -> ``normal``; ``MISFIRE``, ``FAILOVER`` in lower case."""
    return {"NORMAL_TRIGGER": "normal"}.get(source, source.lower()) if source else "-"


def cause_line(cause: str | None) -> str | None:
    """A failure cause's last line (a traceback's exception line)."""
    if not cause:
        return None
    lines = [line.strip() for line in cause.splitlines() if line.strip()]
    return lines[-1] if lines else None


def format_duration(value: timedelta | None) -> str | None:
    """``0.25s``, ``12.3s``, ``4m05s``, ``2h03m``."""
    if value is None:
        return None
    seconds = max(0.0, value.total_seconds())
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """ISO 8601 (naive means UTC) or a span ago: ``30s``, ``15m``, ``2h``, ``7d``."""
    match = _RELATIVE.match(value.strip())
    if match:
        try:
            span = timedelta(**{_UNITS[match[2]]: float(match[1])})
            return (now or datetime.now(UTC)) - span
        except OverflowError:  # "99999999999d": no date that far back
            raise ConfigError("time", value, "a span ago must stay after the year 1") from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            "time", value, "use ISO 8601 (2024-05-01T12:00) or a span ago (30m, 2h, 7d)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
