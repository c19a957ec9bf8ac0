"""Job listeners: code that runs around each fire on an instance."""

from __future__ import annotations

from ._context import ShardingContexts

__all__ = ["JobListener"]


class JobListener:
    """Subclass and override either method; both run on every instance, around every fire
    (ElasticJob's ``ElasticJobListener``). An exception in ``before_job_executed`` fails the fire
    (it goes to the error handler and no item runs); one in ``after_job_executed`` is handed to
    the error handler."""

    async def before_job_executed(self, contexts: ShardingContexts) -> None:
        """Called before the items of a fire start."""

    async def after_job_executed(self, contexts: ShardingContexts) -> None:
        """Called after every item of a fire has completed."""
