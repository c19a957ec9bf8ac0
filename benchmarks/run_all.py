"""Every benchmark side by side in one run: aioelastic against what a Python user would pick.

    python benchmarks/run_all.py            # full run (12-17 min on 2 cores)
    python benchmarks/run_all.py --quick    # CI smoke: tiny sizes, a few seconds each
    python benchmarks/run_all.py --no-baselines   # aioelastic only (no venv, no PostgreSQL)
    python benchmarks/run_all.py --before REV     # also aioelastic at git revision REV: a
                                                  # "before" column next to the current code

Starts one ZooKeeper (and, with baselines, one PostgreSQL, fsync on like ZooKeeper's log) on
loopback in a temp dir; the baselines (APScheduler 4, kazoo) run as subprocesses of their own venv
``benchmarks/.venv-baselines`` (created on demand, see baselines.py). Sections:

1. fire lag: N jobs firing every second on one instance (lag_window.py says what is measured:
   lag, CPU per run, memory per job), every contender in a fresh process of its own, the
   1000-job point repeated (median and spread);
2. throughput: no-op executions per second on one instance (fresh processes too);
3. coordination cost: ZooKeeper requests per fire and per reshard (zk_coordination.py), next to
   APScheduler's SQL statements and notifications per job run;
4. recovery: SIGKILL of an instance -> its items running elsewhere (failover), and kazoo's
   ``SetPartitioner`` re-partition time under the same session timeout;
5. scale: jobs x items over many instances (scale.py).

Prints markdown tables, writes ``run_all.json`` and ``run_all.md`` and PNG plots (plots.py) to
``benchmarks/results/`` (``--quick``: ``benchmarks/results/quick/``, or ``--out DIR``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import baselines  # noqa: E402
import zk_coordination  # noqa: E402

from tests.harness.postgres import PostgresServer  # noqa: E402
from tests.harness.zookeeper import ZooKeeperServer  # noqa: E402

FLOOR, EMBEDDED, ZOOKEEPER = "bare anyio (reference)", "aioelastic embedded", "aioelastic ZooKeeper"
BEFORE = "aioelastic embedded, before"
AP_MEMORY, AP_POSTGRES = "APScheduler 4 memory", "APScheduler 4 PostgreSQL"


@dataclass(frozen=True)
class Plan:
    quick: bool
    lag_jobs: tuple[int, ...]
    lag_repeat_jobs: int  # the size measured ``lag_repeats`` times (each in a fresh process)
    lag_repeats: int
    lag_embedded_only: tuple[int, ...]  # sizes beyond: the floor and aioelastic embedded alone
    lag_seconds: int
    warmup: float
    drain: float
    start_timeout: float
    items: int
    item_rounds: int
    fire_jobs: int
    fire_rounds: int
    ap_jobs: int
    coordination_seconds: float
    recovery_rounds: int
    session_timeout: float
    scale_jobs: tuple[int, ...]
    scale_items: int
    scale_instances: int
    scale_budget: float


FULL = Plan(
    quick=False,
    lag_jobs=(10, 100, 1000),
    lag_repeat_jobs=1000,
    lag_repeats=3,
    lag_embedded_only=(3000,),
    lag_seconds=15,
    warmup=3,
    drain=3,
    start_timeout=60,
    items=500,
    item_rounds=20,
    fire_jobs=200,
    fire_rounds=5,
    ap_jobs=2000,
    coordination_seconds=10,
    recovery_rounds=3,
    session_timeout=3.0,
    scale_jobs=(10, 100, 300, 1000),
    scale_items=10,
    scale_instances=10,
    scale_budget=240,
)
QUICK = Plan(
    quick=True,
    lag_jobs=(10,),
    lag_repeat_jobs=10,
    lag_repeats=1,
    lag_embedded_only=(),
    lag_seconds=2,
    warmup=1,
    drain=1,
    start_timeout=30,
    items=50,
    item_rounds=3,
    fire_jobs=10,
    fire_rounds=2,
    ap_jobs=100,
    coordination_seconds=2,
    recovery_rounds=1,
    session_timeout=2.0,
    scale_jobs=(5,),
    scale_items=3,
    scale_instances=3,
    scale_budget=60,
)


@dataclass
class Services:
    zk: ZooKeeperServer
    pg: PostgresServer | None  # None: baselines off
    workdir: Path
    before: Path | None = None  # aioelastic's package at the --before revision
    partial: Path | None = None  # where the sections measured so far are kept

    def before_env(self) -> dict[str, str]:
        assert self.before is not None
        return {"PYTHONPATH": str(self.before)}


def step(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


# -- statistics --


def pct(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def describe(lags: list[float], expected: int) -> dict[str, Any]:
    """Percentiles, the share of due fires that ran, and 201 quantiles for the CDF plot."""
    if not lags:
        return {"runs": 0, "expected": expected, "ran_fraction": 0.0}
    ordered = sorted(lags)
    last = len(ordered) - 1
    return {
        "runs": len(ordered),
        "expected": expected,
        "ran_fraction": round(min(1.0, len(ordered) / expected), 4),
        "p50_ms": round(pct(ordered, 50), 2),
        "p99_ms": round(pct(ordered, 99), 2),
        "max_ms": round(ordered[-1], 2),
        "quantiles_ms": [round(ordered[round(k / 200 * last)], 3) for k in range(201)],
    }


def lag_row(raw: dict[str, Any], expected: int) -> dict[str, Any]:
    if "error" in raw:
        return raw
    extra = {k: v for k, v in raw.items() if k not in ("lags_ms", "window_s")}
    return {**describe(raw["lags_ms"], expected), **extra}


SPREAD_KEYS = ("p50_ms", "p99_ms", "cpu_ms_per_run", "gc_ms_per_run", "rss_kib_per_job")


def repeated(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one contender: the median run (by p99) with every run's figures in ``repeats``."""
    good = [r for r in rows if "error" not in r]
    if not good:
        return rows[0]
    median = sorted(good, key=lambda r: r["p99_ms"])[(len(good) - 1) // 2]
    runs = [{k: r[k] for k in SPREAD_KEYS if k in r} for r in rows if "error" not in r]
    return {**median, "repeats": runs, "failed_repeats": len(rows) - len(good)}


# -- sections --


async def in_baselines(script: str, *args: object, timeout: float, **kw: Any) -> dict[str, Any]:
    """A script's JSON, run in the baselines venv (see ``baselines.run``) from a worker thread."""
    work = partial(baselines.run, script, *args, timeout=timeout, **kw)
    return await anyio.to_thread.run_sync(work)


async def fresh(*args: object, timeout: float, env: dict[str, str] | None = None) -> Any:
    """``core_embedded.py``'s JSON, run in a fresh interpreter of aioelastic's environment."""
    work = partial(
        baselines.run,
        "core_embedded.py",
        *args,
        timeout=timeout,
        interpreter=sys.executable,
        env=env,
    )
    return await anyio.to_thread.run_sync(work)


async def lag_section(plan: Plan, svc: Services) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    timing = ["--seconds", plan.lag_seconds, "--warmup", plan.warmup, "--drain", plan.drain]
    timeout = plan.start_timeout + plan.warmup + plan.lag_seconds + plan.drain + 120
    for n in (*plan.lag_jobs, *plan.lag_embedded_only):
        expected = n * plan.lag_seconds
        every = n in plan.lag_jobs  # else: only the floor and aioelastic embedded
        repeats = plan.lag_repeats if n == plan.lag_repeat_jobs else 1
        ours = ["lag", "--jobs", n, *timing, "--start-timeout", plan.start_timeout]
        contenders: list[tuple[str, Any]] = [
            (FLOOR, partial(fresh, "lag", "--contender", "floor", "--jobs", n, *timing)),
            (EMBEDDED, partial(fresh, *ours)),
        ]
        if svc.before is not None and every:
            contenders.append((BEFORE, partial(fresh, *ours, env=svc.before_env())))
        if every:
            url = svc.zk.url(f"lag{n}-{uuid.uuid4().hex[:6]}", session_timeout=10)
            contenders.append((ZOOKEEPER, partial(fresh, *ours, "--registry", url)))
        if svc.pg is not None and every:
            for name, store in ((AP_MEMORY, "memory"), (AP_POSTGRES, "sqlalchemy")):
                args = ["lag", "--store", store, "--jobs", n, "--seconds", plan.lag_seconds]
                args += ["--warmup", plan.warmup, "--drain", plan.drain]
                if store == "sqlalchemy":
                    args += ["--dsn", svc.pg.create_database()]
                work = partial(in_baselines, "baseline_apscheduler.py", *args)
                contenders.append((name, work))
        row: dict[str, Any] = {}
        for name, work in contenders:
            runs = repeats if name != ZOOKEEPER and name != AP_POSTGRES else 1
            results = []
            for k in range(runs):
                step(f"lag, {n} jobs: {name}" + (f" (run {k + 1}/{runs})" if runs > 1 else ""))
                try:
                    raw = await work(timeout=timeout)
                except RuntimeError as exc:
                    raw = {"error": f"failed: {str(exc)[-300:]}"}
                results.append(lag_row(raw, expected))
            row[name] = repeated(results) if runs > 1 else results[0]
        if n == plan.lag_repeat_jobs:
            await traced_heap(row, contenders, timeout)
        out[str(n)] = row
    return out


async def traced_heap(
    row: dict[str, Any], contenders: list[tuple[str, Any]], timeout: float
) -> None:
    """One more short run of the floor and aioelastic (embedded, before and now) with
    tracemalloc on, for the Python heap per job (``traced_kib_per_job``; its start is slower)."""
    for name, work in contenders:
        if name not in (FLOOR, EMBEDDED, BEFORE) or "error" in row.get(name, {"error": 1}):
            continue
        step(f"traced heap: {name}")
        try:
            # Tracing slows the start several times: give it far longer than the lag runs.
            raw = await work("--tracemalloc", "--start-timeout", 600, timeout=timeout + 900)
        except RuntimeError:
            continue
        if "traced_kib_per_job" in raw:
            row[name]["traced_kib_per_job"] = raw["traced_kib_per_job"]


async def throughput_section(plan: Plan, svc: Services) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, unit: str, per_s: float) -> None:
        rows.append({"scheduler": name, "unit": unit, "per_s": round(per_s, 1)})

    items_unit = f"items/s, one job of {plan.items} items fired {plan.item_rounds}x"
    fires_unit = f"fires/s, {plan.fire_jobs} one-item jobs fired at once, {plan.fire_rounds}x"
    step("throughput: items (each in a fresh process)")
    items = ["items", "--items", plan.items, "--rounds", plan.item_rounds]
    url = svc.zk.url(f"tp-{uuid.uuid4().hex[:6]}", session_timeout=10)
    runs: list[tuple[str, tuple[object, ...], dict[str, str] | None]] = [
        (FLOOR, ("--contender", "floor"), None),
        (EMBEDDED, (), None),
        (ZOOKEEPER, ("--registry", url), None),
    ]
    if svc.before is not None:
        runs.insert(2, (BEFORE, (), svc.before_env()))
    for name, extra, env in runs:
        add(name, items_unit, (await fresh(*items, *extra, timeout=300, env=env))["items_per_s"])
    step("throughput: fires")
    fires = ["fires", "--jobs", plan.fire_jobs, "--rounds", plan.fire_rounds]
    add(EMBEDDED, fires_unit, (await fresh(*fires, timeout=300))["fires_per_s"])
    if svc.before is not None:
        raw = await fresh(*fires, timeout=300, env=svc.before_env())
        add(BEFORE, fires_unit, raw["fires_per_s"])
    url = svc.zk.url(f"fires-{uuid.uuid4().hex[:6]}", session_timeout=10)
    add(ZOOKEEPER, fires_unit, (await fresh(*fires, "--registry", url, timeout=300))["fires_per_s"])
    if svc.pg is not None:
        step("throughput: APScheduler")
        ap_unit = f"job runs/s, {plan.ap_jobs} no-op jobs via add_job"
        raw = await in_baselines(
            "baseline_apscheduler.py", "throughput", "--jobs", plan.ap_jobs, timeout=300
        )
        add(AP_MEMORY, ap_unit, raw["runs_per_s"])
        dsn = svc.pg.create_database()
        args = ["throughput", "--store", "sqlalchemy", "--dsn", dsn, "--jobs", plan.ap_jobs]
        raw = await in_baselines("baseline_apscheduler.py", *args, timeout=600)
        add(AP_POSTGRES, ap_unit, raw["runs_per_s"])
    return rows


