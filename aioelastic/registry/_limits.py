"""ZooKeeper's packet limit, and multi-ops split into chunks that fit it.

A request bigger than ``jute.maxbuffer`` (1,048,575 bytes by default) makes the server close the
connection, and a client that retries it loses its session in a loop. Both registries refuse such
a request up front (``PacketTooLargeError``) using the size estimate here, and the coordination
code splits every multi-op that grows with the item count into chunks of at most
``CHUNK_BUDGET`` bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .._errors import PacketTooLargeError
from ._protocol import CreateOp, Op, SetOp

__all__ = [
    "CHUNK_BUDGET",
    "NODE_DATA_LIMIT",
    "PACKET_LIMIT",
    "batch_items",
    "check_request",
    "chunk_ops",
    "create_size",
    "op_size",
    "set_size",
    "transaction_size",
]

#: ZooKeeper's default ``jute.maxbuffer``: the largest request body the server accepts.
PACKET_LIMIT = 0xFFFFF
#: The largest node data we write (the config JSON): the limit minus room for the request.
NODE_DATA_LIMIT = PACKET_LIMIT - 4096
#: A multi-op chunk's estimated size: half the limit, so that the estimate's error, the ACLs of
#: an authenticated session and the reply (paths and stats) all fit with room to spare.
CHUNK_BUDGET = PACKET_LIMIT // 2

# Per-op bytes besides path and data: the multi header (9), length prefixes, version/flags and
# a world ACL (27) with room for a digest one.
_OP_OVERHEAD = 96
_REQUEST_HEADER = 8  # xid, opcode


def op_size(op: Op) -> int:
    """Estimated bytes of ``op`` inside a multi request (an upper bound for the reply too)."""
    data = op.data if isinstance(op, CreateOp | SetOp) else b""
    return _OP_OVERHEAD + len(op.path.encode()) + len(data)


def transaction_size(ops: Sequence[Op]) -> int:
    return _REQUEST_HEADER + 9 + sum(op_size(op) for op in ops)  # 9: the end-of-multi header


def create_size(path: str, data: bytes) -> int:
    return _REQUEST_HEADER + _OP_OVERHEAD + len(path.encode()) + len(data)


set_size = create_size


def check_request(size: int, what: str) -> None:
    """Raise ``PacketTooLargeError`` if a request of ``size`` bytes would not fit a packet."""
    if size > PACKET_LIMIT:
        raise PacketTooLargeError(
            f"{what}: a request of about {size} bytes exceeds ZooKeeper's packet limit "
            f"(jute.maxbuffer = {PACKET_LIMIT} bytes); not sent"
        )


def chunk_ops(ops: Sequence[Op], budget: int = CHUNK_BUDGET) -> list[list[Op]]:
    """``ops`` in order, split into consecutive chunks of at most ``budget`` estimated bytes
    (an op too big on its own gets a chunk of its own, which the registry then refuses)."""
    chunks: list[list[Op]] = []
    current: list[Op] = []
    size = _REQUEST_HEADER + 9
    for op in ops:
        n = op_size(op)
        if current and size + n > budget:
            chunks.append(current)
            current, size = [], _REQUEST_HEADER + 9
        current.append(op)
        size += n
    if current:
        chunks.append(current)
    return chunks


def batch_items(
    items: Sequence[int], ops_of: Callable[[int], Sequence[Op]], budget: int = CHUNK_BUDGET
) -> list[list[int]]:
    """``items`` in order, split into consecutive batches whose ops (``ops_of(item)``) fit
    one multi-op of at most ``budget`` estimated bytes."""
    batches: list[list[int]] = []
    size = budget
    for item in items:
        n = sum(op_size(op) for op in ops_of(item))
        if size + n > budget:
            batches.append([])
            size = _REQUEST_HEADER + 9
        batches[-1].append(item)
        size += n
    return batches
