"""Sharding strategies: ElasticJob's exact algorithms (Java ``String.hashCode`` included)."""

from __future__ import annotations

import enum
from collections.abc import Sequence

__all__ = [
    "ShardingStrategy",
    "allocate",
    "java_compare_key",
    "java_string_hash",
    "order_instances",
    "shard",
]


class ShardingStrategy(enum.StrEnum):
    AVG_ALLOCATION = "AVG_ALLOCATION"
    ODEVITY = "ODEVITY"
    ROUND_ROBIN = "ROUND_ROBIN"


def java_string_hash(text: str) -> int:
    """Java's ``String.hashCode()`` (over UTF-16 code units, 32-bit signed)."""
    h = 0
    raw = text.encode("utf-16-be")
    for i in range(0, len(raw), 2):
        h = (31 * h + (raw[i] << 8 | raw[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def _java_rem(a: int, b: int) -> int:
    """Java's ``%``: the remainder takes the sign of the dividend."""
    r = abs(a) % b
    return -r if a < 0 else r


def java_compare_key(text: str) -> bytes:
    """A sort key ordering strings as Java's ``String.compareTo``: by UTF-16 code units.

    Big-endian UTF-16 bytes compare as the code units do. This differs from Python's code-point
    order only when characters above U+FFFF (surrogate pairs, 0xD800-0xDFFF) meet characters in
    U+E000-U+FFFF.
    """
    return text.encode("utf-16-be", "surrogatepass")


def order_instances(instance_ids: Sequence[str]) -> list[str]:
    """The deterministic instance order every strategy starts from: ElasticJob's, which sorts
    the ZooKeeper children in reverse ``String.compareTo`` order (UTF-16 code units)."""
    return sorted(instance_ids, key=java_compare_key, reverse=True)


def _average(instances: Sequence[str], total: int) -> dict[str, list[int]]:
    n = len(instances)
    per = total // n
    result = {inst: list(range(k * per, (k + 1) * per)) for k, inst in enumerate(instances)}
    for k in range(total % n):
        result[instances[k]].append(per * n + k)
    return result


def shard(
    strategy: ShardingStrategy, instance_ids: Sequence[str], job_name: str, total: int
) -> dict[str, list[int]]:
    """Assign items ``0..total-1`` to instances; every instance appears in the result."""
    return allocate(strategy, order_instances(instance_ids), job_name, total)


def allocate(
    strategy: ShardingStrategy, ordered: Sequence[str], job_name: str, total: int
) -> dict[str, list[int]]:
    """ElasticJob's ``JobShardingStrategy.sharding`` on instances already in order."""
    if not ordered:
        return {}
    instances = list(ordered)
    if strategy is ShardingStrategy.ODEVITY:
        if java_string_hash(job_name) % 2 == 0:
            instances.reverse()
    elif strategy is ShardingStrategy.ROUND_ROBIN:
        h = java_string_hash(job_name)
        # Math.abs(Integer.MIN_VALUE) stays negative in Java.
        offset = _java_rem(h if h == -(1 << 31) else abs(h), len(instances))
        if offset:
            instances = [instances[(i + offset) % len(instances)] for i in range(len(instances))]
    return _average(instances, total)
