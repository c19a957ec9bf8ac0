"""CronTrigger: parity with real Quartz 2.3, DST rule, Unix cron, validation, brute-force check.

The Quartz corpus (tests/data/quartz_corpus.json) is produced by scripts/gen_quartz_corpus.py
from tests/quartz/QuartzOracle.java and the Debian libquartz2-java jar.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from aioelastic._cron import CronTrigger
from aioelastic._errors import ConfigError

CORPUS = json.loads(
    (Path(__file__).parent / "data" / "quartz_corpus.json").read_text(encoding="utf-8")
)
SECOND = timedelta(seconds=1)

# Expressions whose results legitimately differ from Quartz (documented in aioelastic._cron):
# checked against the reference implementation of aioelastic's rule instead.
QUARTZ_DIFFERENCES = {
    "0 0 0 31W * ?": "nW in a shorter month: Quartz overflows into the next month",
    "0 0 0 30W * ?": "nW in a shorter month: Quartz overflows into the next month",
    "0 0 0 30W 2 ?": "nW in a shorter month: Quartz overflows into the next month",
}

# Quartz accepts these (ignoring or misreading part of the text); aioelastic rejects them.
# ("0 0 12 0W * ?" parses in Quartz but getNextValidTimeAfter never returns: a reject verdict.)
STRICTER_THAN_QUARTZ = {
    "0 0 12 ? JAN-JUN/2 *": "Quartz drops a step after a name",
    "0 0 12 ? * MON/2": "Quartz drops a step after a name",
    "0/0 * * * * ?": "step 0",
    "*/0 * * * * ?": "step 0",
    "/5 * * * * ?": "step without a start",
    "5X * * * * ?": "trailing text",
    "*5 * * * * ?": "trailing text",
    "0 0 12 ?X * MON": "trailing text",
    "0 0 12 1-5W * ?": "W on a range (Quartz ignores the W)",
    "0 0 12 1W,15 * ?": "W in a list (Quartz uses only the first day)",
    "0 0 12 ? * 2-6L": "L on a range (Quartz ignores the L)",
    "0 0 12 ? * 8#2": "day-of-week 8",
    "0 0 12 ? * 2,6#3": "# in a list (Quartz uses only the first day)",
    "0 0 12 ? * LW": "LW in day-of-week (Quartz reads it as L)",
    "0 0 12 ? * 1-0": "day-of-week 0",
    "0 0 12 * * ? 1969": "year outside 1970-2099",
    "0 0 12 * * ? 2100": "year outside 1970-2099",
    "0 0 12 * * ? 3000": "year outside 1970-2099",
    "0 0 12 * * ? 2024 extra": "more than 7 fields (Quartz ignores the rest)",
    "0 0 12 1,,2 * ?": "empty list item",
    "0 0 12 1, * ?": "empty list item",
    "0 0 12 1,? * MON": "'?' in a list",
}

# Quartz rejects these; aioelastic accepts them on purpose.
LAXER_THAN_QUARTZ = {"0 0 12 * *": "5 fields: Unix cron"}


def millis(instant: datetime) -> int:
    return round(instant.timestamp() * 1000)


def from_millis(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def local(value: str, zone: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=ZoneInfo(zone), fold=fold)


def fires(trigger: CronTrigger, after: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    for _ in range(count):
        nxt = trigger.next_fire_time(after)
        assert nxt is not None
        out.append(nxt)
        after = nxt
    return out


def same_instants(actual: list[datetime], expected: list[datetime]) -> bool:
    return [millis(a) for a in actual] == [millis(e) for e in expected]


# ---------------------------------------------------------------------------------------------
# Reference implementation of the DST rule (independent of CronTrigger's own)
# ---------------------------------------------------------------------------------------------

NextWall = Callable[[datetime], datetime | None]


def wall_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant of a wall time: its earliest occurrence, or the first instant after a gap."""
    while True:
        occurrences = [
            candidate
            for fold in (0, 1)
            if (candidate := wall.replace(tzinfo=zone, fold=fold))
            .astimezone(UTC)
            .astimezone(zone)
            .replace(tzinfo=None)
            == wall
        ]
        if occurrences:
            return min(occurrences, key=lambda c: c.timestamp())
        wall += SECOND  # inside a gap: walk to its end


