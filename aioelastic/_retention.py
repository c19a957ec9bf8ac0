"""Trace retention (``Settings.trace_retention_days``): old trace rows deleted by one instance
per namespace, in bounded batches, off the fire path.

The instance that holds the namespace's retention lock (an ephemeral node,
``/{namespace}/.trace-retention``, holding its instance id) purges right away and then every
``interval`` (an hour); the others try to take the lock at the same pace, so a holder that dies
is replaced within an interval (its node goes with its session). A purge deletes ``batch_size``
rows per statement with a pause between (``SqlTraceSearch.purge_in_batches``) through its own
short-lived connection, so the sinks' writes never wait behind it for long.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from anyio.abc import TaskStatus

from ._errors import NodeExistsError, NoNodeError, RegistryError
from ._layout import namespace_root
from .registry._protocol import Registry
from .tracing import open_trace_store
from .tracing._search import PurgeResult, SqlTraceSearch

__all__ = ["LOCK_NODE", "TraceRetention", "lock_path", "store_opener"]

log = logging.getLogger("aioelastic.retention")

#: The lock node's name under the namespace root (not a job: it has no config node, and
#: ``Operations.jobs()`` skips it; don't name a job so).
LOCK_NODE = ".trace-retention"

SearchOpener = Callable[[], AbstractAsyncContextManager[SqlTraceSearch]]


def lock_path(namespace: str) -> str:
    return f"{namespace_root(namespace)}/{LOCK_NODE}"


class TraceRetention:
    """Deletes trace rows older than ``days`` while holding the namespace's retention lock."""

    def __init__(
        self,
        registry: Registry,
        namespace: str,
        instance_id: str,
        open_search: SearchOpener,
        *,
        days: float,
        interval: float = 3600.0,
        batch_size: int = 1000,
        pause: float = 0.1,
    ) -> None:
        self.registry = registry
        self.path = lock_path(namespace)
        self.instance_id = instance_id
        self._open_search = open_search
        self.days = days
        self.interval = interval
        self.batch_size = batch_size
        self.pause = pause
        self.purges = 0
        """Purges this instance ran (as the lock holder)."""

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Purge when holding the lock, every ``interval``, until cancelled (errors logged)."""
        task_status.started()
        while True:
            try:
                await self.purge_once()
            except Exception as exc:  # the next interval tries again
                log.warning(
                    "trace retention: purge failed (%s); next try in %gs", exc, self.interval
                )
            await anyio.sleep(self.interval)

    async def holds_lock(self) -> bool:
        """Take the lock if free; True if this session holds it."""
        data = self.instance_id.encode()
        try:
            await self.registry.create(self.path, data, ephemeral=True, make_parents=True)
            return True
        except NodeExistsError:
            pass
        try:
            held, stat = await self.registry.get(self.path)
        except NoNodeError:
            return False  # released just now: the next round takes it
        return held == data and stat.ephemeral_owner == self.registry.session_id

    async def purge_once(self) -> PurgeResult | None:
        """One purge if this instance holds the lock (None otherwise)."""
        try:
            if not await self.holds_lock():
                return None
        except RegistryError as exc:
            log.debug("trace retention: lock not checked (%s)", exc)
            return None
        async with self._open_search() as search:
            with anyio.fail_after(max(self.interval, 60)):
                result = await search.purge_in_batches(
                    self.days, batch_size=self.batch_size, pause=self.pause
                )
        self.purges += 1
        log.info(
            "trace retention: deleted %d execution row(s) and %d status row(s) older than %g "
            "day(s)",
            result.executions,
            result.status_traces,
            self.days,
            extra={"instance": self.instance_id},
        )
        return result


def store_opener(url: str) -> SearchOpener:
    """Opens the trace database at ``url`` for one purge (a pool of one connection)."""

    @asynccontextmanager
    async def opened() -> AsyncIterator[SqlTraceSearch]:
        async with open_trace_store(url, pool_size=1) as store:
            search = store.search
            if not isinstance(search, SqlTraceSearch):
                raise TypeError(f"no SQL search for {url}")  # open_trace_store gives SQL ones
            yield search

    return opened
