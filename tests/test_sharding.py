"""Sharding strategies against ElasticJob's algorithms and examples."""

from __future__ import annotations

import pytest

from aioelastic._sharding import ShardingStrategy, java_string_hash, order_instances, shard

AVG = ShardingStrategy.AVG_ALLOCATION


def test_java_hash_code() -> None:
    # Values from java.lang.String#hashCode.
    assert java_string_hash("") == 0
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("Hello, World!") == 1498789909
    assert java_string_hash("polygenelubricants") == -2147483648
    assert java_string_hash("中文") == 20013 * 31 + 25991


def test_order_is_descending_like_elasticjob() -> None:
    assert order_instances(["host0", "host2", "host1"]) == ["host2", "host1", "host0"]


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
