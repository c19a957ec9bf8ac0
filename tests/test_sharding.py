"""Sharding strategies against ElasticJob's algorithms and examples."""

from __future__ import annotations

import pytest

from aioelastic._sharding import (
    ShardingStrategy,
    allocate,
    java_compare_key,
    java_string_hash,
    order_instances,
    shard,
)

AVG = ShardingStrategy.AVG_ALLOCATION
ODEVITY = ShardingStrategy.ODEVITY
ROUND_ROBIN = ShardingStrategy.ROUND_ROBIN
HOSTS = ["host0@-@0", "host1@-@0", "host2@-@0"]


def test_java_hash_code() -> None:
    # Values from java.lang.String#hashCode.
    assert java_string_hash("") == 0
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("Hello, World!") == 1498789909
    assert java_string_hash("polygenelubricants") == -2147483648
    assert java_string_hash("中文") == 20013 * 31 + 25991


def test_order_is_descending_like_elasticjob() -> None:
    assert order_instances(["host0", "host2", "host1"]) == ["host2", "host1", "host0"]


# U+FF21 (FULLWIDTH A) is one UTF-16 unit 0xFF21; U+1F600 is the pair 0xD83D 0xDE00. Java's
# String.compareTo puts the emoji first (0xD83D < 0xFF21); code-point order puts it last.
FULLWIDTH_A, EMOJI = "\uff21", "\U0001f600"


@pytest.mark.parametrize(
    ("ids", "java_descending"),
    [
        ([f"x{EMOJI}", f"x{FULLWIDTH_A}"], [f"x{FULLWIDTH_A}", f"x{EMOJI}"]),
        ([EMOJI, "\ue000", "\uffff", "z"], ["\uffff", "\ue000", EMOJI, "z"]),
        (["a", "ab", "", "b"], ["b", "ab", "a", ""]),  # a prefix sorts first, as in Java
        (["host10", "host9", "host1"], ["host9", "host10", "host1"]),
    ],
)
def test_order_is_java_string_compare_to(ids: list[str], java_descending: list[str]) -> None:
    assert order_instances(ids) == java_descending
    assert order_instances(list(reversed(ids))) == java_descending


def test_java_compare_key_differs_from_code_points_only_above_the_bmp() -> None:
    assert FULLWIDTH_A < EMOJI  # Python: code points
    assert java_compare_key(FULLWIDTH_A) > java_compare_key(EMOJI)  # Java: UTF-16 units
    assert java_compare_key("\ud83d") == b"\xd8\x3d"  # a lone surrogate still sorts


def test_assignment_follows_java_order_for_ids_above_the_bmp() -> None:
    ids = [f"10.0.0.1@-@{EMOJI}", f"10.0.0.1@-@{FULLWIDTH_A}"]
    # ElasticJob: children sorted descending by compareTo -> the FULLWIDTH A id comes first.
    assert shard(AVG, ids, "job", 3) == {ids[1]: [0, 2], ids[0]: [1]}


# -- ElasticJob's *JobShardingStrategyTest, ported: the strategy gets the instances in order ----


def test_elasticjob_average_allocation_zero_servers() -> None:
    assert allocate(AVG, [], "test_job", 3) == {}


@pytest.mark.parametrize(
    ("instances", "total", "expected"),
    [
        (["host0@-@0"], 3, [[0, 1, 2]]),  # shardingForOneServer
        (HOSTS, 2, [[0], [1], []]),  # shardingForServersMoreThanShardingCount
        (HOSTS, 9, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),  # ...LessThanShardingCountAliquot
        (HOSTS, 8, [[0, 1, 6], [2, 3, 7], [4, 5]]),  # ...Aliquant for 8 and 3 servers
        (HOSTS, 10, [[0, 1, 2, 9], [3, 4, 5], [6, 7, 8]]),  # ...Aliquant for 10 and 3 servers
    ],
)
def test_elasticjob_average_allocation(
    instances: list[str], total: int, expected: list[list[int]]
) -> None:
    result = allocate(AVG, instances, "test_job", total)
    assert list(result) == instances  # LinkedHashMap order
    assert list(result.values()) == expected


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("1", {"host0@-@0": [0], "host1@-@0": [1], "host2@-@0": []}),  # assertShardingByAsc
        ("0", {"host2@-@0": [0], "host1@-@0": [1], "host0@-@0": []}),  # assertShardingByDesc
    ],
)
def test_elasticjob_odevity_sort_by_name(job: str, expected: dict[str, list[int]]) -> None:
    assert allocate(ODEVITY, HOSTS, job, 2) == expected


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("1", {"host1@-@0": [0], "host2@-@0": [1], "host0@-@0": []}),  # assertSharding1
        ("2", {"host2@-@0": [0], "host0@-@0": [1], "host1@-@0": []}),  # assertSharding2
        ("3", {"host0@-@0": [0], "host1@-@0": [1], "host2@-@0": []}),  # assertSharding3
    ],
)
def test_elasticjob_round_robin_by_name(job: str, expected: dict[str, list[int]]) -> None:
    assert allocate(ROUND_ROBIN, HOSTS, job, 2) == expected


@pytest.mark.parametrize(
    ("n", "total", "expected"),
    [
        # ElasticJob's AverageAllocationJobShardingStrategyTest, on instances in our order.
        (3, 9, [[0, 1, 2], [3, 4, 5], [6, 7, 8]]),
        (3, 8, [[0, 1, 6], [2, 3, 7], [4, 5]]),
        (3, 10, [[0, 1, 2, 9], [3, 4, 5], [6, 7, 8]]),
        (3, 2, [[0], [1], []]),
        (1, 4, [[0, 1, 2, 3]]),
    ],
)
def test_average_allocation(n: int, total: int, expected: list[list[int]]) -> None:
    instances = [f"host{i}" for i in range(n)]
    result = shard(AVG, instances, "job", total)
    ordered = order_instances(instances)
    assert [result[i] for i in ordered] == expected


def test_no_instances() -> None:
    assert shard(AVG, [], "job", 3) == {}


def test_odevity_reverses_for_even_hash() -> None:
    instances = ["host0", "host1", "host2"]
    # "1" hashes to 49 (odd): no reversal. "0" hashes to 48 (even): reversed.
    odd = shard(ShardingStrategy.ODEVITY, instances, "1", 2)
    even = shard(ShardingStrategy.ODEVITY, instances, "0", 2)
    assert odd == {"host2": [0], "host1": [1], "host0": []}
    assert even == {"host0": [0], "host1": [1], "host2": []}


def test_round_robin_rotates_by_hash() -> None:
    instances = ["host0", "host1", "host2"]
    # ElasticJob's RotateServerByNameJobShardingStrategyTest names: offsets 1 and 2 of 3.
    ordered = order_instances(instances)
    for name in ["1", "2", "3"]:
        offset = abs(java_string_hash(name)) % 3
        rotated = [ordered[(i + offset) % 3] for i in range(3)]
        result = shard(ShardingStrategy.ROUND_ROBIN, instances, name, 3)
        assert [result[r] for r in rotated] == [[0], [1], [2]]


def test_every_item_assigned_once() -> None:
    for strategy in ShardingStrategy:
        for n in range(1, 8):
            for total in range(1, 25):
                result = shard(strategy, [f"i{k}" for k in range(n)], f"job{total}", total)
                items = sorted(i for items in result.values() for i in items)
                assert items == list(range(total))
