"""Retries of a failed item run, with exponential backoff, on the instance that still owns it."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ._context import ShardingContext
from ._errors import ConfigError, ItemCancelled
from ._logging import fields, short_task_id
from ._ownership import ClaimLost
from .tracing._events import JobExecutionEvent, TraceEvent, format_failure

__all__ = ["AttemptRows", "ItemTimeoutError", "RetryBackoff", "run_with_retries"]

log = logging.getLogger("aioelastic.executor")


class ItemTimeoutError(TimeoutError):
    """The item ran past the job's ``timeout`` and was cancelled (never retried)."""


class RetryBackoff(BaseModel):
    """The wait before retry ``n`` (1-based): ``min(max, initial * factor**(n-1))``, then
    spread by ``±jitter`` (a fraction of it) so the items of a fire do not retry in step."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    initial: float = 1.0
    factor: float = 2.0
    max: float = 60.0
    jitter: float = 0.1

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            err = exc.errors()[0]
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, ConfigError):
                raise cause from None
            field = "retry_backoff." + ".".join(str(p) for p in err["loc"])
            raise ConfigError(field, err.get("input"), err["msg"]) from None

    @model_validator(mode="wrap")
    @classmethod
    def _from_tuple(cls, value: Any, handler: Any) -> Any:
        """``(initial, factor, max, jitter)`` (a prefix of it) is accepted too."""
        if isinstance(value, tuple | list):
            value = dict(zip(("initial", "factor", "max", "jitter"), value, strict=False))
        return handler(value)

    @model_validator(mode="after")
    def _check(self) -> RetryBackoff:
        if not self.initial >= 0:
            raise ConfigError("retry_backoff.initial", self.initial, "must be >= 0 seconds")
        if not self.factor >= 1:
            raise ConfigError("retry_backoff.factor", self.factor, "must be >= 1")
        if not self.max >= self.initial:
            raise ConfigError("retry_backoff.max", self.max, "must be >= initial")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("retry_backoff.jitter", self.jitter, "must be within 0..1")
        return self

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max, self.initial * self.factor ** (retry - 1))
        return max(0.0, base * (1 + self.jitter * (2 * rand() - 1)))


def retryable(exc: BaseException) -> bool:
    """Job errors are retried; the item's timeout, fencing and non-``Exception``s are not."""
    return isinstance(exc, Exception) and not isinstance(exc, ItemTimeoutError | ItemCancelled)


OnRetry = Callable[[BaseException, int, float], None]
"""``(failure, failed attempt number, seconds until the next one)``, before the wait."""


async def run_with_retries(
    attempt: Callable[[], Awaitable[None]],
    retries: int,
    backoff: RetryBackoff,
    lost: ClaimLost,
    on_retry: OnRetry,
    on_attempt: Callable[[], None] = lambda: None,
) -> None:
    """Run ``attempt`` up to ``1 + retries`` times while it fails with a retryable error and
    the claim on the item holds (also through the backoff wait); the last failure propagates.
    ``on_retry`` runs when an attempt failed and will be retried, ``on_attempt`` as the retry
    starts."""
    number = 1
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            if number > retries or not retryable(exc) or lost.is_set():
                raise
            failure, delay = exc, backoff.delay(number)
            on_retry(exc, number, delay)
        with anyio.move_on_after(delay):
            await lost.wait()
        if lost.is_set():
            raise failure
        number += 1
        on_attempt()


class AttemptRows:
    """The trace rows of one item's attempts. The run's own row (the one its failover intent
    names, so a taker can complete it if this instance dies) stays open across the attempts
    and gets the final outcome; each failed attempt that is retried is written as a completed
    row of its own, with its cause naming the attempt and the wait."""

    def __init__(
        self,
        post: Callable[[TraceEvent], None] | None,
        start: JobExecutionEvent | None,
        ctx: ShardingContext,
    ) -> None:
        self._post = post
        self.current = start
        self._attempt_start = start.start_time if start is not None else datetime.now(UTC)
        self._failed: JobExecutionEvent | None = None
        self._ctx = ctx

    def retry(self, exc: BaseException, number: int, delay: float) -> None:
        row, ctx = self.current, self._ctx
        log.warning(
            "%s: item %d failed (attempt %d, task %s), retrying in %.3gs: %s: %s",
            ctx.job_name,
            ctx.sharding_item,
            number,
            short_task_id(ctx.task_id),
            delay,
            type(exc).__name__,
            exc,
            extra=fields(
                job=ctx.job_name, task_id=ctx.task_id, item=ctx.sharding_item, attempt=number
            ),
        )
        if row is None or self._post is None:
            return
        cause = f"attempt {number} failed; retrying in {delay:.3g}s\n{format_failure(exc)}"
        # Written when the retry starts: if the wait ends without one (the claim was lost),
        # this failure is the run's own outcome, not an extra row.
        self._failed = JobExecutionEvent(
            job_name=row.job_name,
            task_id=row.task_id,
            hostname=row.hostname,
            ip=row.ip,
            sharding_item=row.sharding_item,
            execution_source=row.execution_source,
            start_time=self._attempt_start,
            complete_time=datetime.now(UTC),
            is_success=False,
            failure_cause=cause,
        )

    def next(self) -> None:
        """A retry starts: the failed attempt's row is written; the run's own row stays open."""
        if self._failed is not None and self._post is not None:
            self._post(self._failed)
        self._failed = None
        self._attempt_start = datetime.now(UTC)
