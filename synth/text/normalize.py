"""Written text to its spoken form: the words a reader says for what is printed.

This module owns the light normaliser: `num2words` for the numbers, plus ordered
regular-expression rules for the forms around them (English):

    Chapter IV           -> Chapter four             (Roman numerals after chapter words)
    Henry VIII           -> Henry the eighth          (regnal numbers after a name)
    $3.50, £20, €1.5m    -> three dollars and fifty cents, twenty pounds, ...
    March 3, 1865        -> March third, eighteen sixty-five
    2024-05-01           -> May first, twenty twenty-four
    3:30 p.m., 7:00      -> three thirty p m, seven o'clock
    50%, 21st, 1990s     -> fifty percent, twenty-first, nineteen nineties
    in 1865, 1,234, 3.5  -> in eighteen sixty-five, one thousand, two hundred and thirty-four, three point five
    Mr., Dr., St., etc.  -> Mister, Doctor, Saint, et cetera

Rules run in a fixed order, each on what the ones before left, so a date's year is
read as a year and a price's number as money. Text the rules do not recognise is left
exactly as written. `NemoNormalizer` wraps NeMo's grammar-based normaliser for users
who install it (`pip install nemo_text_processing`); nothing here needs it. The module
knows nothing about books, models or the pipeline.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Literal

from synth.errors import SynthError

Normalizer = Literal["light", "nemo"]

_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December")
_MONTH = r"(?P<month>" + "|".join(_MONTHS) + r"|(?:Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.)"
_MONTH_BY_ABBREVIATION = {m[:3].lower(): m for m in _MONTHS} | {"sept": "September"}
_ROMAN = r"(?=[MDCLXVI]+\b)M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"
_ROMAN_VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}
_CHAPTER_WORDS = r"(?:chapter|book|part|volume|vol\.|act|scene|canto|section|letter|stave)"
_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"  # 1,234.5 or 1234.5
_SCALES = {"k": "thousand", "m": "million", "bn": "billion", "thousand": "thousand", "million": "million",
           "billion": "billion", "trillion": "trillion"}
_CURRENCIES = {  # symbol: (unit, units, subunit, subunits)
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
}
# Abbreviations read as words wherever they appear (the period belongs to the abbreviation).
_ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Messrs.": "Messieurs", "Dr.": "Doctor",
    "Prof.": "Professor", "Capt.": "Captain", "Col.": "Colonel", "Gen.": "General", "Lt.": "Lieutenant",
    "Sgt.": "Sergeant", "Cpl.": "Corporal", "Adm.": "Admiral", "Gov.": "Governor", "Sen.": "Senator",
    "Rep.": "Representative", "Rev.": "Reverend", "Hon.": "Honourable", "Fr.": "Father", "Jr.": "Junior",
    "Sr.": "Senior", "Mt.": "Mount", "Ft.": "Fort", "Ave.": "Avenue", "Rd.": "Road", "vs.": "versus",
    "etc.": "et cetera", "e.g.": "for example", "i.e.": "that is", "approx.": "approximately",
    "a.m.": "a m", "p.m.": "p m",
}


class NormalizerError(SynthError, ValueError):
    """A normaliser that cannot run (an optional package missing); the message says how to fix it."""


def spoken_form(text: str) -> str:
    """The light normaliser: `text` with numbers, dates, money and abbreviations as words."""
    for rule in _RULES:
        text = rule(text)
    return text


def normalizer(name: Normalizer) -> Callable[[str], str]:
    """The normaliser called `name`: "light" (this module) or "nemo" (NeMo's, if installed)."""
    if name == "light":
        return spoken_form
    if name == "nemo":
        return _nemo()
    raise ValueError(f"unknown normalizer {name!r}; choose 'light' or 'nemo'")


@functools.lru_cache(maxsize=1)
def _nemo() -> Callable[[str], str]:
    try:
        from nemo_text_processing.text_normalization.normalize import (
            Normalizer as NemoNormalizer,
        )
    except ImportError:
        raise NormalizerError("text.normalizer 'nemo' needs NeMo's text normaliser: "
                              "pip install nemo_text_processing (it brings pynini, about 400 MB)") from None
    nemo = NemoNormalizer(input_case="cased", lang="en")  # builds its grammars once (minutes the first time)
    return lambda text: nemo.normalize(text, punct_post_process=True)


# --- numbers -------------------------------------------------------------------------


def _words(number: str | int | float, to: str = "cardinal") -> str:
    try:
        from num2words import num2words
    except ImportError:
        raise NormalizerError("the light normaliser needs num2words: pip install -e '.[book]' "
                              "(or pip install num2words)") from None

    return num2words(number, to=to, lang="en")


def _cardinal(digits: str) -> str:
    """1,234 / 3.5 / 0.25 as words; a decimal part is read digit by digit (num2words' way)."""
    plain = digits.replace(",", "")
    return _words(float(plain) if "." in plain else int(plain))


def _year(year: int) -> str:
    return _words(year, to="year")


def _roman(numeral: str) -> int:
    total = 0
    for ch, following in zip(numeral, [*numeral[1:], ""]):
        value = _ROMAN_VALUES[ch]
        total += -value if following and _ROMAN_VALUES[following] > value else value
    return total


# --- rules, in order -----------------------------------------------------------------


def _sub(pattern: str, flags: int = 0):
    """Decorator: a rule replacing each match of `pattern` with what the function returns."""
    compiled = re.compile(pattern, flags)

    def wrap(replace: Callable[[re.Match], str]) -> Callable[[str], str]:
        return functools.wraps(replace)(lambda text: compiled.sub(replace, text))

    return wrap


@_sub(r"(?<![\w.])(" + "|".join(re.escape(a) for a in sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")(?!\w)")
def _abbreviation(m: re.Match) -> str:
    at_end = not m.string[m.end():].strip()  # `... and so on, etc.`: the period also ends the sentence
    return _ABBREVIATIONS[m.group(1)] + ("." if at_end and m.group(1).endswith(".") else "")


@_sub(r"\bSt\.(?=\s+[A-Z])")  # St. before a name is Saint; after one (`Baker St.`) it is Street
def _saint(m: re.Match) -> str:
    return "Saint"


@_sub(r"(?<=[a-z])\s+St\.")
def _street(m: re.Match) -> str:
    return " Street"


@_sub(r"\b(No|Nos|no)\.\s*(?=\d)")
def _number_sign(m: re.Match) -> str:
    return "numbers " if m.group(1) == "Nos" else "number "


@_sub(r"\b(?=[A-Z])((?i:" + _CHAPTER_WORDS + r"))(\s+)(" + _ROMAN + r")\b(?!['’])")  # `the book I read` stays
def _chapter_numeral(m: re.Match) -> str:
    if m.group(3) in ("", "L", "C", "D", "M"):  # `Part I’ve` (the pattern matched nothing); `Section D`: a letter
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{_words(_roman(m.group(3)))}"


@_sub(r"\b([A-Z][a-z]+)\s+(" + _ROMAN + r")\b(?!['’])")
def _regnal(m: re.Match) -> str:
    name, numeral = m.group(1), m.group(2)
    # regnal numbers are I, V and X only (Louis XIV, Henry V); not `Then I` (the pronoun), `Malcolm X`, `Section D`
    if numeral in ("", "I", "X") or set(numeral) - set("IVX"):
        return m.group(0)
    return f"{name} the {_words(_roman(numeral), to='ordinal')}"


@_sub(r"(?P<symbol>[$£€¥])\s?(?P<amount>" + _NUMBER + r")(?:\s?(?P<scale>thousand|million|billion|trillion|bn|[kKmM])\b)?")
def _money(m: re.Match) -> str:
    unit, units, subunit, subunits = _CURRENCIES[m.group("symbol")]
    amount = m.group("amount").replace(",", "")
    if m.group("scale"):  # $1.5 million: one point five million dollars
        return f"{_cardinal(amount)} {_SCALES[m.group('scale').lower()]} {units}"
    whole, _, fraction = amount.partition(".")
    cents = int(fraction[:2].ljust(2, "0")) if fraction else 0
    parts = []
    if int(whole) or not cents:
        parts.append(f"{_words(int(whole))} {unit if int(whole) == 1 else units}")
    if cents:
        parts.append(f"{_words(cents)} {subunit if cents == 1 else subunits}")
    return " and ".join(parts)


@_sub(r"\b(?P<year>\d{4})-(?P<month>0[1-9]|1[0-2])-(?P<day>0[1-9]|[12]\d|3[01])\b")
def _iso_date(m: re.Match) -> str:
    month = _MONTHS[int(m.group("month")) - 1]
    return f"{month} {_words(int(m.group('day')), to='ordinal')}, {_year(int(m.group('year')))}"


def _month_name(written: str) -> str:
    return _MONTH_BY_ABBREVIATION.get(written.rstrip(".").lower(), written)


@_sub(r"\b" + _MONTH + r"\s+(?P<day>[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?\b(?:(?P<comma>,?)\s+(?P<year>1\d{3}|20\d{2})\b)?")
def _month_day(m: re.Match) -> str:
    spoken = f"{_month_name(m.group('month'))} {_words(int(m.group('day')), to='ordinal')}"
    return spoken + (f"{m.group('comma')} {_year(int(m.group('year')))}" if m.group("year") else "")


@_sub(r"\b(?P<day>[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?\s+" + _MONTH + r"(?:,?\s+(?P<year>1\d{3}|20\d{2})\b)?")
def _day_month(m: re.Match) -> str:
    spoken = f"the {_words(int(m.group('day')), to='ordinal')} of {_month_name(m.group('month'))}"
    return spoken + (f" {_year(int(m.group('year')))}" if m.group("year") else "")


@_sub(r"\b(?P<hour>[01]?\d|2[0-3]):(?P<minute>[0-5]\d)(?:\s?(?P<half>[ap])\.?\s?m\b\.?|\b)", re.IGNORECASE)
def _time(m: re.Match) -> str:
    hour, minute = int(m.group("hour")), int(m.group("minute"))
    half = f" {m.group('half').lower()} m" if m.group("half") else ""
    if minute == 0:
        return f"{_words(hour)}{half or ' o' + chr(39) + 'clock'}"
    minutes = f"oh {_words(minute)}" if minute < 10 else _words(minute)
    return f"{_words(hour)} {minutes}{half}"


@_sub(r"(?<![\w.])(?P<number>" + _NUMBER + r")\s?(?:%|percent\b|per cent\b)")
def _percent(m: re.Match) -> str:
    return f"{_cardinal(m.group('number'))} percent"


@_sub(r"\b(?P<number>\d+)(?:st|nd|rd|th)\b")
def _ordinal(m: re.Match) -> str:
    return _words(int(m.group("number")), to="ordinal")


@_sub(r"(?:\b(?P<decade>1[1-9]\d0|20\d0)|(?<![\w'’])['’]?(?P<short>[2-9]0))['’]?s\b")
def _decade(m: re.Match) -> str:
    year = _year(int(m.group("decade"))) if m.group("decade") else _words(int(m.group("short")))  # 1920s; '80s
    return year[:-1] + "ies" if year.endswith("y") else year + "s"


@_sub(r"(?<![\d,.$£€¥\-–])\b(?P<start>" + _NUMBER + r")\s?[-–](?=\s?\d)(?P<stop>\s?" + _NUMBER + r")\b(?![,.]\d|[-–]\d)")
def _range(m: re.Match) -> str:
    start, stop = m.group("start"), m.group("stop").strip()
    as_years = all(re.fullmatch(r"1[1-9]\d\d|20\d\d", n) for n in (start, stop))
    read = _year if as_years else None
    return (f"{read(int(start))} to {read(int(stop))}" if read else f"{_cardinal(start)} to {_cardinal(stop)}")


@_sub(r"(?<![\d,.])\b(?P<year>1[1-9]\d\d|20\d\d)\b(?![,.]\d)")
def _bare_year(m: re.Match) -> str:
    return _year(int(m.group("year")))  # a four-digit number without a comma in prose is nearly always a year


@_sub(r"(?:(?<=\s)|^)[-−](?=\d)")
def _minus(m: re.Match) -> str:
    return "minus "


@_sub(r"(?<![\w.,])(?P<number>" + _NUMBER + r")(?!\w|[,.]\d)")
def _number(m: re.Match) -> str:
    return _cardinal(m.group("number"))


@_sub(r"\s&\s")
def _ampersand(m: re.Match) -> str:
    return " and "


_RULES: tuple[Callable[[str], str], ...] = (
    _abbreviation, _saint, _street, _number_sign, _chapter_numeral, _regnal, _money, _iso_date, _month_day,
    _day_month, _time, _percent, _ordinal, _decade, _range, _bare_year, _minus, _number, _ampersand,
)
