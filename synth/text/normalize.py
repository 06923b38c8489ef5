"""Written text to its spoken form: the words a reader says for what is printed.

This module owns the light normaliser: ordered regular-expression rules that find the forms a
book or a dialogue writes with digits and abbreviations, and say them with `synth.text.numbers`
(num2words) and the tables of `synth.text.vocabulary` (English):

    Chapter IV, Scene ii, World War II  -> Chapter four, Scene two, World War two
    Henry VIII                          -> Henry the eighth        (regnal numbers after a name)
    $3.50, £20, €1.5m, $20/mo           -> three dollars and fifty cents, ..., twenty dollars per month
    March 3, 1865; 25 Dec; 10/12/2023   -> March third, eighteen sixty-five; the twenty-fifth of December;
                                           October twelfth, twenty twenty-three (`date_order` mdy)
    3:30 p.m., 00:30, 5pm EST           -> three thirty PM, twelve thirty AM, five PM EST
    Call 555-1234., +1 (123) 123-5678   -> five five five, one two three four; plus one, one two three, ...
    5 km, 3 hrs, 2°C, 12kg              -> five kilometers, three hours, two degrees Celsius, twelve kilograms
    1/2, 3 3/4, ½                       -> one half, three and three quarters, one half
    1428 Elm St., Baker St. He was      -> fourteen twenty-eight Elm Street, Baker Street. He was
    in the year 1066, 44 BC, 1920s      -> in the year ten sixty-six, forty-four BC, nineteen twenties
    50%, 21st, 10-20, 3.05, U.S.A.      -> fifty percent, twenty-first, ten to twenty, three point zero five, USA
    Mr., Dr., St. Paul, etc.            -> Mister, Doctor, Saint Paul, et cetera

Rules run in a fixed order, each on what the ones before left, so a date's year is read as a
year, a price's number as money and a phone number digit by digit. Text the rules do not
recognise is left exactly as written. An abbreviation's period that also ends the sentence
(`... Baker St. He was`) is kept. `NemoNormalizer` wraps NeMo's grammar-based normaliser for
users who install it (`pip install nemo_text_processing`); nothing here needs it. The module
knows nothing about books, models or the pipeline.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable, Literal

from synth.text.numbers import (
    NormalizerError,
    cardinal,
    digits,
    fraction,
    ordinal,
    ordinal_suffix,
    roman,
    words,
    year,
)
from synth.text.vocabulary import (
    ABBREVIATIONS,
    COMPASS,
    CURRENCIES,
    MONTH_BY_ABBREVIATION,
    MONTHS,
    PER_UNITS,
    SCALES,
    SENTENCE_STARTS,
    STREET_SUFFIXES,
    STREET_WORDS,
    TIME_ZONES,
    TITLES,
    UNITS,
    US_STATES,
)

Normalizer = Literal["light", "nemo"]
DateOrder = Literal["mdy", "dmy", "ymd"]
DATE_ORDERS: tuple[DateOrder, ...] = ("mdy", "dmy", "ymd")

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"  # 1,234.5 or 1234.5
_AMOUNT = _NUMBER + r"|\.\d+"  # and .5
_ROMAN = r"(?=[MDCLXVI]+\b)M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"
_LOWER_ROMAN = _ROMAN.lower()
_CHAPTER_WORDS = r"(?:chapter|book|part|volume|vol\.|act|scene|canto|section|letter|stave|world war)"
# a month: full (`may`, `march` capitalised only: lower case they are verbs), or abbreviated
_MONTH = (r"(?P<month>\b(?:(?i:january|february|april|june|july|august|september|october|november|december)"
          r"|May|MAY|March|MARCH|(?i:jan|feb|mar|apr|jun|jul|aug|sept|sep|oct|nov|dec)\."
          r"|(?i:jan|feb|apr|jun|jul|aug|sept|sep|oct|nov|dec)(?![a-z])))")
_DAY = r"(?P<day>[12]\d|3[01]|0?[1-9])(?P<suffix>st|nd|rd|th)?(?![\d:.,]\d|\w)"
_FULL_YEAR = r"(?P<year>[12]\d{3})\b(?![,.]\d)"
_HALF = r"(?P<half>[AaPp])\.?\s?[Mm](?:(?P<dot>\.)|(?![A-Za-z]))"  # am, a.m., PM, p.m
_ZONE = r"(?:\s?(?P<zone>(?:" + "|".join(TIME_ZONES) + r")\b|(?i:[ecmp]\.?[sd]\.?t)\b\.?))?"
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_STREET_SUFFIX = "|".join(STREET_SUFFIXES)
_LETTER_NAMES = {"@": "at", ".": "dot", "-": "dash", "_": "underscore", "/": "slash", ":": "colon", "+": "plus",
                 "&": "ampersand", "~": "tilde", "#": "hash", "?": "question mark", "=": "equals"}
_SPECIAL = {"401(k)": "four oh one k", "24/7": "twenty-four seven", "9/11": "nine eleven"}


def spoken_form(text: str, date_order: DateOrder = "mdy") -> str:
    """The light normaliser: `text` with numbers, dates, money and abbreviations as words.
    `date_order` is how a numeric date whose numbers allow several orders is read (10/12/2023:
    `mdy` October twelfth, `dmy` the tenth of December)."""
    for rule in _rules(date_order):
        text = rule(text)
    return text


def normalizer(name: Normalizer, date_order: DateOrder = "mdy") -> Callable[[str], str]:
    """The normaliser called `name`: "light" (this module) or "nemo" (NeMo's, if installed;
    it reads numeric dates month first and takes no `date_order`)."""
    if date_order not in DATE_ORDERS:
        raise ValueError(f"unknown date order {date_order!r}; choose one of {', '.join(DATE_ORDERS)}")
    if name == "light":
        return spoken_form if date_order == "mdy" else functools.partial(spoken_form, date_order=date_order)
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
    nemo = NemoNormalizer(input_case="cased", lang="en")  # builds its grammars once (about 30 s)
    return lambda text: nemo.normalize(text, punct_post_process=True)


# --- helpers ---------------------------------------------------------------------------


def _sub(pattern: str, flags: int = 0):
    """Decorator: a rule replacing each match of `pattern` with what the function returns."""
    compiled = re.compile(pattern, flags)

    def wrap(replace: Callable[[re.Match], str]) -> Callable[[str], str]:
        return functools.wraps(replace)(lambda text: compiled.sub(replace, text))

    return wrap


def _sentence_end(m: re.Match) -> str:
    """"." when the abbreviation `m` matched (its period included) also ends a sentence: the text
    ends there, or a capital or a `?`/`!` follows; else "" (the period was the abbreviation's)."""
    rest = m.string[m.end():]
    return "." if not rest.strip() or re.match(r"\s+[\"“‘'(]*[A-Z]|[?!]", rest) else ""


def _spell(token: str) -> str:
    """An address or code said piece by piece: `a1.b@x.com` -> "a one dot b at x dot com"."""
    pieces = re.findall(r"[A-Za-z]+|\d|.", token)
    said = [digits(p) if p.isdigit() else _LETTER_NAMES.get(p, p) for p in pieces]
    return " ".join(p.upper() if p.lower() in ("http", "https", "www") else p for p in said if p.strip())


def _month(written: str) -> str:
    return MONTHS[MONTH_BY_ABBREVIATION[written.lower()[:3]] - 1]


def _short_year(written: str) -> str:
    """A two-digit year: `98` "ninety-eight", `05` "oh five"."""
    return f"oh {words(int(written))}" if written.startswith("0") else words(int(written))


def _date(month: int, day: int, year_words: str, order: str) -> str:
    if order == "dmy":
        return f"the {ordinal(day)} of {MONTHS[month - 1]}" + (f" {year_words}" if year_words else "")
    return f"{MONTHS[month - 1]} {ordinal(day)}" + (f", {year_words}" if year_words else "")


# --- rules, in order -----------------------------------------------------------------


@_sub(r"``|''")
def _tex_quotes(m: re.Match) -> str:
    return '"'


@_sub(r"(?<![\w/])(?:" + "|".join(re.escape(s) for s in _SPECIAL) + r")(?![\w/])")
def _special(m: re.Match) -> str:
    return _SPECIAL[m.group(0)]


@_sub(r"(?<![\w.@])[A-Za-z0-9][\w.+&-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
def _email(m: re.Match) -> str:
    return _spell(m.group(0))


@_sub(r"(?<![\w@/])(?:(?:https?|ftp|file)://\S+|www\.\S+"
      r"|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|edu|gov|io|uk|fr|de|sm|info)\b(?:/\S*)?)")
def _url(m: re.Match) -> str:
    url, tail = re.match(r"(.*?)([.,;:!?)\]\"']*)$", m.group(0)).groups()  # a sentence's period is no part of it
    return _spell(url) + tail


@_sub(r"(?<![\w,.$£€])(?P<number>\d{1,5})(?P<letter>[A-Z]?)\s+(?:(?P<compass>[NSEW])\.?\s+)?"
      r"(?P<name>(?:(?:[A-Z][\w'’]*|\d+(?:st|nd|rd|th))\s+){1,3}?)"
      r"(?P<suffix>(?i:" + _STREET_SUFFIX + r")\b|(?:" + "|".join(STREET_WORDS) + r")\b)(?P<dot>\.?)"
      r"(?P<city>(?:,\s*[A-Z][a-z]+(?:\s+[A-Z][a-z]+)*)?)(?:,\s*(?P<state>[A-Z]{2})\b(?:\s+(?P<zip>\d{5})\b)?)?")
def _address(m: re.Match) -> str:
    """`1428 Elm St.`, `12 S 1st st`, `2788 San Tomas Expy, Santa Clara, CA 95051`: the house
    number read as a year is, compass points, suffixes and states as words, a ZIP digit by digit."""
    suffix = m.group("suffix")
    said = [year(int(m.group("number"))), m.group("letter"), COMPASS.get(m.group("compass") or "", ""),
            m.group("name").strip(), STREET_SUFFIXES.get(suffix.capitalize(), suffix)]
    said = " ".join(p for p in said if p)
    if m.group("dot"):
        said += _sentence_end(m) if not (m.group("city") or m.group("state")) else ""
    said += m.group("city")
    if m.group("state"):
        said += ", " + US_STATES.get(m.group("state"), m.group("state"))
    return said + (" " + digits(m.group("zip")) if m.group("zip") else "")


@_sub(r"\b(?P<state>[A-Z]{2})\s+(?P<zip>\d{5})(?:-\d{4})?\b")
def _state_zip(m: re.Match) -> str:
    if m.group("state") not in US_STATES:
        return m.group(0)
    return f"{US_STATES[m.group('state')]} {digits(m.group('zip'))}"


@_sub(r"(?<=[A-Za-z] )(?P<suffix>" + _STREET_SUFFIX + r")\b(?P<dot>\.?)")
def _street(m: re.Match) -> str:
    """`Baker St.`, `Mulholland Dr. He`: a suffix after a capitalised name (a title before a
    name, `St. Paul`, `Dr. Watson`, is left for the rules after this one)."""
    before = re.search(r"(?:[A-Z][\w'’]*|\d+(?:st|nd|rd|th)) $", m.string[:m.start()])
    following = re.match(r"\s+[\"“‘(]*([A-Z][\w'’]*)", m.string[m.end():])
    if before is None or (following and following.group(1) not in SENTENCE_STARTS):
        return m.group(0)
    return STREET_SUFFIXES[m.group("suffix")] + (_sentence_end(m) if m.group("dot") else "")


@_sub(r"\bSt\.?(?=\s+[A-Z])")
def _saint(m: re.Match) -> str:
    return "Saint"


@_sub(r"(?<![\w.])(" + "|".join(re.escape(a) for a in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?!\w)")
def _abbreviation(m: re.Match) -> str:
    spoken = ABBREVIATIONS[m.group(1)]
    return spoken + ("" if spoken in TITLES or not m.group(1).endswith(".") else _sentence_end(m))


@_sub(r"\b(No|Nos|no)\.\s*(?=\d)")
def _number_sign(m: re.Match) -> str:
    return "numbers " if m.group(1) == "Nos" else "number "


@_sub(r"\b(?=[A-Z])((?i:" + _CHAPTER_WORDS + r"))(\s+)(" + _ROMAN + "|" + _LOWER_ROMAN + r")\b(?!['’])")
def _chapter_numeral(m: re.Match) -> str:
    """`Chapter IV`, `Scene ii`, `World War II`: a numeral counting chapters or wars, as a number."""
    if m.group(3) in ("", "L", "C", "D", "M", "i", "l", "c", "d", "m"):  # `Part I’ve`; `Section D`; `act i`
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{words(roman(m.group(3)))}"


@_sub(r"\b([A-Z][a-z]+)\s+(" + _ROMAN + r")\b(?!['’])")
def _regnal(m: re.Match) -> str:
    name, numeral = m.group(1), m.group(2)
    # regnal numbers are I, V and X only (Louis XIV, Henry V); not `Then I` (the pronoun), `Malcolm X`, `Section D`
    if numeral in ("", "I", "X") or set(numeral) - set("IVX"):
        return m.group(0)
    return f"{name} the {ordinal(roman(numeral))}"


@_sub(r"(?<![\w+.\-/])(?:\+(?P<country>\d{1,3})[\s-]?|(?P<trunk>1)-)?(?:\((?P<area>\d{3})\)\s?|(?P<area2>\d{3})[-.])"
      r"(?P<exchange>\d{3})[-.](?P<line>\d{4})(?:-(?P<extension>\d{1,4}))?(?![\w]|[-.]\d)")
def _phone(m: re.Match) -> str:
    """`+1 (123) 123-5678`, `1-800-555-1234`, `555.555.5555`: each group digit by digit
    (an area code such as 800 as a number), the groups apart."""
    area = m.group("area") or m.group("area2")
    groups = ["plus " + words(int(m.group("country"))) if m.group("country") else m.group("trunk") and "one",
              words(int(area)) if area.endswith("00") else digits(area), digits(m.group("exchange")),
              digits(m.group("line")), m.group("extension") and digits(m.group("extension"))]
    return ", ".join(g for g in groups if g)


@_sub(r"(?<![\w+.\-/$£€])(?P<a>\d{3})-(?:(?P<b>\d{2})-)?(?P<c>\d{4})(?![\w]|[-.,]\d)")
def _short_phone(m: re.Match) -> str:
    """`555-1234` (a local number, not a range: no leading 0 or 1, not round) and `111-11-1111`."""
    a, b, c = m.group("a"), m.group("b"), m.group("c")
    if b is None and (a[0] in "01" or int(a) % 100 == 0 or int(c) % 100 == 0):
        return m.group(0)
    return ", ".join(digits(g) for g in (a, b, c) if g)


@_sub(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
def _ip_address(m: re.Match) -> str:
    return " dot ".join(digits(part) for part in m.group(0).split("."))


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


@_sub(r"\b(?P<hour>[01]?\d|2[0-3])(?:(?P<sep>[:.])(?P<minute>[0-5]\d)(?::(?P<second>[0-5]\d))?)?"
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
    return said + half + zone + (_sentence_end(m) if ended else "")


def _hour(hour: int) -> str:
    return "twelve" if hour == 0 else words(hour)


def _count(number: int, unit: str) -> str:
    return f"{words(number)} {unit}{'' if number == 1 else 's'}"


@_sub(r"(?<=[AP]M)\s?[-–]\s?(?=\w)")
def _time_range(m: re.Match) -> str:
    return " to "


@_sub(_MONTH + r"(?:\s+|-)" + _DAY + r"(?:(?P<comma>,?)\s+" + _FULL_YEAR + ")?")
def _month_day(m: re.Match) -> str:
    """`March 3, 1865`, `july 25 2012`, `Jan. 15`, `Jan-15`."""
    said = f"{_month(m.group('month'))} {ordinal(int(m.group('day')))}"
    return said + (f"{m.group('comma')} {year(int(m.group('year')))}" if m.group("year") else "")


@_sub(r"(?P<the>\bthe\s+)?\b" + _DAY + r"(?:\s+of)?(?:\s+|-)" + _MONTH + r"(?:,?\s+" + _FULL_YEAR + ")?")
def _day_month(m: re.Match) -> str:
    """`3 March 1865`, `the 22nd of May`, `25 sept.`: the third of March eighteen sixty-five."""
    said = f"{m.group('the') or 'the '}{ordinal(int(m.group('day')))} of {_month(m.group('month'))}"
    if m.group("year"):
        return f"{said} {year(int(m.group('year')))}"
    return said + (_sentence_end(m) if m.group("month").endswith(".") else "")


@_sub(_MONTH + r"\s+" + _FULL_YEAR)
def _month_year(m: re.Match) -> str:
    return f"{_month(m.group('month'))} {year(int(m.group('year')))}"


@_sub(r"(?P<symbol>US\$|[$£€¥₩₹])\s?(?P<amount>" + _AMOUNT + r")"
      r"(?:\s?(?P<scale>(?i:thousand|million|billion|trillion|bn|k|m|b))\b)?(?:/(?P<per>[A-Za-z]+)\b)?"
      r"(?P<to>\s?[-–]\s?(?=[$£€¥₩₹]))?")
def _money(m: re.Match) -> str:
    """`$3.50`, `£1.111`, `$.01`, `€1.5m`, `US$76.3 trillion`, `$20/mo`, `$250-$300`."""
    unit, units, subunit, subunits = CURRENCIES[m.group("symbol")]
    amount = m.group("amount").replace(",", "")
    whole, _, decimals = amount.partition(".")
    if m.group("scale"):
        said = f"{cardinal(amount)} {SCALES[m.group('scale').lower()]} {units}"
    elif decimals[2:].strip("0"):  # £1.111: a price per unit, not pounds and pence
        said = f"{cardinal(amount)} {units}"
    else:
        cents = int(decimals[:2].ljust(2, "0")) if decimals else 0
        parts = [f"{words(int(whole or 0))} {unit if whole and int(whole) == 1 else units}"] \
            if (whole and int(whole)) or not cents else []
        said = " and ".join(parts + ([f"{words(cents)} {subunit if cents == 1 else subunits}"] if cents else []))
    if m.group("per"):
        said += f" per {_per_unit(m.group('per'))}"
    return said + (" to " if m.group("to") else "")


def _per_unit(written: str) -> str:
    return UNITS[written][0] if written in UNITS else PER_UNITS.get(written, written)


@_sub(r"(?<![\w.])(?P<a>" + _NUMBER + r")\s?(?:x|×)(?:\s?(?P<b>" + _NUMBER + r")\b|(?![\w]))")
def _times_sign(m: re.Match) -> str:
    """`2x8` two by eight; `4.4x` four point four x."""
    return f"{m.group('a')} by {m.group('b')}" if m.group("b") else f"{m.group('a')} x"


@_sub(r"(?<![\w.])(?P<number>" + _AMOUNT + r")(?P<join>\s?/\s?|-|\s?)(?P<unit>" + _UNIT + r")"
      r"(?:/(?P<per>" + _UNIT + "|" + "|".join(PER_UNITS) + r"))?(?![\w²³/])")
def _measure(m: re.Match) -> str:
    """`12kg` 12 kilograms, `5-km` 5-kilometer, `12/kg` 12 per kilogram, `3 cc/s`: the unit as
    words (the number is read by the rules after)."""
    singular, plural = UNITS[m.group("unit")]
    join = m.group("join").strip()
    if join == "/":
        said = f"{m.group('number')} per {singular}"
    elif join == "-":
        said = f"{m.group('number')}-{singular}"
    else:
        said = f"{m.group('number')} {singular if m.group('number') == '1' else plural}"
    return said + (f" per {_per_unit(m.group('per'))}" if m.group("per") else "")


@_sub(r"(?<![\w.])(?:(?P<start>" + _NUMBER + r")\s?[-–]\s?)?(?P<number>" + _NUMBER + r")\s?(?:%|percent\b|per cent\b)")
def _percent(m: re.Match) -> str:
    start = f"{cardinal(m.group('start'))} to " if m.group("start") else ""
    return f"{start}{cardinal(m.group('number'))} percent"


@_sub(r"(?<![\w/.,])(?:(?P<whole>\d{1,3})\s+)?(?P<numerator>\d+)/(?P<denominator>\d+)(?i:st|nd|rd|th)?"
      r"(?![\w/]|[.,]\d)")
def _fraction(m: re.Match) -> str:
    """`1/2` one half, `3 2/4` three and two quarters, `31/32`, `1/4th`."""
    denominator = int(m.group("denominator"))
    if denominator == 0:
        return m.group(0)
    said = fraction(int(m.group("numerator")), denominator)
    return f"{words(int(m.group('whole')))} and {said}" if m.group("whole") else said


@_sub(r"(?<![\w.])(?:(?P<whole>\d+)\s?)?(?P<vulgar>[½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅐⅛⅜⅝⅞⅑⅒])")
def _vulgar_fraction(m: re.Match) -> str:
    """`½` one half, `2¾` two and three quarters (Unicode's own fraction characters)."""
    codes = unicodedata.decomposition(m.group("vulgar")).split()[1:]  # `<fraction> 0031 2044 0032`: 1⁄2
    numerator, denominator = map(int, "".join(chr(int(c, 16)) for c in codes).split("\u2044"))
    said = fraction(numerator, denominator)
    if not m.group("whole"):
        return said
    return f"{words(int(m.group('whole')))} and {'a ' + said.split(' ', 1)[1] if numerator == 1 else said}"


@_sub(r"(?<![\w.,])(?P<number>\d{1,3}(?:,\d{3})+|\d+)(?P<suffix>(?i:st|nd|rd|th))\b")
def _ordinal(m: re.Match) -> str:
    """`21st`, `1,000th`; `4rd`, a wrong suffix, is read as written: four rd."""
    number = int(m.group("number").replace(",", ""))
    if m.group("suffix").lower() != ordinal_suffix(number):
        return f"{cardinal(m.group('number'))} {m.group('suffix')}"
    return ordinal(number)


_DECADE = r"(?:\b(?P<decade{n}>1[1-9]\d0|20\d0)|(?<![\w'’])['’]?(?P<short{n}>[2-9]0))['’]?s\b"


@_sub(_DECADE.format(n=1) + r"(?:\s?[-–]\s?" + _DECADE.format(n=2) + ")?")
def _decade(m: re.Match) -> str:
    """`the 1920s`, `the '80s`, `1960s-1980s`."""
    said = [_decade_words(m.group(f"decade{n}"), m.group(f"short{n}")) for n in (1, 2)]
    return " to ".join(s for s in said if s)


def _decade_words(decade: str | None, short: str | None) -> str:
    if not (decade or short):
        return ""
    said = year(int(decade)) if decade else words(int(short))
    return said[:-1] + "ies" if said.endswith("y") else said + "s"


@_sub(r"(?<![\d,.$£€¥\-–])\b(?P<start>" + _NUMBER + r")\s?[-–](?=\s?\d)(?P<stop>\s?" + _NUMBER + r")\b(?![,.]\d|[-–]\d)")
def _range(m: re.Match) -> str:
    """`10-20` ten to twenty, `1914-1918`; a pair going down (`978-0`, a score `3-2`) is no range."""
    start, stop = m.group("start"), m.group("stop").strip()
    if float(start.replace(",", "")) >= float(stop.replace(",", "")):
        return m.group(0)
    if all(re.fullmatch(r"1[1-9]\d\d|20\d\d", n) for n in (start, stop)):
        return f"{year(int(start))} to {year(int(stop))}"
    return f"{cardinal(start)} to {cardinal(stop)}"


@_sub(r"(?<=\d)\s?\+\s?(?=\d)")
def _plus(m: re.Match) -> str:
    return " plus "


@_sub(r"(?<![\w.,])(?:(?P<number>\d{1,4})\s?(?P<era>BCE|BC|CE|AD|B\.C\.E\.|B\.C\.|A\.D\.|C\.E\.)"
      r"|(?P<before>AD|A\.D\.)\s?(?P<ad>\d{1,4}))(?![\w])")
def _era(m: re.Match) -> str:
    """`44 BC`, `AD 79`, `1200 B.C.`: the number as a year, the era as letters."""
    if m.group("ad"):
        return f"AD {year(int(m.group('ad')))}"
    era = m.group("era")
    return f"{year(int(m.group('number')))} {era.replace('.', '')}" + (_sentence_end(m) if era.endswith(".") else "")


@_sub(r"\b(?P<context>[Yy]ear|in|In|by|By|since|Since|until|from|before|after|of|circa|c\.)\s+(?P<year>\d{3,4})\b"
      r"(?![,.]\d|\s*(?:%|percent))")
def _year_in_context(m: re.Match) -> str:
    """`in the year 1066`, `by 1050`: a year of any era where the words before say it is one
    (four digits after a preposition; any number after `year`)."""
    number = int(m.group("year"))
    if m.group("context").lower() != "year" and not 1000 <= number < 1100:
        return m.group(0)  # `in 300 years`; 1100-2099 are years anyway (next rule)
    return f"{m.group('context')} {year(number)}"


@_sub(r"(?<![\d,.])\b(?P<year>1[1-9]\d\d|20\d\d)\b(?![,.]\d)")
def _bare_year(m: re.Match) -> str:
    return year(int(m.group("year")))  # a four-digit number without a comma in prose is nearly always a year


@_sub(r"(?:(?<=[\s(?!,;:])|^)[-−](?=\.?\d)")
def _minus(m: re.Match) -> str:
    return "minus "


@_sub(r"(?<![\w.,])(?P<number>" + _NUMBER + r")(?=[A-Za-z]+\b)")
def _glued(m: re.Match) -> str:
    return m.group("number") + " "  # `12text`, `16c`: the number apart from the letters


@_sub(r"(?<![\w.])(?<!\d,)(?P<number>" + _AMOUNT + r")(?![\w]|[,.]\d)")
def _number(m: re.Match) -> str:
    return cardinal(m.group("number"))


@_sub(r"(?<![\w.])(?P<letters>(?:[A-Z]\.){2,})")
def _initialism(m: re.Match) -> str:
    """`U.S.A.` USA: letters said one by one either way; the last period kept at the text's end."""
    return m.group("letters").replace(".", "") + ("." if not m.string[m.end():].strip() else "")


@_sub(r"(?:(?<=\s)|^)(?P<symbol>[$%])(?=\s|$)")
def _lone_symbol(m: re.Match) -> str:
    return "dollar" if m.group("symbol") == "$" else "percent"


@_sub(r"\s*&\s*")
def _ampersand(m: re.Match) -> str:
    return "and " if m.start() == 0 else " and "  # `Tom & Jerry`, `R&D`


@functools.lru_cache(maxsize=len(DATE_ORDERS))
def _rules(date_order: DateOrder) -> tuple[Callable[[str], str], ...]:
    """The rules in the order they run, the numeric dates read in `date_order`."""
    def numeric_dates(text: str) -> str:
        return _NUMERIC_DATE.sub(lambda m: _numeric_date(m, date_order), text)

    return (
        _tex_quotes, _special, _email, _url, _address, _state_zip, _street, _saint, _abbreviation, _number_sign,
        _chapter_numeral, _regnal, _phone, _short_phone, _ip_address, numeric_dates, _time, _time_range,
        _month_day, _day_month, _month_year, _money, _times_sign, _measure, _percent, _fraction, _vulgar_fraction,
        _ordinal, _decade, _range, _plus, _era, _year_in_context, _bare_year, _minus, _glued, _number,
        _initialism, _lone_symbol, _ampersand,
    )
