"""Quartz-compatible cron expressions: parsed once, next fire time computed field by field.

Accepted syntax (case-insensitive, fields separated by whitespace):

* Quartz, 6 or 7 fields: ``second minute hour day-of-month month day-of-week [year]``.
  Values, ``*``, lists ``a,b``, ranges ``a-b`` (``a > b`` wraps around, e.g. ``22-2`` or
  ``FRI-MON``; not in the year field), steps ``*/n``, ``a/n`` (``a`` to the end of the field),
  ``a-b/n``; ``JAN``-``DEC`` and ``SUN``-``SAT`` names; day-of-week ``1``-``7`` with 1 = Sunday;
  years 1970-2099. Exactly one of day-of-month and day-of-week is ``?``. Day-of-month also takes
  ``L`` (last day), ``L-n``, ``nW`` (weekday nearest to day n, never leaving the month), ``LW``
  and ``L-nW``; day-of-week also takes ``L`` alone (= 7, Saturday, as in Quartz), ``nL`` (last
  weekday n of the month) and ``n#k`` (k-th weekday n, k = 1-5). These special forms must stand
  alone in their field.
* Unix (Vixie) cron, 5 fields: ``minute hour day-of-month month day-of-week``; the second is 0,
  day-of-week is 0-7 (0 and 7 are Sunday). When both day fields are restricted a day matches if
  EITHER matches; a day field whose text starts with ``*`` (``*``, ``*/2``) does not take part
  in that rule, exactly like Vixie cron (``0 0 */2 * 1`` means odd days that are Mondays).

Deliberate differences from Quartz 2.3.2's ``CronExpression`` (everything else, including its
validation limits, is replicated and checked against real Quartz by ``tests/test_cron.py``):

* Daylight-saving transitions: see :class:`CronTrigger`.
* Rejected although Quartz accepts them (Quartz silently ignores or misreads part of the text):
  trailing text after a value (``5X``, ``*5``, ``?X``), a step after a name (``JAN-JUN/2``,
  Quartz drops the step), ``L``/``W``/``#`` on ranges or lists (``1-5W``, ``2,6#3``,
  ``1W,15``; Quartz uses only the first value), more than 7 fields (Quartz ignores the rest),
  empty list items (``1,,2``), ``'?'`` inside a list, a step of 0, a leading ``/5``, ``0W``
  (Quartz then loops forever), ``#`` with a day-of-week outside 1-7, range ends out of range
  (``1-0`` in day-of-week) and years outside 1970-2099.
* ``nW`` in a month shorter than ``n`` (``31W`` in April) never fires. Quartz treats the day as
  overflowing into the next month and sometimes fires on the month's last day, depending on
  where its search started (e.g. a chain of fires from March skips April, a start in April
  fires on April 30 when May 1 is a Saturday).
* The search ends in 2099 (the documented range of the year field); Quartz 2.3.2 searches up
  to the JVM's current year + 100.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._errors import ConfigError

__all__ = ["CronTrigger", "NextFireMemo", "next_fire_time"]

MIN_YEAR = 1970
MAX_YEAR = 2099
_EPOCH = datetime(1970, 1, 1)
_BEFORE_MIN_YEAR = datetime(1969, 12, 30, tzinfo=UTC)  # earlier starts are equivalent
_ONE_SECOND = timedelta(seconds=1)


class _SyntaxError(ValueError):
    """An expression is invalid; the message is the reason shown to the user."""


# ---------------------------------------------------------------------------------------------
# Fields
# ---------------------------------------------------------------------------------------------

_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_QUARTZ_DAY_NAMES = {name: number for number, name in enumerate(_DAY_NAMES, 1)}
_UNIX_DAY_NAMES = {name: number for number, name in enumerate(_DAY_NAMES)}


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    max_step: int  # Quartz's limit for '*/n' and 'a/n' (it does not check 'a-b/n')
    names: Mapping[str, int]

    def error(self, reason: str) -> _SyntaxError:
        return _SyntaxError(f"field {self.name!r}: {reason}")


_NO_NAMES: Mapping[str, int] = {}
_SECOND = _Field("second", 0, 59, 59, _NO_NAMES)
_MINUTE = _Field("minute", 0, 59, 59, _NO_NAMES)
_HOUR = _Field("hour", 0, 23, 23, _NO_NAMES)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31, 31, _NO_NAMES)
_MONTH = _Field("month", 1, 12, 12, _MONTH_NAMES)
_DAY_OF_WEEK = _Field("day-of-week", 1, 7, 7, _QUARTZ_DAY_NAMES)
_UNIX_DAY_OF_WEEK = _Field("day-of-week", 0, 7, 7, _UNIX_DAY_NAMES)
_YEAR = _Field("year", MIN_YEAR, MAX_YEAR, 2**31 - 1, _NO_NAMES)  # Quartz: no limit

_ALL_DAYS = frozenset(range(1, 32))
_ALL_WEEKDAYS = frozenset(range(1, 8))


def _parse_value(token: str, field: _Field) -> int:
    if token.isdecimal() and token.isascii():
        value = int(token)
    elif token in field.names:
        value = field.names[token]
    elif not token:
        raise field.error("empty value")
    elif "?" in token:
        raise field.error("'?' is only allowed alone, in day-of-month or day-of-week of 6/7 fields")
    elif field.names:
        raise field.error(f"{token!r} is not a number or a name ({', '.join(field.names)})")
    else:
        raise field.error(f"{token!r} is not a number")
    if not field.lo <= value <= field.hi:
        raise field.error(f"{value} is out of range {field.lo}-{field.hi}")
    return value


def _parse_step(token: str, field: _Field, in_range: bool) -> int:
    if not (token.isdecimal() and token.isascii()):
        raise field.error(f"step {token!r} is not a number")
    step = int(token)
    if step < 1:
        raise field.error(f"step {step} must be at least 1")
    if step > field.max_step and not in_range:
        raise field.error(f"step {step} is larger than {field.max_step}")
    return step


def _expand(first: int, last: int, step: int, field: _Field) -> Iterable[int]:
    if first <= last:
        return range(first, last + 1, step)
    if field is _YEAR:
        raise field.error(f"range {first}-{last} is reversed")
    size = field.hi - field.lo + 1  # wrap around, as Quartz does for 22-2 or FRI-MON
    return (field.lo + (v - field.lo) % size for v in range(first, last + size + 1, step))


def _parse_item(item: str, field: _Field) -> Iterable[int]:
    base, slash, step_text = item.partition("/")
    step = _parse_step(step_text, field, "-" in base) if slash else 1
    if slash and any(c.isalpha() for c in base):
        raise field.error(f"{item!r}: Quartz ignores a step after a name; use numbers")
    if base == "*":
        return range(field.lo, field.hi + 1, step)
    if not base and slash:
        raise field.error(f"{item!r}: a step needs a start, e.g. '*/{step_text}'")
    if "-" in base:
        first_text, _, last_text = base.partition("-")
        if first_text and last_text and first_text.isalpha() != last_text.isalpha():
            raise field.error(f"range {base!r} mixes a name and a number")
        first, last = _parse_value(first_text, field), _parse_value(last_text, field)
    else:
        first = _parse_value(base, field)
        last = field.hi if slash else first
    return _expand(first, last, step, field)


def _parse_list(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, field))
    return frozenset(values)


# ---------------------------------------------------------------------------------------------
# Day rules: which days of a given month match
# ---------------------------------------------------------------------------------------------


class _DayRule(Protocol):
    def days(self, year: int, month: int) -> tuple[int, ...]: ...

    def __hash__(self) -> int: ...


def _month_facts(year: int, month: int) -> tuple[int, int]:
    """(Quartz day-of-week of the 1st, 1 = Sunday, number of days)."""
    weekday, length = calendar.monthrange(year, month)  # weekday: Monday = 0
    return (weekday + 1) % 7 + 1, length


def _nearest_weekday(day: int, first_dow: int, length: int) -> int:
    """Quartz's ``W``: Saturday -> Friday (Monday on the 1st), Sunday -> Monday (Friday last)."""
    dow = (first_dow + day - 2) % 7 + 1
    if dow == 7:
        return day + 2 if day == 1 else day - 1
    if dow == 1:
        return day - 2 if day == length else day + 1
    return day


