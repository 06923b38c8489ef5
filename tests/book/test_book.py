"""Book parsing (synth.book.text) and chapter stitching (synth.book.stitch), on CPU, no model."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO

from synth.book.render import chapter_id, open_book
from synth.book.stitch import (
    StitchSettings,
    TimedChunk,
    encode_chapter,
    stitch,
    timing_json,
    to_srt,
    to_vtt,
)
from synth.book.text import BookError, Chunk, load_book, read_book, read_text_book

ALICE = Path(REPO) / "examples" / "books" / "alice-ch1-3.md"
ALICE_TITLES = [
    "CHAPTER I. Down the Rabbit-Hole",
    "CHAPTER II. The Pool of Tears",
    "CHAPTER III. A Caucus-Race and a Long Tale",
]

# Plain text, Gutenberg-style: a heading line, maybe a title line right under it, prose
# hard-wrapped at ~60 columns, a scene break, and lines that only look like headings.
PLAIN_BOOK = """\
CHAPTER I.
The Letter

The letter came on a Tuesday. Mrs. Hale read it twice, once
standing and once sitting, and then put it in the drawer
with the others.

Part of her wanted to answer it at once.

*       *       *       *       *
    *       *       *       *

By evening she had decided.

Chapter 2: The Walk

The road ran north for 3.5 miles; she walked it all. She
had read chapter 4 of the guide the night before, and
Chapter 5 of it too.

CHAPTER III

“Home again,” she said. Nobody answered.
"""


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def alice():
    return load_book(str(ALICE))


def spoken_body(chapters) -> list[str]:
    """Every chunk's text except the chapter titles."""
    return [c.text for ch in chapters for c in ch.chunks[1:]]


# --- book: the Alice example ---------------------------------------------------------


def test_alice_has_three_titled_chapters_of_sentence_chunks(alice):
    assert [ch.title for ch in alice] == ALICE_TITLES
    assert [ch.index for ch in alice] == [0, 1, 2]
    for ch in alice:
        assert ch.chunks[0] == Chunk(ch.title, True)
        assert all(c.text and c.text == c.text.strip() and len(c.text) <= 250 for c in ch.chunks)
    total = sum(len(ch.chunks) for ch in alice)
    assert 150 <= total <= 500
    body = spoken_body(alice)
    assert not any(mark in text for text in body for mark in ("_", "* * *", "> ", "#"))
    assert "Alice’s Right Foot, Esq., Hearthrug, near the Fender, (with Alice’s love)." in body


def markdown_paragraphs(raw: str) -> list[str]:
    """Alice's paragraphs without markup, by a cruder route than synth.book.text's.

    Enough for this file: blank-line blocks, minus headings and `* * *`, without `> `
    prefixes and `_emphasis_` marks.
    """
    blocks = [b for b in re.split(r"\n\s*\n", raw) if b.strip() and not b.startswith("# ") and b.strip() != "* * *"]
    return [words(re.sub(r"^> ", "", b, flags=re.M).replace("_", "")) for b in blocks]


def paragraphs_of(chapters) -> list[list[str]]:
    """The chunk texts of each paragraph, titles left out."""
    paragraphs, current = [], []
    for ch in chapters:
        for c in ch.chunks[1:]:
            current.append(c.text)
            if c.paragraph_end:
                paragraphs.append(current)
                current = []
    assert current == []
    return paragraphs


def assert_covers(paragraph: str, pieces: list[str]) -> None:
    """The pieces are the paragraph cut in order: nothing lost, added or moved but spaces."""
    cursor = 0
    for piece in pieces:
        at = paragraph.find(piece, cursor)
        assert at >= 0 and not paragraph[cursor:at].strip(), (piece, paragraph[cursor:])
        cursor = at + len(piece)
    assert not paragraph[cursor:].strip()