def reference_next(after: datetime, zone: ZoneInfo, next_wall: NextWall) -> datetime | None:
    """First instant > after of a matching wall time, scanning wall times in order."""
    start = after.astimezone(zone).replace(tzinfo=None, microsecond=0)
    offsets = {(after + timedelta(hours=h)).astimezone(zone).utcoffset() for h in (-3, 0, 3)}
    start = start - timedelta(hours=3) if len(offsets) > 1 else start + SECOND
    wall = next_wall(start)
    while wall is not None:
        instant = wall_instant(wall, zone)
        if instant > after:
            return instant
        wall = next_wall(wall + SECOND)
    return None


def own_walls(trigger: CronTrigger) -> NextWall:
    """CronTrigger's wall-clock search (checked by parity), to test only the DST mapping."""
    return trigger._next_wall


# ---------------------------------------------------------------------------------------------
# Parity with Quartz
# ---------------------------------------------------------------------------------------------


def sample_id(sample: dict[str, Any]) -> str:
    return f"{sample['expr'].strip()}|{sample['zone']}|{sample['start']}"


@pytest.mark.parametrize("sample", CORPUS["samples"], ids=sample_id)
def test_quartz_parity(sample: dict[str, Any]) -> None:
    """Each step from Quartz's previous fire; DST steps follow aioelastic's documented rule."""
    trigger = CronTrigger(sample["expr"], sample["zone"])
    zone = ZoneInfo(sample["zone"])
    dst_steps = set(sample.get("dst", ()))
    previous = from_millis(sample["start"])
    for step, expected in enumerate(sample["fires"]):
        ours = trigger.next_fire_time(previous)
        where = f"step {step} after {previous.astimezone(zone).isoformat()}"
        if expected is None:
            assert ours is None, where
            return
        quartz = from_millis(expected)
        if quartz.astimezone(zone).year > 2099:
            assert ours is None, f"{where}: the search ends in 2099"
            return
        if step in dst_steps or sample["expr"] in QUARTZ_DIFFERENCES:
            reference = reference_next(previous, zone, own_walls(trigger))
            assert (ours and millis(ours)) == (reference and millis(reference)), where
        else:
            assert ours is not None, where
            assert millis(ours) == expected, f"{where}: Quartz {quartz.astimezone(zone)}"
        assert ours is None or ours.tzinfo is zone
        previous = quartz


def test_corpus_is_broad() -> None:
    samples = CORPUS["samples"]
    assert len({s["expr"] for s in samples}) >= 150
    assert {s["zone"] for s in samples} >= {
        "UTC",
        "Asia/Shanghai",
        "America/New_York",
        "Europe/London",
        "Asia/Kolkata",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
    }
    assert sum(len(s.get("dst", ())) for s in samples) > 100
    assert any(s["fires"][-1] is None for s in samples)


@pytest.mark.parametrize("verdict", CORPUS["verdicts"], ids=lambda v: repr(v["expr"]))
def test_quartz_verdicts(verdict: dict[str, Any]) -> None:
    """Reject everything Quartz rejects; accept what it accepts except documented cases."""
    expr = verdict["expr"]
    should_accept = verdict["quartz"] == "accept"
    if expr in STRICTER_THAN_QUARTZ:
        assert should_accept, "stale entry in STRICTER_THAN_QUARTZ"
        should_accept = False
    if expr in LAXER_THAN_QUARTZ:
        assert not should_accept, "stale entry in LAXER_THAN_QUARTZ"
        should_accept = True
    if should_accept:
        CronTrigger(expr)
    else:
        with pytest.raises(ConfigError) as info:
            CronTrigger(expr)
        assert info.value.field == "cron"
        assert info.value.value == expr


def test_quartz_dst_behaviour_is_as_documented() -> None:
    """The corpus shows what Quartz does at transitions, where aioelastic differs on purpose."""

    def quartz_fires(expr: str, zone: str, day: str) -> list[datetime]:
        start = millis(local(f"{day}T00:00:00", zone))
        (sample,) = [
            s
            for s in CORPUS["samples"]
            if (s["expr"], s["zone"], s["start"]) == (expr, zone, start)
        ]
        return [from_millis(m).astimezone(ZoneInfo(zone)) for m in sample["fires"]]

    ny = "America/New_York"
    # spring forward: Quartz skips 02:30 on that day; aioelastic fires at 03:00 EDT
    skipped = quartz_fires("0 30 2 * * ?", ny, "2024-03-10")
    assert skipped[0] == local("2024-03-11T02:30:00", ny)
    ours = CronTrigger("0 30 2 * * ?", ny).next_fire_time(local("2024-03-10T00:00:00", ny))
    assert ours == local("2024-03-10T03:00:00", ny)
    # fall back: Quartz fires at the second 01:30 (EST); aioelastic at the first (EDT)
    quartz = quartz_fires("0 30 1 * * ?", ny, "2024-11-03")[0]
    assert millis(quartz) == millis(local("2024-11-03T01:30:00", ny, fold=1))
    ours = CronTrigger("0 30 1 * * ?", ny).next_fire_time(local("2024-11-03T00:00:00", ny))
    assert ours is not None
    assert millis(ours) == millis(local("2024-11-03T01:30:00", ny, fold=0))


