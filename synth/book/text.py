"""A book's text as chapters of sentence-sized chunks, ready to be spoken one by one.

This module owns reading a book (Markdown or plain text) into `Chapter`s: finding the
chapter headings and the book's title (a single top heading above the chapters, or a first
heading with no text of its own before headings of its level),
dropping markup that should not be spoken, joining hard-wrapped lines into paragraphs,
and cutting paragraphs into `Chunk`s of about one sentence (pysbd finds the
sentences); and the `Book` those chapters make with their metadata, whatever the
source (`synth.book.epub` reads EPUBs into the same sections). Every character of a
paragraph's text lands in exactly one chunk. It knows nothing about audio, models or Ray.

Markdown support is deliberately small and regex-based: ATX headings (`# Title`),
emphasis, inline code, links, images, HTML tags, block quotes, bullets and thematic
breaks. Setext headings and fenced code blocks get no special treatment.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Literal

from synth.errors import SynthError

Format = Literal["markdown", "text"]

_CLAUSE_BREAK = re.compile(r"(?:[;:,—]| --(?= ))[”’\"')\]»]*")  # ; : , — or ` -- `, then closers
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SCENE_BREAK = re.compile(r"^[ \t]*([*\-_=~])(?:[ \t]*\1){2,}[ \t]*$")  # `* * *`, `---`, `___`
_TEXT_HEADING = re.compile(r"^(chapter|book|part)\s+([0-9]+|[ivxlcdm]+)\b.*$", re.IGNORECASE)
_CHAPTER_LIKE = re.compile(r"^(?:chapter|book|part|volume|prologue|epilogue|preface|introduction)\b", re.IGNORECASE)
_QUOTE_PREFIX = re.compile(r"^ {0,3}(?:>[ \t]?)+")
_BULLET = re.compile(r"^[ \t]*[-*+][ \t]+")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_LINK_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S+.*$")
# Control characters are no text: C0 but tab, newline, form feed and carriage return; DEL;
# C1 but NEL (U+0085, a line break). A NUL usually means a UTF-16 or binary file.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x84\x86-\x9f]")
_INLINE_MARKUP = (  # (pattern, replacement), applied in order to a joined paragraph
    (re.compile(r"<!--.*?-->", re.DOTALL), ""),
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), ""),  # image
    (re.compile(r"!\[[^\]]*\]\[[^\]]*\]"), ""),  # reference image
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # link
    (re.compile(r"\[([^\]]+)\]\[[^\]]*\]"), r"\1"),  # reference link
    (re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>"), ""),  # HTML tag
    (re.compile(r"(`+)(.+?)\1"), r"\2"),  # inline code
    (re.compile(r"(?<![\w*])\*{1,3}(?=\S)(.+?)(?<=\S)\*{1,3}(?![\w*])"), r"\1"),
    (re.compile(r"(?<![\w_])_{1,3}(?=\S)(.+?)(?<=\S)_{1,3}(?![\w_])"), r"\1"),
)


class BookError(SynthError, ValueError):
    """A book that cannot be read or holds no text; the message says why."""


@dataclass(frozen=True)
class Chunk:
    """One piece of text spoken in one go, about a sentence."""

    text: str
    paragraph_end: bool  # last chunk of its paragraph (or the chapter title): a longer pause follows


@dataclass(frozen=True)
class Chapter:
    index: int  # 0-based, in book order
    title: str
    chunks: tuple[Chunk, ...]  # chunks[0] is the spoken title (paragraph_end=True)


@dataclass(frozen=True)
class Section:
    """A chapter before chunking: its title and its paragraphs (whitespace-normalised)."""

    title: str
    paragraphs: list[str]


@dataclass(frozen=True)
class Book:
    """A book's chapters and what is known about it (EPUBs carry the most)."""

    chapters: list[Chapter]
    title: str | None = None  # None: the source names none (the caller falls back to the file's name)
    author: str | None = None
    language: str | None = None  # as the source gives it (BCP 47, e.g. `en`)
    cover: bytes | None = None  # the cover image's bytes
    cover_type: str | None = None  # its media type: image/jpeg, image/png
    skipped: tuple[str, ...] = ()  # front and back matter left out (cover, contents, copyright, ...)


