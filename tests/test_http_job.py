"""HTTP jobs against a real local HTTP(S) server on loopback: the sharding context header as
ElasticJob sends it, non-2xx as failures, redirects and TLS verification configurable."""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from aioelastic import ConfigError, HttpJob, HttpJobError, Scheduler, Settings
from aioelastic._http_job import SHARDING_CONTEXT_HEADER
from aioelastic.registry import MemoryStore
from tests.harness.helpers import CaptureSink, completions

pytestmark = pytest.mark.anyio

OPENSSL_REQ = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
OPENSSL_REQ += ["-subj", "/CN=127.0.0.1"]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    base: str
    requests: list[Request] = field(default_factory=list)


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            server.requests.append(Request(self.command, self.path, dict(self.headers), body))
            if self.path.startswith("/fail"):
                self._reply(503, b"overloaded: " + b"x" * 2000)
            elif self.path.startswith("/endless"):  # a body that never ends (a stream)
                self._endless(200 if "ok" in self.path else 500)
            elif self.path.startswith("/redirect"):
                self.send_response(302)
                self.send_header("Location", "/ok")
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._reply(200, b"fine")

        def _endless(self, status: int) -> None:
            self.send_response(status)
            self.end_headers()  # no length: the body runs until the connection closes
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(b"y" * 65536)

        def _reply(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    servers: list[ThreadingHTTPServer] = []

    def start(tls: bool = False) -> Server:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        scheme = "https" if tls else "http"
        server = Server(f"{scheme}://127.0.0.1:{httpd.server_address[1]}")
        httpd.RequestHandlerClass = _handler(server)
        if tls:
            cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
            subprocess.run(
                [*OPENSSL_REQ, "-keyout", str(key), "-out", str(cert)],
                check=True,
                capture_output=True,
            )
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return server

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def sink() -> CaptureSink:
    return CaptureSink()


@pytest.fixture
def scheduler(sink: CaptureSink) -> Scheduler:
    store = f"http-{uuid.uuid4().hex[:12]}"
    MemoryStore.reset(store)
    return Scheduler(settings=Settings(registry_url=f"memory://{store}/ns"), sinks=[sink])


class Handler:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    def __call__(self, job: str, exc: BaseException) -> None:
        self.errors.append(exc)


async def run_once(scheduler: Scheduler, sink: CaptureSink, name: str, items: int) -> None:
    async with scheduler:
        await scheduler.trigger(name)
        await sink.wait_for(lambda events: len(completions(events, name)) == items)


async def test_each_item_posts_its_sharding_context_as_elasticjob_does(
    start_server: Callable[..., Server], scheduler: Scheduler, sink: CaptureSink
) -> None:
    server = start_server()
    job = HttpJob(
        f"{server.base}/hook?x=1",
        data='{"hello": "world"}',
        headers={"X-Token": "t0"},
        content_type="application/json",
    )
    scheduler.add_job(
        job,
        name="http_post",
        sharding_total_count=2,
        job_parameter="p\u00e9",
        sharding_item_parameters="0=a,1=b",
    )
    await run_once(scheduler, sink, "http_post", 2)
    assert all(e.is_success for e in completions(sink.events, "http_post"))
    assert sorted(r.path for r in server.requests) == ["/hook?x=1", "/hook?x=1"]
    contexts = sorted(
        (json.loads(r.headers[SHARDING_CONTEXT_HEADER]) for r in server.requests),
        key=lambda c: c["shardingItem"],
    )
    task_id = contexts[0]["taskId"]
    assert contexts == [
        {
            "jobName": "http_post",
            "taskId": task_id,
            "shardingTotalCount": 2,
            "jobParameter": "p\u00e9",
            "shardingItem": item,
            "shardingParameter": param,
        }
        for item, param in ((0, "a"), (1, "b"))
    ]
    first = server.requests[0]
    assert first.method == "POST" and first.body == b'{"hello": "world"}'
    assert first.headers["X-Token"] == "t0"
    assert first.headers["Content-Type"] == "application/json"


async def test_a_get_sends_no_body(
    start_server: Callable[..., Server], scheduler: Scheduler, sink: CaptureSink
) -> None:
    server = start_server()
    scheduler.add_job(HttpJob(f"{server.base}/ok", method="get", data="ignored"), name="get")
    await run_once(scheduler, sink, "get", 1)
    (request,) = server.requests
    assert request.method == "GET" and request.body == b""


async def test_a_non_2xx_response_fails_the_item_with_status_and_body_start(
    start_server: Callable[..., Server], scheduler: Scheduler, sink: CaptureSink
) -> None:
    server = start_server()
    handler = Handler()
    scheduler.add_job(
        HttpJob(f"http://user:secret@127.0.0.1:{server.base.rsplit(':', 1)[1]}/fail?k=v"),
        name="failing",
        error_handler=handler,
    )
    await run_once(scheduler, sink, "failing", 1)
    (error,) = handler.errors
    assert isinstance(error, HttpJobError) and error.status == 503
    text = str(error)
    assert text.startswith("POST http://127.0.0.1:") and "/fail returned 503" in text
    assert "overloaded: xxx" in text and text.endswith("...") and len(text) < 700
    assert "secret" not in text and "k=v" not in text
    (row,) = completions(sink.events, "failing")
    assert not row.is_success and "returned 503" in (row.failure_cause or "")


async def test_a_response_body_is_read_only_as_far_as_it_is_shown(
    start_server: Callable[..., Server], scheduler: Scheduler, sink: CaptureSink
) -> None:
    # The whole body was read into memory before the status was looked at: an endpoint that
    # streams (or sends gigabytes) held the item, and its memory grew, until the job's timeout.
    server = start_server()
    handler = Handler()
    scheduler.add_job(HttpJob(f"{server.base}/endless-ok", method="GET"), name="stream-ok")
    scheduler.add_job(
        HttpJob(f"{server.base}/endless-fail", method="GET", body_limit=20),
        name="stream-fail",
        error_handler=handler,
    )
    with anyio.fail_after(15):
        async with scheduler:
            await scheduler.trigger("stream-ok")
            await scheduler.trigger("stream-fail")
            await sink.wait_for(
                lambda events: (
                    len(completions(events, "stream-ok"))
                    == len(completions(events, "stream-fail"))
                    == 1
                )
            )
    (ok,) = completions(sink.events, "stream-ok")
    assert ok.is_success
    (error,) = handler.errors
    assert isinstance(error, HttpJobError) and error.status == 500
    assert str(error).endswith(": " + "y" * 20 + "...")


async def test_redirects_are_followed_only_when_asked(
    start_server: Callable[..., Server], scheduler: Scheduler, sink: CaptureSink
) -> None:
    server = start_server()
    handler = Handler()
    scheduler.add_job(
        HttpJob(f"{server.base}/redirect", method="GET"), name="stay", error_handler=handler
    )
    scheduler.add_job(
        HttpJob(f"{server.base}/redirect", method="GET", follow_redirects=True), name="follow"
    )
    async with scheduler:
        await scheduler.trigger("stay")
        await scheduler.trigger("follow")
        await sink.wait_for(
            lambda events: (
                len(completions(events, "stay")) == len(completions(events, "follow")) == 1
            )
        )
    assert [getattr(e, "status", None) for e in handler.errors] == [302]
    (followed,) = completions(sink.events, "follow")
    assert followed.is_success
    assert sorted(r.path for r in server.requests) == ["/ok", "/redirect", "/redirect"]


async def test_tls_verification_is_configurable(
    start_server: Callable[..., Server], scheduler: Scheduler, sink: CaptureSink
) -> None:
    server = start_server(tls=True)
    handler = Handler()
    scheduler.add_job(HttpJob(f"{server.base}/ok"), name="verified", error_handler=handler)
    scheduler.add_job(HttpJob(f"{server.base}/ok", verify=False), name="unverified")
    async with scheduler:
        await scheduler.trigger("verified")
        await scheduler.trigger("unverified")
        await sink.wait_for(
            lambda events: (
                len(completions(events, "verified")) == len(completions(events, "unverified")) == 1
            )
        )
    assert "CERTIFICATE_VERIFY_FAILED" in str(handler.errors[0])
    (ok,) = completions(sink.events, "unverified")
    assert ok.is_success


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "/relative"}, "url"),
        ({"url": "http://h/x", "method": "BREW"}, "method"),
        ({"url": "http://h/x", "timeout": 0}, "timeout"),
        # Refused here, not by every fire (an OverflowError from connect(), a ValueError).
        ({"url": "http://127.0.0.1:99999/x"}, "url"),
        ({"url": "http://127.0.0.1:port/x"}, "url"),
        ({"url": "http://[::1/x"}, "url"),
    ],
)
def test_http_job_settings_are_validated(kwargs: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpJob(**kwargs)
    assert info.value.field == field_name


@pytest.mark.parametrize(
    "url",
    [
        "ftp://user:s3cret@example.com/x?token=t0ken",
        "http://user:s3cret@example.com:99999/x?token=t0ken",
        "http://user:s3%2Fcret@[::1/x?token=t0ken",
        "http://user:s3/cret@example.com/x?token=t0ken",  # an unescaped "/": netloc "user:s3"
    ],
)
def test_a_refused_url_is_shown_without_its_credentials_or_query(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpJob(url)
    shown = f"{info.value} {info.value.value!r}"
    assert "s3" not in shown and "t0ken" not in shown
    assert "example.com" in shown or "[::1" in shown


def test_an_http_job_repr_shows_no_secret() -> None:
    job = HttpJob(
        "https://user:s3cret@example.com/hook?token=t0ken",
        headers={"Authorization": "Bearer b3arer"},
        data='{"password": "d4ta"}',
    )
    shown = f"{job!r} {job}"
    assert "example.com/hook" in shown
    assert not any(s in shown for s in ("s3cret", "t0ken", "b3arer", "d4ta"))
