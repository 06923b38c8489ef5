"""What a turn is spoken as: the config's `text:` section turned into one function, written
text -> the text the model is given.

This module owns putting synth.text's normaliser and the user's lexicon file together
as the config asks (normalise when `text.normalize` is true, then respell with the
lexicon when one is named), and reading that file (a local path or URI). The written text
stays the turn's `text`; what this returns is recorded beside it as `spoken_text`. It
knows nothing about models, Ray or the output's layout.
"""

from __future__ import annotations

from typing import Callable

import pyarrow as pa

from synth.pipeline.config import ConfigError, TextConfig
from synth.store import storage
from synth.text.lexicon import LexiconError, parse_lexicon
from synth.text.normalize import normalizer


def spoken_text(config: TextConfig) -> Callable[[str], str]:
    """The function that gives a written text's spoken form under `config`; the identity when it
    asks for neither normalisation nor a lexicon. Raises ConfigError for a lexicon that cannot
    be read or parsed, or a normaliser that cannot run."""
    normalize = normalizer(config.normalizer, config.date_order) if config.normalize else None
    lexicon = None
    if config.lexicon:
        try:
            content = storage.read_bytes(storage.resolve(config.lexicon)).decode("utf-8-sig")
        except FileNotFoundError:
            raise ConfigError(f"text.lexicon: no such file: {config.lexicon}") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"text.lexicon: {config.lexicon} is not UTF-8 text (bad byte at offset {e.start})") from None
        except (OSError, pa.ArrowException) as e:
            raise ConfigError(f"text.lexicon: cannot read {config.lexicon}: {e}") from None
        try:
            lexicon = parse_lexicon(content, config.lexicon)
        except LexiconError as e:
            raise ConfigError(f"text.lexicon: {e}") from None

    def spoken(text: str) -> str:
        if normalize is not None:
            text = normalize(text)
        return lexicon.apply(text) if lexicon is not None else text

    return spoken
