"""The history checker: invariants over the item runs of a cluster run.

Input is the merged history of every instance (``tests.harness.cluster.Cluster.history()``:
each item run with instance, item, task id, source, scheduled fire time, start and end) plus
what the test knows of its faults. Checks:

(a) with ``monitor_execution``, no item ever runs on two instances at overlapping times;
(b) with ``failover``, every fire's items start at least once although instances are killed:
    every run cut short by a fault is started again afterwards, and every fire at which the
    membership was settled started all items;
(c) once membership settles, every item is owned by exactly one live instance (checked on the
    registry's committed assignment);
(d) while the job's ``config`` node holds garbage (a ``hold`` fault, from the corruption to the
    restore), no item starts once ``HOLD_NOTICE`` has passed: the job is held, not half-run.
    Fires in a hold are excused from (b) like those of any fault window.

What (a) can and cannot demand: a session that *times out* is fenced (the client declares it lost
before the server could expire it), and a frozen process cancels its items before they take a
step after waking. A session *killed on the server* (forced expiry) lets survivors start at once,
while the victim learns of it only when its connection drops; ``Cluster.history()`` counts a run
cancelled within ``WAKE_SLACK`` of such a fault as ended at the fault — the one overlap no client
can prevent — and the check judges every run that went on longer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tests.harness.cluster import ItemRun, overlaps

__all__ = ["Fault", "Report", "check_history"]


@dataclass(frozen=True)
class Fault:
    """A fault the test injected: ``kind`` (kill, pause, restart, expire, block, hold, wipe...)
    from ``start`` to ``end`` (when its effect is over: the session timed out, the server was
    back, the config was restored...)."""

    kind: str
    start: float
    end: float
    instance: str | None = None


@dataclass
class Report:
    runs: int = 0
    fires_checked: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def __str__(self) -> str:
        head = f"{self.runs} item runs, {self.fires_checked} settled fires checked"
        if self.ok:
            return f"{head}: no invariant violated"
        return f"{head}: {len(self.violations)} violation(s):\n  " + "\n  ".join(
            self.violations[:20]
        )


#: How soon after its config node was corrupted a job must have stopped starting items (the
#: watch reaches every instance, a fire already starting its items may finish doing so).
HOLD_NOTICE = 1.0


def _disturbed(when: float, faults: Sequence[Fault], settle: float) -> bool:
    # A fire up to 1 s before a fault may be cut by it; after the fault's effect is over, the
    # cluster gets ``settle`` seconds to converge.
    return any(f.start - 1.0 <= when <= f.end + settle for f in faults)


def check_history(
    runs: Sequence[ItemRun],
    *,
    total: int,
    faults: Sequence[Fault] = (),
    failover: bool = True,
    settle: float = 3.0,
    until: float | None = None,
    assignment: Mapping[str, Iterable[int]] | None = None,
    live: Iterable[str] = (),
) -> Report:
    """Check (a), (b) and, when ``assignment``/``live`` are given, (c).

    ``settle`` is how long after a fault the cluster may take to converge (session timeout plus
    a reshard); fires within it are not required to have run every item. ``until`` bounds the
    fires checked (runs still in progress at the end are not judged).
    """
    report = Report(runs=len(runs))
    for a, b in overlaps(runs):
        report.violations.append(
            f"(a) {a.job}#{a.item} ran on {a.instance} [{a.start:.3f}, {a.end}] and on "
            f"{b.instance} [{b.start:.3f}, {b.end}] at once"
        )
    if failover:
        _check_restarted(runs, faults, until, report)
        _check_settled_fires(runs, total, faults, settle, until, report)
    if assignment is not None:
        _check_ownership(assignment, set(live), total, report)
    _check_holds(runs, faults, report)
    return report


def _check_holds(runs: Sequence[ItemRun], faults: Sequence[Fault], report: Report) -> None:
    """(d) No item starts while the job is held for an invalid config."""
    for hold in (f for f in faults if f.kind == "hold"):
        for run in runs:
            if hold.start + HOLD_NOTICE < run.start < hold.end:
                report.violations.append(
                    f"(d) {run.job}#{run.item} started on {run.instance} at {run.start:.3f} "
                    f"({run.source}) while its config was invalid [{hold.start:.3f}, "
                    f"{hold.end:.3f}]"
                )


def _check_restarted(
    runs: Sequence[ItemRun], faults: Sequence[Fault], until: float | None, report: Report
) -> None:
    """Every run cut short (not ok, or never ended) by a fault is started again later."""
    for run in runs:
        if run.ok:
            continue
        if until is not None and run.start > until:
            continue
        cut = [f for f in faults if f.instance in (None, run.instance) and f.start >= run.start]
        if not cut:
            continue
        again = [r for r in runs if r.item == run.item and r.job == run.job and r.start > run.start]
        if not again:
            report.violations.append(
                f"(b) {run.job}#{run.item} cut short on {run.instance} at {run.end} "
                "was never started again"
            )


def _check_settled_fires(
    runs: Sequence[ItemRun],
    total: int,
    faults: Sequence[Fault],
    settle: float,
    until: float | None,
    report: Report,
) -> None:
    """Every cron fire at a settled time started every item (as that fire, or as its misfire
    or failover re-run)."""
    by_fire: dict[tuple[str, float], set[int]] = {}
    for run in runs:
        if run.scheduled is not None:
            by_fire.setdefault((run.job, run.scheduled), set()).add(run.item)
    fires = sorted(by_fire)
    if len(fires) < 3:
        return
    first_fire = fires[0][1]
    for job, when in fires[1:-1]:  # the first and last fires may be partial
        if _disturbed(when, faults, settle) or when < first_fire + settle:
            continue
        if until is not None and when > until:
            continue
        report.fires_checked += 1
        started = set(by_fire[(job, when)])
        started |= {
            r.item
            for r in runs
            if r.job == job and r.source in {"MISFIRE", "FAILOVER"} and r.start >= when
        }
        missing = set(range(total)) - started
        if missing:
            report.violations.append(
                f"(b) fire {when:.3f} of {job} never started {sorted(missing)}"
            )


def _check_ownership(
    assignment: Mapping[str, Iterable[int]], live: set[str], total: int, report: Report
) -> None:
    owners: dict[int, list[str]] = {}
    for instance, items in assignment.items():
        for item in items:
            owners.setdefault(item, []).append(instance)
    for item in range(total):
        who = owners.get(item, [])
        if len(who) != 1 or who[0] not in live:
            report.violations.append(f"(c) item {item} is owned by {who}, live: {sorted(live)}")
