"""The console's Starlette app: pages, fragments for live updates, actions, SSE."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .._errors import (
    AioelasticError,
    BadVersionError,
    ConfigError,
    JobNotFoundError,
    SessionLostError,
)
from .._json import loads as loads_json
from .._layout import namespace_root
from .._missed import MissedFire, missed_fires, missed_fires_of
from .._operations import JobBrief, Operations
from ..cli._format import parse_time
from ..registry._view import TreeView
from ..tracing import FireRecord, JobStats, TraceSearch
from ..tracing._audit import AuditEntry, AuditLog, MemoryAuditLog
from ._charts import duration_chart, hourly_buckets, hourly_chart, sparkline
from ._security import Principal, Signer, authenticate
from ._settings import ConsoleSettings
from ._snapshot import ViewRegistry

__all__ = ["Console"]

log = logging.getLogger("aioelastic.console")

_HERE = Path(__file__).parent
CSRF_COOKIE = "aioelastic_csrf"
FLASH_COOKIE = "aioelastic_flash"
#: Fires read for the overview's last run and sparklines (the newest of the last 24 h).
OVERVIEW_FIRES = 1000
_KEEPALIVE = 15.0
_MAX_FORM = 1 << 20
_TRACE_SUMMARY_TTL = 1.0
#: No inline script can run even if some text escaped escaping; no framing (clickjacking).
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self';"
    " img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_DESTRUCTIVE = frozenset({"shutdown", "remove", "disable"})
_ACTIONS = frozenset(
    {
        "trigger",
        "disable",
        "enable",
        "disable-server",
        "enable-server",
        "disable-item",
        "enable-item",
        "shutdown",
        "remove",
    }
)


class NotServing(Exception):
    """The console app got a request outside ``Console.serve()``."""


@dataclass
class _Live:
    """What a serving console reads from: real operations, the snapshot, trace and audit."""

    ops: Operations
    snapshot: Operations
    view: TreeView
    search: TraceSearch | None
    audit: AuditLog
    audit_durable: bool
    last_fresh: datetime | None = None
    generation: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)
    stopping: anyio.Event = field(default_factory=anyio.Event)
    trace_summary: _TraceSummary | None = None


@dataclass
class _TraceSummary:
    read_at: float
    stats: dict[str, JobStats] = field(default_factory=dict)
    fires: dict[str, list[FireRecord]] = field(default_factory=dict)
    banners: list[str] = field(default_factory=list)


@dataclass
class _Ctx:
    """One request's shared page state: who asks, banners, the CSRF token to embed."""

    principal: Principal
    banners: list[str] = field(default_factory=list)
    csrf: str = ""
    new_csrf: bool = False
    flash: dict[str, Any] | None = None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _fmt_time(value: datetime | None, zone: str = "UTC") -> str:
    if value is None:
        return "—"
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        tz = ZoneInfo("UTC")
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S ") + zone


def _fmt_duration(value: timedelta | None) -> str:
    if value is None:
        return "—"
    seconds = value.total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,  # every page: a job name or cause with <script> renders as text
        undefined=jinja2.StrictUndefined,
    )
    env.filters["time"] = _fmt_time
    env.filters["duration"] = _fmt_duration
    env.filters["first_line"] = lambda s: (s or "").strip().splitlines()[0] if s else ""
    return env


@dataclass(frozen=True)
class OverviewRow:
    brief: JobBrief
    last: FireRecord | None
    stats: JobStats | None
    spark: Any

    @property
    def success_rate(self) -> str:
        if self.stats is None or not (self.stats.succeeded + self.stats.failed):
            return "—"
        done = self.stats.succeeded + self.stats.failed
        return f"{100 * self.stats.succeeded / done:.0f}%"


