"""A FastAPI service that runs its jobs and serves the operator console beside them.

    pip install 'aioelastic[fastapi,console]'
    python examples/console_app.py              # then open http://127.0.0.1:8000/console/
    # distributed, with history and a durable audit log:
    AIOELASTIC_REGISTRY_URL=zookeeper://127.0.0.1:2181/demo \\
    AIOELASTIC_TRACING_URL=sqlite:///trace.db \\
    AIOELASTIC_CONSOLE_OPERATORS='{"alice": "change-me"}' python examples/console_app.py

Without ``AIOELASTIC_CONSOLE_*`` credentials the console is read-only. The console reads the
scheduler's own registry session (``Operations.of(scheduler)``); its lifetime is the app's
lifespan. Under uvicorn's CLI give ``--timeout-graceful-shutdown 5``: open console pages keep a
live-update stream, which ``python examples/console_app.py`` ends itself on Ctrl-C.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from aioelastic import Operations, Scheduler, ShardingContext
from aioelastic.console import Console, ConsoleSettings, open_audit_log, serve_http
from aioelastic.tracing import TraceSearch, open_trace_store

scheduler = Scheduler()  # AIOELASTIC_REGISTRY_URL / AIOELASTIC_TRACING_URL, default embedded
console = Console(ConsoleSettings())  # AIOELASTIC_CONSOLE_* (credentials, bind)


@scheduler.job(cron="0/5 * * * * ?", sharding_total_count=3, description="every 5 seconds")
async def settle(ctx: ShardingContext) -> None:
    await anyio.sleep(0.1)


@scheduler.job(sharding_total_count=2, description="only when triggered (try the console)")
async def report(ctx: ShardingContext) -> None:
    if ctx.sharding_item == 1:
        raise RuntimeError("item 1 always fails: its cause is one click away in the console")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(scheduler)
        tracing = scheduler.settings.tracing_url
        url = tracing.get_secret_value() if tracing else None
        search: TraceSearch | None = None
        if url and url.startswith(("postgresql://", "sqlite:///")):
            search = (await stack.enter_async_context(open_trace_store(url))).search
        audit = await stack.enter_async_context(open_audit_log(url if search else None))
        await stack.enter_async_context(
            console.serve(Operations.of(scheduler), search=search, audit=audit)
        )
        yield


app = FastAPI(lifespan=lifespan)
app.mount("/console", console.app)


@app.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/console/")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    anyio.run(lambda: serve_http(app, console, host=args.host, port=args.port))
