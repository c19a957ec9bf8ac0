"""JSON from outside the process (registry nodes any client may write, journal lines, an
operator's input): every undecodable text is a ``ValueError``, as callers expect."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["loads"]


def loads(text: str | bytes) -> Any:
    """``json.loads``, except that nesting too deep for the parser (``[[[[...``, 100 KB fit
    in any node) is a ``ValueError`` too, not a ``RecursionError`` that escapes the
    ``except ValueError`` of every caller."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
