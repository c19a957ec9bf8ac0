"""The operator console: jobs overview, job pages, actions, history and an audit log in the
browser (optional extra ``console``: Starlette, Jinja2, uvicorn).

    console = Console(ConsoleSettings())
    app.mount("/console", console.app)          # any ASGI host, e.g. FastAPI
    async with scheduler, console.serve(Operations.of(scheduler)):
        ...

``create_app(registry_url, tracing_url)`` builds a standalone app whose lifespan opens the
registry, the trace database and the audit log (``open_audit_log``) from URLs;
``aioelastic console`` serves the same; ``serve_http`` runs uvicorn so that Ctrl-C does not wait
for open pages' live-update streams.
"""

from __future__ import annotations

from ..tracing._audit import AuditEntry, AuditLog, open_audit_log
from ._app import Console
from ._server import create_app, serve_http
from ._settings import ConsoleSettings

__all__ = [
    "AuditEntry",
    "AuditLog",
    "Console",
    "ConsoleSettings",
    "create_app",
    "open_audit_log",
    "serve_http",
]
