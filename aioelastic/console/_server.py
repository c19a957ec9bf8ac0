"""A standalone console app: its lifespan opens the registry, the trace and the audit log."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

from starlette.applications import Starlette

from .._errors import ConfigError
from .._operations import Operations
from .._urls import RegistryURL, TracingURL, parse_registry_url, parse_tracing_url
from ..tracing import TraceSearch, open_trace_store
from ..tracing._audit import open_audit_log
from ..tracing._sqlite import sqlite_path
from ._app import Console
from ._settings import ConsoleSettings

__all__ = ["check_tracing", "create_app", "open_console"]


def check_tracing(url: TracingURL) -> None:
    if url.scheme not in ("postgresql", "sqlite"):
        raise ConfigError("tracing_url", str(url), "only postgresql:// and sqlite:/// search")
    if url.scheme == "sqlite" and not Path(sqlite_path(url)).is_file():
        raise ConfigError(
            "tracing_url", str(url), f"no SQLite trace database at {sqlite_path(url)}"
        )


async def open_console(
    stack: AsyncExitStack, console: Console, registry: RegistryURL, tracing: TracingURL | None
) -> None:
    settings = console.settings
    ops = await stack.enter_async_context(Operations(registry, timeout=settings.registry_timeout))
    search: TraceSearch | None = None
    if tracing is not None:
        store = await stack.enter_async_context(
            open_trace_store(tracing, create_schema=False, connect_timeout=settings.trace_timeout)
        )
        search = store.search
    audit = await stack.enter_async_context(open_audit_log(tracing, timeout=settings.trace_timeout))
    await stack.enter_async_context(console.serve(ops, search=search, audit=audit))


def create_app(
    registry_url: str | RegistryURL,
    tracing_url: str | TracingURL | None = None,
    *,
    settings: ConsoleSettings | None = None,
) -> Starlette:
    """An ASGI app serving the console of ``registry_url``'s namespace, with history and a
    durable audit log when ``tracing_url`` (PostgreSQL or SQLite) is given. Its lifespan
    connects and disconnects (``uvicorn`` runs it)."""
    registry = parse_registry_url(registry_url) if isinstance(registry_url, str) else registry_url
    tracing = parse_tracing_url(tracing_url) if isinstance(tracing_url, str) else tracing_url
    if tracing is not None:
        check_tracing(tracing)
    console = Console(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await open_console(stack, console, registry, tracing)
            yield

    app = Starlette(lifespan=lifespan)
    app.mount("/", console.app)
    app.state.console = console
    return app
