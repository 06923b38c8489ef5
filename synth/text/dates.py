"""Dates, years and clock times as they are said (English).

This module owns the light normaliser's rules for the calendar and the clock: numeric dates
read in the order the config's `text.date_order` names when their numbers allow more than one
(`mdy`: 10/12/2023 "October twelfth, twenty twenty-three"; `dmy`: "the tenth of December twenty
twenty-three"; `ymd`: 98/01/07 year first), dates with month names in either order and any case,
clock times with a.m./p.m. and time zones, decades, eras (BC, AD) and years of every era where
the words around say a number is one. `synth.text.normalize` runs these rules in its order; this
module knows nothing about the other forms of a sentence.
"""

from __future__ import annotations

import re
from typing import Literal

from synth.text.numbers import ordinal, words, year
from synth.text.rules import Rule, rule, sentence_end
from synth.text.vocabulary import MONTH_BY_ABBREVIATION, MONTHS, TIME_ZONES

DateOrder = Literal["mdy", "dmy", "ymd"]
DATE_ORDERS: tuple[DateOrder, ...] = ("mdy", "dmy", "ymd")

# a month: full (`may`, `march` capitalised only: lower case they are verbs), or abbreviated
_MONTH = (r"(?P<month>\b(?:(?i:january|february|april|june|july|august|september|october|november|december)"
          r"|May|MAY|March|MARCH|(?i:jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\."
          r"|(?i:jan|feb|apr|jun|jul|aug|sept|sep|oct|nov|dec)(?![a-z])))")
_DAY = r"(?P<day>[12]\d|3[01]|0?[1-9])(?P<suffix>st|nd|rd|th)?(?![\d:.,]\d|\w)"
_FULL_YEAR = r"(?P<year>[12]\d{3})\b(?![,.]\d)"
_HALF = r"(?P<half>[AaPp])\.?\s?[Mm](?:(?P<dot>\.)|(?![A-Za-z]))"  # am, a.m., PM, p.m
_ZONE = r"(?:\s?(?P<zone>(?:" + "|".join(TIME_ZONES) + r")\b|(?i:[ecmp]\.?[sd]\.?t)\b\.?))?"


def date_and_time_rules(date_order: DateOrder) -> tuple[Rule, ...]:
    """The rules for dates and times, in the order they run, numeric dates read in `date_order`
    (after telephone numbers, before money and plain numbers)."""
    def numeric_dates(text: str) -> str:
        return _NUMERIC_DATE.sub(lambda m: _numeric_date(m, date_order), text)

    return numeric_dates, _time, _time_range, _month_day, _day_month, _month_year


def _month(written: str) -> str:
    return MONTHS[MONTH_BY_ABBREVIATION[written.lower()[:3]] - 1]


def _short_year(written: str) -> str:
    """A two-digit year: `98` "ninety-eight", `05` "oh five"."""
    return f"oh {words(int(written))}" if written.startswith("0") else words(int(written))


def _date(month: int, day: int, year_words: str, order: str) -> str:
    if order == "dmy":
        return f"the {ordinal(day)} of {MONTHS[month - 1]}" + (f" {year_words}" if year_words else "")
    return f"{MONTHS[month - 1]} {ordinal(day)}" + (f", {year_words}" if year_words else "")


def _numeric_date(m: re.Match, order: DateOrder) -> str:
    """`10/12/2023`, `25.12.2020`, `2016/07/03`, `01/07/98`: a four-digit year first is y/m/d;
    otherwise `order` first, then the other orders the numbers allow (15.01.2020 can only be d/m/y)."""
    a, b, c = m.group("a"), m.group("b"), m.group("c")
    if len(a) == 4:
        choices = [("ymd", (a, b, c))] if len(c) <= 2 else []
    elif len(a) <= 2 and (len(c) == 4 or (len(c) == 2 and m.group("sep") == "/")):
        fields = {"mdy": (c, a, b), "dmy": (c, b, a), "ymd": (a, b, c)}  # as (year, month, day)
        choices = [(o, fields[o]) for o in (order, *DATE_ORDERS) if o != "ymd" or len(c) == 2]
    else:
        choices = []
    for how, (y, month, day) in choices:
        if 1 <= int(month) <= 12 and 1 <= int(day) <= 31:
            return _date(int(month), int(day), year(int(y)) if len(y) == 4 else _short_year(y), how)
    return m.group(0)


_NUMERIC_DATE = re.compile(r"(?<![\w./\-:])(?P<a>\d{1,4})(?P<sep>[/.\-])(?P<b>\d{1,2})(?P=sep)(?P<c>\d{1,4})"
                           r"(?![\w/]|[.\-]\d)")


@rule(r"\b(?P<hour>[01]?\d|2[0-3])(?:(?P<sep>[:.])(?P<minute>[0-5]\d)(?::(?P<second>[0-5]\d))?)?"
      r"(?:\s?" + _HALF + ")?" + _ZONE)
