"""Prometheus metrics for a scheduler (needs ``pip install aioelastic[metrics]``).

    metrics = PrometheusMetrics()           # registers on prometheus_client's default registry
    scheduler = Scheduler(observers=[metrics], sinks=[metrics])
    metrics.bind(scheduler)                 # trace queue depth and spills, read at scrape time

Exposed (``job`` label on per-job series):

- ``aioelastic_job_fires_total`` — fires started;
- ``aioelastic_item_runs_total{outcome="success|failure", source}`` — completed item runs;
- ``aioelastic_item_duration_seconds`` — item run time (histogram);
- ``aioelastic_fire_lag_seconds`` — fire start minus its scheduled time (histogram, cron fires);
- ``aioelastic_failover_items_total`` — items this instance took over from a dead one;
- ``aioelastic_reshards_total`` — assignments committed by this instance as leader;
- ``aioelastic_missed_fires_total`` — cron fires that were due and started nowhere, seen by this
  instance as the job's leader (see ``Observer.missed_fire``);
- ``aioelastic_registry_session_state{state}`` — 1 for the current session state, else 0;
- ``aioelastic_trace_queue_depth{sink}`` / ``aioelastic_trace_spilled_total{sink}`` /
  ``aioelastic_trace_written_total{sink}`` / ``aioelastic_trace_dropped_total{sink}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from ._observer import Observer
from .tracing._events import JobExecutionEvent, TraceEvent

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from ._scheduler import Scheduler

__all__ = ["DURATION_BUCKETS", "LAG_BUCKETS", "PrometheusMetrics"]

#: Item durations: 10 ms to 10 minutes.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Fire lag: 1 ms to 1 minute.
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_SESSION_STATES = ("CONNECTED", "SUSPENDED", "LOST")


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ImportError(
            "aioelastic.metrics needs prometheus-client: pip install 'aioelastic[metrics]'"
        ) from None


class _TraceBusCollector:
    """Reads the bound scheduler's ``trace_bus.stats()`` at every scrape."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.scheduler: Scheduler | None = None

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.prefix
        depth = GaugeMetricFamily(
            f"{p}_trace_queue_depth", "Trace events queued for a sink", labels=["sink"]
        )
        spilled = CounterMetricFamily(
            f"{p}_trace_spilled", "Trace events spilled to the sink's journal", labels=["sink"]
        )
        written = CounterMetricFamily(
            f"{p}_trace_written", "Trace events written by a sink", labels=["sink"]
        )
        dropped = CounterMetricFamily(
            f"{p}_trace_dropped",
            "Trace events dropped (no journal could take them)",
            labels=["sink"],
        )
        journal_errors = CounterMetricFamily(
            f"{p}_trace_journal_errors",
            "Failed journal appends (full disk, unwritable path)",
            labels=["sink"],
        )
        try:
            stats = self.scheduler.trace_bus.stats() if self.scheduler is not None else []
        except RuntimeError:  # not running
            stats = []
        for s in stats:
            depth.add_metric([s.sink], s.queued)
            spilled.add_metric([s.sink], s.journaled)
            written.add_metric([s.sink], s.written)
            dropped.add_metric([s.sink], s.dropped)
            journal_errors.add_metric([s.sink], s.journal_errors)
        return [depth, spilled, written, dropped, journal_errors]


class PrometheusMetrics(Observer):
    """An ``Observer`` and a trace sink feeding Prometheus metrics; pass it as both
    ``Scheduler(observers=[m], sinks=[m])``. ``registry``: a ``CollectorRegistry`` (default:
    ``prometheus_client.REGISTRY``); ``prefix`` names every metric."""

    name = "prometheus"  # the trace bus labels this sink's lane with it

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        prefix: str = "aioelastic",
        duration_buckets: Sequence[float] = DURATION_BUCKETS,
        lag_buckets: Sequence[float] = LAG_BUCKETS,
    ) -> None:
        _require_prometheus()
        from prometheus_client import REGISTRY, Counter, Gauge, Histogram

        self.registry = REGISTRY if registry is None else registry
        r, p = self.registry, prefix
        self.fires = Counter(f"{p}_job_fires", "Fires started", ["job"], registry=r)
        self.item_runs = Counter(
            f"{p}_item_runs", "Completed item runs", ["job", "outcome", "source"], registry=r
        )
        self.item_duration = Histogram(
            f"{p}_item_duration_seconds",
            "Run time of one sharding item",
            ["job"],
            buckets=duration_buckets,
            registry=r,
        )
        self.fire_lag = Histogram(
            f"{p}_fire_lag_seconds",
            "Delay between a cron fire's scheduled and actual start",
            ["job"],
            buckets=lag_buckets,
            registry=r,
        )
        self.failover_items = Counter(
            f"{p}_failover_items", "Items taken over from a dead instance", ["job"], registry=r
        )
        self.reshards = Counter(
            f"{p}_reshards", "Assignments committed as leader", ["job"], registry=r
        )
        self.missed_fires = Counter(
            f"{p}_missed_fires",
            "Cron fires due that started on no instance (seen as leader)",
            ["job"],
            registry=r,
        )
        self.session_state = Gauge(
            f"{p}_registry_session_state",
            "1 for the registry session's current state",
            ["state"],
            registry=r,
        )
        for state in _SESSION_STATES:
            self.session_state.labels(state).set(0)
        self._bus = _TraceBusCollector(prefix)
        r.register(self._bus)

    def bind(self, scheduler: Scheduler) -> None:
        """Report ``scheduler``'s trace bus (queue depth, spills) while it runs."""
        self._bus.scheduler = scheduler

    def unregister(self) -> None:
        """Remove every metric of this object from its registry."""
        for collector in (
            self.fires,
            self.item_runs,
            self.item_duration,
            self.fire_lag,
            self.failover_items,
            self.reshards,
            self.missed_fires,
            self.session_state,
            self._bus,
        ):
            self.registry.unregister(collector)

    # -- Observer --

    def fire_started(self, job: str, scheduled: datetime | None, started: datetime) -> None:
        self.fires.labels(job).inc()
        if scheduled is not None:
            self.fire_lag.labels(job).observe(max(0.0, (started - scheduled).total_seconds()))

    def reshard_committed(self, job: str, instances: int, items: int) -> None:
        self.reshards.labels(job).inc()

    def failover_claimed(self, job: str, items: Sequence[int]) -> None:
        self.failover_items.labels(job).inc(len(items))

    def missed_fire(self, job: str, due: datetime, reason: str) -> None:
        self.missed_fires.labels(job).inc()

    def session_state_changed(self, state: str) -> None:
        for known in {*_SESSION_STATES, state}:
            self.session_state.labels(known).set(1 if known == state else 0)

    # -- TraceSink --

    async def write(self, batch: Sequence[TraceEvent]) -> None:
        """Count completed item runs and their durations (never raises)."""
        for event in batch:
            if not isinstance(event, JobExecutionEvent) or event.complete_time is None:
                continue
            outcome = "success" if event.is_success else "failure"
            self.item_runs.labels(event.job_name, outcome, event.execution_source.value).inc()
            seconds = (event.complete_time - event.start_time).total_seconds()
            self.item_duration.labels(event.job_name).observe(max(0.0, seconds))
