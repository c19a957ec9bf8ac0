"""OpenTelemetry spans for fires and items, when ``opentelemetry-api`` is installed (the
``otel`` extra); without it every call here is a constant-time no-op.

Span names (there are no semantic conventions for jobs yet, so these are ours):

* ``aioelastic.fire {job}``: one run of this instance's items of a job (a cron fire, a
  trigger, a misfire re-run or a failover takeover), INTERNAL;
* ``aioelastic.item {job}``: one item inside it, INTERNAL, current while the job's coroutine
  runs (spans the job code makes are its children).

Attributes: ``aioelastic.job``, ``aioelastic.task_id``, ``aioelastic.execution_source``,
``aioelastic.instance``, and ``aioelastic.item`` (items) or ``aioelastic.items`` (fires).
A failed item records its exception and has status ERROR; so does its fire.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ._context import ShardingContexts

try:
    from opentelemetry import context as _context
    from opentelemetry import trace as _trace
except ImportError:  # the extra is not installed: no tracing
    _trace = None  # type: ignore[assignment]

__all__ = ["AVAILABLE", "FireSpan", "Spans"]

AVAILABLE = _trace is not None
"""Whether ``opentelemetry-api`` is importable."""

_NO_SPAN = contextlib.nullcontext()


_provider_set = False


# The API's own global, read directly: ``get_tracer_provider()`` looks up an environment
# variable on each call (2.5 us, twice per fire). If it is not there, ask the API as before.
_UNSET_GLOBAL = object()
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ


def _no_provider() -> bool:
    """No tracer provider is set yet: every span would be a no-op, so none is made (checked
    on each call until one is set, so a provider set later is followed; it cannot be unset)."""
    global _provider_set
    if not _provider_set:
        if getattr(_trace, "_TRACER_PROVIDER", _UNSET_GLOBAL) is None and not _ENV_PROVIDER:
            return True
        _provider_set = not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider)
    return not _provider_set


def _version() -> str:
    from . import __version__

    return __version__


class FireSpan:
    """A fire's span, current from ``Spans.start_fire`` until ``end``."""

    def __init__(self, span: Any, token: object) -> None:
        self._span = span
        self._token = token

    def end(self, errors: Mapping[int, BaseException]) -> None:
        """End the span: status ERROR naming the failed items, OK-unset otherwise."""
        _context.detach(self._token)  # type: ignore[arg-type]
        if errors:
            failed = sorted(errors)
            self._span.set_attribute("aioelastic.failed_items", failed)
            self._span.set_status(_trace.StatusCode.ERROR, f"failed items {failed}")
        self._span.end()


class Spans:
    """Makes the spans of one job's fires on one instance (no-op without the API)."""

    def __init__(self, instance: str) -> None:
        self._instance = instance
        # A ProxyTracer until the application sets a provider, which it then follows.
        self._tracer = _trace.get_tracer("aioelastic", _version()) if AVAILABLE else None

    def _attributes(self, contexts: ShardingContexts) -> dict[str, Any]:
        return {
            "aioelastic.job": contexts.job_name,
            "aioelastic.task_id": contexts.task_id,
            "aioelastic.execution_source": contexts.execution_source.value,
            "aioelastic.instance": self._instance,
        }

    def start_fire(self, contexts: ShardingContexts, items: Sequence[int]) -> FireSpan | None:
        """Start the fire's span and make it current (for the items' tasks started next)."""
        if self._tracer is None or _no_provider():
            return None
        span = self._tracer.start_span(
            f"aioelastic.fire {contexts.job_name}",
            kind=_trace.SpanKind.INTERNAL,
            attributes={**self._attributes(contexts), "aioelastic.items": list(items)},
        )
        return FireSpan(span, _context.attach(_trace.set_span_in_context(span)))

    def item(
        self, contexts: ShardingContexts, item: int
    ) -> contextlib.AbstractContextManager[None]:
        """The item's span, current inside; an exception leaving it is recorded (ERROR)."""
        if self._tracer is None or _no_provider():
            return _NO_SPAN
        return self._item(contexts, item)

    @contextlib.contextmanager
    def _item(self, contexts: ShardingContexts, item: int) -> Iterator[None]:
        assert self._tracer is not None
        with self._tracer.start_as_current_span(
            f"aioelastic.item {contexts.job_name}",
            kind=_trace.SpanKind.INTERNAL,
            attributes={**self._attributes(contexts), "aioelastic.item": item},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as exc:
                span.record_exception(exc)
                span.set_status(_trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                raise
