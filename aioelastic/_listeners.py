"""Job listeners: code that runs around each fire on an instance."""

from __future__ import annotations

from ._context import ShardingContexts
from ._errors import AioelasticError

__all__ = ["DistributedOnceListener", "DistributedOnceTimeoutError", "JobListener"]


class JobListener:
    """Subclass and override either method; both run on every instance, around every fire
    (ElasticJob's ``ElasticJobListener``). An exception in ``before_job_executed`` fails the fire
    (it goes to the error handler and no item runs); one in ``after_job_executed`` is handed to
    the error handler."""

    async def before_job_executed(self, contexts: ShardingContexts) -> None:
        """Called before the items of a fire start."""

    async def after_job_executed(self, contexts: ShardingContexts) -> None:
        """Called after every item of a fire has completed."""


class DistributedOnceTimeoutError(AioelasticError, TimeoutError):
    """Not every item of a fire started (or completed) across the cluster within the timeout."""


class DistributedOnceListener(JobListener):
    """Hooks that run once per fire for the whole cluster (ElasticJob's
    ``AbstractDistributeOnceElasticJobListener``): ``before_all_started`` on one instance once
    every item of the fire has started, ``after_all_completed`` on one instance once every item
    has completed.

    Each instance's fire waits (up to ``started_timeout`` / ``completed_timeout`` seconds) for the
    other instances to get there; past the timeout the wait ends with a
    ``DistributedOnceTimeoutError`` handed to the job's error handler, and the hook does not run.
    """

    def __init__(self, started_timeout: float = 30.0, completed_timeout: float = 30.0) -> None:
        self.started_timeout = started_timeout
        self.completed_timeout = completed_timeout

    async def before_all_started(self, contexts: ShardingContexts) -> None:
        """Runs once, on one instance, after every item of the fire has started."""

    async def after_all_completed(self, contexts: ShardingContexts) -> None:
        """Runs once, on one instance, after every item of the fire has completed."""