def _time(m: re.Match) -> str:
    """`3:30 p.m.`, `5pm`, `1.59 p.m.`, `00:30`, `14:10:30`, `11:30 EST`. A bare hour, or a
    period between hour and minutes, is a time only with a.m. or p.m."""
    if m.group("sep") != ":" and not m.group("half"):
        return m.group(0)
    hour, minute = int(m.group("hour")), int(m.group("minute") or 0)
    half = f" {m.group('half').upper()}M" if m.group("half") else (" AM" if hour == 0 else "")
    if m.group("second"):
        seconds = int(m.group("second"))
        said = (f"{_count(hour, 'hour')} {_count(minute, 'minute')} and {_count(seconds, 'second')}")
    elif minute == 0:
        said = _hour(hour) + ("" if half else " o'clock")
    else:
        said = f"{_hour(hour)} {'oh ' if minute < 10 else ''}{words(minute)}"
    zone = " " + re.sub(r"\W", "", m.group("zone")).upper() if m.group("zone") else ""
    ended = (m.group("dot") and not zone) or (m.group("zone") or "").endswith(".")
    return said + half + zone + (sentence_end(m) if ended else "")


def _hour(hour: int) -> str:
    return "twelve" if hour == 0 else words(hour)


def _count(number: int, unit: str) -> str:
    return f"{words(number)} {unit}{'' if number == 1 else 's'}"


@rule(r"(?<=[AP]M)\s?[-–]\s?(?=\w)")
def _time_range(m: re.Match) -> str:
    return " to "


@rule(_MONTH + r"(?:\s+|-)" + _DAY + r"(?:(?P<comma>,?)\s+" + _FULL_YEAR + ")?")
def _month_day(m: re.Match) -> str:
    """`March 3, 1865`, `july 25 2012`, `Jan. 15`, `Jan-15`."""
    said = f"{_month(m.group('month'))} {ordinal(int(m.group('day')))}"
    return said + (f"{m.group('comma')} {year(int(m.group('year')))}" if m.group("year") else "")


@rule(r"(?P<the>\bthe\s+)?\b" + _DAY + r"(?:\s+of)?(?:\s+|-)" + _MONTH + r"(?:,?\s+" + _FULL_YEAR + ")?")
def _day_month(m: re.Match) -> str:
    """`3 March 1865`, `the 22nd of May`, `25 sept.`: the third of March eighteen sixty-five."""
    said = f"{m.group('the') or 'the '}{ordinal(int(m.group('day')))} of {_month(m.group('month'))}"
    if m.group("year"):
        return f"{said} {year(int(m.group('year')))}"
    return said + (sentence_end(m) if m.group("month").endswith(".") else "")


@rule(_MONTH + r"\s+" + _FULL_YEAR)
def _month_year(m: re.Match) -> str:
    return f"{_month(m.group('month'))} {year(int(m.group('year')))}"


_DECADE = r"(?:\b(?P<decade{n}>1[1-9]\d0|20\d0)|(?<![\w'’])['’]?(?P<short{n}>[2-9]0))['’]?s\b"


@rule(_DECADE.format(n=1) + r"(?:\s?[-–]\s?" + _DECADE.format(n=2) + ")?")
def _decade(m: re.Match) -> str:
    """`the 1920s`, `the '80s`, `1960s-1980s`."""
    said = [_decade_words(m.group(f"decade{n}"), m.group(f"short{n}")) for n in (1, 2)]
    return " to ".join(s for s in said if s)


def _decade_words(decade: str | None, short: str | None) -> str:
    if not (decade or short):
        return ""
    said = year(int(decade)) if decade else words(int(short))
    return said[:-1] + "ies" if said.endswith("y") else said + "s"


@rule(r"(?<![\w.,])(?:(?P<number>\d{1,4})\s?(?P<era>BCE|BC|CE|AD|B\.C\.E\.|B\.C\.|A\.D\.|C\.E\.)"
      r"|(?P<before>AD|A\.D\.)\s?(?P<ad>\d{1,4}))(?![\w])")
def _era(m: re.Match) -> str:
    """`44 BC`, `AD 79`, `1200 B.C.`: the number as a year, the era as letters."""
    if m.group("ad"):
        return f"AD {year(int(m.group('ad')))}"
    era = m.group("era")
    return f"{year(int(m.group('number')))} {era.replace('.', '')}" + (sentence_end(m) if era.endswith(".") else "")


@rule(r"\b(?P<context>[Yy]ear|in|In|by|By|since|Since|until|from|before|after|of|circa|c\.)\s+(?P<year>\d{3,4})\b"
      r"(?![,.]\d|\s*(?:%|percent))")
def _year_in_context(m: re.Match) -> str:
    """`in the year 1066`, `by 1050`: a year of any era where the words before say it is one
    (four digits after a preposition; any number after `year`)."""
    number = int(m.group("year"))
    if m.group("context").lower() != "year" and not 1000 <= number < 1100:
        return m.group(0)  # `in 300 years`; 1100-2099 are years anyway (next rule)
    return f"{m.group('context')} {year(number)}"


@rule(r"(?<![\d,.])\b(?P<year>1[1-9]\d\d|20\d\d)\b(?![,.]\d)")
def _bare_year(m: re.Match) -> str:
    return year(int(m.group("year")))  # a four-digit number without a comma in prose is nearly always a year


YEAR_RULES: tuple[Rule, ...] = (_decade, _era, _year_in_context, _bare_year)  # after ranges, before plain numbers
