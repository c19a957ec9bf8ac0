"""PNG plots from ``run_all``'s JSON (needs matplotlib: the ``bench`` extra, or the baselines venv).

    python benchmarks/plots.py benchmarks/results/run_all.json [--out benchmarks/results]

- ``lag_cdf.png``: per job count, the share of due fires started within x ms, per scheduler
  (a curve that tops out below 100 % is a scheduler that did not run every due fire);
- ``recovery_timeline.png``: what ran where around a SIGKILL, aioelastic failover vs kazoo;
- ``scale.png``: start and reshard time, memory and ZooKeeper nodes over job counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {
    "bare anyio (reference)": "#999999",
    "aioelastic embedded": "#1f77b4",
    "aioelastic ZooKeeper": "#2ca02c",
    "APScheduler 4 memory": "#ff7f0e",
    "APScheduler 4 PostgreSQL": "#d62728",
}


def _lag_panel(ax: Any, size: str, rows: dict[str, Any]) -> list[str]:
    """One job count's CDFs; notes for schedulers that ran short of the due fires."""
    notes = []
    for name, row in rows.items():
        qs = row.get("quantiles_ms")
        if not qs:
            notes.append(f"{name}: no result (did not start)")
            continue
        ran = row["ran_fraction"]
        ys = [100 * ran * k / (len(qs) - 1) for k in range(len(qs))]
        ax.plot([max(q, 0.01) for q in qs], ys, color=COLORS.get(name), lw=2, label=name)
        if ran < 0.995:
            notes.append(f"{name}: ran {100 * ran:.0f}% of due fires")
    ax.set_xscale("log")
    ax.set_xlabel("fire lag: job start - scheduled time (ms, log scale)")
    ax.set_ylabel("% of due fires started")
    ax.set_ylim(0, 102)
    ax.set_title(f"{size} jobs, every second, one instance")
    ax.grid(True, which="both", alpha=0.3)
    if notes:  # under the axis label, where no curve can hide them
        ax.set_xlabel(ax.get_xlabel() + "\n" + "\n".join(notes), color="#b00000")
    return notes


