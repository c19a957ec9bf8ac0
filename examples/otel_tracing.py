"""OpenTelemetry: each fire is a span, each item a child span, and spans the job's own code
makes nest under its item. Needs ``pip install 'aioelastic[otel]' opentelemetry-sdk``.

    python examples/otel_tracing.py             # prints the spans of two fires, then stops

In production, replace the console exporter by an OTLP one (``opentelemetry-exporter-otlp``)
pointing at your collector; aioelastic itself depends on ``opentelemetry-api`` only.
"""

from __future__ import annotations

import logging

import anyio
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from aioelastic import Scheduler, ShardingContext

provider = TracerProvider(resource=Resource.create({"service.name": "billing-jobs"}))
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
trace.set_tracer_provider(provider)  # before the first fire; aioelastic's tracer follows it
tracer = trace.get_tracer("billing")

scheduler = Scheduler()  # embedded default: registry "memory://", one process


@scheduler.job(cron="0/1 * * * * ?", sharding_total_count=2)
async def invoice(ctx: ShardingContext) -> None:
    with tracer.start_as_current_span("load customers") as span:  # child of the item's span
        span.set_attribute("billing.region", ctx.sharding_item)
        await anyio.sleep(0.05)
    with tracer.start_as_current_span("send invoices"):
        await anyio.sleep(0.05)


async def main() -> None:
    fires = 0
    async with scheduler:
        while fires < 2:  # two fires' worth of spans, then a graceful stop
            await anyio.sleep(1)
            fires += 1
    provider.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    anyio.run(main)
