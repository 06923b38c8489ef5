"""The machinery of the light normaliser's rules, shared by the modules that hold them.

This module owns what a rule is (a regular expression, and a function saying what each match is
read as, applied to a whole text) and the one judgement rules share: whether an abbreviation's
period also ends its sentence. It knows no rule itself: `synth.text.normalize` and
`synth.text.dates` hold them, and `normalize` decides their order.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

Rule = Callable[[str], str]


def rule(pattern: str, flags: int = 0):
    """Decorator: a rule replacing each match of `pattern` with what the function returns."""
    compiled = re.compile(pattern, flags)

    def wrap(replace: Callable[[re.Match], str]) -> Rule:
        return functools.wraps(replace)(lambda text: compiled.sub(replace, text))

    return wrap


def sentence_end(m: re.Match) -> str:
    """"." when the abbreviation `m` matched (its period included) also ends a sentence: the text
    ends there, or a capital or a `?`/`!` follows; else "" (the period was the abbreviation's)."""
    rest = m.string[m.end():]
    return "." if not rest.strip() or re.match(r"\s+[\"“‘'(]*[A-Z]|[?!]", rest) else ""