# ---------------------------------------------------------------------------------------------
# DST rule
# ---------------------------------------------------------------------------------------------

DST_CASES = [
    # zone, expression, after (local, fold), expected fires (local ISO with offset)
    (
        "America/New_York",
        "0 30 2 * * ?",
        ("2024-03-09T12:00:00", 0),
        ["2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00"],
    ),
    (
        "America/New_York",
        "0 0/20 * * * ?",
        ("2024-03-10T01:30:00", 0),
        ["2024-03-10T01:40:00-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T03:20:00-04:00"],
    ),
    (
        "America/New_York",
        "0 15,45 2 * * ?",
        ("2024-03-10T00:00:00", 0),
        ["2024-03-10T03:00:00-04:00", "2024-03-11T02:15:00-04:00"],
    ),
    (
        "America/New_York",
        "0 30 1 * * ?",
        ("2024-11-03T00:00:00", 0),
        ["2024-11-03T01:30:00-04:00", "2024-11-04T01:30:00-05:00"],
    ),
    (
        "America/New_York",
        "0 */15 * * * ?",
        ("2024-11-03T00:40:00", 0),
        [
            "2024-11-03T00:45:00-04:00",
            "2024-11-03T01:00:00-04:00",
            "2024-11-03T01:15:00-04:00",
            "2024-11-03T01:30:00-04:00",
            "2024-11-03T01:45:00-04:00",
            "2024-11-03T02:00:00-05:00",
            "2024-11-03T02:15:00-05:00",
        ],
    ),
    (  # starting inside the repeated hour: its wall times have fired already
        "America/New_York",
        "0 */15 * * * ?",
        ("2024-11-03T01:10:00", 1),
        ["2024-11-03T02:00:00-05:00"],
    ),
    (
        "America/New_York",
        "0 0 1 * * ?",
        ("2024-11-03T01:30:00", 0),
        ["2024-11-04T01:00:00-05:00"],
    ),
    (
        "Europe/London",
        "0 30 1 * * ?",
        ("2024-03-31T00:00:00", 0),
        ["2024-03-31T02:00:00+01:00", "2024-04-01T01:30:00+01:00"],
    ),
    (
        "Europe/London",
        "0 30 1 * * ?",
        ("2024-10-27T00:00:00", 0),
        ["2024-10-27T01:30:00+01:00", "2024-10-28T01:30:00+00:00"],
    ),
    (  # Lord Howe springs forward by 30 minutes: 02:00 -> 02:30
        "Australia/Lord_Howe",
        "0 15 2 * * ?",
        ("2024-10-06T00:00:00", 0),
        ["2024-10-06T02:30:00+11:00", "2024-10-07T02:15:00+11:00"],
    ),
    (
        "Australia/Lord_Howe",
        "0 0,10,20,30 2 * * ?",
        ("2024-10-06T00:00:00", 0),
        ["2024-10-06T02:30:00+11:00", "2024-10-07T02:00:00+11:00"],
    ),
    (  # and falls back by 30 minutes: 02:00 -> 01:30
        "Australia/Lord_Howe",
        "0 */10 1-2 * * ?",
        ("2024-04-07T01:25:00", 0),
        [
            "2024-04-07T01:30:00+11:00",
            "2024-04-07T01:40:00+11:00",
            "2024-04-07T01:50:00+11:00",
            "2024-04-07T02:00:00+10:30",
            "2024-04-07T02:10:00+10:30",
        ],
    ),
    (
        "Australia/Lord_Howe",
        "0 */10 1-2 * * ?",
        ("2024-04-07T01:35:00", 1),
        ["2024-04-07T02:00:00+10:30"],
    ),
    (
        "Australia/Lord_Howe",
        "0 45 1 * * ?",
        ("2024-04-07T00:00:00", 0),
        ["2024-04-07T01:45:00+11:00", "2024-04-08T01:45:00+10:30"],
    ),
    (  # Chatham: 02:45 -> 03:45 in spring
        "Pacific/Chatham",
        "0 0 3 * * ?",
        ("2024-09-29T00:00:00", 0),
        ["2024-09-29T03:45:00+13:45", "2024-09-30T03:00:00+13:45"],
    ),
    (  # every second across a gap: the gap collapses into one instant
        "America/New_York",
        "* * * * * ?",
        ("2024-03-10T01:59:58", 0),
        ["2024-03-10T01:59:59-05:00", "2024-03-10T03:00:00-04:00", "2024-03-10T03:00:01-04:00"],
    ),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), DST_CASES)