class Console:
    """The operator console. ``app`` is its ASGI app (mount it anywhere); it serves while
    ``async with console.serve(operations, search=..., audit=...)`` runs."""

    def __init__(self, settings: ConsoleSettings | None = None) -> None:
        self.settings = settings or ConsoleSettings()
        self._signer = Signer(self.settings.secret_key)
        self._env = _environment()
        self._live: _Live | None = None
        self.app = Starlette(
            routes=[
                Route("/", self._overview),
                Route("/events", self._events),
                Route("/jobs/{name:str}", self._job),
                Route("/jobs/{name:str}/action", self._action, methods=["POST"]),
                Route("/jobs/{name:str}/config", self._config, methods=["POST"]),
                Route("/history", self._history),
                Route("/audit", self._audit),
                Route("/missed", self._missed),
                Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
            ],
            exception_handlers={
                HTTPException: self._http_error,
                NotServing: self._not_serving,
                SessionLostError: self._registry_down,
            },
        )

    # -- lifetime --

    @contextlib.asynccontextmanager
    async def serve(
        self,
        operations: Operations,
        *,
        search: TraceSearch | None = None,
        audit: AuditLog | None = None,
    ) -> AsyncIterator[Console]:
        """Serve pages over ``operations`` (an open one), the trace ``search`` (history) and
        ``audit`` (default: kept in memory) until the block ends."""
        view = TreeView(operations.registry, namespace_root(operations.namespace))
        snapshot = Operations.for_registry(
            ViewRegistry(view, operations.registry), operations.namespace
        )
        live = _Live(
            operations,
            snapshot,
            view,
            search,
            audit if audit is not None else MemoryAuditLog(),
            audit is not None and not isinstance(audit, MemoryAuditLog),
        )
        async with anyio.create_task_group() as tg:
            await tg.start(view.run)
            tg.start_soon(self._pump, live)
            self._live = live
            try:
                yield self
            finally:
                self._live = None
                self._end_streams(live)
                tg.cancel_scope.cancel()

    def close_streams(self) -> None:
        """End the live-update streams now (call it when the server starts shutting down, so
        it need not wait for them; browsers reconnect to the next server)."""
        if self._live is not None:
            self._end_streams(self._live)

    @staticmethod
    def _end_streams(live: _Live) -> None:
        live.stopping.set()
        live.changed.set()

    async def _pump(self, live: _Live) -> None:
        """Turn registry watch events (and session changes) into one signal for SSE clients,
        at most every 0.2 s."""
        subscription = live.view.subscribe(lambda _path: True)
        live.ops.registry.add_session_listener(lambda _event: subscription.notify())
        while True:
            if live.view.fresh:
                live.last_fresh = datetime.now(UTC)
            if await subscription.wait(_KEEPALIVE):
                live.generation += 1
                live.changed.set()
                live.changed = anyio.Event()
                await anyio.sleep(0.2)

    def _serving(self) -> _Live:
        if self._live is None:
            raise NotServing
        return self._live

    # -- request plumbing --

    def _principal(self, request: Request) -> Principal:
        principal = authenticate(self.settings, request.headers.get("authorization"))
        if principal is None:
            raise HTTPException(
                401, "sign in", headers={"WWW-Authenticate": 'Basic realm="aioelastic console"'}
            )
        return principal

    def _ctx(self, request: Request) -> _Ctx:
        ctx = _Ctx(self._principal(request))
        token = self._signer.unsign(request.cookies.get(CSRF_COOKIE))
        if token is None:
            token, ctx.new_csrf = Signer.new_token(), True
        ctx.csrf = token
        flash = self._signer.unsign(request.cookies.get(FLASH_COOKIE))
        if flash is not None:
            with contextlib.suppress(ValueError):
                ctx.flash = json.loads(flash)
        return ctx

    def _base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _render(
        self, request: Request, ctx: _Ctx, template: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        live = self._live
        if live is not None and not live.view.fresh:
            seen = _fmt_time(live.last_fresh) if live.last_fresh else "never"
            ctx.banners.insert(
                0,
                f"Registry unreachable (session {live.ops.registry.session_state.value}): "
                f"showing the state last seen at {seen}.",
            )
        html = self._env.get_template(template).render(
            base=self._base(request),
            principal=ctx.principal,
            can_act=ctx.principal.can_act,
            read_only=self.settings.read_only,
            csrf=ctx.csrf,
            banners=ctx.banners,
            flash=ctx.flash,
            namespace=live.ops.namespace if live else "",
            **values,
        )
        response = HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)
        if template.startswith("_"):  # a live fragment: the page updates its banners too
            response.headers["X-Console-Banners"] = json.dumps(ctx.banners)
        path = self._base(request) or "/"
        if ctx.new_csrf:
            response.set_cookie(
                CSRF_COOKIE,
                self._signer.sign(ctx.csrf),
                httponly=True,
                samesite="strict",
                path=path,
            )
        if ctx.flash is not None:
            response.delete_cookie(FLASH_COOKIE, path=path)
        return response

    async def _check_csrf(self, request: Request) -> dict[str, str]:
        """The form, once its CSRF token matches the signed cookie's (403 otherwise)."""
        form = await _form(request)
        cookie = self._signer.unsign(request.cookies.get(CSRF_COOKIE))
        given = form.get("csrf") or request.headers.get("x-csrf-token") or ""
        if cookie is None or not given or not _same(cookie, given):
            raise HTTPException(403, "CSRF token missing or wrong: reload the page and retry")
        return form

    def _redirect(self, request: Request, to: str, ok: bool, text: str) -> Response:
        response = RedirectResponse(self._base(request) + to, status_code=303)
        flash = json.dumps({"ok": ok, "text": text})
        response.set_cookie(
            FLASH_COOKIE,
            self._signer.sign(flash),
            httponly=True,
            samesite="strict",
            path=self._base(request) or "/",
        )
        return response

    async def _trace(self, ctx: _Ctx, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """A trace read with the console's deadline; on failure a banner and None."""
        live = self._serving()
        if live.search is None:
            return None
        try:
            with anyio.fail_after(self.settings.trace_timeout):
                return await call()
        except ConfigError as exc:
            ctx.banners.append(f"Trace query refused ({what}): {exc}")
        except Exception as exc:  # an outage of any kind: a banner, never a 500
            log.warning("console: trace database unreachable (%s): %s", what, _short(exc))
            ctx.banners.append(f"Trace database unreachable ({what}): {_short(exc)}")
        return None

    # -- error pages --

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        html = self._env.get_template("error.html").render(
            base=self._base(request), status=exc.status_code, message=exc.detail
        )
        return HTMLResponse(html, status_code=exc.status_code, headers=exc.headers)

    async def _not_serving(self, request: Request, exc: Exception) -> Response:
        html = self._env.get_template("error.html").render(
            base=self._base(request), status=503, message="The console is not serving yet."
        )
        return HTMLResponse(html, status_code=503)

    async def _registry_down(self, request: Request, exc: Exception) -> Response:
        ctx = self._ctx(request)
        ctx.banners.append(f"Registry unreachable: {_short(exc)}")
        return self._render(request, ctx, "outage.html", status=503)

    # -- overview --

    async def _overview(self, request: Request) -> Response:
        ctx = self._ctx(request)
        live = self._serving()
        rows = await self._overview_rows(ctx, live)
        name = request.query_params.get("name", "").strip()
        status = request.query_params.get("status", "")
        shown = [
            r
            for r in rows
            if name.lower() in r.brief.name.lower() and status in ("", r.brief.status.value)
        ]
        template = (
            "_overview_rows.html" if request.query_params.get("fragment") else "overview.html"
        )
        return self._render(
            request,
            ctx,
            template,
            rows=shown,
            total=len(rows),
            name=name,
            status_filter=status,
            statuses=sorted({r.brief.status.value for r in rows} | {"OK", "CRASHED", "DISABLED"}),
            generation=live.generation,
        )

    async def _overview_trace(self, ctx: _Ctx, live: _Live, since: datetime) -> _TraceSummary:
        """The trace's side of the overview, shared for a moment by every open page (they all
        refresh on the same registry change)."""
        cached = live.trace_summary
        if cached is not None and time.monotonic() - cached.read_at < _TRACE_SUMMARY_TTL:
            ctx.banners.extend(cached.banners)
            return cached
        search = live.search
        summary = _TraceSummary(time.monotonic())
        if search is not None:
            mine = _Ctx(ctx.principal)
            got = await self._trace(mine, "24 h statistics", lambda: search.job_stats(since=since))
            summary.stats = {s.job_name: s for s in got or []}
            page = await self._trace(
                mine, "recent fires", lambda: search.fires(since=since, limit=OVERVIEW_FIRES)
            )
            for fire in page.items if page else ():
                summary.fires.setdefault(fire.job_name, []).append(fire)
            summary.banners = mine.banners
            ctx.banners.extend(mine.banners)
        live.trace_summary = summary
        return summary

    async def _overview_rows(self, ctx: _Ctx, live: _Live) -> list[OverviewRow]:
        briefs = await live.snapshot.jobs()
        since = datetime.now(UTC) - timedelta(hours=24)
        trace = await self._overview_trace(ctx, live, since)
        stats, fires = trace.stats, trace.fires
        now = datetime.now(UTC)
        rows = []
        for brief in briefs:
            mine = fires.get(brief.name, [])
            buckets = hourly_buckets(mine, since, now)[-24:]
            spark = sparkline(
                [b.succeeded + b.failed for b in buckets], [b.failed for b in buckets]
            )
            rows.append(OverviewRow(brief, mine[0] if mine else None, stats.get(brief.name), spark))
        return rows

    # -- job page --

    async def _job(self, request: Request) -> Response:
        ctx = self._ctx(request)
        name = request.path_params["name"]
        if request.query_params.get("fragment"):
            return self._render(request, ctx, "_job_live.html", **await self._job_live(name))
        return self._render(request, ctx, "job.html", **await self._job_values(ctx, name))

    async def _job_live(self, name: str) -> dict[str, Any]:
        """What the live part of the job page shows (registry reads only)."""
        live = self._serving()
        try:
            brief = await live.ops.job(name)
        except JobNotFoundError:
            raise HTTPException(404, f"No job {name!r} in this namespace.") from None
        instances = await live.ops.instances(name)
        sessions = {}
        for inst in instances:
            stat = await live.ops.registry.exists(live.ops.paths(name).instance(inst.instance_id))
            sessions[inst.instance_id] = (
                f"0x{stat.ephemeral_owner:x}" if stat and stat.ephemeral_owner else "—"
            )
        return {
            "job": brief,
            "items": await live.ops.sharding(name),
            "servers": await live.ops.servers(name),
            "instances": instances,
            "sessions": sessions,
        }

    async def _job_values(self, ctx: _Ctx, name: str) -> dict[str, Any]:
        live = self._serving()
        values = await self._job_live(name)
        try:
            config, version = await live.ops.job_config_version(name)
            config_text = json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False)
            config_error = None
        except ConfigError as exc:
            version, config_text, config_error = -1, "", str(exc)
        try:
            chain = await live.ops.chain(name)
        except ConfigError:
            chain = None
        search = live.search
        fires = None
        if search is not None:
            fires = await self._trace(
                ctx, "recent fires", lambda: search.fires(job_name=name, limit=20)
            )
        return {
            **values,
            "config_text": config_text,
            "config_version": version,
            "config_error": config_error,
            "chain": chain,
            "fires": fires,
            "has_trace": search is not None,
            "audit": await self._audit_page(ctx, live, job_name=name, limit=10),
        }

    async def _audit_page(
        self,
        ctx: _Ctx,
        live: _Live,
        *,
        job_name: str | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Any:
        try:
            with anyio.fail_after(self.settings.trace_timeout):
                return await live.audit.entries(job_name=job_name, offset=offset, limit=limit)
        except Exception as exc:  # an outage: a banner, never a 500
            ctx.banners.append(f"Audit log unreachable: {_short(exc)}")
            return None

    # -- actions --

    async def _action(self, request: Request) -> Response:
        ctx = self._ctx(request)
        form = await self._check_csrf(request)
        live = self._serving()
        name = request.path_params["name"]
        action = form.get("action", "")
        if action not in _ACTIONS:
            raise HTTPException(400, f"Unknown action {action!r}.")
        target = form.get("host") or form.get("item") or form.get("instance") or ""
        if not ctx.principal.can_act:
            await self._record(ctx, live, action, name, target, "refused", "viewer role")
            raise HTTPException(403, "Your role (viewer) cannot act; ask an operator.")
        if action in _DESTRUCTIVE and form.get("confirmed") != "yes":
            return self._render(
                request,
                ctx,
                "confirm.html",
                job_name=name,
                action=action,
                form=form,
                target=target,
            )
        try:
            text = await self._perform(live.ops, name, action, form)
        except (AioelasticError, ValueError) as exc:
            result = "failed" if isinstance(exc, SessionLostError) else "refused"
            await self._record(ctx, live, action, name, target, result, str(exc))
            return self._redirect(request, f"/jobs/{_quote(name)}", False, f"{action}: {exc}")
        warning = await self._record(ctx, live, action, name, target, "ok", text)
        to = "/" if action == "remove" else f"/jobs/{_quote(name)}"
        return self._redirect(request, to, True, f"{action}: {text}{warning}")

    async def _perform(self, ops: Operations, name: str, action: str, form: dict[str, str]) -> str:
        host = form.get("host") or None
        if action == "trigger":
            ids = await ops.trigger(name)
            return f"triggered on {len(ids)} instance(s): {', '.join(ids) or 'none live'}"
        if action in ("disable", "enable", "disable-server", "enable-server"):
            if action.endswith("-server") and host is None:
                raise ConfigError("host", None, "give the server's host")
            call = ops.disable_server if action.startswith("disable") else ops.enable_server
            hosts = await call(name, host)
            return f"{action.split('-')[0]}d on {', '.join(hosts) or 'no server'}"
        if action in ("disable-item", "enable-item"):
            item = _int(form.get("item"))
            await (ops.disable_item if action == "disable-item" else ops.enable_item)(name, item)
            return f"item {item} {action.split('-')[0]}d"
        if action == "shutdown":
            instance = form.get("instance") or ""
            await ops.shutdown_instance(name, instance)
            return f"instance {instance} asked to shut the job down"
        await ops.remove_job(name, force=form.get("force") == "yes")
        return f"job {name} removed"

    async def _record(
        self, ctx: _Ctx, live: _Live, action: str, job: str, target: str, result: str, detail: str
    ) -> str:
        """Write the audit entry; a warning to show when it could not be written."""
        entry = AuditEntry(
            ctx.principal.name, ctx.principal.role, action, job, target, result, detail
        )
        try:
            with anyio.fail_after(self.settings.trace_timeout):
                await live.audit.record(entry)
        except Exception as exc:
            log.error(
                "console: audit entry not written (%s %s by %s): %s",
                action,
                job,
                ctx.principal.name,
                _short(exc),
            )
            return f" (WARNING: the audit log could not be written: {_short(exc)})"
        return ""

    async def _config(self, request: Request) -> Response:
        ctx = self._ctx(request)
        form = await self._check_csrf(request)
        live = self._serving()
        name = request.path_params["name"]
        if not ctx.principal.can_act:
            await self._record(ctx, live, "config", name, "", "refused", "viewer role")
            raise HTTPException(403, "Your role (viewer) cannot act; ask an operator.")
        text = form.get("config", "")
        error, status = None, 422
        try:
            version = _int(form.get("version"))
            stored, _ = await live.ops.job_config_version(name)
            changes = _changes(stored, text)
            if not changes:
                return self._redirect(request, f"/jobs/{_quote(name)}", True, "config: no change")
            await live.ops.update_job_config_at(name, version, **changes)
        except BadVersionError:
            error, status = (
                (
                    "Conflict: the stored config changed since you opened this page (someone "
                    "else saved it, or the job re-registered). Your edit was NOT saved; it is "
                    "kept below: reload to see the current config, then apply it again."
                ),
                409,
            )
        except (ConfigError, ValueError) as exc:
            error = f"Invalid config: {exc}"
        if error is not None:
            await self._record(ctx, live, "config", name, "", "refused", error)
            values = await self._job_values(ctx, name)
            values.update(config_text=text, config_form_error=error)
            return self._render(request, ctx, "job.html", status=status, **values)
        detail = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(changes.items()))
        warning = await self._record(ctx, live, "config", name, "", "ok", detail)
        return self._redirect(
            request, f"/jobs/{_quote(name)}", True, f"config saved: {detail}{warning}"
        )

    # -- history and audit --

    async def _history(self, request: Request) -> Response:
        ctx = self._ctx(request)
        live = self._serving()
        q = request.query_params
        kind = "status" if q.get("kind") == "status" else "executions"
        filters = {
            k: q.get(k, "").strip()
            for k in ("job", "instance", "since", "until", "outcome", "source", "state")
        }
        offset = _offset(q.get("offset"))
        limit = 50
        page = charts = None
        search = live.search
        if search is not None:
            try:
                since = _time(filters["since"]) or datetime.now(UTC) - timedelta(hours=24)
                until = _time(filters["until"])
            except ConfigError as exc:
                ctx.banners.append(str(exc))
                since, until = datetime.now(UTC) - timedelta(hours=24), None
            page = await self._trace(
                ctx,
                "search",
                lambda: self._search_page(search, kind, filters, since, until, offset, limit),
            )
            fires = await self._trace(
                ctx,
                "charts",
                lambda: search.fires(
                    job_name=filters["job"] or None, since=since, until=until, limit=1000
                ),
            )
            if fires is not None:
                end = until or datetime.now(UTC)
                charts = {
                    "duration": duration_chart(fires.items),
                    "hourly": hourly_chart(hourly_buckets(fires.items, since, end)[-72:]),
                    "count": len(fires.items),
                    "more": fires.has_more,
                }
        return self._render(
            request,
            ctx,
            "history.html",
            kind=kind,
            filters=filters,
            page=page,
            charts=charts,
            has_trace=search is not None,
            offset=offset,
            limit=limit,
            query=lambda **kw: _query({**filters, "kind": kind, **kw}),
        )

    async def _search_page(
        self,
        search: TraceSearch,
        kind: str,
        f: dict[str, str],
        since: datetime,
        until: datetime | None,
        offset: int,
        limit: int,
    ) -> Any:
        if kind == "status":
            return await search.status_traces(
                job_name=f["job"] or None,
                slave_id=f["instance"] or None,
                source=f["source"] or None,
                state=f["state"] or None,
                since=since,
                until=until,
                offset=offset,
                limit=limit,
            )
        outcome = f["outcome"]
        return await search.executions(
            job_name=f["job"] or None,
            hostname=f["instance"] or None,
            execution_source=f["source"] or None,
            is_success={"success": True, "failure": False}.get(outcome),
            finished=False if outcome == "running" else None,
            since=since,
            until=until,
            offset=offset,
            limit=limit,
        )

    async def _audit(self, request: Request) -> Response:
        ctx = self._ctx(request)
        live = self._serving()
        job = request.query_params.get("job", "").strip() or None
        offset = _offset(request.query_params.get("offset"))
        page = await self._audit_page(ctx, live, job_name=job, offset=offset, limit=50)
        return self._render(
            request,
            ctx,
            "audit.html",
            page=page,
            job=job or "",
            offset=offset,
            durable=live.audit_durable,
        )

    async def _missed(self, request: Request) -> Response:
        """Fires that were due (by the stored cron) and started on no instance (by the trace)."""
        ctx = self._ctx(request)
        live = self._serving()
        q = request.query_params
        job = q.get("job", "").strip()
        window = q.get("since", "").strip()
        try:
            since = _time(window) or datetime.now(UTC) - timedelta(hours=24)
        except ConfigError as exc:
            ctx.banners.append(str(exc))
            since = datetime.now(UTC) - timedelta(hours=24)
        try:
            seconds = float(q.get("tolerance") or 30)
        except ValueError:
            seconds = math.nan
        if not 0 <= seconds <= 3600:  # (NaN too; a negative one judged future fires missed)
            ctx.banners.append("tolerance: not a number of seconds within 0..3600; 30 s used")
            seconds = 30.0
        tolerance = timedelta(seconds=seconds)
        rows: list[MissedFire] | None = None
        if live.search is not None:
            search = live.search

            async def collect() -> list[MissedFire]:
                if job:
                    found = await missed_fires(
                        live.ops, search, job, since=since, tolerance=tolerance
                    )
                else:  # every job's in one trace query (a few for hundreds of jobs)
                    names = [b.name for b in await live.ops.jobs() if b.cron]
                    per_job = await missed_fires_of(
                        live.ops, search, names, since=since, tolerance=tolerance
                    )
                    found = [m for name in names for m in per_job[name]]
                return sorted(found, key=lambda m: m.due, reverse=True)[:500]

            rows = await self._trace(ctx, "missed fires", collect)
        return self._render(
            request,
            ctx,
            "missed.html",
            rows=rows,
            job=job,
            since=window,
            has_trace=live.search is not None,
        )

    # -- live updates --

    async def _events(self, request: Request) -> Response:
        """Server-sent events: ``changed`` after each registry change (``?job=NAME``: only
        when that job's nodes, or the session's health, changed)."""
        self._principal(request)
        live = self._serving()
        job = request.query_params.get("job")
        root = live.ops.paths(job).root if job else None

        def state() -> object:
            return (live.view.fresh, _fingerprint(live.view, root) if root else live.generation)

        async def stream() -> AsyncIterator[str]:
            yield f"retry: 2000\nevent: hello\ndata: {live.generation}\n\n"
            seen = state()
            while not live.stopping.is_set():
                changed = live.changed
                with anyio.move_on_after(_KEEPALIVE):
                    await changed.wait()
                if live.stopping.is_set():
                    return
                now = state()
                if changed.is_set() and now != seen:
                    seen = now
                    yield f"event: changed\ndata: {live.generation}\n\n"
                else:
                    yield ": keepalive\n\n"

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


