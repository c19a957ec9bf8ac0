"""Path rules: which paths ZooKeeper accepts (both registries apply the same rules)."""

from __future__ import annotations

from functools import lru_cache

from .._errors import RegistryError

__all__ = ["invalid_path_reason", "is_at_or_under", "validate_path"]


def is_at_or_under(path: str, root: str) -> bool:
    """``path`` is ``root`` or a node below it (no string is built: asked for every event)."""
    return path.startswith(root) and (
        len(path) == len(root) or root[-1] == "/" or path[len(root)] == "/"
    )


def _forbidden(code: int) -> bool:
    # ZooKeeper's ranges, on UTF-16 code units: anything above U+FFFF is a surrogate pair.
    return 0 < code <= 0x1F or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xF8FF or code >= 0xFFF0


@lru_cache(maxsize=4096)  # paths outside the plain case, checked again and again
def invalid_path_reason(path: str, *, sequential: bool = False) -> str | None:
    """Why ZooKeeper's ``PathUtils.validatePath`` refuses ``path`` (None if it accepts it).

    A sequential create validates ``path + "1"``, as ZooKeeper does (so ``/a/`` is fine there).
    """
    if sequential:
        path += "1"
    if not path:
        return "path length must be > 0"
    if path[0] != "/":
        return "path must start with / character"
    if path == "/":
        return None
    if path[-1] == "/":
        return "path must not end with / character"
    plain = path.isascii() and path.isprintable()  # no forbidden character: skip the scan
    for index, name in enumerate(path[1:].split("/")):
        if not name:
            return f"empty node name specified in segment {index + 1}"
        if name in (".", ".."):
            return f"relative paths not allowed ({name!r} in segment {index + 1})"
        if plain:
            continue
        for char in name:
            if char == "\x00":
                return f"null character not allowed in segment {index + 1}"
            if _forbidden(ord(char)):
                return f"invalid character U+{ord(char):04X} in segment {index + 1}"
    return None


def _plainly_valid(path: str) -> bool:
    """The common case, checked without the cache (which would hold every job's paths): an
    absolute printable-ASCII path with no empty segment and no segment starting with a dot."""
    return (
        path[:1] == "/"
        and path[-1] != "/"
        and path.isascii()
        and path.isprintable()
        and "//" not in path
        and "/." not in path
    )


def validate_path(path: str, *, sequential: bool = False) -> None:
    """Raise ``RegistryError`` for a path ZooKeeper refuses; both registries call it."""
    if not sequential and _plainly_valid(path):
        return
    reason = invalid_path_reason(path, sequential=sequential)
    if reason is not None:
        raise RegistryError(f"invalid path {path!r}: {reason}")