@dataclass(frozen=True)
class _DaySets:
    """Days in ``dom`` and (or, with ``either``) on a weekday in ``dow`` (1 = Sunday)."""

    dom: frozenset[int]
    dow: frozenset[int]
    either: bool = False

    def days(self, year: int, month: int) -> tuple[int, ...]:
        first_dow, length = _month_facts(year, month)
        if self.dow == _ALL_WEEKDAYS:
            return tuple(d for d in range(1, length + 1) if d in self.dom)
        by_weekday = ((first_dow + d - 2) % 7 + 1 in self.dow for d in range(1, length + 1))
        if self.either:
            return tuple(d for d, hit in enumerate(by_weekday, 1) if hit or d in self.dom)
        return tuple(d for d, hit in enumerate(by_weekday, 1) if hit and d in self.dom)


@dataclass(frozen=True)
class _LastDay:
    """``L``, ``L-n``, ``LW``, ``L-nW``."""

    offset: int
    weekday: bool

    def days(self, year: int, month: int) -> tuple[int, ...]:
        first_dow, length = _month_facts(year, month)
        day = length - self.offset
        if day < 1:
            return ()
        return (_nearest_weekday(day, first_dow, length) if self.weekday else day,)


@dataclass(frozen=True)
class _NearestWeekday:
    """``nW``."""

    day: int

    def days(self, year: int, month: int) -> tuple[int, ...]:
        first_dow, length = _month_facts(year, month)
        if self.day > length:
            return ()
        return (_nearest_weekday(self.day, first_dow, length),)


