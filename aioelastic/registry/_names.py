"""A node's child names as the memory store and the shared view keep them: a tuple while there
are few (most nodes have none or one: at a thousand jobs a set per node was a fifth of the
heap), a set beyond ``SMALL``. Sets are changed in place; tuples are replaced."""

from __future__ import annotations

__all__ = ["SMALL", "Names", "with_name", "without_name"]

SMALL = 8

Names = tuple[str, ...] | set[str]


def with_name(names: Names, name: str) -> Names:
    """``names`` with ``name`` added."""
    if isinstance(names, set):
        names.add(name)
        return names
    if name in names:
        return names
    return (*names, name) if len(names) < SMALL else {*names, name}


def without_name(names: Names, name: str) -> Names:
    """``names`` without ``name``."""
    if isinstance(names, set):
        names.discard(name)
        return names
    return tuple(n for n in names if n != name) if name in names else names
