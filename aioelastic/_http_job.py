"""HTTP jobs (ElasticJob 3's ``HTTP`` job type) on httpx, the optional extra ``http``."""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._context import ShardingContext
from ._errors import AioelasticError, ConfigError
from ._urls import redact_url

if TYPE_CHECKING:
    import httpx

__all__ = ["SHARDING_CONTEXT_HEADER", "HttpJob", "HttpJobError", "sharding_context_json"]

#: ElasticJob's ``HttpJobProperties.SHARDING_CONTEXT_KEY``: the request header that carries
#: the item's sharding context as JSON.
SHARDING_CONTEXT_HEADER = "shardingContext"

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS"})


class HttpJobError(AioelasticError):
    """The request of an HTTP job got a non-2xx response; the message has the status and the
    start of the body."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, repr=False)
class HttpJob:
    """One HTTP request per item: ``method url`` with ``data`` as the body (not for GET, HEAD,
    OPTIONS) and the item's sharding context as JSON in the ``shardingContext`` header, as
    ElasticJob's ``HttpJobExecutor`` sends it. A response outside 2xx fails the item, with the
    status and the first ``body_limit`` characters of the body in the failure cause.

    ``timeout`` bounds each phase of the request (connect, write, read) in seconds; the job's
    own ``timeout`` bounds the whole item. Redirects are not followed unless
    ``follow_redirects``; ``verify`` is httpx's (True, False, a CA bundle path or an
    ``ssl.SSLContext``)."""

    url: str
    method: str = "POST"
    data: str | bytes | None = None
    headers: Mapping[str, str] | None = None
    timeout: float = 30.0
    follow_redirects: bool = False
    verify: bool | str | ssl.SSLContext = True
    content_type: str | None = None
    body_limit: int = 500

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            valid = valid and (parts.port is None or parts.port > 0)  # (.port checks the range)
        except ValueError:  # e.g. "[::1", a port that is not a number
            valid = False
        if not valid:
            raise ConfigError(
                "url",
                _redacted(self.url),
                "must be an absolute http:// or https:// URL with a valid host and port",
            )
        if self.method.upper() not in _METHODS:
            raise ConfigError("method", self.method, f"must be one of {sorted(_METHODS)}")
        if not self.timeout > 0:
            raise ConfigError("timeout", self.timeout, "must be > 0 seconds")
        if self.body_limit < 0:
            raise ConfigError("body_limit", self.body_limit, "must be >= 0")

    def __repr__(self) -> str:
        # The URL's credentials and query, the headers and the body may hold secrets.
        return f"HttpJob({self.method.upper()} {_shown(self.url)!r})"


def sharding_context_json(ctx: ShardingContext) -> str:
    """The item's context as ElasticJob's Gson writes its ``ShardingContext`` (ASCII-only, so
    it fits a header; a JSON reader gets the same text back)."""
    return json.dumps(
        {
            "jobName": ctx.job_name,
            "taskId": ctx.task_id,
            "shardingTotalCount": ctx.sharding_total_count,
            "jobParameter": ctx.job_parameter,
            "shardingItem": ctx.sharding_item,
            "shardingParameter": ctx.sharding_parameter,
        },
        separators=(",", ":"),
    )


def http_runner(job: HttpJob) -> Callable[[ShardingContext, Callable[[], bool]], Awaitable[None]]:
    """The item runner of an HTTP job; ``ConfigError`` if httpx is not installed."""
    try:
        import httpx
    except ImportError:
        raise ConfigError(
            "job", _shown(job.url), "HttpJob needs httpx: pip install 'aioelastic[http]'"
        ) from None
    method = job.method.upper()
    content = None if method in _NO_BODY or job.data is None else job.data
    if isinstance(content, str):
        content = content.encode()

    async def run_http(ctx: ShardingContext, keep_going: Callable[[], bool]) -> None:
        headers = dict(job.headers or {})
        if job.content_type is not None:
            headers["Content-Type"] = job.content_type
        headers[SHARDING_CONTEXT_HEADER] = sharding_context_json(ctx)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(job.timeout),
            follow_redirects=job.follow_redirects,
            verify=job.verify,
        ) as client:
            # Streamed: a 2xx body is never read, a failure's only as far as it is shown (an
            # endpoint that streams, or sends gigabytes, would hold the item and its memory).
            request = client.stream(method, job.url, content=content, headers=headers)
            async with request as response:
                if not 200 <= response.status_code < 300:
                    raise await _failure(job, method, response)

    return run_http


async def _failure(job: HttpJob, method: str, response: httpx.Response) -> HttpJobError:
    """The error of a non-2xx ``response``, with the start of its body (read that far)."""
    head = bytearray()
    limit = job.body_limit * 4 + 4  # UTF-8: at most 4 bytes a character (and one more)
    async for chunk in response.aiter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    text = bytes(head).decode(response.encoding or "utf-8", errors="replace")
    more = "..." if len(text) > job.body_limit else ""
    return HttpJobError(
        f"{method} {_shown(job.url)} returned {response.status_code} {response.reason_phrase}: "
        f"{text[: job.body_limit]}{more}",
        response.status_code,
    )


def _redacted(url: str) -> str:
    """What an unparsable ``url`` shows: ``redact_url``'s (credentials cut out, even with an
    unescaped ``/`` in a password) without its query (a token may be any parameter)."""
    return redact_url(url.split("?", 1)[0].split("#", 1)[0])


def _shown(url: str) -> str:
    """The (valid) URL without credentials or query (either may hold a secret)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
