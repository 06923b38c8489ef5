"""Written text to its spoken form: the words a reader says for what is printed.

This module owns the light normaliser: the order of its regular-expression rules (see
`synth.text.rules`), which find the forms a book or a dialogue writes with digits and
abbreviations and say them with `synth.text.numbers` (num2words) and the tables of
`synth.text.vocabulary` (English), and the rules for everything but dates, years and times
(`synth.text.dates`); and the choice between it and NeMo's normaliser:

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
(`... Baker St. He was`) is kept. `normalizer("nemo")` wraps NeMo's grammar-based normaliser
for users who install it (`pip install nemo_text_processing`); nothing here needs it. The
module knows nothing about books, models or the pipeline.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable, Literal

from synth.text.dates import DATE_ORDERS, YEAR_RULES, DateOrder, date_and_time_rules
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
from synth.text.rules import Rule, rule, sentence_end
from synth.text.vocabulary import (
    ABBREVIATIONS,
    COMPASS,
    CURRENCIES,
    PER_UNITS,
    SCALES,
    SENTENCE_STARTS,
    STREET_SUFFIXES,
    STREET_WORDS,
    TITLES,
    UNITS,
    US_STATES,
)

Normalizer = Literal["light", "nemo"]

_NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"  # 1,234.5 or 1234.5
_AMOUNT = _NUMBER + r"|\.\d+"  # and .5
_ROMAN = r"(?=[MDCLXVI]+\b)M{0,3}(?:CM|CD|D?C{0,3})(?:XC|XL|L?X{0,3})(?:IX|IV|V?I{0,3})"
_LOWER_ROMAN = _ROMAN.lower()
_CHAPTER_WORDS = r"(?:chapter|book|part|volume|vol\.|act|scene|canto|section|letter|stave|world war)"
_UNIT = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_STREET_SUFFIX = "|".join(STREET_SUFFIXES)
_LETTER_NAMES = {"@": "at", ".": "dot", "-": "dash", "_": "underscore", "/": "slash", ":": "colon", "+": "plus",
                 "&": "ampersand", "~": "tilde", "#": "hash", "?": "question mark", "=": "equals"}
_SPECIAL = {"401(k)": "four oh one k", "24/7": "twenty-four seven", "9/11": "nine eleven"}


def spoken_form(text: str, date_order: DateOrder = "mdy") -> str:
    """The light normaliser: `text` with numbers, dates, money and abbreviations as words.
    `date_order` is how a numeric date whose numbers allow several orders is read (10/12/2023:
    `mdy` October twelfth, `dmy` the tenth of December)."""
    for apply in _rules(date_order):
        text = apply(text)
    return text


def normalizer(name: Normalizer, date_order: DateOrder = "mdy") -> Callable[[str], str]:
    """The normaliser called `name`: "light" (this module) or "nemo" (NeMo's, if installed;
    it reads numeric dates month first and takes no `date_order`)."""
    if date_order not in DATE_ORDERS:
        raise ValueError(f"unknown date order {date_order!r}; choose one of {', '.join(DATE_ORDERS)}")
    if name == "light":
        return spoken_form if date_order == "mdy" else functools.partial(spoken_form, date_order=date_order)
    if name == "nemo":
        if date_order != "mdy":
            raise ValueError(f"date order {date_order!r} is the light normaliser's; NeMo's reads month first")
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


def _spell(token: str) -> str:
    """An address or code said piece by piece: `a1.b@x.com` -> "a one dot b at x dot com"."""
    pieces = re.findall(r"[A-Za-z]+|\d|.", token)
    said = [digits(p) if p.isdigit() else _LETTER_NAMES.get(p, p) for p in pieces]
    return " ".join(p.upper() if p.lower() in ("http", "https", "www") else p for p in said if p.strip())


# --- rules, in order -----------------------------------------------------------------


@rule(r"``|''")
def _tex_quotes(m: re.Match) -> str:
    return '"'


@rule(r"(?<![\w/])(?:" + "|".join(re.escape(s) for s in _SPECIAL) + r")(?![\w/])")
def _special(m: re.Match) -> str:
    return _SPECIAL[m.group(0)]


@rule(r"(?<![\w.@])[A-Za-z0-9][\w.+&-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
def _email(m: re.Match) -> str:
    return _spell(m.group(0))


@rule(r"(?<![\w@/])(?:(?:https?|ftp|file)://\S+|www\.\S+"
      r"|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.(?:com|org|net|edu|gov|io|uk|fr|de|sm|info)\b(?:/\S*)?)")
def _url(m: re.Match) -> str:
    url, tail = re.match(r"(.*?)([.,;:!?)\]\"']*)$", m.group(0)).groups()  # a sentence's period is no part of it
    return _spell(url) + tail


@rule(r"(?<![\w,.$£€])(?P<number>\d{1,5})(?P<letter>[A-Z]?)\s+(?:(?P<compass>[NSEW])\.?\s+)?"
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
        said += sentence_end(m) if not (m.group("city") or m.group("state")) else ""
    said += m.group("city")
    if m.group("state"):
        said += ", " + US_STATES.get(m.group("state"), m.group("state"))
    return said + (" " + digits(m.group("zip")) if m.group("zip") else "")


@rule(r"\b(?P<state>[A-Z]{2})\s+(?P<zip>\d{5})(?:-\d{4})?\b")
def _state_zip(m: re.Match) -> str:
    if m.group("state") not in US_STATES:
        return m.group(0)
    return f"{US_STATES[m.group('state')]} {digits(m.group('zip'))}"


@rule(r"(?<=[A-Za-z] )(?P<suffix>" + _STREET_SUFFIX + r")\b(?P<dot>\.?)")
def _street(m: re.Match) -> str:
    """`Baker St.`, `Mulholland Dr. He`: a suffix after a capitalised name (a title before a
    name, `St. Paul`, `Dr. Watson`, is left for the rules after this one)."""
    before = re.search(r"(?:[A-Z][\w'’]*|\d+(?:st|nd|rd|th)) $", m.string[:m.start()])
    following = re.match(r"\s+[\"“‘(]*([A-Z][\w'’]*)", m.string[m.end():])
    if before is None or (following and following.group(1) not in SENTENCE_STARTS):
        return m.group(0)
    return STREET_SUFFIXES[m.group("suffix")] + (sentence_end(m) if m.group("dot") else "")


@rule(r"\bSt\.?(?=\s+[A-Z])")
def _saint(m: re.Match) -> str:
    return "Saint"


@rule(r"(?<![\w.])(" + "|".join(re.escape(a) for a in sorted(ABBREVIATIONS, key=len, reverse=True)) + r")(?!\w)")
def _abbreviation(m: re.Match) -> str:
    spoken = ABBREVIATIONS[m.group(1)]
    return spoken + ("" if spoken in TITLES or not m.group(1).endswith(".") else sentence_end(m))


@rule(r"\b(No|Nos|no)\.\s*(?=\d)")
def _number_sign(m: re.Match) -> str:
    return "numbers " if m.group(1) == "Nos" else "number "


@rule(r"\b(?=[A-Z])((?i:" + _CHAPTER_WORDS + r"))(\s+)(" + _ROMAN + "|" + _LOWER_ROMAN + r")\b(?!['’])")
def _chapter_numeral(m: re.Match) -> str:
    """`Chapter IV`, `Scene ii`, `World War II`: a numeral counting chapters or wars, as a number."""
    if m.group(3) in ("", "L", "C", "D", "M", "i", "l", "c", "d", "m"):  # `Part I’ve`; `Section D`; `act i`
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{words(roman(m.group(3)))}"


@rule(r"\b([A-Z][a-z]+)\s+(" + _ROMAN + r")\b(?!['’](?!s\b))")  # `Louis XVI’s`, not `I’ve`
def _regnal(m: re.Match) -> str:
    name, numeral = m.group(1), m.group(2)
    # regnal numbers are I, V and X only (Louis XIV, Henry V); not `Then I` (the pronoun), `Malcolm X`, `Section D`
    if numeral in ("", "I", "X") or set(numeral) - set("IVX"):
        return m.group(0)
    return f"{name} the {ordinal(roman(numeral))}"


_OPERATORS = {"+": "plus", "-": "minus", "*": "times", "×": "times", "/": "divided by", "=": "equals"}
_TERM = r"(?:\d+(?:\.\d+)?|[A-Za-z])"


@rule(r"(?<![\w.=+*/-])" + _TERM + r"(?:\s?[-+*×/=]\s?" + _TERM + r")+(?![\w.=+*/-])")
def _equation(m: re.Match) -> str:
    """`2+2=4`, `y=x +1`: an equation (an `=` in it) read with its operators as words."""
    if "=" not in m.group(0):
        return m.group(0)
    return re.sub(r"\s?([-+*×/=])\s?", lambda o: f" {_OPERATORS[o.group(1)]} ", m.group(0))


@rule(r"(?<![\w+.\-/])(?:\+(?P<country>\d{1,3})[\s-]?|(?P<trunk>1)-)?(?:\((?P<area>\d{3})\)\s?|(?P<area2>\d{3})[-.])"
      r"(?P<exchange>\d{3})[-.](?P<line>\d{4})(?:-(?P<extension>\d{1,4}))?(?![\w]|[-.]\d)")
def _phone(m: re.Match) -> str:
    """`+1 (123) 123-5678`, `1-800-555-1234`, `555.555.5555`: each group digit by digit
    (an area code such as 800 as a number), the groups apart."""
    area = m.group("area") or m.group("area2")
    groups = ["plus " + words(int(m.group("country"))) if m.group("country") else m.group("trunk") and "one",
              words(int(area)) if area.endswith("00") else digits(area), digits(m.group("exchange")),
              digits(m.group("line")), m.group("extension") and digits(m.group("extension"))]
    return ", ".join(g for g in groups if g)


@rule(r"(?<![\w+.\-/$£€])(?P<a>\d{3})-(?:(?P<b>\d{2})-)?(?P<c>\d{4})(?![\w]|[-.,]\d)")
def _short_phone(m: re.Match) -> str:
    """`555-1234` (a local number, not a range: no leading 0 or 1, not round) and `111-11-1111`."""
    a, b, c = m.group("a"), m.group("b"), m.group("c")
    if b is None and (a[0] in "01" or int(a) % 100 == 0 or int(c) % 100 == 0):
        return m.group(0)
    return ", ".join(digits(g) for g in (a, b, c) if g)


@rule(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
def _ip_address(m: re.Match) -> str:
    return " dot ".join(digits(part) for part in m.group(0).split("."))


@rule(r"(?P<symbol>US\$|[$£€¥₩₹])\s?(?P<amount>" + _AMOUNT + r")"
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


@rule(r"(?<![\w.])(?P<a>" + _NUMBER + r")\s?(?:x|×)(?:\s?(?P<b>" + _NUMBER + r")\b|(?![\w]))")
def _times_sign(m: re.Match) -> str:
    """`2x8` two by eight; `4.4x` four point four x."""
    return f"{m.group('a')} by {m.group('b')}" if m.group("b") else f"{m.group('a')} x"


@rule(r"(?<![\w.])(?P<number>" + _AMOUNT + r")(?P<join>\s?/\s?|-|\s?)(?P<unit>" + _UNIT + r")"
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


@rule(r"(?<![\w.])(?:(?P<start>" + _NUMBER + r")\s?[-–]\s?)?(?P<number>" + _NUMBER + r")\s?(?:%|percent\b|per cent\b)")
def _percent(m: re.Match) -> str:
    start = f"{cardinal(m.group('start'))} to " if m.group("start") else ""
    return f"{start}{cardinal(m.group('number'))} percent"


@rule(r"(?<![\w/.,])(?:(?P<whole>\d{1,3})\s+)?(?P<numerator>\d+)/(?P<denominator>\d+)(?i:st|nd|rd|th)?"
      r"(?![\w/]|[.,]\d)")
def _fraction(m: re.Match) -> str:
    """`1/2` one half, `3 2/4` three and two quarters, `31/32`, `1/4th`."""
    denominator = int(m.group("denominator"))
    if denominator == 0:
        return m.group(0)
    said = fraction(int(m.group("numerator")), denominator)
    return f"{words(int(m.group('whole')))} and {said}" if m.group("whole") else said


@rule(r"(?<![\w.])(?:(?P<whole>\d+)\s?)?(?P<vulgar>[½⅓⅔¼¾⅕⅖⅗⅘⅙⅚⅐⅛⅜⅝⅞⅑⅒])")
def _vulgar_fraction(m: re.Match) -> str:
    """`½` one half, `2¾` two and three quarters (Unicode's own fraction characters)."""
    codes = unicodedata.decomposition(m.group("vulgar")).split()[1:]  # `<fraction> 0031 2044 0032`: 1⁄2
    numerator, denominator = map(int, "".join(chr(int(c, 16)) for c in codes).split("\u2044"))
    said = fraction(numerator, denominator)
    if not m.group("whole"):
        return said
    return f"{words(int(m.group('whole')))} and {'a ' + said.split(' ', 1)[1] if numerator == 1 else said}"


@rule(r"(?<![\w.,])(?P<number>\d{1,3}(?:,\d{3})+|\d+)(?P<suffix>(?i:st|nd|rd|th))\b")
def _ordinal(m: re.Match) -> str:
    """`21st`, `1,000th`; `4rd`, a wrong suffix, is read as written: four rd."""
    number = int(m.group("number").replace(",", ""))
    if m.group("suffix").lower() != ordinal_suffix(number):
        return f"{cardinal(m.group('number'))} {m.group('suffix')}"
    return ordinal(number)


@rule(r"(?<![\w.,])(?P<number>10+)['’]?s\b")
def _round_plural(m: re.Match) -> str:
    return words(int(m.group("number"))).split()[-1] + "s"  # `100s of people`: hundreds; `1000s`: thousands


@rule(r"(?<![\d,.$£€¥\-–])\b(?P<start>" + _NUMBER + r")\s?[-–](?=\s?\d)(?P<stop>\s?" + _NUMBER + r")\b"
      r"(?![,.]\d|[-–]\d)")
def _range(m: re.Match) -> str:
    """`10-20` ten to twenty, `1914-1918`, `1914-18`; a pair going down (`978-0`, a score `3-2`) is no range."""
    start, stop = m.group("start"), m.group("stop").strip()
    if re.fullmatch(r"1[1-9]\d\d|20\d\d", start) and re.fullmatch(r"\d\d", stop) and int(stop) > int(start) % 100:
        return f"{year(int(start))} to {words(int(stop))}"  # 1914-18, 1990-91
    if float(start.replace(",", "")) >= float(stop.replace(",", "")):
        return m.group(0)
    if all(re.fullmatch(r"1[1-9]\d\d|20\d\d", n) for n in (start, stop)):
        return f"{year(int(start))} to {year(int(stop))}"
    return f"{cardinal(start)} to {cardinal(stop)}"


@rule(r"(?<=\d)\s?\+\s?(?=\d)")
def _plus(m: re.Match) -> str:
    return " plus "


@rule(r"(?:(?<=[\s(?!,;:])|^)[-−](?=\.?\d)")
def _minus(m: re.Match) -> str:
    return "minus "


@rule(r"(?<![\w.,])(?P<number>" + _NUMBER + r")(?=[A-Za-z]+\b)")
def _glued(m: re.Match) -> str:
    return m.group("number") + " "  # `12text`, `16c`: the number apart from the letters


@rule(r"(?<![\w.])(?<!\d,)(?P<number>" + _AMOUNT + r")(?![\w]|[,.]\d)")
def _number(m: re.Match) -> str:
    return cardinal(m.group("number"))


@rule(r"(?<![\w.])(?P<letters>(?:[A-Z]\.){2,})")
def _initialism(m: re.Match) -> str:
    """`U.S.A.` USA: letters said one by one either way; the last period kept at the text's end."""
    return m.group("letters").replace(".", "") + ("." if not m.string[m.end():].strip() else "")


@rule(r"(?:(?<=\s)|^)(?P<symbol>[$%])(?=\s|$)")
def _lone_symbol(m: re.Match) -> str:
    return "dollar" if m.group("symbol") == "$" else "percent"


@rule(r"\s*&\s*")
def _ampersand(m: re.Match) -> str:
    """`Tom & Jerry`, `R&D`: R and D; after punctuation (`;&hi`) no space before the word."""
    spaced = m.group(0)[0].isspace() or (m.start() > 0 and m.string[m.start() - 1].isalnum())
    return " and " if spaced else "and "


@functools.lru_cache(maxsize=len(DATE_ORDERS))
def _rules(date_order: DateOrder) -> tuple[Rule, ...]:
    """The rules in the order they run, the numeric dates read in `date_order`."""
    return (
        _tex_quotes, _special, _email, _url, _equation, _number_sign, _address, _state_zip, _street, _saint,
        _abbreviation, _chapter_numeral, _regnal, _phone, _short_phone, _ip_address, *date_and_time_rules(date_order),
        _money, _times_sign, _measure, _percent, _fraction, _vulgar_fraction, _ordinal, _round_plural, _range, _plus,
        *YEAR_RULES, _minus, _glued, _number, _initialism, _lone_symbol, _ampersand,
    )