async def coordination_section(plan: Plan, svc: Services) -> dict[str, Any]:
    step("coordination: requests per fire (3 instances, 10 items)")
    per_fire = await zk_coordination.requests_per_fire(svc.zk, 10, plan.coordination_seconds)
    step("coordination: requests per reshard")
    per_reshard = await zk_coordination.requests_per_reshard(svc.zk, 10)
    out = {"requests_per_fire": per_fire, "requests_per_reshard": per_reshard}
    if not plan.quick:  # server-side counts, and the start of 300 and 1000 jobs on one instance
        step("coordination: server-side requests per fire, start of 300 and 1000 jobs")
        out["server_side"] = await zk_coordination.server_side(svc.zk)
    return out


async def recovery_section(plan: Plan, svc: Services) -> dict[str, Any]:
    step(f"recovery: aioelastic failover, {plan.recovery_rounds} round(s)")
    workdir = svc.workdir / f"recovery-{uuid.uuid4().hex[:6]}"
    workdir.mkdir()
    out = {
        "aioelastic_failover": await zk_coordination.failover_latency(
            svc.zk, workdir, plan.recovery_rounds, plan.session_timeout
        )
    }
    if svc.pg is not None:
        step("recovery: kazoo SetPartitioner")
        args = ["run", "--hosts", svc.zk.hosts, "--session-timeout", plan.session_timeout]
        args += ["--rounds", plan.recovery_rounds, "--items", 6, "--members", 3]
        out["kazoo_set_partitioner"] = await in_baselines("baseline_kazoo.py", *args, timeout=300)
    return out


