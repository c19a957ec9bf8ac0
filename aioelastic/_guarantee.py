"""Distributed-once listeners (ElasticJob's guarantee service): every instance registers its
items under ``guarantee/started`` (or ``completed``) and waits until all items of the job are
there; the one instance whose multi-op deletes the whole set runs the hook."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import anyio

from ._errors import DistributedOnceTimeoutError, NoNodeError, TransactionFailedError
from ._layout import JobPaths
from ._marks import create_all
from .registry._limits import chunk_ops
from .registry._protocol import CreateOp, DeleteOp, Op, Registry
from .registry._view import View

__all__ = ["Guarantee"]


class Guarantee:
    """One job's started/completed sets, from one instance."""

    def __init__(
        self, registry: Registry, paths: JobPaths, view: View, total: Callable[[], int]
    ) -> None:
        self.registry = registry
        self.paths = paths
        self.view = view
        self._total = total  # the job's current sharding total count

    async def wait_all(self, kind: str, items: Sequence[int], timeout: float) -> bool:
        """Register ``items`` as started/completed (``kind``) and wait until every item of the job
        is; True on the one instance that claims the hook (by deleting the whole set in one
        multi-op). Raises ``DistributedOnceTimeoutError`` past ``timeout``."""
        base = (
            self.paths.guarantee_started()
            if kind == "started"
            else self.paths.guarantee_completed()
        )
        mine = [f"{base}/{i}" for i in items]
        for chunk in chunk_ops([CreateOp(p) for p in mine]):
            await create_all(self.registry, [op for op in chunk if isinstance(op, CreateOp)])
        total = self._total()

        def settled() -> bool:
            full = len(self.view.children(base)) >= total
            return full or not any(self.view.exists(p) for p in mine)

        deadline = anyio.current_time() + timeout
        while await self.view.wait_for(settled, deadline - anyio.current_time()):
            if len(self.view.children(base)) >= total:
                return await self._claim_all(
                    [DeleteOp(f"{base}/{name}") for name in self.view.children(base)]
                )
            # The view shows none of ours: claimed elsewhere, or the view has not caught up
            # with our own creates yet. One read tells.
            if await self.registry.exists(mine[0]) is None:
                return False
            if anyio.current_time() >= deadline:
                break
            await self.view.wait_changed(deadline - anyio.current_time())
        started = len(self.view.children(base))
        for path in mine:
            try:
                await self.registry.delete(path)
            except NoNodeError:
                pass
        raise DistributedOnceTimeoutError(
            f"job {self.paths.job!r}: only {started}/{total} items {kind} across the cluster "
            f"within {timeout:g}s; the distributed-once hook did not run"
        )

    async def _claim_all(self, deletes: Sequence[Op]) -> bool:
        """Claim a distributed-once hook by deleting the whole set: the instance whose first
        multi-op succeeds claims it (another's then fails on a node already gone); further
        chunks, if the set needs several, delete the rest."""
        first, *rest = chunk_ops(deletes)
        try:
            await self.registry.transaction(first)
        except TransactionFailedError:
            return False  # another instance claimed it first
        for chunk in rest:
            try:
                await self.registry.transaction(chunk)
            except TransactionFailedError:
                for op in chunk:
                    with contextlib.suppress(NoNodeError):
                        await self.registry.delete(op.path)
        return True