@pytest.mark.parametrize("max_chunk_chars", [250, 80])
def test_alice_loses_no_text_and_keeps_paragraphs(max_chunk_chars):
    raw = ALICE.read_text(encoding="utf-8")
    chapters = read_book(raw, fmt="markdown", max_chunk_chars=max_chunk_chars)
    expected = markdown_paragraphs(raw)
    got = paragraphs_of(chapters)
    assert len(got) == len(expected) > 90
    for paragraph, pieces in zip(expected, got):
        assert_covers(paragraph, pieces)
    assert max(len(c.text) for ch in chapters for c in ch.chunks) <= max_chunk_chars


# --- book: sentences and chunk sizes -------------------------------------------------


def test_sentences_survive_abbreviations_decimals_quotes_and_ellipses():
    text = (
        'Mr. Smith went to Washington. It cost $3.50 on 1.2.2020. "Stop!" she cried. He stopped. '
        "He paused... Then he left. Dr. Watson arrived at 5 p.m. on Jan. 3. “Really?” she asked."
    )
    (chapter,) = read_book(text, fmt="text", min_chunk_chars=0)
    assert [c.text for c in chapter.chunks] == [
        "Chapter 1",
        "Mr. Smith went to Washington.",
        "It cost $3.50 on 1.2.2020.",
        '"Stop!" she cried.',
        "He stopped.",
        "He paused...",
        "Then he left.",
        "Dr. Watson arrived at 5 p.m. on Jan. 3.",
        "“Really?” she asked.",
    ]
    assert [c.paragraph_end for c in chapter.chunks] == [True] + [False] * 7 + [True]


def test_short_sentences_join_the_next_one_within_the_limit():
    text = "Hi. Go now. This sentence is long enough alone. Ok.\n\nNo. Next paragraph here."
    (chapter,) = read_book(text, fmt="text", min_chunk_chars=20, max_chunk_chars=60)
    assert [(c.text, c.paragraph_end) for c in chapter.chunks[1:]] == [
        ("Hi. Go now. This sentence is long enough alone.", False),
        ("Ok.", True),  # short, but nothing follows in its paragraph
        ("No. Next paragraph here.", True),
    ]
    (tight,) = read_book("Hi. This one is exactly forty chars long.", fmt="text", max_chunk_chars=40)
    assert [c.text for c in tight.chunks[1:]] == ["Hi.", "This one is exactly forty chars long."]


def test_long_sentences_split_at_clause_breaks_then_spaces():
    sentence = (
        "The road was long and the night was cold; the lamps were out, the inn was shut: "
        "nobody came — and still she walked on -- past the mill, past the church, "
        "past the last house of the village and into the dark fields beyond it."
    )
    (chapter,) = read_book(sentence, fmt="text", max_chunk_chars=60)
    assert [c.text for c in chapter.chunks[1:]] == [
        "The road was long and the night was cold;",
        "the lamps were out, the inn was shut: nobody came —",
        "and still she walked on -- past the mill, past the church,",
        "past the last house of the village and into the dark fields",  # no break left: a space
        "beyond it.",
    ]

    unbroken = "word " * 30 + "end."
    (chapter,) = read_book(unbroken, fmt="text", max_chunk_chars=42)
    pieces = [c.text for c in chapter.chunks[1:]]
    assert all(len(p) <= 42 for p in pieces) and " ".join(pieces).split() == unbroken.split()

    (chapter,) = read_book("x" * 100, fmt="text", max_chunk_chars=40)
    assert [len(c.text) for c in chapter.chunks[1:]] == [40, 40, 20]

    # A short first piece joins the rest of its sentence with no space invented.
    (chapter,) = read_book("Well—" + "a" * 30 + " " + "b" * 30, fmt="text", max_chunk_chars=40)
    assert [c.text for c in chapter.chunks[1:]] == ["Well—" + "a" * 30, "b" * 30]