async def scale_section(plan: Plan) -> dict[str, Any]:
    """One fresh process (with its own ZooKeeper) per size, so RSS growth is this size's alone;
    stops at the first size that does not fit the budget."""
    rows: list[dict[str, Any]] = []
    for jobs in plan.scale_jobs:
        step(f"scale: {jobs} jobs x {plan.scale_items} items, {plan.scale_instances} instances")
        args = ["--jobs", jobs, "--items", plan.scale_items, "--instances", plan.scale_instances]
        args += ["--budget", plan.scale_budget, "--no-file"]
        timeout = plan.scale_budget + 90
        try:
            row = await in_baselines(
                "scale.py",
                *args,
                timeout=timeout,
                interpreter=sys.executable,
                stop=lambda row: "error" in row,  # an overloaded process's teardown: not waited
            )
        except RuntimeError as exc:  # so overloaded that it missed its own budget: killed
            print(f"  {exc}"[-1500:], flush=True)
            row = {"jobs": jobs, "items": plan.scale_items, "instances": plan.scale_instances}
            row["error"] = (
                f"no result within {timeout:.0f} s: overloaded past its own "
                f"{plan.scale_budget:.0f} s budget, killed"
            )
        rows.append(row)
        if "error" in row:
            break
    note = "per size: one process, its instances each with their own ZooKeeper session"
    return {"note": note, "rows": rows}


