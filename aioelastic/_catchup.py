"""Bounded catch-up (``catchup_window``): one fire for the fires a stopped cluster missed.

Every fire that starts running items records its scheduled time in ``catchup/last`` (only
moving it forward). An instance starting finds the cron fires after that time that are already
due: they were missed (no instance ran them). If the latest is within the window, it moves
``last`` to it with a version-checked write (so only one instance, once, wins) and creates
``catchup/requests/{key}``; every instance then runs its own items of that request once (each
item claimed in ``requests/{key}/ran/{item}``), with source ``MISFIRE``.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from ._context import ShardingContexts
from ._cron import CronTrigger
from ._dependents import fire_key
from ._errors import (
    BadVersionError,
    NoNodeError,
)
from ._layout import JobPaths, is_number
from ._requests import claimable_items, create_parents, run_claiming, serve_requests
from .tracing._events import ExecutionSource, ExecutionType, State

if TYPE_CHECKING:
    from ._runner import JobRunner

__all__ = ["CatchUp", "missed_fires"]

log = logging.getLogger("aioelastic.catchup")

#: The most missed fire times named in the catch-up message (a count says the rest).
NAMED = 10


def missed_fires(
    trigger: CronTrigger, last: datetime, now: datetime, limit: int = 10_000
) -> list[datetime]:
    """The fire times after ``last`` that are due by ``now`` (at most ``limit``, the latest
    kept when there are more)."""
    out: list[datetime] = []
    at = trigger.next_fire_time(last)
    while at is not None and at <= now:
        out.append(at)
        if len(out) > limit:
            del out[0]
        at = trigger.next_fire_time(at)
    return out


def _ms(at: datetime) -> int:
    return round(at.timestamp() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class CatchUp:
    """One job's catch-up on one instance."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.paths: JobPaths = runner.coordinator.paths
        self.registry = runner.registry

    @property
    def _window(self) -> float:
        return self.runner.coordinator.config.catchup_window

    async def fire_started(self, contexts: ShardingContexts) -> None:
        """A cron fire starts running items: move ``catchup/last`` forward to its time."""
        at = contexts.scheduled_fire_time
        if self._window <= 0 or at is None or contexts.execution_type is ExecutionType.FAILOVER:
            return
        ms, path = _ms(at), self.paths.catchup_last
        for _ in range(3):  # lost races with other instances' writes: re-read
            try:
                raw, stat = await self.registry.get(path)
            except NoNodeError:
                if await create_parents(self.registry, path, str(ms).encode()):
                    return
                continue
            if _parse(raw) >= ms:
                return
            try:
                await self.registry.set(path, str(ms).encode(), version=stat.version)
                return
            except BadVersionError:
                continue

    async def at_start(self) -> None:
        """Request one catch-up fire if fires were missed within the window (first instance
        to get here only)."""
        if self._window <= 0:
            return
        trigger = self.runner.coordinator.config.trigger()
        if trigger is None:
            return
        try:
            raw, stat = await self.registry.get(self.paths.catchup_last)
        except NoNodeError:
            return  # no fire ever ran: nothing is known to be missed
        last = _parse(raw)
        now = datetime.now(UTC)
        running_since = self._others_running_since()
        missed = [m for m in missed_fires(trigger, _at(last), now) if m.timestamp() < running_since]
        if not missed:
            return
        latest = missed[-1]
        late = (now - latest).total_seconds()
        if late > self._window:
            log.warning(
                "%s: %d fire(s) missed up to %s, %.0fs ago: outside catchup_window (%gs), "
                "not caught up",
                self.paths.job,
                len(missed),
                latest.isoformat(),
                late,
                self._window,
                extra=self.runner.coordinator.log_fields,
            )
            return
        try:  # only the instance whose write wins requests the catch-up
            await self.registry.set(
                self.paths.catchup_last, str(_ms(latest)).encode(), version=stat.version
            )
        except BadVersionError:
            return
        text = ", ".join(m.isoformat() for m in missed[-NAMED:])
        more = f" (and {len(missed) - NAMED} earlier)" if len(missed) > NAMED else ""
        await create_parents(
            self.registry, self.paths.catchup_request(fire_key(latest)), (text + more).encode()
        )
        log.warning(
            "%s: catching up %d missed fire(s) with one fire: %s%s",
            self.paths.job,
            len(missed),
            text,
            more,
            extra=self.runner.coordinator.log_fields,
        )

    def _others_running_since(self) -> float:
        """When the longest-running other live instance on an enabled server registered (the
        registry's clock, epoch s): fires since then were not missed (it fired them)."""
        coord = self.runner.coordinator
        me = coord.identity.instance_id
        times = [
            stat.mtime
            for name in coord.available_instances()
            if name != me and (stat := coord.view.stat(self.paths.instance(name))) is not None
        ]
        return min(times, default=float("inf"))

    async def run(self) -> None:
        """Run this instance's share of each catch-up request (a loop of the job's runner)."""
        await serve_requests(self.runner, self.paths.catchup_requests, self._serve, log)

    async def _serve(self, key: str) -> bool:
        runner = self.runner
        coord, executor = runner.coordinator, runner.executor
        ran = partial(self.paths.catchup_ran, key)
        items = await claimable_items(runner, self.paths.catchup_request(key), ran)
        if not items:
            return False
        scheduled = _at(int(key)) if is_number(key) else None
        contexts = dataclasses.replace(
            executor.contexts(items, ExecutionType.READY, ExecutionSource.MISFIRE, scheduled),
            catch_up=True,
        )
        missed = coord.view.get(self.paths.catchup_request(key)) or b""
        executor._status(
            contexts,
            State.TASK_STAGING,
            f"Job '{self.paths.job}' catch-up fire for missed fire(s) "
            f"{missed.decode(errors='replace')} (catchup_window {self._window:g}s).",
        )
        run_claiming(runner, ran, contexts)
        return True


def _parse(raw: bytes) -> int:
    try:
        return int(raw)
    except ValueError:
        return 0
