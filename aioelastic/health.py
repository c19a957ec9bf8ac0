"""Health probes over HTTP: ``/livez`` and ``/readyz`` (200 or 503, a JSON body).

Two ways to serve them, no dependency needed:

* ``aioelastic run app:scheduler --health-port 8080`` (or :func:`serve_health` in your own
  task group): a tiny HTTP/1.1 responder on asyncio streams, 127.0.0.1 unless told otherwise;
* :func:`asgi_app` for a service that has a web server already::

      app.mount("/health", aioelastic.health.asgi_app(scheduler))   # FastAPI / Starlette

``Scheduler.health()`` gives the same answers as a ``Health`` dataclass.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from ._health import Health, scheduler_health

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["PROBES", "Health", "asgi_app", "probe_response", "serve_health"]

log = logging.getLogger("aioelastic.health")

PROBES = ("livez", "readyz")
_REQUEST_LIMIT = 8192  # bytes of request line and headers read at most
_REQUEST_TIMEOUT = 5.0

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def probe_response(scheduler: Scheduler, path: str) -> tuple[int, bytes]:
    """The status code and JSON body for ``path`` (``/livez``, ``/readyz``; else 404)."""
    probe = path.split("?", 1)[0].strip("/")
    if probe not in PROBES:
        return 404, json.dumps({"status": "fail", "reason": f"no probe at {path}"}).encode()
    health = scheduler_health(scheduler)
    ok = health.live if probe == "livez" else health.ready
    return (200 if ok else 503), json.dumps(health.body(probe), sort_keys=True).encode()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


async def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, head: bool) -> None:
    writer.write(
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n".encode()
        + (b"" if head else body)
    )
    await writer.drain()


async def _handle(
    scheduler: Scheduler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        with anyio.fail_after(_REQUEST_TIMEOUT):
            try:
                request = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await _respond(writer, 400, b'{"status": "fail"}', False)
                return
            parts = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                await _respond(writer, 400, b'{"status": "fail"}', False)
                return
            method, path = parts[0], parts[1]
            if method not in ("GET", "HEAD"):
                await _respond(writer, 405, b'{"status": "fail"}', False)
                return
            status, body = probe_response(scheduler, path)
            await _respond(writer, status, body, method == "HEAD")
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        pass  # a client that left or never finished its request
    finally:
        writer.close()


async def serve_health(
    scheduler: Scheduler,
    port: int,
    host: str = "127.0.0.1",
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/livez`` and ``/readyz`` on ``host:port`` until cancelled (on asyncio);
    ``task_status.started`` gets the bound port (useful with ``port=0``)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _handle(scheduler, reader, writer)

    server = await asyncio.start_server(handle, host, port, limit=_REQUEST_LIMIT)
    try:
        bound = server.sockets[0].getsockname()[1]
        log.info("health probes on http://%s:%d/livez and /readyz", host, bound)
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        server.close()
        with anyio.move_on_after(1, shield=True):
            await server.wait_closed()


def asgi_app(scheduler: Scheduler) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app answering ``GET /livez`` and ``GET /readyz`` (relative to where it is
    mounted); lifespan events are accepted and ignored."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if scope["method"] not in ("GET", "HEAD"):
            status, body = 405, b'{"status": "fail"}'
        else:
            status, body = probe_response(scheduler, path or "/")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )

    return app
