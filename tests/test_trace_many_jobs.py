"""Trace reads for many jobs at once: the console's missed-fires page and ``aioelastic jobs
--tracing`` make a bounded number of statements for 50 jobs (not one or three per job), with the
same answers as the per-job queries."""

from __future__ import annotations

import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from aioelastic import JobConfig, Operations
from aioelastic._layout import JobPaths
from aioelastic._missed import MissedFire, missed_fires, missed_fires_of
from aioelastic.cli import _commands, build_parser
from aioelastic.cli._glance import glance, glances
from aioelastic.cli._trace import open_search, tracing_url
from aioelastic.console import Console, ConsoleSettings
from aioelastic.console import _app as console_app
from aioelastic.registry import MemoryStore
from aioelastic.tracing import TraceSearch, open_trace_store
from aioelastic.tracing._events import ExecutionSource, JobExecutionEvent, TraceEvent
from aioelastic.tracing._search import JOBS_PER_QUERY, SqlTraceSearch

pytestmark = pytest.mark.anyio

JOBS = 50
NOW = datetime.now(UTC)
HOUR = (NOW - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
#: Every minute of one past hour: each job has 60 due times, all judged, none near "now".
CRON = f"0 * {HOUR.hour} {HOUR.day} {HOUR.month} ? {HOUR.year}"
VIEWER = ("view", "view-secret")


def job_names() -> list[str]:
    return [f"job{n:02d}" for n in range(JOBS)]


def fired(job: int, minute: int) -> bool:
    """Whether job ``job`` fired at ``minute`` of the hour (each job misses other minutes)."""
    return (minute + job) % 7 != 0 and (job != 3 or minute < 30)


def dataset() -> list[TraceEvent]:
    events: list[TraceEvent] = []
    for j, name in enumerate(job_names()):
        for minute in range(60):
            if not fired(j, minute):
                continue
            at = HOUR + timedelta(minutes=minute, seconds=j % 3)
            task = f"{name}@-@0,1@-@READY@-@inst@-@{minute:02d}{uuid.uuid4().hex}"
            for item in range(2):
                start = JobExecutionEvent(
                    job_name=name,
                    task_id=task,
                    hostname="host",
                    ip="10.0.0.1",
                    sharding_item=item,
                    execution_source=ExecutionSource.NORMAL_TRIGGER,
                    start_time=at,
                )
                events.append(start)
                if j == 5 and minute == 59:
                    continue  # job05's last fire is still running
                ok = not (j % 4 == 0 and item == 1)
                events.append(
                    JobExecutionEvent(
                        id=start.id,
                        job_name=name,
                        task_id=start.task_id,
                        hostname="host",
                        ip="10.0.0.1",
                        sharding_item=item,
                        execution_source=ExecutionSource.NORMAL_TRIGGER,
                        start_time=at,
                        complete_time=at + timedelta(seconds=5 + item),
                        is_success=ok,
                        failure_cause=None if ok else f"{name} item 1 failed",
                    )
                )
    return events


@dataclass
class Namespace:
    url: str
    trace_url: str
    ops: Operations
    search: TraceSearch


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres), "sqlite"])
def trace_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return url
    return f"sqlite:///{tmp_path}/trace.db"


@pytest.fixture
async def ns(trace_url: str, tmp_path: Path) -> AsyncIterator[Namespace]:
    """50 jobs with a cron stored 5 hours ago, a one-off job, a job with an invalid config;
    an hour of their fires in the trace."""
    store = f"many-{uuid.uuid4().hex[:12]}"
    MemoryStore.reset(store)
    url = f"memory://{store}/ns"
    async with AsyncExitStack() as stack:
        ops = await stack.enter_async_context(Operations(url))
        configs = {n: JobConfig(name=n, cron=CRON, sharding_total_count=2) for n in job_names()}
        configs["oneoff"] = JobConfig(name="oneoff")
        for name, config in configs.items():
            await ops.registry.create(
                JobPaths("ns", name).config, config.to_registry(), make_parents=True
            )
        await ops.registry.create(JobPaths("ns", "broken").config, b"{not json", make_parents=True)
        for name in (*configs, "broken"):
            node = MemoryStore.named(store).nodes[JobPaths("ns", name).config]
            node.mtime = (NOW - timedelta(hours=5)).timestamp()
        trace = await stack.enter_async_context(
            open_trace_store(trace_url, journal_path=tmp_path / "journal")
        )
        await trace.sink.write(dataset())
        yield Namespace(url, trace_url, ops, trace.search)
    MemoryStore.reset(store)


@contextmanager
def counting() -> Iterator[list[str]]:
    """The SQL statements the trace searches send meanwhile (a page is a count and its rows)."""
    statements: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        for cls in SqlTraceSearch.__subclasses__():
            own_rows, own_page = cls.__dict__["_rows"], cls.__dict__["_page"]

            async def rows(self: Any, sql: str, params: Any, own: Any = own_rows) -> Any:
                statements.append(sql)
                return await own(self, sql, params)

            async def page(self: Any, count: str, sql: str, *args: Any, own: Any = own_page) -> Any:
                statements.extend((count, sql))
                return await own(self, count, sql, *args)

            patch.setattr(cls, "_rows", rows)
            patch.setattr(cls, "_page", page)
        yield statements


async def per_job_missed(ops: Operations, search: TraceSearch, **kw: Any) -> list[MissedFire]:
    found: list[MissedFire] = []
    for name in job_names():
        found += await missed_fires(ops, search, name, **kw)
    return found


