"""A job ``tick`` that fires every second, and running a scheduler for a few of its fires."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from aioelastic import Scheduler, ShardingContext
from tests.harness.helpers import eventually


@dataclass
class Ticks:
    """Job ``tick``: its item count and the items run so far, in order."""

    items: int
    runs: list[int] = field(default_factory=list)


def tick_job(scheduler: Scheduler, sharding_total_count: int = 1) -> Ticks:
    """Add job ``tick`` (cron every second) to the scheduler."""
    ticks = Ticks(sharding_total_count)

    @scheduler.job(cron="* * * * * ?", sharding_total_count=sharding_total_count)
    async def tick(ctx: ShardingContext) -> None:
        ticks.runs.append(ctx.sharding_item)

    return ticks


async def run_fires(scheduler: Scheduler, ticks: Ticks, fires: int) -> tuple[datetime, datetime]:
    """Run the scheduler until ``fires`` fires of ``tick`` ran all their items (20 s at most);
    returns when it was started and when it had stopped."""
    started = datetime.now(UTC)
    async with scheduler:
        await eventually(
            lambda: len(ticks.runs) >= fires * ticks.items, 20, what=f"{fires} fires of tick"
        )
    return started, datetime.now(UTC)