def test_a_split_keeps_closing_quotes_with_their_clause():
    text = "“and what is the use of a book,” thought Alice “without pictures or conversations?”"
    (chapter,) = read_book(text, fmt="text", max_chunk_chars=40, min_chunk_chars=0)
    assert chapter.chunks[1].text == "“and what is the use of a book,”"
    assert not any(c.text.startswith("”") for c in chapter.chunks)


# --- book: formats -------------------------------------------------------------------


def test_markdown_markup_is_not_spoken():
    md = """\
# The Book

A *short* preface with a [link](https://example.org) and ![a map](map.png) and
<b>bold</b> and `code` and **strong** and __strong__ and _em_ text.

## Chapter One

> Quoted **strong** text
> that wraps.

- first item here
* second item here

* * *

After the break, snake_case and 2*3*4 stay.

### A subsection

---

## Chapter Two ##
"""
    chapters = read_book(md)  # guessed Markdown from the headings
    assert [ch.title for ch in chapters] == ["The Book", "Chapter One", "Chapter Two"]
    assert [[(c.text, c.paragraph_end) for c in ch.chunks] for ch in chapters] == [
        [
            ("The Book", True),
            ("A short preface with a link and and bold and code and strong and strong and em text.", True),
        ],
        [
            ("Chapter One", True),
            ("Quoted strong text that wraps.", True),
            ("first item here", True),
            ("second item here", True),
            ("After the break, snake_case and 2*3*4 stay.", True),
            ("A subsection", True),
        ],
        [("Chapter Two", True)],  # no text after the heading: the title alone
    ]


def test_markdown_chapter_level_and_front_matter():
    one_title = read_book("# Book\n\n## One\n\nText one here.\n\n## Two\n\nText two here.\n", fmt="markdown")
    assert [ch.title for ch in one_title] == ["One", "Two"]  # nothing but the title before chapter one
    # a single top heading above one chapter is the book's title, not the chapter (issue 15)
    book = read_text_book("# The Book\n\n## Only\n\nText here.\n", fmt="markdown")
    assert book.title == "The Book" and [ch.title for ch in book.chapters] == ["Only"]
    assert read_text_book("# One\n\nA.\n\n# Two\n\nB.\n").title is None


def test_a_markdown_title_at_the_chapters_level_is_the_title_not_a_chapter(tmp_path):
    # `# The Title`, then `# Chapter 1` ...: common in books converted from other formats (issue 24)
    path = tmp_path / "converted.md"
    path.write_text("# The Lost Road\n\n# Chapter 1\n\nIt began at dawn.\n\n# Chapter 2\n\nIt ended at dusk.\n")
    book = open_book(str(path))  # what `synth book` reads: the M4B takes the book's title
    assert book.title == "The Lost Road"
    assert [ch.title for ch in book.chapters] == ["Chapter 1", "Chapter 2"]
    assert [c.text for c in book.chapters[0].chunks] == ["Chapter 1", "It began at dawn."]
    # a first heading with text of its own, or one that is itself a chapter's, is a chapter
    assert read_text_book("# Prologue\n\n# Chapter 1\n\nA.\n\n# Chapter 2\n\nB.\n").title is None
    assert read_text_book("# Chapter 1\n\n# Chapter 2\n\nB.\n").title is None
    assert read_text_book("# Opening\n\nA.\n\n# Two\n\nB.\n").title is None
    untitled = read_book("Some words first.\n\n# One\n\nA.\n\n# Two\n\nB.\n", fmt="markdown")
    assert [ch.title for ch in untitled] == ["Front matter", "One", "Two"]
    no_headings = read_book("Just a paragraph.\n\nAnd *another*.", fmt="markdown")
    assert [c.text for c in no_headings[0].chunks] == ["Chapter 1", "Just a paragraph.", "And another."]


