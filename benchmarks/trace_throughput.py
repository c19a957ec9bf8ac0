"""Sustained trace throughput into PostgreSQL: our bus + sink vs ElasticJob's way vs raw COPY.

Starts its own PostgreSQL (``tests/harness/postgres.py``; fsync on unless ``--no-fsync``) and
feeds each contender the same stream of events, shaped like real fires of a 4-item job
(staging, running, 4 item starts, 4 item completions, finished: 11 events per fire):

a) ``bus``: ``TraceBus`` + ``PostgresSink`` (batches, one transaction each, binary COPY for the
   rows a batch creates, two batches in flight on two connections, committed in order; with a
   backlog, batches above ``--batch-size`` as the sink's recent write rate allows);
   the producer posts as fast as it can while less than half of ``max_queue`` is unwritten (so
   normally nothing goes to the journal; a write pending past the 0.1 s journal window under
   load sends events there, counted as ``journaled``); the clock stops when everything is
   committed. The sink connects before the clock starts, as the other contenders do.
b) ``naive``: ElasticJob's ``RDBJobEventStorage`` pattern: per event a new connection, for a
   non-staging status a ``SELECT`` of the original task id, then one INSERT (UPDATE for an item
   completion), autocommit. Run for a fixed time budget over a prefix of the stream.
   ``naive_pooled`` is the same statements on one kept connection (ElasticJob with a pooled
   DataSource), to show what batching buys beyond saving connections.
c) ``copy``: the final rows of the stream loaded with ``COPY`` (``copy_records_to_table``), no
   upsert: an upper bound for getting these rows into these (indexed) tables.

Each run of a contender is a fresh process of its own writing into a fresh database with the
same schema and indexes; the bus and COPY run ``--repeat`` times (default 5), interleaved (and
in alternating order), the naive ones once. ``--before REV`` adds the bus of git revision REV
(its ``aioelastic/`` unpacked to a temp dir) to every round. Reported: median, min-max, and the
ratio to COPY within each round.

    python benchmarks/trace_throughput.py [--quick] [--events N] [--repeat N] [--before REV]
        [--batch-size N] [--no-fsync]

Prints events/second and ratios; writes ``benchmarks/results/trace_throughput.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if os.environ.get("TRACE_BENCH_PACKAGE"):  # ``--before``: an older aioelastic shadows this one
    sys.path.insert(0, os.environ["TRACE_BENCH_PACKAGE"])

from aioelastic.tracing import SinkStats, TraceBus, create_sink  # noqa: E402
from aioelastic.tracing._events import (  # noqa: E402
    ExecutionSource,
    ExecutionType,
    JobExecutionEvent,
    JobStatusTraceEvent,
    State,
    TraceEvent,
)
from aioelastic.tracing._postgres import ensure_schema  # noqa: E402
from aioelastic.tracing._rows import items_text  # noqa: E402
from tests.harness.postgres import PostgresServer, running_postgres  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "trace_throughput.json"
#: the bus's ``batch_size`` (``--batch-size``; each batch is one transaction, one commit)
BATCH_SIZE = 1000
ITEMS = (0, 1, 2, 3)


@dataclass(frozen=True)
class Result:
    name: str
    events: int
    seconds: float
    #: events that went through the journal (a write pending past the journal window)
    journaled: int = 0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def fire(run: int, at: datetime) -> list[TraceEvent]:
    """The 11 events of one successful fire of a 4-item job."""
    task = f"bench@-@0,1,2,3@-@READY@-@10.0.0.1@-@run{run}"

    def status(state: State) -> JobStatusTraceEvent:
        return JobStatusTraceEvent(
            job_name="bench",
            task_id=task,
            slave_id="10.0.0.1",
            execution_type=ExecutionType.READY,
            sharding_items=ITEMS,
            state=state,
            message=f"{state} bench",
            creation_time=at,
        )

    starts = [
        JobExecutionEvent(
            job_name="bench",
            task_id=task,
            hostname="bench-host",
            ip="10.0.0.1",
            sharding_item=item,
            execution_source=ExecutionSource.NORMAL_TRIGGER,
            start_time=at,
        )
        for item in ITEMS
    ]
    completions = [
        JobExecutionEvent(
            id=s.id,
            job_name=s.job_name,
            task_id=s.task_id,
            hostname=s.hostname,
            ip=s.ip,
            sharding_item=s.sharding_item,
            execution_source=s.execution_source,
            start_time=at,
            complete_time=at + timedelta(milliseconds=20),
            is_success=True,
        )
        for s in starts
    ]
    return [
        status(State.TASK_STAGING),
        status(State.TASK_RUNNING),
        *starts,
        *completions,
        status(State.TASK_FINISHED),
    ]


def stream(count: int) -> list[TraceEvent]:
    at = datetime.now(UTC)
    events: list[TraceEvent] = []
    run = 0
    while len(events) < count:
        events += fire(run, at + timedelta(seconds=run))
        run += 1
    return events[:count]


async def fresh_database(server: PostgresServer) -> str:
    url = await anyio.to_thread.run_sync(server.create_database)
    conn = await asyncpg.connect(url)
    try:
        await ensure_schema(conn)  # type: ignore[arg-type]
    finally:
        await conn.close()
    return url


async def count_rows(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        executions = await conn.fetchval("SELECT count(*) FROM JOB_EXECUTION_LOG")
        statuses = await conn.fetchval("SELECT count(*) FROM JOB_STATUS_TRACE_LOG")
        return int(executions), int(statuses)
    finally:
        await conn.close()


def backlog(stats: SinkStats) -> int:
    """Events not yet written: in memory, and in the journal (a write pending past the journal
    window under load sends new events there until the sink has caught up)."""
    return stats.queued + stats.journaled - stats.replayed


async def run_bus(
    url: str, events: Sequence[TraceEvent], journal_dir: Path, batch_size: int = 1000
) -> Result:
    max_queue = 20_000
    sink = create_sink(url, journal_path=journal_dir / "bench.journal")
    async with AsyncExitStack() as stack:
        bus = TraceBus([sink], max_queue=max_queue, batch_size=batch_size, flush_interval=0.05)
        await bus.start(stack)
        await sink.write([])  # connect, check the schema: as the other contenders, off the clock
        started = time.perf_counter()
        for index, event in enumerate(events):
            bus.post(event)
            if index % 500 == 0:
                while backlog(bus.stats()[0]) > max_queue // 2:
                    await anyio.sleep(0.001)
        with anyio.fail_after(300):
            await bus.flush()
        elapsed = time.perf_counter() - started
        stats = bus.stats()[0]
    if stats.dropped or stats.written < len(events):
        raise RuntimeError(f"bus run lost events: {stats}")
    # A write pending past the journal window (load) sends events through the journal: legal,
    # slower, and reported.
    return Result("bus", len(events), elapsed, journaled=stats.journaled)


_NAIVE_INSERT_EXECUTION = (
    "INSERT INTO JOB_EXECUTION_LOG (id, job_name, task_id, hostname, ip, sharding_item,"
    " execution_source, is_success, start_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
)
_NAIVE_COMPLETE_EXECUTION = (
    "UPDATE JOB_EXECUTION_LOG SET is_success = $1, complete_time = $2, failure_cause = $3"
    " WHERE id = $4"
)
_NAIVE_ORIGINAL = (
    "SELECT original_task_id FROM JOB_STATUS_TRACE_LOG WHERE task_id = $1 AND state = $2 LIMIT 1"
)
_NAIVE_INSERT_STATUS = (
    "INSERT INTO JOB_STATUS_TRACE_LOG (id, job_name, original_task_id, task_id, slave_id,"
    " source, execution_type, sharding_item, state, message, creation_time)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
)


async def naive_write(conn: asyncpg.Connection, event: TraceEvent) -> None:
    if isinstance(event, JobExecutionEvent):
        if event.is_completion:
            await conn.execute(
                _NAIVE_COMPLETE_EXECUTION,
                event.is_success,
                event.complete_time,
                event.failure_cause,
                event.id,
            )
            return
        await conn.execute(
            _NAIVE_INSERT_EXECUTION,
            event.id,
            event.job_name,
            event.task_id,
            event.hostname,
            event.ip,
            event.sharding_item,
            event.execution_source.value,
            event.is_success,
            event.start_time,
        )
        return
    original = event.original_task_id
    if event.state is not State.TASK_STAGING:
        original = await conn.fetchval(_NAIVE_ORIGINAL, event.task_id, "TASK_STAGING") or ""
    await conn.execute(
        _NAIVE_INSERT_STATUS,
        event.id,
        event.job_name,
        original,
        event.task_id,
        event.slave_id,
        event.source.value,
        event.execution_type.value,
        items_text(event.sharding_items),
        event.state.value,
        event.message,
        event.creation_time,
    )


async def run_naive(url: str, events: Sequence[TraceEvent], budget: float) -> Result:
    done = 0
    started = time.perf_counter()
    for event in events:
        conn = await asyncpg.connect(url)
        try:
            await naive_write(conn, event)
        finally:
            await conn.close()
        done += 1
        if time.perf_counter() - started >= budget:
            break
    return Result("naive", done, time.perf_counter() - started)


async def run_naive_pooled(url: str, events: Sequence[TraceEvent], budget: float) -> Result:
    """ElasticJob's statements on one kept connection (as with a pooled DataSource)."""
    done = 0
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        for event in events:
            await naive_write(conn, event)
            done += 1
            if time.perf_counter() - started >= budget:
                break
        return Result("naive_pooled", done, time.perf_counter() - started)
    finally:
        await conn.close()


