"""A job at a glance: its last fire and the fires it missed lately (for ``aioelastic jobs``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .._missed import missed_fires, missed_fires_of
from .._operations import JobBrief, JobStatus, Operations
from ..tracing._search import FireRecord, TraceSearch
from ._trace import fires_json

__all__ = ["MISSED_WINDOW", "Glance", "glance", "glance_json", "glances"]

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


async def glances(
    ops: Operations, search: TraceSearch, jobs: Sequence[JobBrief]
) -> dict[str, Glance]:
    """:func:`glance` of every job, with two trace queries for all of them (per
    ``JOBS_PER_QUERY`` jobs) instead of three per job."""
    names = [j.name for j in jobs]
    many = getattr(search, "last_fires", None)
    if many is None:  # a search of another make
        return {j.name: await glance(ops, search, j) for j in jobs}
    last: dict[str, FireRecord] = await many(names) if names else {}
    valid = [j.name for j in jobs if j.status is not JobStatus.INVALID_CONFIG]
    since = datetime.now(UTC) - MISSED_WINDOW
    missed = await missed_fires_of(ops, search, valid, since=since)
    return {
        j.name: Glance(last.get(j.name), len(missed[j.name]) if j.name in missed else None)
        for j in jobs
    }


def glance_json(g: Glance) -> dict[str, Any]:
    return {
        "last_fire": fires_json((g.last_fire,))[0] if g.last_fire is not None else None,
        "missed_last_24h": g.missed,
    }