def load_book(path: str) -> list[Chapter]:
    """Read a UTF-8 book file; `.md`/`.markdown` is Markdown, anything else plain text."""
    return load_text_book(path).chapters


def load_text_book(path: str) -> Book:
    """The Markdown or plain-text book at `path` (see `load_book`), with its title if it names one."""
    path = os.fspath(path)
    fmt: Format = "markdown" if path.lower().endswith((".md", ".markdown")) else "text"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BookError(f"{path}: no such file") from None
    except OSError as e:
        raise BookError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BookError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    try:
        return read_text_book(text, fmt=fmt)
    except BookError as e:
        raise BookError(f"{path}: {e}") from None


def read_book(
    text: str, *, fmt: Format | None = None, max_chunk_chars: int = 250, min_chunk_chars: int = 20
) -> list[Chapter]:
    """Split a book into chapters of chunks.

    `fmt=None` guesses: Markdown if any line is an ATX heading, else plain text.
    Chunks are single sentences, except that a sentence longer than `max_chunk_chars`
    is cut at clause breaks and one shorter than `min_chunk_chars` is joined to the next
    sentence of its paragraph when the result still fits in `max_chunk_chars`.
    """
    return read_text_book(text, fmt=fmt, max_chunk_chars=max_chunk_chars, min_chunk_chars=min_chunk_chars).chapters


def read_text_book(
    text: str, *, fmt: Format | None = None, max_chunk_chars: int = 250, min_chunk_chars: int = 20
) -> Book:
    """`read_book`'s chapters as a `Book`, titled by its title heading (Markdown: see
    `_title_heading`) or its opening title line (plain text) when it has one."""
    _refuse_control_characters(text)
    if fmt is None:
        fmt = "markdown" if any(_ATX_HEADING.match(line) for line in text.splitlines()) else "text"
    if fmt == "markdown":
        title, sections = _markdown_sections(text)
    elif fmt == "text":
        title, sections = _text_sections(text)
    else:
        raise ValueError(f"fmt must be 'markdown', 'text' or None, got {fmt!r}")
    return Book(chunk_sections(sections, max_chunk_chars, min_chunk_chars), title=title)