# -- machine --


def _first(path: str, prefix: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _zookeeper_version(zk: ZooKeeperServer) -> str:
    for line in (zk.four_letter("mntr") or b"").decode().splitlines():
        if line.startswith("zk_version"):
            return line.split(None, 1)[1].split("-")[0].split(",")[0]
    return "?"


def _memory() -> str:
    kib = _first("/proc/meminfo", "MemTotal").split()[0]
    return f"{int(kib) / 2**20:.1f} GiB" if kib.isdigit() else "?"


def _revision() -> str:
    """The commit measured, with ``+dirty`` if the package's files differ from it."""
    git = ["git", "-C", str(HERE.parent)]
    try:
        rev = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "aioelastic"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (rev or "?") + ("+dirty" if dirty else "")


def machine(svc: Services) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "revision": _revision(),
        "cores": os.cpu_count(),
        "memory": _memory(),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "python": platform.python_version(),
        "zookeeper": _zookeeper_version(svc.zk),
        "load_average_at_start": os.getloadavg(),
    }
    if svc.pg is not None:
        info["postgresql"] = svc.pg.psql("SHOW server_version")
        info["baselines"] = baselines.versions()
    return info


# -- tables --


def _ms(row: dict[str, Any], key: str, digits: int = 1) -> str:
    """A figure, with the spread (min-max) of repeated runs when there were several."""
    if key not in row:
        return "-"
    text = f"{row[key]:,.{digits}f}"
    values = [run[key] for run in row.get("repeats", ()) if key in run]
    if len(values) > 1:
        text += f" ({min(values):,.{digits}f}-{max(values):,.{digits}f})"
    return text