@dataclass(frozen=True)
class _NthWeekday:
    """``d#n`` (``nth`` = 1-5) and ``dL`` (``nth`` = 0: the last one)."""

    dow: int
    nth: int

    def days(self, year: int, month: int) -> tuple[int, ...]:
        first_dow, length = _month_facts(year, month)
        first = 1 + (self.dow - first_dow) % 7
        day = first + 7 * (self.nth - 1) if self.nth else first + 7 * ((length - first) // 7)
        return (day,) if day <= length else ()


@lru_cache(maxsize=8192)
def _month_days(rule: _DayRule, year: int, month: int) -> tuple[int, ...]:
    return rule.days(year, month)


def _day_sets(dom: frozenset[int], dow: frozenset[int], either: bool) -> _DaySets:
    """Canonical form, so that equal schedules compare equal."""
    if either and (dom == _ALL_DAYS or dow == _ALL_WEEKDAYS):
        return _DaySets(_ALL_DAYS, _ALL_WEEKDAYS)
    return _DaySets(dom, dow, either)


_LAST_DAY = re.compile(r"L(?:-([0-9]+))?(W?)")
_NEAREST = re.compile(r"([0-9]+)W")
_LAST_WEEKDAY = re.compile(r"([0-9]+|[A-Z]+)L")
_NTH_WEEKDAY = re.compile(r"([0-9]+|[A-Z]+)#([0-9]+)")


def _quartz_day_of_month(text: str) -> _DayRule | None:
    """Parse the Quartz day-of-month field; None for ``?``."""
    field = _DAY_OF_MONTH
    if text == "?":
        return None
    if match := _LAST_DAY.fullmatch(text):
        offset = int(match[1] or 0)
        if offset > 30:
            raise field.error(f"{text!r}: the offset from the last day must be at most 30")
        return _LastDay(offset, bool(match[2]))
    if match := _NEAREST.fullmatch(text):
        return _NearestWeekday(_parse_value(match[1], field))
    if "L" in text or "W" in text:
        raise field.error(
            f"{text!r}: 'L' and 'W' must stand alone (L, L-n, LW, L-nW, nW), not in lists or ranges"
        )
    return _DaySets(_parse_list(text, field), _ALL_WEEKDAYS)


def _quartz_day_of_week(text: str) -> _DayRule | None:
    """Parse the Quartz day-of-week field; None for ``?``."""
    field = _DAY_OF_WEEK
    if text == "?":
        return None
    if text == "L":
        return _DaySets(_ALL_DAYS, frozenset({7}))
    if match := _LAST_WEEKDAY.fullmatch(text):
        return _NthWeekday(_parse_value(match[1], field), 0)
    if match := _NTH_WEEKDAY.fullmatch(text):
        nth = int(match[2])
        if not 1 <= nth <= 5:
            raise field.error(f"{text!r}: the number after '#' must be 1-5")
        return _NthWeekday(_parse_value(match[1], field), nth)
    if "L" in text or "#" in text:
        raise field.error(
            f"{text!r}: 'L' and '#' must stand alone (L, nL, n#k), not in lists or ranges"
        )
    return _day_sets(_ALL_DAYS, _parse_list(text, field), either=False)


def _quartz_days(dom_text: str, dow_text: str) -> _DayRule:
    by_month = _quartz_day_of_month(dom_text)
    by_week = _quartz_day_of_week(dow_text)
    if by_month is None:
        if by_week is None:
            raise _SyntaxError("'?' may be used in only one of day-of-month and day-of-week")
        return by_week
    if by_week is not None:
        raise _SyntaxError(
            "one of day-of-month and day-of-week must be '?' (Quartz cannot restrict both), "
            "e.g. '0 0 12 * * ?'"
        )
    return by_month


def _unix_days(dom_text: str, dow_text: str) -> _DayRule:
    dom = _parse_list(dom_text, _DAY_OF_MONTH)
    dow = frozenset(d % 7 + 1 for d in _parse_list(dow_text, _UNIX_DAY_OF_WEEK))
    either = not dom_text.startswith("*") and not dow_text.startswith("*")
    return _day_sets(dom, dow, either)


# ---------------------------------------------------------------------------------------------
# Whole expressions
# ---------------------------------------------------------------------------------------------


def _next_table(values: frozenset[int], size: int) -> tuple[int, ...]:
    """``table[i]`` = smallest value >= i, or -1; ``size + 1`` entries (the last is -1)."""
    table = [-1] * (size + 1)
    following = -1
    for i in range(size - 1, -1, -1):
        if i in values:
            following = i
        table[i] = following
    return tuple(table)


@dataclass(frozen=True)
class _Schedule:
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: _DayRule
    months: frozenset[int]
    years: tuple[int, ...]


def _parse(expression: str) -> _Schedule:
    fields = expression.upper().split()
    if len(fields) == 5:
        minute, hour, dom, month, dow = fields
        second, year = "0", "*"
        days = _unix_days(dom, dow)
    elif len(fields) in (6, 7):
        second, minute, hour, dom, month, dow = fields[:6]
        year = fields[6] if len(fields) == 7 else "*"
        days = _quartz_days(dom, dow)
    else:
        raise _SyntaxError(
            f"expected 6 or 7 fields (Quartz: second minute hour day-of-month month day-of-week "
            f"[year]) or 5 (Unix: minute hour day-of-month month day-of-week), got {len(fields)}"
        )
    return _Schedule(
        seconds=_parse_list(second, _SECOND),
        minutes=_parse_list(minute, _MINUTE),
        hours=_parse_list(hour, _HOUR),
        days=days,
        months=_parse_list(month, _MONTH),
        years=tuple(sorted(_parse_list(year, _YEAR))),
    )


@dataclass(frozen=True, slots=True)
class _Compiled:
    """An expression's schedule and lookup tables, shared by every trigger of that text."""

    schedule: _Schedule
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]