def chunk_sections(sections: list[Section], max_chunk_chars: int = 250, min_chunk_chars: int = 20) -> list[Chapter]:
    """The sections as chapters of chunks (see `read_book`), the title spoken first."""
    if max_chunk_chars < 1 or min_chunk_chars < 0:
        raise ValueError(f"need max_chunk_chars >= 1, min_chunk_chars >= 0; got {max_chunk_chars}, {min_chunk_chars}")
    if not sections:
        raise BookError("the book holds no text")
    chapters = []
    for index, section in enumerate(sections):
        chunks = [Chunk(piece, False) for piece in _split_long(section.title, max_chunk_chars)]
        chunks[-1] = Chunk(chunks[-1].text, True)
        for paragraph in section.paragraphs:
            pieces = _paragraph_chunks(paragraph, max_chunk_chars, min_chunk_chars)
            chunks += [Chunk(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
        chapters.append(Chapter(index=index, title=section.title, chunks=tuple(chunks)))
    return chapters


def _refuse_control_characters(text: str) -> None:
    """A BookError naming the first control character (its line, column and code), if any."""
    match = _CONTROL.search(text)
    if match is None:
        return
    offset = match.start()
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    code = ord(match.group())
    hint = ": a NUL, so perhaps a UTF-16 or binary file" if code == 0 else ""
    raise BookError(
        f"control character U+{code:04X} at line {line}, column {column} (character {offset + 1}){hint}; "
        "a book must be UTF-8 text (tabs, newlines and form feeds are the only control characters allowed)"
    )


# --- Markdown ------------------------------------------------------------------------


def _markdown_sections(text: str) -> tuple[str | None, list[Section]]:
    """The book's title (None if it has none) and its sections."""
    # blocks: ("heading", level, text) or ("paragraph", 0, joined text)
    blocks: list[tuple[str, int, str]] = []
    lines: list[str] = []
    in_quote = False

    def flush() -> None:
        paragraph = _strip_inline(" ".join(lines))
        if paragraph:
            blocks.append(("paragraph", 0, paragraph))
        lines.clear()

    for raw in text.splitlines():
        heading = _ATX_HEADING.match(raw)
        if heading:
            flush()
            title = _strip_inline(heading.group(2) or "")
            if title:  # an empty `#` line marks nothing
                blocks.append(("heading", len(heading.group(1)), title))
            continue
        if _SCENE_BREAK.match(raw) or _FENCE.match(raw) or _LINK_DEFINITION.match(raw):
            flush()
            continue
        quote = _QUOTE_PREFIX.match(raw)
        line = raw[quote.end():] if quote else raw
        if (quote is not None) != in_quote or _BULLET.match(line):
            flush()  # entering or leaving a quote, or a new list item, starts a paragraph
        in_quote = quote is not None
        if not line.strip():
            flush()
            continue
        lines.append(_BULLET.sub("", line))
    flush()

    levels = [level for kind, level, _ in blocks if kind == "heading"]
    book_title = None
    at = _title_heading(blocks)
    if at is not None:
        book_title = blocks[at][2]
        blocks = blocks[:at] + blocks[at + 1:]
        levels = levels[1:]
    if not levels:
        return book_title, ([Section("Chapter 1", [t for _, _, t in blocks])] if blocks else [])
    repeated = [lv for lv in set(levels) if levels.count(lv) > 1]
    chapter_level = min(repeated) if repeated else min(levels)

    first = next(i for i, (kind, level, _) in enumerate(blocks) if kind == "heading" and level == chapter_level)
    sections = _front_matter(blocks[:first], chapter_level, book_title)
    for kind, level, body in blocks[first:]:
        if kind == "heading" and level == chapter_level:
            sections.append(Section(body, []))
        else:  # deeper (or stray shallower) headings are read as paragraphs
            sections[-1].paragraphs.append(body)
    return book_title, sections


def _title_heading(blocks: list[tuple[str, int, str]]) -> int | None:
    """Where the book's title is among the blocks, if it has one: its first heading, when that
    heading sits above all the others (`# Title`, then `## Chapter`s), or when it holds no text of
    its own and a heading of its level follows, not being a chapter's itself (`# The Title`, then
    `# Chapter 1` ..., as books converted from other formats often are)."""
    headings = [i for i, (kind, _, _) in enumerate(blocks) if kind == "heading"]
    if len(headings) < 2:
        return None
    first, level = headings[0], blocks[headings[0]][1]
    if all(blocks[i][1] > level for i in headings[1:]):
        return first
    bare = headings[1] == first + 1 and blocks[headings[1]][1] == level
    return first if bare and not _CHAPTER_LIKE.match(blocks[first][2]) else None


def _front_matter(blocks: list[tuple[str, int, str]], chapter_level: int, book_title: str | None) -> list[Section]:
    """Text before the first chapter heading, titled by its single top heading if it has one
    (or else by the book's title)."""
    top = [i for i, (kind, level, _) in enumerate(blocks) if kind == "heading" and level < chapter_level]
    title = blocks[top[0]][2] if len(top) == 1 else book_title or "Front matter"
    paragraphs = [body for i, (_, _, body) in enumerate(blocks) if not (len(top) == 1 and i == top[0])]
    return [Section(title, paragraphs)] if paragraphs else []


def _strip_inline(text: str) -> str:
    for pattern, replacement in _INLINE_MARKUP:
        text = pattern.sub(replacement, text)
    return _normalise(text)


# --- Plain text ----------------------------------------------------------------------


def _text_sections(text: str) -> tuple[str | None, list[Section]]:
    """Headings are lines like `CHAPTER IV.` that start a block, at the left margin.

    The line directly under a heading (no blank line between) is its title when the
    block holds just those two lines. Symbol-only lines (`*  *  *`) are scene breaks.
    A single line standing alone before the first heading, not ending like a sentence,
    is the book's title. Returns (the title or None, the sections).
    """
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if not line.strip() or _SCENE_BREAK.match(line):
            blocks.append([])
        else:
            blocks[-1].append(line.rstrip())
    blocks = [b for b in blocks if b]

    book_title = None
    headed = any(_TEXT_HEADING.match(b[0]) for b in blocks)
    if headed and len(blocks[0]) == 1 and not _TEXT_HEADING.match(blocks[0][0]) \
            and not blocks[0][0].rstrip().endswith((".", "!", "?", ",", ";", ":", "”", '"')):
        book_title = _normalise(blocks.pop(0)[0])
    sections = [Section(book_title or "Front matter", [])]
    for block in blocks:
        if _TEXT_HEADING.match(block[0]):
            title_lines = block if len(block) == 2 else block[:1]
            sections.append(Section(_normalise(" ".join(title_lines)), []))
            block = block[len(title_lines):]
        if block:
            sections[-1].paragraphs.append(_normalise(" ".join(block)))
    if len(sections) == 1:
        return book_title, ([Section("Chapter 1", sections[0].paragraphs)] if sections[0].paragraphs else [])
    return book_title, (sections if sections[0].paragraphs else sections[1:])


# --- Sentences and chunks ------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


def _sentences(paragraph: str) -> list[str]:
    """pysbd's sentences, re-cut from `paragraph` itself so that no character is lost."""
    cuts = [0]  # where each sentence starts
    for segment in _segmenter().segment(paragraph):
        segment = segment.strip()
        at = paragraph.find(segment, cuts[-1]) if segment else -1
        if at >= 0:  # a segment pysbd altered is skipped: its text joins a neighbour
            cuts.append(at + len(segment))
    cuts = [*cuts[:-1], len(paragraph)] if len(cuts) > 1 else [0, len(paragraph)]  # the tail joins the last
    spans = [(a, b) for a, b in zip(cuts, cuts[1:]) if paragraph[a:b].strip()]
    merged: list[tuple[int, int]] = []
    for a, b in spans:  # a span with nothing to say (a lone `”`) joins its neighbour
        if merged and not (_speakable(paragraph[a:b]) and _speakable(paragraph[slice(*merged[-1])])):
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return [paragraph[a:b].strip() for a, b in merged]


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def _split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut at the last clause break that fits, else the last space, else hard at the limit.

    A cut moves past closing quotes and brackets so that `book,” thought` splits as
    `book,”` + `thought`.
    """
    pieces = []
    while len(sentence) > max_chars:
        cut = max((c for c in _clause_cuts(sentence) if c <= max_chars), default=0)
        if cut <= 0:
            cut = sentence.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars
        pieces.append(sentence[:cut].strip())
        sentence = sentence[cut:].strip()
    if sentence:
        pieces.append(sentence)
    return pieces


def _clause_cuts(sentence: str):
    """Positions just after each clause break (and any closers after it), text left over."""
    for match in _CLAUSE_BREAK.finditer(sentence):
        cut = match.end()
        if sentence[cut:].strip():
            yield cut


def _paragraph_chunks(paragraph: str, max_chars: int, min_chars: int) -> list[str]:
    """Sentences cut to fit, then short ones joined to the next, as spans of `paragraph`.

    Joining spans (not strings) keeps whatever separated the two pieces, space or none.
    """
    spans: list[tuple[int, int]] = []
    cursor = 0
    for sentence in _sentences(paragraph):
        for piece in _split_long(sentence, max_chars):
            start = paragraph.index(piece, cursor)
            cursor = start + len(piece)
            if spans and spans[-1][1] - spans[-1][0] < min_chars and cursor - spans[-1][0] <= max_chars:
                spans[-1] = (spans[-1][0], cursor)
            else:
                spans.append((start, cursor))
    return [paragraph[a:b] for a, b in spans]


def _normalise(text: str) -> str:
    return " ".join(text.split())