def test_plain_text_chapters_titles_and_paragraphs():
    chapters = read_book(PLAIN_BOOK)  # guessed plain text: no Markdown headings
    assert [ch.title for ch in chapters] == ["CHAPTER I. The Letter", "Chapter 2: The Walk", "CHAPTER III"]
    first, second, third = ([c.text for c in ch.chunks if c.paragraph_end] for ch in chapters)
    assert first == [
        "CHAPTER I. The Letter",
        "Mrs. Hale read it twice, once standing and once sitting, and then put it in the drawer with the others.",
        "Part of her wanted to answer it at once.",
        "By evening she had decided.",
    ]
    assert chapters[0].chunks[1].text == "The letter came on a Tuesday."
    assert "Chapter 5 of it too." in second[-1]  # a heading-like line inside a paragraph is prose
    assert [c.text for c in chapters[2].chunks] == ["CHAPTER III", "“Home again,” she said.", "Nobody answered."]
    assert not any("*" in c.text for ch in chapters for c in ch.chunks)


def test_plain_text_front_matter_and_no_headings():
    chapters = read_book("A preface of one sentence.\n\n" + PLAIN_BOOK, fmt="text")
    assert [ch.title for ch in chapters][:2] == ["Front matter", "CHAPTER I. The Letter"]
    # a lone title line above the chapters is the book's title, not a chapter (issue 15)
    titled = read_text_book("The Walk North\n\n" + PLAIN_BOOK, fmt="text")
    assert titled.title == "The Walk North" and titled.chapters[0].title == "CHAPTER I. The Letter"
    titled = read_text_book("The Walk North\n\nBy A. Writer, 1901.\n\n" + PLAIN_BOOK, fmt="text")
    assert titled.title == "The Walk North" and titled.chapters[0].title == "The Walk North"  # its front matter
    assert read_text_book(PLAIN_BOOK, fmt="text").title is None
    (only,) = read_book("Once upon a time.\nThe end.", fmt="text")
    assert only.title == "Chapter 1" and only.chunks[1].text == "Once upon a time. The end."


