"""Job listeners: code that runs around each fire on an instance."""

from __future__ import annotations

from ._context import ShardingContexts

__all__ = ["DistributedOnceListener", "JobListener"]


class JobListener:
    """Subclass and override either method; both run on every instance, around every fire
    (ElasticJob's ``ElasticJobListener``), failover takeovers and misfire re-runs included.

    An exception in either method goes to the job's error handler. With
    ``error_handler="raise"``, one in ``before_job_executed`` also aborts the fire before any
    item runs (the listeners after it are not called); with ``"log"``, ``"ignore"`` or a callable
    the fire goes on and the other listeners are still called."""

    async def before_job_executed(self, contexts: ShardingContexts) -> None:
        """Called before the items of a fire start."""

    async def after_job_executed(self, contexts: ShardingContexts) -> None:
        """Called after every item of a fire has completed."""


class DistributedOnceListener(JobListener):
    """Hooks that run once per fire for the whole cluster (ElasticJob's
    ``AbstractDistributeOnceElasticJobListener``): ``before_all_started`` on one instance once
    every item of the fire has started, ``after_all_completed`` on one instance once every item
    has completed.

    Each instance's fire waits (up to ``started_timeout`` / ``completed_timeout`` seconds) for the
    other instances to get there; past the timeout the wait ends with a
    ``DistributedOnceTimeoutError`` handed to the job's error handler, and the hook does not run.

    Failover takeovers and misfire re-runs outside a fire leave these hooks out: they run a few
    of the fire's items on one instance after the fire's cluster-wide hooks ran (or timed out),
    so they neither wait for the cluster nor run a hook a second time.
    """

    def __init__(self, started_timeout: float = 30.0, completed_timeout: float = 30.0) -> None:
        self.started_timeout = started_timeout
        self.completed_timeout = completed_timeout

    async def before_all_started(self, contexts: ShardingContexts) -> None:
        """Runs once, on one instance, after every item of the fire has started."""

    async def after_all_completed(self, contexts: ShardingContexts) -> None:
        """Runs once, on one instance, after every item of the fire has completed."""
