"""OpenTelemetry spans (SDK's in-memory exporter): a span per fire, an INTERNAL child per
item that is current inside the job coroutine, attributes, recorded exceptions, status; and
nothing at all without ``opentelemetry-api``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from aioelastic import Scheduler, Settings, ShardingContext
from aioelastic.registry import MemoryStore
from tests.harness.cli import ROOT, clean_env
from tests.harness.helpers import eventually

pytestmark = pytest.mark.anyio

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once: OpenTelemetry allows one) exporting here."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    return _EXPORTER


def _item(span: ReadableSpan) -> int:
    value = (span.attributes or {})["aioelastic.item"]
    assert isinstance(value, int)
    return value


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_fire_span_with_a_child_span_per_item(exporter: InMemorySpanExporter) -> None:
    MemoryStore.reset("otel")
    scheduler = Scheduler(settings=Settings(registry_url="memory://otel/ns"))
    tracer = trace.get_tracer("user.code")

    @scheduler.job(sharding_total_count=2)
    async def export(ctx: ShardingContext) -> None:
        with tracer.start_as_current_span(f"user work {ctx.sharding_item}"):
            if ctx.sharding_item == 1:
                raise ValueError("bad row")

    async with scheduler:
        await scheduler.trigger("export")
        await eventually(
            lambda: _named(exporter.get_finished_spans(), "aioelastic.fire export"), timeout=10
        )
    spans = exporter.get_finished_spans()
    [fire] = _named(spans, "aioelastic.fire export")
    items = sorted(_named(spans, "aioelastic.item export"), key=_item)
    assert [_item(s) for s in items] == [0, 1]
    assert fire.kind is SpanKind.INTERNAL and fire.parent is None
    attrs = dict(fire.attributes or {})
    task_id = attrs["aioelastic.task_id"]
    assert isinstance(task_id, str) and task_id.startswith("export@-@0,1@-@READY@-@")
    assert attrs["aioelastic.job"] == "export"
    assert attrs["aioelastic.execution_source"] == "NORMAL_TRIGGER"
    assert attrs["aioelastic.instance"] == scheduler.instance_id
    assert tuple(attrs["aioelastic.items"]) == (0, 1)  # type: ignore[arg-type]
    assert fire.status.status_code is StatusCode.ERROR
    assert fire.status.description == "failed items [1]"
    for item in items:
        assert item.kind is SpanKind.INTERNAL
        assert item.parent is not None and item.parent.span_id == fire.context.span_id
        assert item.context.trace_id == fire.context.trace_id
        assert dict(item.attributes or {}) | {"aioelastic.item": 0} == {
            "aioelastic.job": "export",
            "aioelastic.task_id": task_id,
            "aioelastic.execution_source": "NORMAL_TRIGGER",
            "aioelastic.instance": scheduler.instance_id,
            "aioelastic.item": 0,
        }
        [user] = _named(spans, f"user work {_item(item)}")
        assert user.parent is not None and user.parent.span_id == item.context.span_id
    ok, failed = items
    assert ok.status.status_code is StatusCode.UNSET and not ok.events
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: bad row"
    [event] = failed.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.type"] == "ValueError"


def test_without_the_api_nothing_is_traced_and_jobs_run() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed
        import anyio
        from aioelastic import Scheduler, Settings, _otel

        assert not _otel.AVAILABLE
        scheduler = Scheduler(settings=Settings(registry_url="memory://nootel/ns"))
        ran = []

        @scheduler.job(sharding_total_count=2)
        async def job(ctx):
            ran.append(ctx.sharding_item)

        async def main():
            async with scheduler:
                await scheduler.trigger("job")
                with anyio.fail_after(20):
                    while len(ran) < 2:
                        await anyio.sleep(0.01)

        anyio.run(main)
        assert "opentelemetry.trace" not in sys.modules
        print("ok", sorted(ran))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok [0, 1]"


def test_the_example_prints_nested_spans() -> None:
    result = subprocess.run(
        [sys.executable, "examples/otel_tracing.py"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for name in ("aioelastic.fire invoice", "aioelastic.item invoice", "load customers"):
        assert f'"name": "{name}"' in result.stdout