def test_empty_books_are_errors(tmp_path):
    for text, fmt in [("", None), ("  \n\n\t\n", "text"), ("* * *\n\n<!-- nothing -->\n\n#\n", "markdown")]:
        with pytest.raises(BookError, match="no text"):
            read_book(text, fmt=fmt)
    assert [c.text for c in read_book("# Only a title\n")[0].chunks] == ["Only a title"]

    with pytest.raises(BookError, match="no such file"):
        load_book(str(tmp_path / "missing.md"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(BookError, match=r"empty\.txt: the book holds no text"):
        load_book(str(empty))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Café au lait.".encode("latin-1"))
    with pytest.raises(BookError, match="not UTF-8"):
        load_book(str(latin1))


def test_control_characters_are_refused_naming_the_file_position_and_code(tmp_path):
    nul = tmp_path / "nul.txt"
    nul.write_bytes(b"\x00" * 64)  # a file of NUL bytes is valid UTF-8, and no book
    with pytest.raises(BookError, match=r"nul\.txt: control character U\+0000 at line 1, column 1 .*UTF-16"):
        load_book(str(nul))
    utf16 = tmp_path / "utf16.md"
    utf16.write_bytes("# One\n\nHello.\n".encode("utf-16-le"))  # ASCII in UTF-16 decodes as UTF-8 with NULs
    with pytest.raises(BookError, match=r"utf16\.md: control character U\+0000 at line 1, column 2 "):
        load_book(str(utf16))
    escape = tmp_path / "escape.md"
    escape.write_text("# One\n\nIt was \x1b[1mbold\x1b[0m.\n")
    with pytest.raises(BookError, match=r"escape\.md: control character U\+001B at line 3, column 8 \(character 15\)"):
        load_book(str(escape))
    for code in (0x01, 0x08, 0x0B, 0x1F, 0x7F, 0x9F):
        with pytest.raises(BookError, match=f"U\\+{code:04X}"):
            read_book(f"Some text{chr(code)} more.")
    # tabs, newlines (LF, CRLF, NEL) and form feeds are text
    (chapter,) = read_book("Once upon\ta time.\r\n\x0cThe\x85end.", fmt="text")
    assert [c.text for c in chapter.chunks[1:]] == ["Once upon a time.", "The end."]


def test_load_book_picks_the_format_from_the_suffix(tmp_path):
    text = "# One\n\nFirst *text* here.\n\n# Two\n\nSecond text here.\n"
    (tmp_path / "b.md").write_text(text, encoding="utf-8")
    (tmp_path / "b.txt").write_text(text, encoding="utf-8")
    assert [ch.title for ch in load_book(str(tmp_path / "b.md"))] == ["One", "Two"]
    (plain,) = load_book(str(tmp_path / "b.txt"))  # no `Chapter N` lines: one chapter, markup kept
    assert plain.title == "Chapter 1" and plain.chunks[1].text == "# One"


# --- stitch --------------------------------------------------------------------------

SR = 24_000


def tone(num_samples: int, amplitude: float = 0.5) -> np.ndarray:
    return np.full(num_samples, amplitude, dtype=np.float32)


def nonzero_runs(audio: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) sample ranges where the audio is not silent."""
    loud = np.concatenate([[0], (np.abs(audio) > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(loud))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def test_stitch_lays_out_chunks_to_the_sample():
    settings = StitchSettings(fade_s=0.0)
    lengths = [4800, 7200, 2400, 9600]
    ends = [False, True, False, True]
    chunks = [(f"chunk {i}", tone(n), end) for i, (n, end) in enumerate(zip(lengths, ends))]
    audio, timed = stitch(chunks, SR, settings)

    lead, tail, sentence, paragraph = 4800, 12000, 6000, 16800  # 0.2 s, 0.5 s, 0.25 s, 0.7 s at 24 kHz
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == lead + sum(lengths) + sentence + paragraph + sentence + tail
    expected_starts = [lead, lead + 4800 + sentence, lead + 4800 + sentence + 7200 + paragraph]
    expected_starts.append(expected_starts[-1] + 2400 + sentence)
    assert [round(t.start_s * SR) for t in timed] == expected_starts
    assert [round((t.end_s - t.start_s) * SR) for t in timed] == lengths
    assert [t.start_s for t in timed] == [s / SR for s in expected_starts]  # exact, not rounded
    assert nonzero_runs(audio) == [(s, s + n) for s, n in zip(expected_starts, lengths)]
    assert [(t.index, t.text, t.missing) for t in timed] == [(i, f"chunk {i}", False) for i in range(4)]


def test_a_missing_chunk_adds_nothing_not_even_its_pause():
    settings = StitchSettings(fade_s=0.0)
    chunks = [("a", tone(2400), False), ("b", None, True), ("c", tone(4800), False), ("d", None, True)]
    audio, timed = stitch(chunks, SR, settings)
    lead, tail, sentence = 4800, 12000, 6000
    # a's own (sentence) pause separates a and c; b's paragraph pause and d's nothing count.
    assert len(audio) == lead + 2400 + sentence + 4800 + tail
    a, b, c, d = timed
    assert (b.missing, d.missing, a.missing, c.missing) == (True, True, False, False)
    assert b.start_s == b.end_s == c.start_s  # where it would have gone
    assert d.start_s == d.end_s == c.end_s
    assert nonzero_runs(audio) == [(lead, lead + 2400), (lead + 2400 + sentence, lead + 2400 + sentence + 4800)]

    silent, timed = stitch([("x", None, True)], SR)
    assert len(silent) == lead + tail and not silent.any()
    assert timed == [TimedChunk(0, "x", 0.2, 0.2, True)]


def test_fades_keep_lengths_and_silence_the_edges():
    audio, timed = stitch([("a", tone(4800, 0.8), False), ("b", tone(4800, -0.8), True)], SR)
    plain, _ = stitch([("a", tone(4800, 0.8), False), ("b", tone(4800, -0.8), True)], SR, StitchSettings(fade_s=0))
    assert len(audio) == len(plain)
    fade = 240  # 10 ms
    for t in timed:
        start, end = round(t.start_s * SR), round(t.end_s * SR)
        piece = audio[start:end]
        assert len(piece) == 4800
        assert abs(piece[0]) < 1e-3 and abs(piece[-1]) < 1e-3
        assert abs(piece[fade // 2]) == pytest.approx(0.4, abs=0.01)
        assert np.all(np.abs(piece[fade:-fade]) == np.float32(0.8))
        assert np.all(np.diff(np.abs(piece[: fade + 1])) >= 0)  # a ramp, no click


def test_stitch_rejects_bad_input():
    with pytest.raises(ValueError, match="mono"):
        stitch([("a", np.zeros((10, 2), dtype=np.float32), True)], SR)
    with pytest.raises(ValueError, match="sentence_pause_s"):
        StitchSettings(sentence_pause_s=-0.1)


def test_subtitles_and_timing_over_an_hour():
    timed = [
        TimedChunk(0, "First line.", 1.25, 3.0, False),
        TimedChunk(1, "Failed line.", 3.0, 3.0, True),
        TimedChunk(2, "Much later.", 3725.25, 3727.001, False),
        TimedChunk(3, "Past a hundred minutes.", 6000.5, 36001.999, False),
    ]
    assert to_srt(timed) == (
        "1\n00:00:01,250 --> 00:00:03,000\nFirst line.\n\n"
        "2\n01:02:05,250 --> 01:02:07,001\nMuch later.\n\n"
        "3\n01:40:00,500 --> 10:00:01,999\nPast a hundred minutes.\n\n"
    )
    assert to_vtt(timed) == (
        "WEBVTT\n\n"
        "00:00:01.250 --> 00:00:03.000\nFirst line.\n\n"
        "01:02:05.250 --> 01:02:07.001\nMuch later.\n\n"
        "01:40:00.500 --> 10:00:01.999\nPast a hundred minutes.\n\n"
    )
    info = timing_json("Chapter X", 4, SR, 48_000, timed[:2])
    assert info == {
        "title": "Chapter X",
        "chapter": 5,  # the fifth chapter (index 4): chapter-005.json
        "sample_rate_hz": SR,
        "duration_s": 2.0,
        "num_samples": 48_000,
        "chunks": [
            {"index": 0, "start_s": 1.25, "end_s": 3.0, "text": "First line.", "missing": False},
            {"index": 1, "start_s": 3.0, "end_s": 3.0, "text": "Failed line.", "missing": True},
        ],
    }


def test_a_chapters_timing_file_numbers_it_as_its_file_name_does():
    for chapter in read_book("# One\n\nA.\n\n# Two\n\nB.\n\n# Three\n\nC.\n"):
        number = timing_json(chapter.title, chapter.index, SR, 0, [])["chapter"]
        assert chapter_id(chapter) == f"chapter-{number:03d}"  # chapter-001.json says "chapter": 1


def test_chapter_audio_round_trips_in_every_format(tmp_path):
    t = np.arange(SR * 2) / SR
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # [48000], 2 s
    for fmt in ("wav", "flac"):
        data = encode_chapter(audio, SR, fmt)
        decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
        assert rate == SR and decoded.shape == audio.shape
        np.testing.assert_allclose(decoded, audio, atol=1e-4)  # 16-bit PCM
        assert sf.info(io.BytesIO(data)).subtype == "PCM_16"
    mp3, rate = sf.read(io.BytesIO(encode_chapter(audio, SR, "mp3")), dtype="float32")
    assert rate == SR and abs(len(mp3) / rate - 2.0) <= 0.1
    with pytest.raises(ValueError, match="ogg"):
        encode_chapter(audio, SR, "ogg")
