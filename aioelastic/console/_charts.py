"""Inline SVG charts (no JavaScript library): a sparkline, a duration plot, hourly bars.

Every value that reaches the markup is a number formatted here, or text escaped by Jinja2 in
the template that embeds the result (charts are marked safe only after that)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from html import escape

from markupsafe import Markup

from ..tracing import FireRecord

__all__ = ["Hourly", "duration_chart", "hourly_buckets", "hourly_chart", "sparkline"]


@dataclass(frozen=True, slots=True)
class Hourly:
    hour: datetime
    succeeded: int
    failed: int


def hourly_buckets(fires: Iterable[FireRecord], since: datetime, until: datetime) -> list[Hourly]:
    """Item runs per hour (by the fire's start) over ``[since, until)``."""
    start = since.replace(minute=0, second=0, microsecond=0)
    hours = max(1, min(24 * 31, int((until - start) / timedelta(hours=1)) + 1))
    ok = [0] * hours
    bad = [0] * hours
    for fire in fires:
        if fire.start_time is None:
            continue
        index = int((fire.start_time - start) / timedelta(hours=1))
        if 0 <= index < hours:
            ok[index] += fire.succeeded
            bad[index] += fire.failed
    return [Hourly(start + timedelta(hours=i), ok[i], bad[i]) for i in range(hours)]


def sparkline(values: Sequence[int], failed: Sequence[int], width: int = 96) -> Markup:
    """Runs per bucket as a line; buckets with failures get a red dot."""
    height = 20
    if not values:
        return Markup("")
    top = max(max(values), 1)
    step = width / max(len(values) - 1, 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )
    dots = "".join(
        f'<circle cx="{i * step:.1f}" cy="{height - 2 - (values[i] / top) * (height - 4):.1f}"'
        ' r="2" class="bad"/>'
        for i, f in enumerate(failed)
        if f
    )
    return _svg(
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        f' role="img" aria-label="runs per hour, last 24 h">'
        f'<polyline fill="none" points="{points}"/>{dots}</svg>'
    )


def _svg(markup: str) -> Markup:
    # Safe: every interpolated value is a number formatted here or text passed through escape().
    return Markup(markup)  # noqa: S704


def _axis_time(t: datetime) -> str:
    return t.strftime("%m-%d %H:%M")


def duration_chart(fires: Sequence[FireRecord], width: int = 720, height: int = 200) -> Markup:
    """Each finished fire as a dot: start time (x) by duration in seconds (y)."""
    done = [f for f in fires if f.start_time is not None and f.duration is not None]
    if not done:
        return _svg('<p class="muted">No finished run in this window.</p>')
    done.sort(key=lambda f: f.start_time)  # type: ignore[arg-type, return-value]
    t0, t1 = done[0].start_time, done[-1].start_time
    assert t0 is not None and t1 is not None
    span = max((t1 - t0).total_seconds(), 1.0)
    top = max((f.duration.total_seconds() for f in done if f.duration is not None), default=0)
    top = max(top, 0.001)
    left, bottom, right = 48, 24, 8
    w, h = width - left - right, height - bottom - 8
    marks = []
    for f in done:
        assert f.start_time is not None and f.duration is not None
        x = left + (f.start_time - t0).total_seconds() / span * w
        y = 8 + h - f.duration.total_seconds() / top * h
        css = "bad" if f.failed else "ok"
        tip = escape(f"{f.start_time:%H:%M:%S} {f.duration.total_seconds():.3f}s {f.outcome}")
        marks.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" class="{css}"><title>{tip}</title></circle>'
        )
    return _svg(
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        ' role="img" aria-label="duration per run">'
        f'<line x1="{left}" y1="{8 + h}" x2="{width - right}" y2="{8 + h}" class="axis"/>'
        f'<line x1="{left}" y1="8" x2="{left}" y2="{8 + h}" class="axis"/>'
        f'<text x="{left - 4}" y="14" text-anchor="end">{top:.2f}s</text>'
        f'<text x="{left - 4}" y="{8 + h}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 6}">{_axis_time(t0)}</text>'
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end">{_axis_time(t1)}</text>'
        f"{''.join(marks)}</svg>"
    )


def hourly_chart(buckets: Sequence[Hourly], width: int = 720, height: int = 200) -> Markup:
    """Successes (green) and failures (red, on top) per hour as stacked bars."""
    if not buckets:
        return Markup("")
    left, bottom = 48, 24
    h = height - bottom - 8
    top = max(max(b.succeeded + b.failed for b in buckets), 1)
    bar = (width - left - 8) / len(buckets)
    bars = []
    for i, b in enumerate(buckets):
        x = left + i * bar
        ok_h = b.succeeded / top * h
        bad_h = b.failed / top * h
        tip = escape(f"{b.hour:%m-%d %H}:00 ok {b.succeeded} failed {b.failed}")
        bars.append(
            f"<g><title>{tip}</title>"
            f'<rect x="{x:.1f}" y="{8 + h - ok_h:.1f}" width="{max(bar - 1, 1):.1f}"'
            f' height="{ok_h:.1f}" class="ok"/>'
            f'<rect x="{x:.1f}" y="{8 + h - ok_h - bad_h:.1f}" width="{max(bar - 1, 1):.1f}"'
            f' height="{bad_h:.1f}" class="bad"/></g>'
        )
    first, last = buckets[0].hour, buckets[-1].hour
    return _svg(
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
        ' role="img" aria-label="successes and failures per hour">'
        f'<line x1="{left}" y1="{8 + h}" x2="{width - 8}" y2="{8 + h}" class="axis"/>'
        f'<text x="{left - 4}" y="14" text-anchor="end">{top}</text>'
        f'<text x="{left - 4}" y="{8 + h}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{height - 6}">{_axis_time(first)}</text>'
        f'<text x="{width - 8}" y="{height - 6}" text-anchor="end">{_axis_time(last)}</text>'
        f"{''.join(bars)}</svg>"
    )
