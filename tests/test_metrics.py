"""Prometheus metrics: scraped from the text exposition after real fires."""

from __future__ import annotations

import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from aioelastic import Scheduler, ShardingContext
from aioelastic.metrics import PrometheusMetrics
from aioelastic.registry import MemoryStore
from aioelastic.tracing import SinkStats
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the text exposition: (name, labels) → value."""
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_after_real_fires() -> None:
    name = f"metrics{uuid.uuid4().hex[:6]}"
    MemoryStore.reset(name)
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    scheduler = Scheduler(
        registry=f"memory://{name}/ns", tracing="memory://", observers=[metrics], sinks=[metrics]
    )
    metrics.bind(scheduler)

    @scheduler.job(sharding_total_count=3)
    async def flaky(ctx: ShardingContext) -> None:
        await anyio.sleep(0.02)
        if ctx.sharding_item == 2:
            raise RuntimeError("item 2 fails")

    @scheduler.job(cron="0/1 * * * * ?")
    async def tick(ctx: ShardingContext) -> None: ...

    def runs(outcome: str) -> float:
        return value(
            scrape(registry),
            "aioelastic_item_runs_total",
            job="flaky",
            outcome=outcome,
            source="NORMAL_TRIGGER",
        )

    async with scheduler:
        for n in (1, 2):  # one trigger at a time: each fire is a plain NORMAL_TRIGGER run
            await scheduler.trigger("flaky")
            await eventually(lambda: (runs("success"), runs("failure")) == (2 * n, n))  # noqa: B023 - awaited in this iteration
        await eventually(
            lambda: value(scrape(registry), "aioelastic_fire_lag_seconds_count", job="tick") >= 1,
            timeout=3,
        )
        live = scrape(registry)
        sinks = {dict(labels)["sink"] for n, labels in live if n == "aioelastic_trace_queue_depth"}
        assert sinks == {"prometheus", "MemorySink"}
        assert value(live, "aioelastic_registry_session_state", state="CONNECTED") == 1
        assert value(live, "aioelastic_registry_session_state", state="LOST") == 0
    samples = scrape(registry)

    assert value(samples, "aioelastic_job_fires_total", job="flaky") == 2
    assert (runs("success"), runs("failure")) == (4, 2)
    assert value(samples, "aioelastic_item_duration_seconds_count", job="flaky") == 6
    assert value(samples, "aioelastic_item_duration_seconds_sum", job="flaky") >= 6 * 0.02
    assert value(samples, "aioelastic_item_duration_seconds_bucket", job="flaky", le="0.01") == 0
    assert value(samples, "aioelastic_fire_lag_seconds_count", job="tick") >= 1
    assert value(samples, "aioelastic_fire_lag_seconds_count", job="flaky") == 0  # manual fires
    assert value(samples, "aioelastic_reshards_total", job="flaky") >= 1
    # after shutdown the bus is gone: the trace series are simply absent
    assert not any(n.startswith("aioelastic_trace_") for n, _ in samples)


@dataclass
class _FakeBus:
    rows: list[SinkStats]

    def stats(self) -> list[SinkStats]:
        return self.rows


@dataclass
class _FakeScheduler:
    trace_bus: _FakeBus


async def test_trace_bus_and_hooks_are_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry, prefix="app")
    stats = SinkStats("PostgresSink", 12, 100, 7, 3, 1, 2, Path("/tmp/j"))
    bus = _FakeBus([stats])
    metrics.bind(_FakeScheduler(bus))  # type: ignore[arg-type]
    metrics.failover_claimed("job", [1, 3])
    metrics.session_state_changed("SUSPENDED")
    samples = scrape(registry)
    assert value(samples, "app_trace_queue_depth", sink="PostgresSink") == 12
    assert value(samples, "app_trace_spilled_total", sink="PostgresSink") == 7
    assert value(samples, "app_trace_written_total", sink="PostgresSink") == 100
    assert value(samples, "app_trace_dropped_total", sink="PostgresSink") == 1
    assert value(samples, "app_failover_items_total", job="job") == 2
    assert value(samples, "app_registry_session_state", state="SUSPENDED") == 1
    assert value(samples, "app_registry_session_state", state="CONNECTED") == 0
    bus.rows = [SinkStats("PostgresSink", 0, 112, 7, 7, 1, 2, None)]  # drained
    assert value(scrape(registry), "app_trace_queue_depth", sink="PostgresSink") == 0
    metrics.unregister()
    assert not scrape(registry)


def test_missing_prometheus_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'aioelastic\[metrics\]'"):
        PrometheusMetrics(CollectorRegistry())
