"""Output for people (aligned tables) and for scripts (JSON), and time arguments."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from .._errors import ConfigError

__all__ = ["parse_time", "to_jsonable", "write_json", "write_table"]

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
        return ",".join(map(str, value)) or "-"
    return str(value).replace("\n", " ")


def write_table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [list(headers), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        out.write("  ".join([*padded, row[-1]]).rstrip() + "\n")


def parse_time(value: str, *, now: datetime | None = None) -> datetime:
    """ISO 8601 (naive means UTC) or a span ago: ``30s``, ``15m``, ``2h``, ``7d``."""
    match = _RELATIVE.match(value.strip())
    if match:
        span = timedelta(**{_UNITS[match[2]]: float(match[1])})
        return (now or datetime.now(UTC)) - span
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            "time", value, "use ISO 8601 (2024-05-01T12:00) or a span ago (30m, 2h, 7d)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed
