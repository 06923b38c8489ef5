"""The pronunciation lexicon (synth.text.lexicon) and the config's `text:` section as one
function (synth.pipeline.spoken): respellings after normalisation, files with errors named."""

import pytest

from synth.pipeline.config import ConfigError, TextConfig
from synth.pipeline.spoken import spoken_text
from synth.text.lexicon import LexiconError, parse_lexicon

LEXICON = """\
# names in a fantasy book
Hermione = her-MY-oh-nee
Minas Tirith = MEE-nas TEE-rith   # a phrase
Tirith = TEER-ith
"""


def test_whole_words_any_case_longest_first():
    lexicon = parse_lexicon(LEXICON)
    assert lexicon.apply("Hermione's wand; HERMIONE!") == "her-MY-oh-nee's wand; her-MY-oh-nee!"
    assert lexicon.apply("to Minas Tirith, then Tirith") == "to MEE-nas TEE-rith, then TEER-ith"
    assert lexicon.apply("Hermiones and Tirithian") == "Hermiones and Tirithian"  # not inside longer words
    assert parse_lexicon("# nothing\n\n").apply("Hermione") == "Hermione"


@pytest.mark.parametrize(("content", "message"), [
    ("Hermione her-MY-oh-nee\n", "names.txt, line 1: 'Hermione her-MY-oh-nee' is not `word = respelling`"),
    ("ok = fine\n = nothing\n", "names.txt, line 2"),
    ("Tirith = a\ntirith = b\n", "names.txt, line 2: 'tirith' is already given on line 1"),
])
def test_a_bad_line_is_named(content, message):
    with pytest.raises(LexiconError, match=message):
        parse_lexicon(content, "names.txt")


def test_the_lexicon_applies_after_normalisation(tmp_path):
    path = tmp_path / "lexicon.txt"
    path.write_text("Doctor = DOK-tuh\nfour = FOH\n")
    assert spoken_text(TextConfig())("Dr. Who at 4") == "Dr. Who at 4"  # neither asked for
    assert spoken_text(TextConfig(normalize=True))("Dr. Who at 4") == "Doctor Who at four"
    assert spoken_text(TextConfig(normalize=True, lexicon=str(path)))("Dr. Who at 4") == "DOK-tuh Who at FOH"
    assert spoken_text(TextConfig(lexicon=str(path)))("Dr. Who at 4") == "Dr. Who at 4"  # respells words only
    with pytest.raises(ConfigError, match="text.lexicon: no such file: .*missing.txt"):
        spoken_text(TextConfig(lexicon=str(tmp_path / "missing.txt")))
    path.write_text("Doctor\n")
    with pytest.raises(ConfigError, match="lexicon.txt, line 1"):
        spoken_text(TextConfig(lexicon=str(path)))