async def test_many_jobs_missed_fires_and_last_fires_in_a_bounded_number_of_statements(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    since, tolerance = NOW - timedelta(hours=24), timedelta(seconds=30)
    jobs = await ns.ops.jobs()
    with counting() as one_by_one:
        expected = await per_job_missed(ns.ops, ns.search, since=since, tolerance=tolerance)
        expected_glances = {j.name: await glance(ns.ops, ns.search, j) for j in jobs}
    # One job at a time: a fires page (2 statements) and the fires of the day per job.
    assert len(one_by_one) == 52 * 2 + JOBS * 2
    assert len(expected) == sum(not fired(j, m) for j in range(JOBS) for m in range(60))
    with counting() as statements:
        per_job = await missed_fires_of(
            ns.ops, ns.search, [*job_names(), "oneoff", "gone"], since=since, tolerance=tolerance
        )
        assert len(statements) == 1  # one query for the 50 jobs' fires
        got = await glances(ns.ops, ns.search, jobs)
    assert len(statements) == 3  # glances: the last fires and the fires of the day
    assert [m for name in job_names() for m in per_job[name]] == expected
    assert per_job["oneoff"] == per_job["gone"] == []
    assert got == expected_glances
    assert got["broken"].missed is None and got["oneoff"].last_fire is None
    assert got["job05"].last_fire is not None and got["job05"].last_fire.running == 2
    assert got["job04"].last_fire is not None and got["job04"].last_fire.failed == 1


async def test_over_jobs_per_query_jobs_take_one_statement_per_chunk(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [*job_names(), *(f"none{n}" for n in range(JOBS_PER_QUERY))]
    with counting() as statements:
        spans = await ns.search.fire_spans_of(names, since=HOUR, until=NOW)
        last = await ns.search.last_fires(names)
    assert len(statements) == 4
    assert set(last) == set(job_names()) and len(spans) == len(names)
    for name in ("job00", "job03", "job49"):
        assert sorted(spans[name]) == sorted(
            await ns.search.fire_spans(job_name=name, since=HOUR, until=NOW)
        )
        page = await ns.search.fires(job_name=name, limit=1)
        assert last[name] == page.items[0]


def _missed_rows(html: str) -> list[tuple[str, str]]:
    return re.findall(r"<tr><td>([0-9: -]+ UTC)</td><td><a href=\"[^\"]*\">([^<]+)</a>", html)


async def test_the_console_missed_page_is_unchanged_with_one_query(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ns.trace_url.startswith("sqlite"):
        pytest.skip("the page's SQL is the search's, tested on both above")
    console = Console(
        ConsoleSettings(viewers={VIEWER[0]: VIEWER[1]}, registry_timeout=5, trace_timeout=10)
    )

    async def page() -> str:
        transport = httpx.ASGITransport(app=console.app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://console", auth=VIEWER
        ) as client:
            got = await client.get("/missed", params={"since": "24h"})
            assert got.status_code == 200
            return got.text

    async with console.serve(ns.ops, search=ns.search):
        with counting() as statements:
            html = await page()
        assert len(statements) == 1
        expected = await per_job_missed(ns.ops, ns.search, since=NOW - timedelta(hours=24))
        # The page as the per-job loop made it (the same since/tolerance the page uses).
        reference = sorted(expected, key=lambda m: m.due, reverse=True)[:500]
        assert _missed_rows(html) == [
            (m.due.strftime("%Y-%m-%d %H:%M:%S UTC"), m.job) for m in reference
        ]

        async def one_by_one(
            ops: Operations, search: TraceSearch, jobs: Sequence[str], **kw: Any
        ) -> dict[str, list[MissedFire]]:
            return {job: await missed_fires(ops, search, job, **kw) for job in jobs}

        monkeypatch.setattr(console_app, "missed_fires_of", one_by_one)
        assert await page() == html  # the page the per-job loop renders


async def test_the_cli_jobs_output_is_unchanged_with_a_bounded_number_of_statements(
    ns: Namespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not ns.trace_url.startswith("sqlite"):
        pytest.skip("the command's SQL is the search's, tested on both above")

    async def run(*flags: str) -> str:
        # `aioelastic --tracing URL jobs [--json]`, in this process (the CLI itself refuses a
        # memory:// registry: it lives in one process).
        args = build_parser().parse_args(["--tracing", ns.trace_url, "jobs", *flags])
        args.timeout = getattr(args, "timeout", None) or 30.0
        out = io.StringIO()
        await _commands._jobs(_commands._Call(ns.ops, args, out, "--json" in flags))
        return out.getvalue()

    with counting() as statements:
        listed = await run("--json")
        table = await run("--wide")
    assert len(statements) == 2 * 2  # per run: the last fires, the fires of the day
    rows = json.loads(listed)
    assert len(rows) == JOBS + 2 and rows[0]["name"] == "broken"
    assert rows[0]["missed_last_24h"] is None and rows[1]["missed_last_24h"] == 9
    assert table.splitlines()[0].split()[-4:] == ["LAST_FIRE", "OUTCOME", "MISSED", "DESCRIPTION"]

    async def one_by_one(c: Any, jobs: list[Any]) -> dict[str, Any]:
        async with AsyncExitStack() as stack:
            search = await open_search(stack, tracing_url(c.args), c.args.timeout)
            return {j.name: await glance(c.ops, search, j) for j in jobs}

    monkeypatch.setattr(_commands, "_glance", one_by_one)
    assert await run("--json") == listed  # the output of the per-job loop
    assert await run("--wide") == table
