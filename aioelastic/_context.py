"""Value objects handed to jobs and listeners."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from ._ownership import ClaimLost, fencing_token
from .tracing._events import ExecutionSource, ExecutionType

__all__ = ["ShardingContext", "ShardingContexts"]


@dataclass(frozen=True, slots=True)
class ShardingContexts:
    """One fire of one job on one instance: every item it runs (what listeners receive)."""

    job_name: str
    task_id: str
    sharding_total_count: int
    job_parameter: str
    sharding_item_parameters: Mapping[int, str]
    execution_type: ExecutionType = ExecutionType.READY
    execution_source: ExecutionSource = ExecutionSource.NORMAL_TRIGGER
    scheduled_fire_time: datetime | None = None
    props: Mapping[str, str] = field(default_factory=dict)
    upstream_task_ids: tuple[str, ...] = ()
    upstream_fire: str | None = None
    """A dependent job's run: the key of the upstream fire that requested it."""
    trigger: str | None = None
    """A manual fire: its trigger's id (the same on every instance the trigger reached)."""
    catch_up: bool = False
    """A catch-up fire (source MISFIRE, but no misfire re-run: there are no marks to take)."""
    sorted_items: tuple[int, ...] = field(init=False, repr=False, compare=False, default=())
    """``items`` as a tuple, sorted once (the fire path reads it many times)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "sorted_items", tuple(sorted(self.sharding_item_parameters)))

    @property
    def items(self) -> list[int]:
        return list(self.sorted_items)

    def for_item(
        self, item: int, lost: ClaimLost | None = None, session_id: int = 0
    ) -> ShardingContext:
        return ShardingContext(
            job_name=self.job_name,
            task_id=self.task_id,
            sharding_total_count=self.sharding_total_count,
            job_parameter=self.job_parameter,
            sharding_item=item,
            sharding_parameter=self.sharding_item_parameters.get(item, ""),
            execution_source=self.execution_source,
            scheduled_fire_time=self.scheduled_fire_time,
            props=self.props,
            lost=lost if lost is not None else ClaimLost(),
            session_id=session_id,
            upstream_task_ids=self.upstream_task_ids,
        )


@dataclass(frozen=True, slots=True)
class ShardingContext:
    """What one item's run receives."""

    job_name: str
    task_id: str
    sharding_total_count: int
    job_parameter: str
    sharding_item: int
    sharding_parameter: str
    execution_source: ExecutionSource = ExecutionSource.NORMAL_TRIGGER
    scheduled_fire_time: datetime | None = None
    """When the cron trigger meant this fire to start (None for manual/misfire/failover runs)."""
    props: Mapping[str, str] = field(default_factory=dict)
    lost: ClaimLost = field(default_factory=ClaimLost, compare=False, repr=False)
    """Set the moment this instance loses its claim on the item (session lost, a reshard moved
    the item, the scheduler stopping), before the run is cancelled: ``await ctx.lost.wait()``."""
    session_id: int = 0
    """The registry session that holds this run's claim (0 if none)."""
    upstream_task_ids: tuple[str, ...] = ()
    """A dependent job's run: the task ids of the upstream fire(s) whose completion started it."""

    @property
    def fencing_token(self) -> str:
        """``{task_id}@-@{registry session id, hex}``: store it with a write to an external
        system; a later run of the item (here or elsewhere) has another."""
        return fencing_token(self.task_id, self.session_id)

    def still_owned(self) -> bool:
        """Whether this instance still holds its claim on the item (check before a commit)."""
        return not self.lost.is_set()

    def to_json_dict(self) -> dict[str, object]:
        return {
            "job_name": self.job_name,
            "task_id": self.task_id,
            "sharding_total_count": self.sharding_total_count,
            "job_parameter": self.job_parameter,
            "sharding_item": self.sharding_item,
            "sharding_parameter": self.sharding_parameter,
            "execution_source": self.execution_source.value,
        }
