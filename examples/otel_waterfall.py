"""Draw the OpenTelemetry spans of one fire as a waterfall (README's picture).

A three-item job runs once on the embedded default; its spans go to the SDK's in-memory exporter
and are drawn with matplotlib, one bar per span, children indented under their parents. Needs
``pip install 'aioelastic[otel,bench]' opentelemetry-sdk``.

    python examples/otel_waterfall.py docs/otel-waterfall.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from aioelastic import Scheduler, ShardingContext

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("billing")

scheduler = Scheduler()


@scheduler.job(sharding_total_count=3, sharding_item_parameters="0=eu,1=us,2=apac")
async def invoice(ctx: ShardingContext) -> None:
    with tracer.start_as_current_span("load customers"):
        await anyio.sleep(0.02 + 0.015 * ctx.sharding_item)
    with tracer.start_as_current_span("send invoices"):
        await anyio.sleep(0.03)
        if ctx.sharding_parameter == "apac":
            raise ConnectionError("mail relay refused the connection")


def _order(spans: list[ReadableSpan]) -> list[tuple[int, ReadableSpan]]:
    """Spans depth-first from the root, each with its depth."""
    children: dict[int | None, list[ReadableSpan]] = {}
    ids = {s.context.span_id for s in spans if s.context is not None}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent if parent in ids else None, []).append(span)
    out: list[tuple[int, ReadableSpan]] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            out.append((depth, span))
            if span.context is not None:
                walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return out


def draw(spans: list[ReadableSpan], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _order(spans)
    t0 = min(s.start_time or 0 for s in spans)
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.2))
    for y, (depth, span) in enumerate(rows):
        start = ((span.start_time or t0) - t0) / 1e6
        length = ((span.end_time or span.start_time or t0) - (span.start_time or t0)) / 1e6
        failed = span.status.status_code is StatusCode.ERROR
        colour = "#d62728" if failed else ("#1f77b4", "#2ca02c", "#9467bd")[min(depth, 2)]
        ax.barh(y, max(length, 0.3), left=start, color=colour, height=0.6)
        item = span.attributes.get("aioelastic.item") if span.attributes else None
        label = "  " * depth + span.name + (f" [item {item}]" if depth == 1 else "")
        ax.text(-1, y, label, ha="right", va="center", fontsize=8, family="monospace")
        ax.text(start + max(length, 0.3) + 1, y, f"{length:.1f} ms", va="center", fontsize=7)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the fire began")
    ax.set_title("one fire of job 'invoice': the fire, its items, the job's own spans (red: error)")
    ax.spines[["left", "top", "right"]].set_visible(False)
    fig.subplots_adjust(left=0.38)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)


class _FireEnded(SpanProcessor):
    """Sets ``ended`` when a fire's span ends (spans end on the event loop's thread)."""

    def __init__(self) -> None:
        self.ended = anyio.Event()

    def on_end(self, span: ReadableSpan) -> None:
        if span.name.startswith("aioelastic.fire"):
            self.ended.set()


async def main(target: Path) -> None:
    fire_ended = _FireEnded()
    provider.add_span_processor(fire_ended)
    async with scheduler:
        await scheduler.trigger("invoice")
        with anyio.fail_after(10):
            await fire_ended.ended.wait()
    draw(list(exporter.get_finished_spans()), target)
    print(f"wrote {target}")


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1] if len(sys.argv) > 1 else "otel-waterfall.png"))