def _fingerprint(view: TreeView, root: str) -> frozenset[tuple[str, int, int]]:
    """The job subtree's nodes as the local copy has them (no I/O): path, version, owner."""
    out = set()
    pending = [root]
    while pending:
        path = pending.pop()
        stat = view.stat(path)
        if stat is None:
            continue
        out.add((path, stat.version, stat.ephemeral_owner))
        pending.extend(f"{path}/{kid}" for kid in view.children(path))
    return frozenset(out)


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (all the console's forms are; no multipart parser needed)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _MAX_FORM:
            raise HTTPException(413, "Form too large.")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise HTTPException(400, "Form is not UTF-8.") from None
    return dict(parse_qsl(text, keep_blank_values=True))


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _int(text: str | None) -> int:
    digits = (text or "").strip().lstrip("-")
    if text is None or not digits.isascii() or not digits.isdigit() or len(text) > 20:
        raise ConfigError("number", text, "must be an integer")
    return int(text)


def _offset(text: str | None) -> int:
    """A page's ``offset`` query parameter (400 unless a number >= 0)."""
    try:
        offset = _int(text or "0")
    except ConfigError:
        offset = -1
    if offset < 0:
        raise HTTPException(400, "offset must be a whole number >= 0")
    return offset


def _time(text: str) -> datetime | None:
    if not text:
        return None
    return parse_time(text)


def _quote(name: str) -> str:
    return quote(name, safe="")


def _query(values: dict[str, Any]) -> str:
    return urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _changes(stored: dict[str, Any], text: str) -> dict[str, Any]:
    """The fields the edited JSON changes (removing a field is refused: set it instead)."""
    try:
        edited = loads_json(text)
    except ValueError as exc:
        raise ConfigError("config", text[:80], f"not JSON: {exc}") from None
    if not isinstance(edited, dict):
        raise ConfigError("config", text[:80], "must be a JSON object")
    removed = sorted(stored.keys() - edited.keys())
    if removed:
        raise ConfigError(removed[0], None, "fields cannot be removed; set a value instead")
    return {k: v for k, v in edited.items() if stored.get(k) != v or k not in stored}
