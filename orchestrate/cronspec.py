"""Cron time specifications, checked the way Debian's cron reads them, and ``--every`` turned
into one — with an honest word when cron can only approximate the interval.

A 5-field expression is ``minute hour day-of-month month day-of-week``; each field is a
comma-separated list of elements, an element is ``*``, ``N`` or ``A-B``, optionally followed
by ``/STEP`` (a step needs ``*`` or a range before it: ``*/15``, ``0-30/10``). Months may be
named ``jan``..``dec`` and days of the week ``sun``..``sat`` (any case); day of week 0 and 7 are
both Sunday. A whole expression may instead be one of cron's nicknames (``@hourly``...).

Why ``--every`` can be inexact: cron has no notion of "every N minutes since X". ``*/7`` in
the minute field means "minutes 0, 7, ..., 56 of every hour", so the run after :56 comes at
:00, four minutes later. Only intervals that divide the next-larger unit evenly repeat
exactly (minutes dividing 60, hours dividing 24, and a day: months have 28 to 31 days).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from inventory.errors import InputError

NICKNAMES = ("@reboot", "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
             "@hourly")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


@dataclass(frozen=True)
class Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    first_name_value: int = 0

    def value(self, text: str) -> int:
        """One number or name of this field, range-checked; InputError naming the field."""
        if text.isdigit():
            n = int(text)
            if not self.low <= n <= self.high:
                raise InputError(f"{self.name} '{text}' is out of range "
                                 f"{self.low}-{self.high}")
            return n
        lowered = text.lower()
        if lowered in self.names:
            return self.names.index(lowered) + self.first_name_value
        hint = f" or {self.names[0]}-{self.names[-1]}" if self.names else ""
        raise InputError(f"{self.name} '{text}' is not a number {self.low}-{self.high}{hint}")


FIELDS = (
    Field("minute", 0, 59),
    Field("hour", 0, 23),
    Field("day of month", 1, 31),
    Field("month", 1, 12, MONTHS, 1),
    Field("day of week", 0, 7, DAYS, 0),
)

_EVERY = re.compile(r"^(\d+)(m|h|d)$")
_LIMITS = {"m": 59, "h": 23, "d": 31}


def _element(f: Field, text: str) -> None:
    base, slash, step = text.partition("/")
    if slash:
        if not step.isdigit() or not 1 <= int(step) <= f.high:
            raise InputError(f"{f.name} '{text}': the step after / must be a number "
                             f"1-{f.high}")
        if base != "*" and "-" not in base:
            raise InputError(f"{f.name} '{text}': a step needs * or a range before it "
                             f"(e.g. */{step} or {base}-{f.high}/{step})")
    if base == "*":
        return
    if not base:
        raise InputError(f"{f.name} '{text}': empty value")
    start, dash, end = base.partition("-")
    first = f.value(start)
    if dash:
        last = f.value(end)
        if last < first:
            raise InputError(f"{f.name} '{text}': the range runs backwards "
                             f"({first} > {last})")


def check_field(f: Field, text: str) -> None:
    """Check one field's text (a list of elements); InputError naming the field."""
    for element in text.split(","):
        _element(f, element)


def check_cron(expression: str) -> str:
    """``expression`` normalised (single spaces), or InputError naming the bad field.

    >>> check_cron("*/15  *  * * mon-fri")
    '*/15 * * * mon-fri'
    """
    fields = expression.split()
    if len(fields) == 1 and fields[0].startswith("@"):
        if fields[0].lower() not in NICKNAMES:
            raise InputError(f"--cron '{expression}': unknown nickname; use one of "
                             f"{', '.join(NICKNAMES)}")
        return fields[0].lower()
    if len(fields) != 5:
        raise InputError(f"--cron must have 5 fields (minute hour day-of-month month "
                         f"day-of-week) or be one of {', '.join(NICKNAMES)}, "
                         f"got '{expression}'")
    for f, text in zip(FIELDS, fields, strict=True):
        try:
            check_field(f, text)
        except InputError as exc:
            raise InputError(f"--cron '{expression}': {exc}") from None
    return " ".join(fields)


def every_to_cron(every: str) -> tuple[str, str | None]:
    """``--every 15m|2h|1d`` -> (cron expression, why it is inexact or None).

    >>> every_to_cron("15m")
    ('*/15 * * * *', None)
    """
    m = _EVERY.match(every)
    if not m:
        raise InputError(f"--every must look like 15m, 2h or 1d, got '{every}'")
    n, unit = int(m.group(1)), m.group(2)
    if not 1 <= n <= _LIMITS[unit]:
        bigger = {"m": " (or hours: 1h)", "h": " (or days: 1d)", "d": " (or --cron)"}[unit]
        raise InputError(f"--every {every}: use 1-{_LIMITS[unit]}{unit}{bigger}")
    if unit == "m":
        return f"*/{n} * * * *", _uneven(n, 60, "minute", "hour", lambda v: f":{v:02d}")
    if unit == "h":
        return f"0 */{n} * * *", _uneven(n, 24, "hour", "day", lambda v: f"{v:02d}:00")
    return f"0 3 */{n} * *", _uneven_days(n)


def _uneven(n: int, period: int, unit: str, whole: str,
            show: Callable[[int], str]) -> str | None:
    if period % n == 0:
        return None
    last = (period - 1) // n * n
    divisors = [d for d in range(1, period) if period % d == 0]
    lower = max(d for d in divisors if d < n)
    upper = min((d for d in divisors if d > n), default=None)
    use = f"{lower}{unit[0]} or " + (f"{upper}{unit[0]}" if upper else f"1{whole[0]}")
    times = [show(0), show(n)] + ([f"… {show(last)}"] if last > n else []) + [show(0)]
    gap = period - last
    return (f"cron cannot run every {n} {unit}s exactly: */{n} restarts at each {whole} "
            f"({', '.join(times)}: the last gap is {gap} {unit}{'' if gap == 1 else 's'}); "
            f"use {use}, which repeat exactly, or pass --uneven to accept this")


def _uneven_days(n: int) -> str | None:
    if n == 1:
        return None
    last = 1 + 30 // n * n
    return (f"cron cannot run every {n} days exactly: */{n} in the day of month restarts "
            f"on the 1st of each month (the 1st, {_ordinal(1 + n)} … {_ordinal(last)}, then the "
            f"1st: months "
            f"have 28-31 days); use 1d, or --cron for a weekday (e.g. '0 3 * * sun'), or "
            f"pass --uneven to accept this")


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