@lru_cache(maxsize=1024)
def _compile(expression: str) -> _Compiled:
    """Parse and tabulate once per expression text (a thousand jobs on one cron share it)."""
    schedule = _parse(expression)
    return _Compiled(
        schedule,
        _next_table(schedule.seconds, 60),
        _next_table(schedule.minutes, 60),
        _next_table(schedule.hours, 24),
        _next_table(schedule.months, 13),
    )


def _load_zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ConfigError("time_zone", name, "must be an IANA time zone name, e.g. 'UTC'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(
            "time_zone", name, "unknown IANA time zone (e.g. 'UTC', 'Asia/Shanghai')"
        ) from None


def _utc_seconds(instant: datetime) -> int:
    """Whole seconds since the epoch of an aware datetime (floored)."""
    return calendar.timegm(instant.utctimetuple())


def _first_at_offset(zone: ZoneInfo, lo: int, hi: int, offset: timedelta) -> int:
    """Smallest epoch second in ``(lo, hi]`` at which ``zone`` uses ``offset`` (bisection)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == offset:
            hi = mid
        else:
            lo = mid
    return hi


class CronTrigger:
    """A cron schedule in an IANA time zone; immutable, hashable, equal when schedules are.

    ``next_fire_time(after)`` returns the first fire strictly after ``after``, or None when
    there is none up to 2099. Outside daylight-saving transitions the result equals Quartz
    2.3's ``CronExpression.getNextValidTimeAfter``. Fire times are wall-clock times in
    ``time_zone``; at transitions every matching wall time fires exactly once:

    * A wall time inside a spring-forward gap (02:30 on the day New York jumps from 02:00 to
      03:00) fires at the first instant after the gap (03:00 EDT); several gap times fire once.
      Quartz instead skips them (a daily 02:30 job does not run that day).
    * A wall time inside a fall-back overlap (01:30 on the day New York repeats 01:00-02:00)
      fires at its first occurrence (01:30 EDT) only; the second pass fires nothing.
      Quartz instead fires at the second occurrence (01:30 EST) only, so it fires nothing
      during the first pass.

    Compare returned datetimes by instant (``.timestamp()`` or after ``astimezone(UTC)``):
    Python compares two datetimes that share a tzinfo by wall time, ignoring ``fold``.
    """

    __slots__ = (
        "_expression",
        "_hash",
        "_hours",
        "_minutes",
        "_months",
        "_schedule",
        "_seconds",
        "_zone",
    )

    def __init__(self, expression: str, time_zone: str = "UTC") -> None:
        if not isinstance(expression, str):
            raise ConfigError("cron", expression, "must be a string")
        self._zone = _load_zone(time_zone)
        try:
            compiled = _compile(expression)
        except _SyntaxError as exc:
            raise ConfigError("cron", expression, str(exc)) from None
        self._expression = expression
        self._schedule = compiled.schedule
        self._seconds = compiled.seconds
        self._minutes = compiled.minutes
        self._hours = compiled.hours
        self._months = compiled.months
        self._hash = hash((self._schedule, self._zone.key))

    @property
    def expression(self) -> str:
        """The expression as given."""
        return self._expression

    @property
    def time_zone(self) -> str:
        """The IANA zone name as given."""
        return self._zone.key

    def __repr__(self) -> str:
        return f"CronTrigger({self._expression!r}, time_zone={self._zone.key!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CronTrigger):
            return NotImplemented
        return self._schedule == other._schedule and self._zone.key == other._zone.key

    def __hash__(self) -> int:
        return self._hash

    def next_fire_time(self, after: datetime) -> datetime | None:
        """First fire time strictly after the aware datetime ``after``, in the trigger's zone."""
        if not isinstance(after, datetime):
            raise TypeError(f"after must be a datetime, not {type(after).__name__}")
        if after.utcoffset() is None:
            raise ValueError(f"after must be timezone-aware, got naive {after.isoformat()}")
        if after.year > MAX_YEAR:
            return None
        local = max(after, _BEFORE_MIN_YEAR).astimezone(self._zone)
        if local.fold and local.replace(fold=0).utcoffset() != local.utcoffset():
            wall = self._next_wall(self._overlap_end(local))  # second pass of a repeated hour
        else:
            wall = self._next_wall(local.replace(tzinfo=None, microsecond=0) + _ONE_SECOND)
        after_ts = after.timestamp()
        while wall is not None:
            fire = self._resolve(wall)
            if fire.timestamp() > after_ts:
                return fire
            wall = self._next_wall(wall + _ONE_SECOND)  # defensive: odd multi-transition zones
        return None

    def _next_wall(self, start: datetime) -> datetime | None:
        """Smallest matching wall-clock time >= ``start`` (naive), field by field."""
        y, mo, d = start.year, start.month, start.day
        h, mi, s = start.hour, start.minute, start.second
        years, rule = self._schedule.years, self._schedule.days
        months, hours, minutes, seconds = self._months, self._hours, self._minutes, self._seconds
        while True:
            i = bisect_left(years, y)
            if i == len(years):
                return None
            if years[i] != y:
                y, mo, d, h, mi, s = years[i], 1, 1, 0, 0, 0
            next_month = months[mo]
            if next_month < 0:
                y, mo, d, h, mi, s = y + 1, 1, 1, 0, 0, 0
                continue
            if next_month != mo:
                mo, d, h, mi, s = next_month, 1, 0, 0, 0
            days = _month_days(rule, y, mo)
            j = bisect_left(days, d)
            if j == len(days):
                mo, d, h, mi, s = mo + 1, 1, 0, 0, 0
                continue
            if days[j] != d:
                d, h, mi, s = days[j], 0, 0, 0
            next_hour = hours[h]
            if next_hour < 0:
                d, h, mi, s = d + 1, 0, 0, 0
                continue
            if next_hour != h:
                h, mi, s = next_hour, 0, 0
            next_minute = minutes[mi]
            if next_minute < 0:
                h, mi, s = h + 1, 0, 0
                continue
            if next_minute != mi:
                mi, s = next_minute, 0
            next_second = seconds[s]
            if next_second < 0:
                mi, s = mi + 1, 0
                continue
            return datetime(y, mo, d, h, mi, next_second)

    def _resolve(self, wall: datetime) -> datetime:
        """The instant of a wall time: first occurrence if repeated, end of the gap if skipped."""
        first = wall.replace(tzinfo=self._zone)
        before = first.utcoffset()
        after = first.replace(fold=1).utcoffset()
        assert before is not None and after is not None
        if before >= after:  # normal, or an overlap (fold=0 is the first occurrence)
            return first
        naive = int((wall - _EPOCH).total_seconds())
        lo = naive - int(after.total_seconds())  # still before the transition
        hi = naive - int(before.total_seconds())  # already after it
        return datetime.fromtimestamp(_first_at_offset(self._zone, lo, hi, after), self._zone)

    def _overlap_end(self, local: datetime) -> datetime:
        """First wall time after the repeated hour that ``local`` (fold=1) lies in."""
        earlier = local.replace(fold=0).utcoffset()
        later = local.utcoffset()
        assert earlier is not None and later is not None
        now = _utc_seconds(local)
        lo = now - int((earlier - later).total_seconds())
        transition = _first_at_offset(self._zone, lo, now, later)
        return _EPOCH + timedelta(seconds=transition) + earlier


NextFireMemo = dict[tuple[CronTrigger, datetime], datetime | None]
"""Next fire times computed in one pass over many jobs, by (trigger, after)."""


def next_fire_time(
    trigger: CronTrigger, after: datetime, memo: NextFireMemo | None = None
) -> datetime | None:
    """``trigger.next_fire_time(after)``, computed once per ``memo`` for jobs that share the
    trigger (equal expressions share one object) and the instant."""
    if memo is None:
        return trigger.next_fire_time(after)
    key = (trigger, after)
    if key not in memo:
        memo[key] = trigger.next_fire_time(after)
    return memo[key]