def test_dst_rule(zone: str, expr: str, after: tuple[str, int], expected: list[str]) -> None:
    trigger = CronTrigger(expr, zone)
    got = fires(trigger, local(after[0], zone, after[1]), len(expected))
    assert [g.isoformat() for g in got] == expected
    assert same_instants(got, [datetime.fromisoformat(e) for e in expected])


def test_repeated_hour_is_skipped_without_scanning(monkeypatch: pytest.MonkeyPatch) -> None:
    """From inside the second pass of a repeated hour, the search jumps to its end."""
    calls = []
    search = CronTrigger._next_wall

    def counting(self: CronTrigger, start: datetime) -> datetime | None:
        calls.append(start)
        return search(self, start)

    monkeypatch.setattr(CronTrigger, "_next_wall", counting)
    trigger = CronTrigger("* * * * * ?", "America/New_York")
    got = trigger.next_fire_time(local("2024-11-03T01:00:30", "America/New_York", fold=1))
    assert got is not None
    assert got.isoformat() == "2024-11-03T02:00:00-05:00"
    assert calls == [datetime(2024, 11, 3, 2, 0, 0)]


def test_dst_each_wall_time_fires_once_over_a_year() -> None:
    """Hourly fires over a year of New York: one per distinct wall hour, strictly increasing."""
    trigger = CronTrigger("0 0 * * * ?", "America/New_York")
    after = local("2023-12-31T23:30:00", "America/New_York")
    seen = []
    while after.year <= 2024:
        nxt = trigger.next_fire_time(after)
        assert nxt is not None and nxt.timestamp() > after.timestamp()
        seen.append(nxt)
        after = nxt
    walls = [s.replace(tzinfo=None) for s in seen if s.year == 2024]
    assert walls[0] == datetime(2024, 1, 1) and walls[-1] == datetime(2024, 12, 31, 23)
    assert len(walls) == len(set(walls)) == 366 * 24 - 1  # 02:00 on 2024-03-10 became 03:00


# ---------------------------------------------------------------------------------------------
# Unix 5-field cron
# ---------------------------------------------------------------------------------------------

UNIX_CASES = [
    ("*/15 * * * *", "2024-01-01T10:07:30", ["2024-01-01T10:15:00", "2024-01-01T10:30:00"]),
    ("0 9 * * 1-5", "2024-01-05T10:00:00", ["2024-01-08T09:00:00", "2024-01-09T09:00:00"]),
    ("0 0 * * 0", "2024-01-01T00:00:00", ["2024-01-07T00:00:00", "2024-01-14T00:00:00"]),
    ("0 0 * * 7", "2024-01-01T00:00:00", ["2024-01-07T00:00:00", "2024-01-14T00:00:00"]),
    ("0 0 * * 5-7", "2024-01-01T00:00:00", ["2024-01-05T00:00:00", "2024-01-06T00:00:00"]),
    ("5 4 * * sun", "2024-01-07T04:05:00", ["2024-01-14T04:05:00"]),
    (  # both day fields restricted: either one matches (Fridays, and the 1st and 15th)
        "30 8 1,15 * 5",
        "2024-01-01T09:00:00",
        [
            "2024-01-05T08:30:00",
            "2024-01-12T08:30:00",
            "2024-01-15T08:30:00",
            "2024-01-19T08:30:00",
        ],
    ),
    (  # Vixie: a field starting with '*' does not count as restricted -> odd days AND Mondays
        "0 0 */2 * 1",
        "2024-01-01T00:00:00",
        ["2024-01-15T00:00:00", "2024-01-29T00:00:00", "2024-02-05T00:00:00"],
    ),
    ("0 0 13 * fri", "2024-01-01T00:00:00", ["2024-01-05T00:00:00", "2024-01-12T00:00:00"]),
    ("0 12 1 jan,jul *", "2024-01-01T12:00:00", ["2024-07-01T12:00:00", "2025-01-01T12:00:00"]),
    ("59 23 31 12 *", "2024-06-01T00:00:00", ["2024-12-31T23:59:00", "2025-12-31T23:59:00"]),
    ("0 0 29 2 *", "2024-03-01T00:00:00", ["2028-02-29T00:00:00", "2032-02-29T00:00:00"]),
    ("* * * * *", "2024-01-01T00:00:59.5", ["2024-01-01T00:01:00", "2024-01-01T00:02:00"]),
]