def final_rows(events: Sequence[TraceEvent]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    executions: dict[str, JobExecutionEvent] = {}
    statuses: list[tuple[Any, ...]] = []
    for event in events:
        if isinstance(event, JobExecutionEvent):
            if event.id not in executions or event.is_completion:
                executions[event.id] = event
        else:
            statuses.append(
                (
                    event.id,
                    event.job_name,
                    event.original_task_id,
                    event.task_id,
                    event.slave_id,
                    event.source.value,
                    event.execution_type.value,
                    items_text(event.sharding_items),
                    event.state.value,
                    event.message,
                    event.creation_time,
                )
            )
    execution_rows = [
        (
            e.id,
            e.job_name,
            e.task_id,
            e.hostname,
            e.ip,
            e.sharding_item,
            e.execution_source.value,
            e.failure_cause,
            e.is_success,
            e.start_time,
            e.complete_time,
        )
        for e in executions.values()
    ]
    return execution_rows, statuses


async def run_copy(url: str, events: Sequence[TraceEvent]) -> Result:
    conn = await asyncpg.connect(url)
    try:
        started = time.perf_counter()
        executions, statuses = final_rows(events)
        async with conn.transaction():
            await conn.copy_records_to_table("job_execution_log", records=executions)
            await conn.copy_records_to_table("job_status_trace_log", records=statuses)
        return Result("copy", len(events), time.perf_counter() - started)
    finally:
        await conn.close()


CONTENDERS = ("bus", "copy", "naive", "naive_pooled")


async def run_contender(
    name: str, url: str, count: int, budget: float, batch_size: int = 1000
) -> Result:
    """One contender against the (fresh, schema-ready) database ``url``; checks what it wrote."""
    events = stream(count)
    if name == "bus":
        with tempfile.TemporaryDirectory() as journal_dir:
            result = await run_bus(url, events, Path(journal_dir), batch_size)
        expected = len({e.id for e in events if isinstance(e, JobExecutionEvent)})
        rows = await count_rows(url)
        statuses = sum(1 for e in events if isinstance(e, JobStatusTraceEvent))
        if rows != (expected, statuses):
            raise RuntimeError(f"bus wrote {rows}, expected {(expected, statuses)}")
        return result
    if name == "copy":
        return await run_copy(url, events)
    if name == "naive":
        return await run_naive(url, events, budget)
    return await run_naive_pooled(url, events, budget)


def run_in_child(
    server: PostgresServer, name: str, count: int, budget: float, package: Path | None
) -> Result:
    """``name`` in a fresh process of its own, against a fresh database."""
    url = anyio.run(fresh_database, server)
    env = dict(os.environ)
    if package is not None:  # an older aioelastic (``--before``) shadows this tree's
        env["TRACE_BENCH_PACKAGE"] = str(package)
    args = [sys.executable, __file__, "--contender", name, "--url", url]
    args += ["--events", str(count), "--budget", str(budget), "--batch-size", str(BATCH_SIZE)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Result(**data)


def export_revision(rev: str, into: Path) -> Path:
    """``aioelastic/`` as of git revision ``rev``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "aioelastic"], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def benchmark(
    server: PostgresServer, count: int, budget: float, repeat: int, before: Path | None
) -> dict[str, list[Result]]:
    """Every contender ``repeat`` times (the naive ones once), interleaved, each run in a fresh
    process: so load that comes and goes hits all of them alike."""
    runs: dict[str, list[Result]] = {}
    plan: list[tuple[str, Path | None]] = [("bus", None), ("copy", None)]
    if before is not None:
        plan.insert(0, ("bus_before", before))
    for round_ in range(repeat):
        order = plan if round_ % 2 == 0 else plan[::-1]
        for label, package in order:
            name = "bus" if label.startswith("bus") else label
            result = run_in_child(server, name, count, budget, package)
            runs.setdefault(label, []).append(dataclasses.replace(result, name=label))
            note = f" ({result.journaled} through the journal)" if result.journaled else ""
            print(f"  round {round_ + 1}/{repeat} {label:<12} {result.rate:>11,.0f} events/s{note}")
    for name in ("naive", "naive_pooled"):
        runs[name] = [run_in_child(server, name, count, budget, None)]
    return runs


def _summary(results: list[Result]) -> dict[str, Any]:
    rates = sorted(r.rate for r in results)
    return {
        "events_per_second_median": round(statistics.median(rates), 1),
        "events_per_second_min": round(rates[0], 1),
        "events_per_second_max": round(rates[-1], 1),
        "runs": [{**asdict(r), "events_per_second": round(r.rate, 1)} for r in results],
    }


def _paired_ratios(runs: dict[str, list[Result]], name: str) -> list[float]:
    """``name`` over ``copy`` within each round (the two ran back to back)."""
    return [a.rate / b.rate for a, b in zip(runs[name], runs["copy"], strict=True)]


def report(runs: dict[str, list[Result]], args: argparse.Namespace) -> dict[str, Any]:
    summary = {name: _summary(results) for name, results in runs.items()}
    median = {name: s["events_per_second_median"] for name, s in summary.items()}
    print(f"{'contender':<13} {'runs':>4} {'median events/s':>16} {'min-max':>19}")
    for name, s in summary.items():
        spread = f"{s['events_per_second_min']:,.0f}-{s['events_per_second_max']:,.0f}"
        print(f"{name:<13} {len(runs[name]):>4} {median[name]:>16,.0f} {spread:>19}")
    ratios: dict[str, Any] = {
        "bus_over_naive": median["bus"] / median["naive"],
        "bus_over_naive_pooled": median["bus"] / median["naive_pooled"],
        "bus_over_copy": median["bus"] / median["copy"],
    }
    paired = {"bus": _paired_ratios(runs, "bus")}
    if "bus_before" in runs:
        ratios["bus_before_over_copy"] = median["bus_before"] / median["copy"]
        paired["bus_before"] = _paired_ratios(runs, "bus_before")
    print(
        f"bus = {ratios['bus_over_naive']:.0f}x naive (connection per event), "
        f"{ratios['bus_over_naive_pooled']:.1f}x naive on one connection, "
        f"{ratios['bus_over_copy']:.2f}x raw COPY (medians)"
    )
    for name, values in paired.items():
        print(f"{name} / copy, per round: " + ", ".join(f"{v:.2f}" for v in values))
    return {
        "benchmark": "trace_throughput",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "events": args.events,
        "repeat": args.repeat,
        "batch_size": args.batch_size,
        "before": args.before,
        "postgres_fsync": not args.no_fsync,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "results": summary,
        "ratios": {key: round(value, 3) for key, value in ratios.items()},
        "paired_ratios_over_copy": {k: [round(v, 3) for v in vs] for k, vs in paired.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, a few seconds")
    parser.add_argument("--events", type=int, help="events in the stream")
    parser.add_argument("--repeat", type=int, help="runs of the bus and of COPY (default 5)")
    parser.add_argument("--before", metavar="REV", help="also the bus of git revision REV")
    parser.add_argument("--batch-size", type=int, default=1000, help="the bus's batch_size")
    parser.add_argument("--no-fsync", action="store_true", help="run PostgreSQL with fsync off")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    global BATCH_SIZE
    BATCH_SIZE = args.batch_size
    args.events = args.events or (20_000 if args.quick else 200_000)
    args.repeat = args.repeat or (2 if args.quick else 5)
    budget = args.budget or (1.0 if args.quick else 10.0)
    if args.contender:  # a child: one run, its result as the last line of stdout
        result = anyio.run(
            run_contender, args.contender, args.url, args.events, budget, args.batch_size
        )
        print(json.dumps(asdict(result)))
        return
    load_before = os.getloadavg()
    with running_postgres(fsync=not args.no_fsync) as server, tempfile.TemporaryDirectory() as tmp:
        before = export_revision(args.before, Path(tmp)) if args.before else None
        runs = benchmark(server, args.events, budget, args.repeat, before)
    data = report(runs, args)
    data["load_average_at_start"] = [round(x, 2) for x in load_before]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
