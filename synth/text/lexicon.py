"""A pronunciation lexicon: the user's respellings of words the model says wrong.

This module owns the lexicon file's format and applying it to text (after
normalisation, so a respelling is never read as a number). The file is UTF-8 text,
one entry per line, `#` starting a comment:

    # word or phrase = how to say it
    Hermione = her-MY-oh-nee
    Daenerys = duh-NAIR-iss
    Sméagol = SMAY-uh-gol

A word matches whole (not inside a longer word) and regardless of case; a longer entry
wins over a shorter one inside it; the respelling replaces it as written. It knows
nothing about files' locations (the caller reads the bytes), models or the pipeline.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from synth.errors import SynthError


class LexiconError(SynthError, ValueError):
    """A lexicon file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Lexicon:
    entries: dict[str, str]  # word (as written in the file) -> respelling

    def __post_init__(self):
        by_key = {word.casefold(): spoken for word, spoken in self.entries.items()}
        words = sorted(self.entries, key=len, reverse=True)  # longest first: `New York` before `York`
        pattern = r"(?<!\w)(?:" + "|".join(re.escape(w) for w in words) + r")(?!\w)" if words else r"(?!)"
        object.__setattr__(self, "_by_key", by_key)
        object.__setattr__(self, "_pattern", re.compile(pattern, re.IGNORECASE))

    def apply(self, text: str) -> str:
        """`text` with every lexicon word replaced by its respelling."""
        return self._pattern.sub(lambda m: self._by_key[m.group(0).casefold()], text)


def parse_lexicon(content: str, name: str = "lexicon") -> Lexicon:
    """Read a lexicon file's text; `name` (its path) is what errors cite."""
    entries: dict[str, str] = {}
    seen: dict[str, int] = {}
    for number, raw in enumerate(content.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        word, sep, spoken = (part.strip() for part in line.partition("="))
        if not sep or not word or not spoken:
            raise LexiconError(f"{name}, line {number}: {raw.strip()!r} is not `word = respelling`")
        key = word.casefold()
        if key in seen:
            raise LexiconError(f"{name}, line {number}: {word!r} is already given on line {seen[key]}")
        seen[key] = number
        entries[" ".join(word.split())] = spoken
    return Lexicon(entries)