@pytest.mark.parametrize(("expr", "after", "expected"), UNIX_CASES)
def test_unix_cron(expr: str, after: str, expected: list[str]) -> None:
    trigger = CronTrigger(expr, "Asia/Shanghai")
    got = fires(trigger, local(after, "Asia/Shanghai"), len(expected))
    assert [g.replace(tzinfo=None).isoformat() for g in got] == expected


def test_unix_and_quartz_forms_are_equal() -> None:
    assert CronTrigger("0 0 * * 7") == CronTrigger("0 0 * * 0") == CronTrigger("0 0 0 ? * SUN")
    assert CronTrigger("*/5 * * * *") == CronTrigger("0 0/5 * * * ?")
    assert hash(CronTrigger("0 0 * * 7")) == hash(CronTrigger("0 0 0 ? * 1"))


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("0 0 L * *", "field 'day-of-month': 'L' is not a number"),
        ("0 0 ? * 1", "field 'day-of-month': '?' is only allowed"),
        ("0 0 * * 1#2", "field 'day-of-week': '1#2' is not a number or a name"),
        ("0 0 * * 8", "field 'day-of-week': 8 is out of range 0-7"),
        ("0 24 * * *", "field 'hour': 24 is out of range 0-23"),
        ("60 0 * * *", "field 'minute': 60 is out of range 0-59"),
    ],
)
def test_unix_cron_rejects(expr: str, reason: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(f"cron={expr!r}: {reason}")):
        CronTrigger(expr)


# ---------------------------------------------------------------------------------------------
# Validation and API
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("0 0 12 32 * ?", "field 'day-of-month': 32 is out of range 1-31"),
        ("0 0 12 0 * ?", "field 'day-of-month': 0 is out of range 1-31"),
        ("60 * * * * ?", "field 'second': 60 is out of range 0-59"),
        ("0 60 * * * ?", "field 'minute': 60 is out of range 0-59"),
        ("0 0 24 * * ?", "field 'hour': 24 is out of range 0-23"),
        ("0 0 0 ? 13 *", "field 'month': 13 is out of range 1-12"),
        ("0 0 0 ? * 8", "field 'day-of-week': 8 is out of range 1-7"),
        ("0 0 0 ? * 0", "field 'day-of-week': 0 is out of range 1-7"),
        ("0 0 0 ? FOO *", "field 'month': 'FOO' is not a number or a name (JAN, FEB"),
        ("0 0 0 ? * FOO", "field 'day-of-week': 'FOO' is not a number or a name (SUN, MON"),
        ("0 0 0 ? * MON-5", "field 'day-of-week': range 'MON-5' mixes a name and a number"),
        ("x 0 0 * * ?", "field 'second': 'X' is not a number"),
        ("0 0 12 ? * ?", "'?' may be used in only one of day-of-month and day-of-week"),
        ("0 0 12 * * *", "one of day-of-month and day-of-week must be '?'"),
        ("0 0 12 1 * MON", "one of day-of-month and day-of-week must be '?'"),
        ("? 0 12 * * ?", "field 'second': '?' is only allowed alone, in day-of-month"),
        ("0 0 12 L-31 * ?", "field 'day-of-month': 'L-31': the offset from the last day"),
        ("0 0 12 L,15 * ?", "field 'day-of-month': 'L,15': 'L' and 'W' must stand alone"),
        ("0 0 12 32W * ?", "field 'day-of-month': 32 is out of range 1-31"),
        ("0 0 12 ? * 6#6", "field 'day-of-week': '6#6': the number after '#' must be 1-5"),
        ("0 0 12 ? * 2,6L", "field 'day-of-week': '2,6L': 'L' and '#' must stand alone"),
        ("0 0 12 ? * 8L", "field 'day-of-week': 8 is out of range 1-7"),
        ("*/60 * * * * ?", "field 'second': step 60 is larger than 59"),
        ("0 0 */24 * * ?", "field 'hour': step 24 is larger than 23"),
        ("0 0 0 ? * */8", "field 'day-of-week': step 8 is larger than 7"),
        ("0/0 * * * * ?", "field 'second': step 0 must be at least 1"),
        ("5/x * * * * ?", "field 'second': step 'X' is not a number"),
        ("/5 * * * * ?", "field 'second': '/5': a step needs a start, e.g. '*/5'"),
        ("0 0 0 ? JAN-JUN/2 *", "field 'month': 'JAN-JUN/2': Quartz ignores a step after a name"),
        ("0 0 12 1,,2 * ?", "field 'day-of-month': empty value"),
        ("0 0 12 * * ? 2030-2025", "field 'year': range 2030-2025 is reversed"),
        ("0 0 12 * * ? 2100", "field 'year': 2100 is out of range 1970-2099"),
        ("0 0 12 * * ? 1969", "field 'year': 1969 is out of range 1970-2099"),
        ("1 2 3", "expected 6 or 7 fields (Quartz: second minute hour"),
        ("", "expected 6 or 7 fields"),
        ("0 0 12 * * ? 2024 x", "expected 6 or 7 fields"),
    ],
)
def test_invalid_expression_reason(expr: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        CronTrigger(expr)
    assert info.value.field == "cron"
    assert info.value.value == expr
    assert info.value.reason.startswith(reason), info.value.reason
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("zone", ["Mars/Olympus", "", "../etc/passwd", "utc/", 5])
def test_invalid_time_zone(zone: Any) -> None:
    with pytest.raises(ConfigError) as info:
        CronTrigger("0 0 12 * * ?", zone)
    assert info.value.field == "time_zone"
    assert info.value.value == zone


def test_expression_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="must be a string"):
        CronTrigger(None)  # type: ignore[arg-type]


