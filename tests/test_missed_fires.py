"""Missed fires (issue 13 part 4): after the fact from the stored cron and the trace
(``missed_fires``, ``aioelastic missed``; the only instance stopped across fire times), and live
on the job's leader (every server disabled, a stalled loop): the ``Observer.missed_fire`` hook,
``aioelastic_missed_fires_total`` and a WARNING."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from aioelastic import CronTrigger, Observer, Operations, Scheduler, Settings, ShardingContext
from aioelastic._missed import RecentStarts, _Coverage, due_times, missed_fires
from aioelastic.metrics import PrometheusMetrics
from aioelastic.registry import MemoryStore
from aioelastic.tracing import open_trace_store
from tests.harness.cli import clean_env, cli
from tests.harness.helpers import eventually
from tests.harness.ticks import run_fires, tick_job
from tests.test_metrics import scrape, value

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_due_times_and_coverage() -> None:
    every_minute = CronTrigger("0 * * * * ?")
    due = due_times(every_minute, T0, T0 + timedelta(minutes=4))
    assert due == [T0 + timedelta(minutes=m) for m in range(4)]
    tolerance = timedelta(seconds=30)
    now = T0 + timedelta(hours=1)
    coverage = _Coverage(
        [
            (T0 + timedelta(seconds=2), T0 + timedelta(seconds=3)),  # on time
            (T0 + timedelta(minutes=2, seconds=40), None),  # too late for 2 min, busy at 3
        ],
        now,
    )
    assert [coverage.covers(d, tolerance) for d in due] == [True, False, False, True]
    assert coverage.covers(T0 + timedelta(minutes=5) - timedelta(milliseconds=500), tolerance)


def test_a_fire_counts_for_one_due_time_only() -> None:
    """Every second, one fire missing: the fires of the seconds around it cover it neither
    through the 1 s skew nor through a tolerance longer than the interval."""
    second = timedelta(seconds=1)
    spans = [
        (T0 + k * second + timedelta(milliseconds=3), T0 + k * second + timedelta(milliseconds=20))
        for k in range(10)
        if k != 5
    ]
    coverage = _Coverage(spans, T0 + timedelta(hours=1))
    due = [T0 + k * second for k in range(10)]
    tolerance = timedelta(seconds=30)
    bounds = [None, *due, None]
    covered = [coverage.covers(d, tolerance, bounds[i], bounds[i + 2]) for i, d in enumerate(due)]
    assert covered == [k != 5 for k in range(10)]


def test_recent_starts_answer_each_due_time_once_and_stay_bounded() -> None:
    # The live watch asks once per due time: a start answers for its own due time only, an
    # unknown one is None (the watch then reads the view), and asking forgets what is older.
    starts = RecentStarts(kept=3)
    for k in range(5):
        starts.add(T0 + timedelta(seconds=k), T0 + timedelta(seconds=k, milliseconds=5))
    assert starts.take(T0) is None  # evicted: more fires than kept
    assert starts.take(T0 + timedelta(seconds=3)) == T0 + timedelta(seconds=3, milliseconds=5)
    assert starts.take(T0 + timedelta(seconds=2)) is None  # forgotten with the take of 3
    assert starts.take(T0 + timedelta(seconds=3, milliseconds=500)) is None  # never started
    starts.add(T0 + timedelta(seconds=9), T0 + timedelta(seconds=9))
    starts.add(T0 + timedelta(seconds=9), T0 + timedelta(seconds=20))  # a re-run: not a start
    assert starts.take(T0 + timedelta(seconds=9)) == T0 + timedelta(seconds=9)
    assert starts.take(T0 + timedelta(seconds=4)) is None  # taken with 9 (it was older)


def memory_scheduler(tmp_path: Path, name: str, **settings: object) -> Scheduler:
    MemoryStore.reset(name)
    return Scheduler(
        settings=Settings(
            registry_url=f"memory://{name}/ns",
            trace_journal_path=tmp_path / "trace.journal",
            **settings,
        )
    )


@pytest.mark.slow
async def test_the_only_instance_stopped_across_fire_times(tmp_path: Path) -> None:
    trace = f"sqlite:///{tmp_path}/trace.db"
    name = f"missed{uuid.uuid4().hex[:6]}"
    scheduler = memory_scheduler(tmp_path, name, tracing_url=trace)
    started, stopped = await run_fires(scheduler, tick_job(scheduler, 2), 3)
    tolerance = timedelta(seconds=0.5)
    async with (
        Operations(f"memory://{name}/ns") as ops,
        open_trace_store(trace, create_schema=False) as store,
    ):

        async def missed() -> list[datetime]:
            found = await missed_fires(
                ops, store.search, "tick", since=started, tolerance=tolerance
            )
            return [m.due for m in found]

        due = await eventually(missed, 20, until=lambda d: len(d) >= 2, what="2 missed")
        assert all(d > stopped - timedelta(seconds=1) for d in due), (due, stopped)
        found = await ops.missed_fires(store.search, "tick", since=started, tolerance=tolerance)
        assert found[0].job == "tick"
        assert found[0].reason == "no fire started within 0.5s of the due time"
        # while it ran, every due time had its fire
        assert await missed_fires(ops, store.search, "tick", since=started, until=stopped) == []


@pytest.mark.zookeeper
async def test_cli_missed_and_the_jobs_count(zk_url: str, tmp_path: Path) -> None:
    trace = f"sqlite:///{tmp_path}/trace.db"
    scheduler = Scheduler(
        settings=Settings(
            registry_url=zk_url, tracing_url=trace, trace_journal_path=tmp_path / "j.journal"
        )
    )
    await run_fires(scheduler, tick_job(scheduler), 2)
    env = clean_env(AIOELASTIC_REGISTRY_URL=zk_url, AIOELASTIC_TRACING_URL=trace)

    async def listed() -> list[str]:
        result = await cli("missed", "tick", "--tolerance", "0.5", env=env)
        assert result.code == 0, result.err
        return result.out.splitlines()

    lines = await eventually(listed, 20, until=lambda out: len(out) >= 4, what="2 missed rows")
    assert lines[0].split() == ["DUE", "JOB", "REASON"]
    assert "tick  no fire started within 0.5s of the due time" in lines[1]
    assert lines[-1].endswith(" missed)")
    as_json = (await cli("missed", "tick", "--tolerance", "0.5", "--json", env=env)).json()
    assert as_json[0]["job"] == "tick" and as_json[0]["due"]
    since_later = await cli("missed", "tick", "--since", "2099-01-01", env=env)
    assert since_later.out.startswith("no missed fires of 'tick' since 2099-01-01")
    unknown = await cli("missed", "nope", env=env)
    assert unknown.code == 3


class Misses(Observer):
    def __init__(self) -> None:
        self.seen: list[tuple[str, datetime, str]] = []

    def missed_fire(self, job: str, due: datetime, reason: str) -> None:
        self.seen.append((job, due, reason))


@pytest.mark.slow
async def test_leader_counts_fires_missed_while_every_server_is_disabled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aioelastic.missed")
    misses = Misses()
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    name = f"missed{uuid.uuid4().hex[:6]}"
    MemoryStore.reset(name)
    scheduler = Scheduler(
        settings=Settings(registry_url=f"memory://{name}/ns", missed_fire_tolerance=0.5),
        observers=[misses, metrics],
    )
    runs = tick_job(scheduler, 2).runs
    async with scheduler:
        ops = Operations.of(scheduler)
        await eventually(lambda: len(runs) >= 4, 20, what="fires running")
        assert misses.seen == []  # running normally: nothing missed
        await ops.disable_server("tick")
        await eventually(lambda: len(misses.seen) >= 2, 20, what="2 missed fires")
        job, _, reason = misses.seen[0]
        assert (job, reason) == ("tick", "every server of the job is disabled")
        assert value(scrape(registry), "aioelastic_missed_fires_total", job="tick") >= 2
        warnings = [r for r in caplog.records if r.name == "aioelastic.missed"]
        assert len(warnings) == 1  # one line a minute per job, however many misses
        assert "started on no instance: every server of the job is disabled" in (
            warnings[0].getMessage()
        )
        assert warnings[0].__dict__["job"] == "tick"

        await ops.enable_server("tick")
        resumed = len(runs)
        await eventually(lambda: len(runs) >= resumed + 2, 20, what="fires running again")
        counted = len(misses.seen)
        await eventually(lambda: len(runs) >= resumed + 6, 20, what="three more fires")
        assert len(misses.seen) == counted  # no miss while items run
    metrics.unregister()


@pytest.mark.slow
async def test_a_stalled_loop_is_a_missed_fire(tmp_path: Path) -> None:
    misses = Misses()
    name = f"missed{uuid.uuid4().hex[:6]}"
    MemoryStore.reset(name)
    scheduler = Scheduler(
        settings=Settings(
            registry_url=f"memory://{name}/ns",
            missed_fire_tolerance=0.5,
            loop_stall_action="warn",
        ),
        observers=[misses],
    )
    runs: list[int] = []

    @scheduler.job(cron="* * * * * ?")
    async def tick(ctx: ShardingContext) -> None:
        runs.append(ctx.sharding_item)
        if len(runs) == 2:
            time.sleep(3)  # blocks the event loop: the fires due meanwhile start nowhere

    async with scheduler:
        await eventually(lambda: misses.seen, 20, what="a missed fire")
    assert misses.seen[0][2].startswith("this leader's event loop was stalled")


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_fire_spans_on_both_databases(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from aioelastic.tracing._events import ExecutionSource, JobExecutionEvent, TraceEvent

    url = (
        f"sqlite:///{tmp_path}/trace.db"
        if backend == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    now = datetime.now(UTC).replace(microsecond=0)
    events: list[TraceEvent] = []
    for fire_no, finished in enumerate((True, True, False)):
        for item in range(2):
            start = now - timedelta(minutes=10 - fire_no, seconds=-item)
            events.append(
                JobExecutionEvent(
                    job_name="tick",
                    task_id=f"tick@-@0,1@-@READY@-@i@-@{fire_no:032x}",
                    hostname="h",
                    ip="127.0.0.1",
                    sharding_item=item,
                    execution_source=ExecutionSource.NORMAL_TRIGGER,
                    start_time=start,
                    complete_time=start + timedelta(seconds=5) if finished or item else None,
                    is_success=True,
                )
            )
    async with open_trace_store(url, journal_path=tmp_path / "j.journal") as store:
        await store.sink.write(events)
        search = store.search
        spans = sorted(
            await search.fire_spans(job_name="tick", since=now - timedelta(hours=1), until=now)
        )
    first = now - timedelta(minutes=10)
    assert spans == [
        (first, first + timedelta(seconds=6)),
        (first + timedelta(minutes=1), first + timedelta(minutes=1, seconds=6)),
        (first + timedelta(minutes=2), None),  # an item still runs
    ]
