"""A job at a glance: its last fire and the fires it missed lately (for ``aioelastic jobs``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .._missed import missed_fires
from .._operations import JobBrief, JobStatus, Operations
from ..tracing._search import FireRecord, TraceSearch
from ._trace import fires_json

__all__ = ["MISSED_WINDOW", "Glance", "glance", "glance_json"]

#: ``aioelastic jobs`` counts the fires missed in this window.
MISSED_WINDOW = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Glance:
    last_fire: FireRecord | None
    missed: int | None
    """Fires missed in the last :data:`MISSED_WINDOW` (None: the job has no valid config)."""


async def glance(ops: Operations, search: TraceSearch, job: JobBrief) -> Glance:
    page = await search.fires(job_name=job.name, limit=1)
    last = page.items[0] if page.items else None
    if job.status is JobStatus.INVALID_CONFIG:
        return Glance(last, None)
    since = datetime.now(UTC) - MISSED_WINDOW
    return Glance(last, len(await missed_fires(ops, search, job.name, since=since)))


def glance_json(g: Glance) -> dict[str, Any]:
    return {
        "last_fire": fires_json((g.last_fire,))[0] if g.last_fire is not None else None,
        "missed_last_24h": g.missed,
    }
