"""The operator console: jobs overview, job pages, actions, history and an audit log in the
browser (optional extra ``console``: Starlette, Jinja2, uvicorn).

    console = Console(ConsoleSettings())
    app.mount("/console", console.app)          # any ASGI host, e.g. FastAPI
    async with scheduler, console.serve(Operations.of(scheduler)):
        ...

``create_app()`` builds a standalone app whose lifespan opens the registry (and the trace
database) from URLs; ``aioelastic console`` serves it.
"""

from __future__ import annotations

from ._app import Console
from ._server import create_app
from ._settings import ConsoleSettings

__all__ = ["Console", "ConsoleSettings", "create_app"]