def test_naive_after_is_rejected() -> None:
    trigger = CronTrigger("0 0 12 * * ?")
    with pytest.raises(ValueError, match="timezone-aware"):
        trigger.next_fire_time(datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        trigger.next_fire_time(date(2024, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("expr", "after"),
    [
        ("0 0 0 30 2 ?", "2024-01-01T00:00:00"),
        ("0 0 0 31 4,6,9,11 ?", "2024-01-01T00:00:00"),
        ("0 0 0 ? 2 2#5 2045-2060", "2024-01-01T00:00:00"),
        ("0 0 12 * * ? 2020", "2024-01-01T00:00:00"),
        ("0 0 0 1 1 ? 2099", "2099-01-01T00:00:00"),
        ("* * * * * ?", "2099-12-31T23:59:59"),
        ("* * * * * ?", "2150-06-01T00:00:00"),
        ("0 0 0 29 2 ?", "2096-03-01T00:00:00"),
    ],
)
def test_no_further_fire(expr: str, after: str) -> None:
    trigger = CronTrigger(expr)
    began = time.perf_counter()
    assert trigger.next_fire_time(local(after, "UTC")) is None
    assert time.perf_counter() - began < 0.5


def test_after_before_1970() -> None:
    trigger = CronTrigger("0 0 12 * * ?", "Pacific/Chatham")
    got = trigger.next_fire_time(datetime(1, 1, 1, tzinfo=UTC))
    assert got is not None
    assert got.replace(tzinfo=None) == datetime(1970, 1, 1, 12)


def test_result_is_strictly_after_and_in_the_zone() -> None:
    trigger = CronTrigger("* * * * * ?", "Asia/Kolkata")
    on_fire = local("2024-05-05T12:00:00", "Asia/Kolkata")
    assert trigger.next_fire_time(on_fire) == on_fire + SECOND
    half = on_fire + timedelta(microseconds=500_000)
    assert trigger.next_fire_time(half) == on_fire + SECOND
    in_utc = trigger.next_fire_time(on_fire.astimezone(UTC))
    assert in_utc is not None
    assert in_utc.tzinfo is ZoneInfo("Asia/Kolkata")
    assert in_utc.isoformat() == "2024-05-05T12:00:01+05:30"


def test_attributes_repr_and_equality() -> None:
    trigger = CronTrigger("0 15 10 ? * MON-FRI", "Asia/Shanghai")
    assert trigger.expression == "0 15 10 ? * MON-FRI"
    assert trigger.time_zone == "Asia/Shanghai"
    assert repr(trigger) == "CronTrigger('0 15 10 ? * MON-FRI', time_zone='Asia/Shanghai')"
    with pytest.raises(AttributeError):
        trigger.expression = "x"  # type: ignore[misc]
    assert trigger == CronTrigger("0 15 10 ? * 2-6", "Asia/Shanghai")
    assert trigger == CronTrigger("0 15 10 ? * mon-fri *", "Asia/Shanghai")
    assert trigger != CronTrigger("0 15 10 ? * MON-FRI", "UTC")
    assert trigger != CronTrigger("0 15 10 ? * MON-SAT", "Asia/Shanghai")
    assert trigger != "0 15 10 ? * MON-FRI"
    assert len({trigger, CronTrigger("0 15 10 ? * 2-6", "Asia/Shanghai")}) == 1
    assert CronTrigger("0 0 12 * * ?").time_zone == "UTC"


def test_performance() -> None:
    """Typical expressions take microseconds (generous bound against slow CI machines)."""
    trigger = CronTrigger("0 15 10 ? * MON-FRI", "America/New_York")
    after = local("2024-01-01T00:00:00", "UTC")
    began = time.perf_counter()
    for _ in range(2000):
        trigger.next_fire_time(after)
    assert (time.perf_counter() - began) / 2000 < 200e-6


# ---------------------------------------------------------------------------------------------
# Randomised comparison with a brute-force reference
# ---------------------------------------------------------------------------------------------


@dataclass
class RandomCron:
    """A random expression and its meaning, computed independently of the parser."""

    text: str
    seconds: set[int]
    minutes: set[int]
    hours: set[int]
    months: set[int]
    years: set[int]
    day: Callable[[date], bool]


def _last_day(d: date) -> int:
    following = (d.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (following - timedelta(days=1)).day


def _quartz_dow(d: date) -> int:
    return d.isoweekday() % 7 + 1  # Sunday = 1


def _nearest_weekday(target: int, d: date) -> int | None:
    last = _last_day(d)
    if target > last:
        return None
    wd = d.replace(day=target).isoweekday()
    if wd == 6:
        return target - 1 if target > 1 else target + 2
    if wd == 7:
        return target + 1 if target < last else target - 2
    return target


def _random_values(rng: random.Random, lo: int, hi: int) -> tuple[str, set[int]]:
    size = hi - lo + 1
    form = rng.choice(
        ["*", "one", "list", "range", "wrap", "star-step", "start-step", "range-step"]
    )
    a, b = sorted(rng.sample(range(lo, hi + 1), 2))
    step = rng.randint(1, max(1, size // 2))
    if form == "*":
        return "*", set(range(lo, hi + 1))
    if form == "one":
        return str(a), {a}
    if form == "list":
        values = set(rng.sample(range(lo, hi + 1), rng.randint(2, 4)))
        return ",".join(map(str, sorted(values, reverse=True))), values
    if form == "range":
        return f"{a}-{b}", set(range(a, b + 1))
    if form == "wrap":  # b-a wraps around the end of the field
        return f"{b}-{a}", {v for v in range(lo, hi + 1) if v >= b or v <= a}
    if form == "star-step":
        return f"*/{step}", {v for v in range(lo, hi + 1) if (v - lo) % step == 0}
    if form == "start-step":
        return f"{a}/{step}", {v for v in range(a, hi + 1) if (v - a) % step == 0}
    return f"{a}-{b}/{step}", {v for v in range(a, b + 1) if (v - a) % step == 0}


def _random_quartz_days(rng: random.Random) -> tuple[str, str, Callable[[date], bool]]:
    kind = rng.choice(["dom", "dow", "L", "W", "LW", "nL", "nth", "any"])
    n = rng.randint(1, 31)
    offset = rng.randint(0, 30)
    dow = rng.randint(1, 7)
    nth = rng.randint(1, 5)
    if kind == "dom":
        text, values = _random_values(rng, 1, 31)
        return text, "?", lambda d: d.day in values
    if kind == "dow":
        text, values = _random_values(rng, 1, 7)
        return "?", text, lambda d: _quartz_dow(d) in values
    last = f"L-{offset}" if offset else "L"
    if kind == "L":
        return last, "?", lambda d: d.day == _last_day(d) - offset
    if kind == "W":
        return f"{n}W", "?", lambda d: d.day == _nearest_weekday(n, d)
    if kind == "LW":

        def last_weekday(d: date) -> bool:
            target = _last_day(d) - offset
            return target >= 1 and d.day == _nearest_weekday(target, d)

        return f"{last}W", "?", last_weekday
    if kind == "nL":
        return "?", f"{dow}L", lambda d: _quartz_dow(d) == dow and d.day + 7 > _last_day(d)
    if kind == "nth":
        return "?", f"{dow}#{nth}", lambda d: _quartz_dow(d) == dow and (d.day + 6) // 7 == nth
    return "*", "?", lambda d: True


def _random_unix_days(rng: random.Random) -> tuple[str, str, Callable[[date], bool]]:
    dom_text, dom = _random_values(rng, 1, 31)
    dow_text, dow_raw = _random_values(rng, 0, 7)
    dow = {v % 7 for v in dow_raw}  # 0 and 7 are Sunday

    def by_month(d: date) -> bool:
        return d.day in dom

    def by_week(d: date) -> bool:
        return d.isoweekday() % 7 in dow

    if dom_text.startswith("*") or dow_text.startswith("*"):
        return dom_text, dow_text, lambda d: by_month(d) and by_week(d)
    return dom_text, dow_text, lambda d: by_month(d) or by_week(d)


def random_cron(rng: random.Random) -> RandomCron:
    unix = rng.random() < 0.25
    sec_text, seconds = ("0", {0}) if unix else _random_values(rng, 0, 59)
    min_text, minutes = _random_values(rng, 0, 59)
    hour_text, hours = _random_values(rng, 0, 23)
    mon_text, months = _random_values(rng, 1, 12)
    dom, dow, day = _random_unix_days(rng) if unix else _random_quartz_days(rng)
    year_text, years = "*", set(range(1970, 2100))
    if not unix and rng.random() < 0.4:
        first = rng.randint(2020, 2040)
        last = first + rng.randint(0, 8)
        year_text, years = f"{first}-{last}", set(range(first, last + 1))
    fields = [min_text, hour_text, dom, mon_text, dow]
    if not unix:
        fields = [sec_text, *fields, year_text]
    return RandomCron(" ".join(fields), seconds, minutes, hours, months, years, day)


def brute_force_walls(cron: RandomCron) -> NextWall:
    """Scan wall-clock time forward: skip whole days, hours and minutes that cannot match."""

    def next_wall(wall: datetime) -> datetime | None:
        while wall.year <= 2099:
            if wall.year not in cron.years:
                wall = datetime(wall.year + 1, 1, 1)
            elif wall.month not in cron.months:
                wall = datetime(wall.year + wall.month // 12, wall.month % 12 + 1, 1)
            elif not cron.day(wall):
                wall = datetime.combine(wall.date() + timedelta(days=1), datetime.min.time())
            elif wall.hour not in cron.hours:
                wall = wall.replace(minute=0, second=0) + timedelta(hours=1)
            elif wall.minute not in cron.minutes:
                wall = wall.replace(second=0) + timedelta(minutes=1)
            elif wall.second not in cron.seconds:
                wall += SECOND
            else:
                return wall
        return None

    return next_wall


RANDOM_ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "Asia/Kolkata",
]


@pytest.mark.parametrize("seed", range(6))
def test_random_expressions_match_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        cron = random_cron(rng)
        zone = ZoneInfo(rng.choice(RANDOM_ZONES))
        trigger = CronTrigger(cron.text, zone.key)
        after = datetime.fromtimestamp(rng.randint(1_700_000_000, 1_900_000_000), UTC)
        if rng.random() < 0.3:  # land near a DST transition
            after = datetime(after.year, rng.choice([3, 4, 10, 11]), 1, tzinfo=UTC)
        after += timedelta(microseconds=rng.choice([0, 0, 1, 999_999]))
        walls = brute_force_walls(cron)
        for _step in range(4):
            ours = trigger.next_fire_time(after)
            expected = reference_next(after, zone, walls)
            where = f"{cron.text!r} in {zone.key} after {after.astimezone(zone).isoformat()}"
            if expected is None:
                assert ours is None, where
                break
            assert ours is not None, where
            assert millis(ours) == millis(expected), where
            after = ours


def test_equal_expressions_share_their_compiled_tables() -> None:
    first, second = CronTrigger("*/5 * * * * ?"), CronTrigger("*/5 * * * * ?", "Asia/Shanghai")
    assert first._seconds is second._seconds and first._schedule is second._schedule
    assert first != second  # the zone still tells them apart
    assert CronTrigger("*/5 * * * * ?")._seconds is first._seconds
    other = CronTrigger("*/7 * * * * ?")
    assert other._seconds is not first._seconds
    when = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert first.next_fire_time(when) == datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)