def lag_cdf(lag: dict[str, Any], path: Path) -> None:
    sizes = sorted(lag, key=int)
    fig, axes = plt.subplots(1, len(sizes), figsize=(5.2 * len(sizes), 4.8), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        _lag_panel(ax, size, lag[size])
    handles = [plt.Line2D([], [], color=c, lw=2) for c in COLORS.values()]
    fig.legend(handles, list(COLORS), loc="upper center", ncol=len(COLORS), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bars(ax: Any, rows: dict[str, list[tuple[float, float, str]]], color: Any) -> None:
    names = sorted(rows)
    for y, name in enumerate(names):
        for start, end, label in rows[name]:
            ax.barh(y, end - start, left=start, height=0.6, color=color(label), edgecolor="black")
            ax.text(start + 0.05, y, label, va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)


def _aioelastic_rows(timeline: list[dict[str, Any]], end: float) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {}
    for run in timeline:
        stop = run["end"] if run["end"] is not None else end
        label = "failover run" if run["source"] == "FAILOVER" else "run"
        row = f"{run['instance']} item {run['item']}"
        rows.setdefault(row, []).append((run["start"], min(stop, end), label))
    return rows


def _kazoo_rows(timeline: list[dict[str, Any]], victim: str, end: float) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {}
    holding: dict[str, tuple[float, list[int]]] = {}

    def label(start: float, items: list[int]) -> str:
        return f"{'held' if start < 0 else 're-acquired'} {','.join(map(str, items))}"

    for r in sorted(timeline, key=lambda r: r["t"]):
        member = r["id"]
        if member in holding and r["ev"] in ("release", "failed"):
            start, items = holding.pop(member)
            rows.setdefault(member, []).append((start, r["t"], label(start, items)))
        if r["ev"] == "acquired":
            holding[member] = (r["t"], r["items"])
    for member, (start, items) in holding.items():
        stop = 0.0 if member == victim else end  # the victim held its share until SIGKILL
        rows.setdefault(member, []).append((start, stop, label(start, items)))
    return rows


def recovery_timeline(recovery: dict[str, Any], path: Path) -> None:
    ours, kazoo = recovery.get("aioelastic_failover"), recovery.get("kazoo_set_partitioner")
    panels = [p for p in (ours, kazoo) if p]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 2.6 * len(panels) + 0.6), squeeze=False)
    timeout = (ours or kazoo or {}).get("session_timeout_s", 0)
    end = timeout + 4
    row = 0
    if ours:
        ax = axes[row][0]
        rows = _aioelastic_rows(ours["timeline_last_round"], end)
        _bars(ax, rows, lambda label: "#2ca02c" if label.startswith("failover") else "#1f77b4")
        took = ours["sigkill_to_failover_start_s"][-1]
        ax.set_title(
            f"aioelastic, failover on: SIGKILL of inst-c -> its running items 0, 1 restarted "
            f"on survivors after {took:.2f} s"
        )
        row += 1
    if kazoo:
        ax = axes[row][0]
        rows = _kazoo_rows(kazoo["timeline"], kazoo["victim"], end)
        _bars(ax, rows, lambda label: "#1f77b4" if label.startswith("held") else "#2ca02c")
        took = kazoo["sigkill_to_repartitioned_s"][-1]
        ax.set_title(
            f"kazoo SetPartitioner (time_boundary {kazoo['time_boundary_s']:g} s): SIGKILL of "
            f"{kazoo['victim']} -> whole set re-acquired after {took:.2f} s"
        )
    for ax in axes[:, 0]:
        ax.axvline(0, color="red", lw=2, label="SIGKILL")
        ax.axvline(timeout, color="purple", ls="--", label=f"session timeout ({timeout:g} s)")
        ax.set_xlim(-3, end)
        ax.set_xlabel("seconds since SIGKILL")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def scale(rows: list[dict[str, Any]], path: Path) -> bool:
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return False
    jobs = [r["jobs"] for r in ok]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    a.plot(jobs, [r["start_s"] for r in ok], "o-", label="start: all assigned")
    a.plot(jobs, [r["reshard_after_leave_s"] for r in ok], "s-", label="reshard after a leave")
    a.set_ylabel("seconds (log)")
    a.set_yscale("log")
    b.plot(jobs, [r["rss_per_job_instance_kib"] for r in ok], "o-")
    b.set_ylabel("RSS KiB per job per instance")
    b.set_ylim(0, 1.25 * max(r["rss_per_job_instance_kib"] for r in ok))
    c.plot(jobs, [r["znodes_per_job"] for r in ok], "o-")
    c.set_ylabel("ZooKeeper nodes per job")
    c.set_ylim(0, 1.25 * max(r["znodes_per_job"] for r in ok))
    shape = f"x {ok[0]['items']} items over {ok[0]['instances']} instances"
    for ax, title in ((a, "time"), (b, "memory"), (c, "ZooKeeper nodes")):
        ax.set_xscale("log")
        ax.set_xlabel(f"jobs ({shape})")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    a.legend(fontsize=8)
    failed = [f"{r['jobs']} jobs: {r['error']}" for r in rows if "error" in r]
    fig.text(0.5, 0.01, "\n".join(failed), ha="center", va="bottom", fontsize=8, color="#b00000")
    fig.tight_layout(rect=(0, 0.05 * len(failed), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if results.get("lag"):
        lag_cdf(results["lag"], out / "lag_cdf.png")
        written.append(out / "lag_cdf.png")
    if results.get("recovery"):
        recovery_timeline(results["recovery"], out / "recovery_timeline.png")
        written.append(out / "recovery_timeline.png")
    if scale(results.get("scale", {}).get("rows", []), out / "scale.png"):
        written.append(out / "scale.png")
    return written


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for p in render(json.loads(args.results.read_text()), args.out or args.results.parent):
        print(p)
