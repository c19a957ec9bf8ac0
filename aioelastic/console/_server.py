"""A standalone console app: its lifespan opens the registry, the trace and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from types import FrameType
from typing import Any

from starlette.applications import Starlette

from .._errors import ConfigError
from .._operations import Operations
from .._urls import RegistryURL, TracingURL, parse_registry_url, parse_tracing_url
from ..tracing import TraceSearch, open_trace_store
from ..tracing._audit import open_audit_log
from ..tracing._sqlite import sqlite_path
from ._app import Console
from ._settings import ConsoleSettings

__all__ = ["check_tracing", "create_app", "open_console", "serve_http"]


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


async def serve_http(
    app: Any, console: Console, *, host: str, port: int, log_level: str = "info"
) -> None:
    """Serve ``app`` (the console's, or one that mounts it) with uvicorn until SIGINT/SIGTERM,
    then return normally. The console's live-update streams end first, so stopping does not
    wait for open pages."""
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # uvicorn's own re-raises the signal after its shutdown; a stop asked for is not
            # an error here.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            console.close_streams()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5
    )
    await Server(config).serve()
