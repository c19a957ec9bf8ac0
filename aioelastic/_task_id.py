"""Task ids: ``{job}@-@{items}@-@{READY|FAILOVER}@-@{instanceId}@-@{uuid}``, at most 255 characters.

ElasticJob's trace tables hold task ids in ``VARCHAR(255)``, and a plain comma list of a fire's
items overflows that for large fires (70 items already make 273 characters). So the item list
is ElasticJob's plain ``0,1,2`` while the id fits in 255 characters, and otherwise written
compactly and reversibly:

- runs of at least two consecutive items become ``first-last`` ranges: ``0-69``, ``0,2,5-9``
  (items are non-negative, so ``-`` is unambiguous);
- if the ranges still do not fit, as many leading ranges as fit are kept and the rest is
  replaced by ``+N`` (N items omitted): ``0,2,4,...,120,+37``; :func:`parse_task_id` then
  returns the listed items with ``items_complete=False`` (the status rows and the execution rows
  of the task hold every item);
- if even the job name and instance id leave no room (names of more than ~190 characters in
  all), the instance id and then the job name are cut so the id still fits; only then is the
  id not reversible.

The uuid (32 hex digits) makes every run's id unique, unlike ElasticJob's.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from .tracing._events import ExecutionType

__all__ = [
    "TASK_ID_LIMIT",
    "TaskId",
    "format_items",
    "make_task_id",
    "parse_items",
    "parse_task_id",
]

#: ElasticJob's column width for task ids.
TASK_ID_LIMIT = 255
_SEP = "@-@"
_RUN_LENGTH = 32  # the run part: 128 random bits in hex


def _ranges(items: Iterable[int]) -> list[str]:
    ordered = sorted(set(items))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return parts


def _count(part: str) -> int:
    first, _, last = part.partition("-")
    return int(last) - int(first) + 1 if last else 1


def format_items(items: Iterable[int], limit: int | None = None) -> str:
    """Items as ``0,2,5-9``; over ``limit`` characters, the tail becomes ``+N`` (N omitted)."""
    parts = _ranges(items)
    text = ",".join(parts)
    if limit is None or len(text) <= limit:
        return text
    kept: list[str] = []
    omitted = sum(_count(part) for part in parts)
    for part in parts:
        rest = omitted - _count(part)
        candidate = ",".join([*kept, part, f"+{rest}"])
        if len(candidate) > limit:
            break
        kept.append(part)
        omitted = rest
    return ",".join([*kept, f"+{omitted}"])


def parse_items(text: str) -> tuple[tuple[int, ...], bool]:
    """The items of :func:`format_items` text, and whether the list is complete."""
    items: list[int] = []
    complete = True
    for part in filter(None, text.split(",")):
        if part.startswith("+"):
            complete = False
            continue
        first, _, last = part.partition("-")
        items.extend(range(int(first), int(last or first) + 1))
    return tuple(items), complete


@dataclass(frozen=True, slots=True)
class TaskId:
    """The parts of a task id."""

    job_name: str
    items: tuple[int, ...]
    execution_type: str
    instance_id: str
    run: str
    items_complete: bool = True


def make_task_id(job: str, items: Sequence[int], kind: ExecutionType, instance_id: str) -> str:
    """``{job}@-@{items}@-@{READY|FAILOVER}@-@{instanceId}@-@{uuid}``, unique per run, at most
    :data:`TASK_ID_LIMIT` characters (see the module docstring for the item list's form)."""
    # 128 random bits (``random`` reseeds after fork), formatted as a uuid4's hex: the ids of
    # runs need uniqueness, not unpredictability, and os.urandom per fire showed in profiles.
    run = f"{random.getrandbits(128):032x}"
    return (_prefix(job, tuple(items), kind, instance_id) + run)[:TASK_ID_LIMIT]


@lru_cache(maxsize=4096)
def _prefix(job: str, items: tuple[int, ...], kind: ExecutionType, instance_id: str) -> str:
    """Everything of a task id but its run part (the same for every fire of an assignment)."""
    fixed = len(_SEP) * 4 + len(kind.value) + _RUN_LENGTH
    room = TASK_ID_LIMIT - fixed - len(job) - len(instance_id)
    # "+N" needs at most len(str(len(items))) + 1 characters
    minimum = len(str(len(items))) + 1
    if room < minimum:
        excess = minimum - room
        cut = min(excess, max(len(instance_id) - 1, 0))
        instance_id = instance_id[: len(instance_id) - cut]
        job = job[: max(len(job) - (excess - cut), 1)]
        room = minimum
    plain = ",".join(map(str, items))
    joined = plain if len(plain) <= room else format_items(items, room)
    return _SEP.join((job, joined, kind.value, instance_id, ""))


def parse_task_id(task_id: str) -> TaskId:
    """The parts of a task id made by :func:`make_task_id` (``ValueError`` if it is not one).

    Instance ids may themselves contain ``@-@`` (ElasticJob's ``ip@-@pid``); job names may not.
    """
    parts = task_id.split(_SEP)
    if len(parts) < 5:
        raise ValueError(f"not a task id: {task_id!r}")
    job, items_text, kind, *instance, run = parts
    try:
        items, complete = parse_items(items_text)
    except ValueError:
        raise ValueError(f"bad item list in task id: {task_id!r}") from None
    return TaskId(job, items, kind, _SEP.join(instance), run, complete)