def lag_table(lag: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "| jobs | scheduler | p50 ms | p99 ms | max ms | due fires run | CPU ms per run "
        "| of which gc | KiB per job | coordination per run |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n, row in lag.items():
        for name, r in row.items():
            if "error" in r:
                lines.append(f"| {n} | {name} | - | - | - | - | - | - | - | {r['error']} |")
                continue
            cost = ""
            if "registry_requests_per_run" in r:
                kind = "ZooKeeper requests" if name == ZOOKEEPER else "in-process registry ops"
                cost = f"{r['registry_requests_per_run']} {kind}"
            elif r.get("sql_statements_per_run"):
                cost = (
                    f"{r['sql_statements_per_run']} SQL statements + "
                    f"{r['notifications_per_run']} NOTIFY"
                )
            ran = f"{100 * r['ran_fraction']:.1f}%"
            lines.append(
                f"| {n} | {name} | {_ms(r, 'p50_ms')} | {_ms(r, 'p99_ms')} | {_ms(r, 'max_ms')} "
                f"| {ran} | {_ms(r, 'cpu_ms_per_run', 3)} | {_ms(r, 'gc_ms_per_run', 3)} "
                f"| {_ms(r, 'rss_kib_per_job')} | {cost} |"
            )
    return lines


def summary_table(results: dict[str, Any]) -> list[str]:
    """Issue 17's table: the floor, APScheduler 4 and aioelastic before / now, in this run."""
    names = [FLOOR, AP_MEMORY, AP_POSTGRES, BEFORE, EMBEDDED]
    heads = ["bare anyio floor", AP_MEMORY, AP_POSTGRES, "aioelastic before", "aioelastic now"]
    lines = ["| figure | " + " | ".join(heads) + " |", "|---|" + "---|" * len(names)]
    lag = results["lag"]
    big = str(results["plan"]["lag_repeat_jobs"])
    row = lag.get(big, {})

    def line(label: str, fmt: Any, source: dict[str, Any]) -> None:
        cells = ["-" if n not in source or "error" in source[n] else fmt(source[n]) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    line(
        f"lag p50 / p99 ms, {big} jobs, embedded",
        lambda r: (
            f"{_ms(r, 'p50_ms')} / {_ms(r, 'p99_ms')}"
            + ("" if r.get("ran_fraction", 1) >= 0.995 else f", {100 * r['ran_fraction']:.0f}% ran")
        ),
        row,
    )
    line(f"CPU ms per fire, {big} jobs", lambda r: _ms(r, "cpu_ms_per_run", 3), row)
    line(f"of which garbage collector, {big} jobs", lambda r: _ms(r, "gc_ms_per_run", 3), row)
    line(
        f"memory per job (RSS KiB; gc-tracked objects; tracemalloc), {big} jobs",
        lambda r: (
            f"{_ms(r, 'rss_kib_per_job')}; {r.get('objects_per_job', '-')}"
            + (f"; traced heap {r['traced_kib_per_job']} KiB" if "traced_kib_per_job" in r else "")
        ),
        row,
    )
    distributed = {
        n: row[k] for n, k in ((AP_POSTGRES, AP_POSTGRES), (EMBEDDED, ZOOKEEPER)) if k in row
    }
    line(
        f"{big} jobs distributed (ZooKeeper; PostgreSQL): due fires run, p50 / p99 ms",
        lambda r: f"{100 * r['ran_fraction']:.1f}%, {_ms(r, 'p50_ms')} / {_ms(r, 'p99_ms')}",
        distributed,
    )
    for n in results["plan"]["lag_embedded_only"]:
        line(
            f"{n} jobs, embedded: due fires run, p50 / p99 ms",
            lambda r: f"{100 * r['ran_fraction']:.1f}%, {_ms(r, 'p50_ms')} / {_ms(r, 'p99_ms')}",
            lag.get(str(n), {}),
        )
    tp = {r["scheduler"]: r for r in results["throughput"] if r["unit"].startswith("items/s")}
    items = results["plan"]["items"]
    line(f"no-op items/s, one {items}-item job", lambda r: f"{r['per_s']:,.0f}", tp)
    return lines


def throughput_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| scheduler | workload | per second |", "|---|---|---:|"]
    lines += [f"| {r['scheduler']} | {r['unit']} | {r['per_s']:,.0f} |" for r in rows]
    return lines


def coordination_table(coord: dict[str, Any]) -> list[str]:
    fire, reshard = coord["requests_per_fire"], coord["requests_per_reshard"]
    join, leave = reshard["join_3_to_4"], reshard["graceful_leave_4_to_3"]
    return [
        "| ZooKeeper requests (one job, 10 items) | count |",
        "|---|---:|",
        f"| per fire per instance, steady state, 3 instances | "
        f"{fire['requests_per_fire_per_instance']} (fire path {fire['fire_path_requests']}) |",
        f"| per reshard, a 4th instance joins: the 3 others | {join['existing_instances']} |",
        f"| per reshard, a 4th instance joins: the joiner's whole start | {join['joiner']} |",
        f"| per reshard, graceful leave 4 -> 3: the survivors | {leave['survivors']} |",
        *zk_coordination.server_side_rows(coord.get("server_side")),
    ]


def recovery_table(rec: dict[str, Any]) -> list[str]:
    lines = [
        "| what | session timeout | SIGKILL -> running again (s), per round | over timeout (s) |",
        "|---|---:|---|---|",
    ]
    fo = rec["aioelastic_failover"]
    lines.append(
        f"| aioelastic failover (items restart on survivors) | {fo['session_timeout_s']} s | "
        f"{fo['sigkill_to_failover_start_s']} | {fo['over_timeout_s']} |"
    )
    if "kazoo_set_partitioner" in rec:
        kz = rec["kazoo_set_partitioner"]
        lines.append(
            f"| kazoo SetPartitioner (time_boundary {kz['time_boundary_s']:g} s; set "
            f"re-acquired) | {kz['session_timeout_s']} s | {kz['sigkill_to_repartitioned_s']} "
            f"| {kz['over_timeout_s']} |"
        )
    return lines


def scale_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| jobs x items x instances | start (s) | reshard after a leave (s) | a join: its start"
        " / reshard after it (s) | RSS KiB per job per instance | znodes (per job) | requests "
        "per job: start per instance / reshard |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        shape = f"{r['jobs']} x {r['items']} x {r['instances']}"
        if "error" in r:
            lines.append(f"| {shape} | {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {shape} | {r['start_s']} | {r['reshard_after_leave_s']} | "
            f"{r.get('join_start_s', '-')} / {r.get('reshard_after_join_s', '-')} | "
            f"{r['rss_per_job_instance_kib']} | {r['znodes']:,} ({r['znodes_per_job']}) | "
            f"{r['requests_per_job_instance_start']} / {r['requests_per_job_reshard']} |"
        )
    return lines


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    parts = [
        f"Machine: {m['cores']} cores, {m['memory']}, {m['cpu']}; Python {m['python']}, "
        f"ZooKeeper {m['zookeeper']}, PostgreSQL {m.get('postgresql', '-')}; {m['date']}; "
        f"aioelastic at {m['revision']}"
        + (f" (before: {m['before_revision']})" if "before_revision" in m else "")
        + "; "
        f"load average at start {m['load_average_at_start']}, at end {m['load_average_at_end']}",
        "",
        "### Issue 17: before and after (ratios within this run)",
        *summary_table(results),
        "",
        "### Fire lag",
        *lag_table(results["lag"]),
        "",
        "### Throughput",
        *throughput_table(results["throughput"]),
    ]
    more = (
        ("coordination", "Coordination cost", coordination_table),
        ("recovery", "Recovery", recovery_table),
        ("scale", "Scale", lambda scale: scale_table(scale["rows"])),
    )
    for key, title, table in more:
        if key in results:  # not with --only
            parts += ["", f"### {title}", *table(results[key])]
    return "\n".join(parts) + "\n"


# -- plots --


def plot(json_path: Path, out: Path) -> None:
    try:
        import plots
    except ImportError:  # no matplotlib here: the baselines venv has it
        if not baselines.python().exists():
            print("plots skipped: no matplotlib (pip install -e '.[bench]') and no baselines venv")
            return
        cmd = [str(baselines.python()), str(HERE / "plots.py"), str(json_path), "--out", str(out)]
        subprocess.run(cmd, check=True, timeout=300)
        return
    for path in plots.render(json.loads(json_path.read_text()), out):
        print(path)


# -- main --


SECTIONS = ("lag", "throughput", "coordination", "recovery", "scale")


async def run(
    plan: Plan, svc: Services, only: frozenset[str] = frozenset(SECTIONS)
) -> dict[str, Any]:
    results: dict[str, Any] = {"plan": asdict(plan), "machine": machine(svc)}

    def keep() -> None:  # what is measured so far survives a crash of this process
        if svc.partial is not None:
            svc.partial.write_text(json.dumps(results, indent=1))

    results["lag"] = await lag_section(plan, svc)
    keep()
    results["throughput"] = await throughput_section(plan, svc)
    keep()
    if "coordination" in only:
        results["coordination"] = await coordination_section(plan, svc)
        keep()
    if "recovery" in only:
        results["recovery"] = await recovery_section(plan, svc)
        keep()
    if "scale" in only:
        results["scale"] = await scale_section(plan)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    return results


def export_revision(rev: str, into: Path) -> Path:
    """aioelastic's package as of ``rev`` (``git archive``), for a PYTHONPATH."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(HERE.parent), "archive", rev, "aioelastic"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True, timeout=60)
    return into


def _exit_on_sigterm(signum: int, frame: object) -> None:
    baselines.kill_running()  # they run in their own sessions: the signal did not reach them
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: servers get stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Overload shows in the results (errors, session troubles), not as thousands of log lines.
    logging.getLogger("aioelastic").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that all runs")
    parser.add_argument("--no-baselines", action="store_true", help="aioelastic only")
    parser.add_argument("--out", type=Path, help="results directory")
    parser.add_argument(
        "--before", metavar="REV", help="also measure aioelastic at this git revision (embedded)"
    )
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help="comma-separated: lag and throughput always run, plus any of coordination, "
        "recovery, scale (default: all)",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    out = args.out or (HERE / "results" / "quick" if args.quick else HERE / "results")
    began = time.monotonic()
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aioelastic-bench-")))
        pg = None
        if not args.no_baselines:
            step("baselines venv")
            baselines.ensure_venv()
            pg = PostgresServer(fsync=True)
            stack.callback(pg.cleanup)
            pg.start()
        zk = ZooKeeperServer(workdir / "zk")
        stack.callback(zk.close)
        zk.start()
        before = export_revision(args.before, workdir / "before") if args.before else None
        only = frozenset(args.only.split(",")) if args.only else frozenset(SECTIONS)
        out.mkdir(parents=True, exist_ok=True)
        partial = out / "run_all.partial.json"
        results = anyio.run(run, plan, Services(zk, pg, workdir, before, partial), only)
        partial.unlink(missing_ok=True)
        if args.before:
            results["machine"]["before_revision"] = args.before
    results["runtime_s"] = round(time.monotonic() - began, 1)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "run_all.json"
    json_path.write_text(json.dumps(results, indent=1))
    text = report(results)
    (out / "run_all.md").write_text(text)
    print("\n" + text)
    plot(json_path, out)
    print(f"results in {out} ({results['runtime_s']} s)")


if __name__ == "__main__":
    main()
