"""Text from outside (registry node data, trace rows, job errors) made safe to print on a
terminal: the characters a terminal acts on rather than shows become visible escapes."""

from __future__ import annotations

__all__ = ["printable"]

#: C0 (newline and tab too), DEL, C1, and the bidirectional overrides and isolates: an escape
#: sequence in someone's data would retitle, clear or rewrite the terminal showing it.
_UNPRINTABLE = {code: f"\\x{code:02x}" for code in [*range(0x00, 0x20), *range(0x7F, 0xA0)]} | {
    code: f"\\u{code:04x}" for code in [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}


def printable(text: str) -> str:
    """``text`` with those characters shown as escapes (``\\x1b``, ``\\u202e``)."""
    return text.translate(_UNPRINTABLE)
