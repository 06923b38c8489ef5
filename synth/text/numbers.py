"""How a number written in digits is said in English.

This module owns reading one number as words, through num2words: cardinals (`1,234`), decimals
(the digits after the point one by one, trailing zeros kept: `2.00` is "two point zero zero"),
digit strings (`004`, phone and account numbers), ordinals, years (`1066` "ten sixty-six"),
fractions (`3/4` "three quarters") and Roman numerals' values. It knows nothing about where a
number sits in a sentence or what it counts: `synth.text.normalize` finds them.
"""

from __future__ import annotations

from synth.errors import SynthError

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_ROMAN_VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}
_MAX_NUMBER_DIGITS = 9  # a longer run of digits with no thousands separators is an id, read digit by digit


class NormalizerError(SynthError, ValueError):
    """A normaliser that cannot run (an optional package missing); the message says how to fix it."""


def words(number: int | float, to: str = "cardinal") -> str:
    """num2words' English `to` form of `number` (cardinal, ordinal, year)."""
    try:
        from num2words import num2words
    except ImportError:
        raise NormalizerError("the light normaliser needs num2words: pip install -e '.[book]' "
                              "(or pip install num2words)") from None

    return num2words(number, to=to, lang="en")


def digits(written: str) -> str:
    """Each digit of `written` as a word: `004` -> "zero zero four"."""
    return " ".join(_DIGITS[int(d)] for d in written if d.isdigit())


def cardinal(written: str) -> str:
    """`1,234`, `3.5`, `.5`, `2.00`, `004` as words; a decimal part is read digit by digit, and
    so is a number with a leading zero or of more than nine digits without separators."""
    whole, point, fraction = written.replace(",", "").partition(".")
    if (len(whole) > 1 and whole.startswith("0")) or (len(whole) > _MAX_NUMBER_DIGITS and "," not in written):
        spoken = digits(whole)
    else:
        spoken = words(int(whole)) if whole else ""
    return f"{spoken} point {digits(fraction)}".strip() if point and fraction else spoken


def ordinal(number: int) -> str:
    return words(number, to="ordinal")


def year(number: int) -> str:
    """`1066` "ten sixty-six", `1905` "nineteen oh-five", `2005` "two thousand and five"."""
    return words(number, to="year")


def ordinal_suffix(number: int) -> str:
    """The suffix English writes after `number` as an ordinal: st, nd, rd or th."""
    if number % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")


def fraction(numerator: int, denominator: int) -> str:
    """`1/2` "one half", `3/4` "three quarters", `31/32` "thirty-one thirty-seconds"."""
    plural = numerator != 1
    if denominator == 2:
        name = "halves" if plural else "half"
    elif denominator == 4:
        name = "quarters" if plural else "quarter"
    else:
        name = ordinal(denominator) + ("s" if plural else "")
    return f"{words(numerator)} {name}"


def roman(numeral: str) -> int:
    """The value of a well-formed Roman numeral, either case."""
    total = 0
    numeral = numeral.upper()
    for ch, following in zip(numeral, [*numeral[1:], ""]):
        value = _ROMAN_VALUES[ch]
        total += -value if following and _ROMAN_VALUES[following] > value else value
    return total
