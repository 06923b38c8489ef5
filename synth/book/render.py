"""Rendering a book: passages as chains of chunks through the synthesis run, then chapter files.

A book becomes a scripts manifest with one script per passage: a chapter cut at the
first paragraph end after every `passage_chunks` chunks (`chapter-NNN-pMM`), or the
whole chapter (`chapter-NNN`) when it makes one passage or passage_chunks is 0. Each chunk is a turn spoken in
the narrator's voice, so a passage renders as one chain with rolling context (the
voice prompt, then the newest chunks that fit), and passages render in parallel, in
the slots of as many actors as there are, each committed when done. The run is an
ordinary synthesis run into the same output, a dataset store of kind `book`
(`synth.pipeline.output`: per-chunk dataset, commits, resume); this module owns writing
that manifest and, once the chunks exist, assembling each chapter from its passages, each
committed as a unit of the store, every audio file marked as AI-generated speech of the model
its rows name (`synth.pipeline.provenance`):

    OUT/book/manifest.parquet          the passages as scripts (unit book-manifest; the same bytes on resume)
    OUT/data/ ...                      the per-chunk dataset, as for any synthesis run
    OUT/chapters/chapter-001.wav|flac|mp3  one file per chapter                           } unit chapter-001
    OUT/chapters/chapter-001.json      timing: the book's metadata, the chapter's ACX    }
                                       numbers, and each chunk's start/end, written and  }
                                       spoken text, and QC scores                         }
    OUT/chapters/chapter-001.srt|vtt   the same as subtitles                              }
    OUT/book.m4b                       with format "m4b": the whole book, a marker per chapter (unit book-m4b)

`render_book` runs the pieces: the book read (`open_book`: EPUB, Markdown or text), the
manifest, the run (`synth.pipeline.runner`, normalising the text unless the config says
not to), then the chapters, mastered for publication (`synth.book.master`) and checked
against ACX's numbers (`synth.book.acx`). It knows nothing about the model beyond what
the output dataset holds.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from synth.book.acx import AcxReport, acx_check
from synth.book.epub import load_epub
from synth.book.m4b import FORMAT as M4B
from synth.book.m4b import M4bBook
from synth.book.master import MasterSettings, master
from synth.book.stitch import (
    AUDIO_FORMATS,
    StitchSettings,
    encode_chapter,
    stitch,
    timing_json,
    to_srt,
    to_vtt,
)
from synth.book.text import Book, Chapter, load_text_book
from synth.errors import SynthError
from synth.pipeline.audio_io import encode_audio
from synth.pipeline.config import ConfigError, SynthConfig
from synth.pipeline.manifest import manifest_bytes
from synth.pipeline.output import (
    BOOK,
    BOOK_M4B,
    BOOK_MANIFEST,
    CHAPTERS_DIR,
    data_files,
    recorded_plan,
)
from synth.pipeline.provenance import Provenance, tag_mp3
from synth.pipeline.record import QC_COLUMNS
from synth.pipeline.runner import run
from synth.store.errors import StoreError
from synth.store.lease import Lease
from synth.store.store import Store

MANIFEST_UNIT = "book-manifest"
M4B_UNIT = "book-m4b"


def open_book(path: str, *, keep_matter: bool = False, tables: str = "rows") -> Book:
    """The book at `path`: `.epub` (front and back matter skipped unless `keep_matter`; tables
    read as `tables` says), `.md`/`.markdown`, or anything else as plain text."""
    if str(path).lower().endswith(".epub"):
        return load_epub(path, keep_matter=keep_matter, tables=tables)
    return load_text_book(path)


def chapter_id(chapter: Chapter) -> str:
    return f"chapter-{chapter.index + 1:03d}"


@dataclass(frozen=True)
class Passage:
    """Chunks [start, stop) of one chapter, rendered as one script (one chain)."""

    script_id: str
    chapter: int  # Chapter.index
    start: int
    stop: int


def passages(chapter: Chapter, passage_chunks: int) -> list[Passage]:
    """The chapter's chunks cut at the first paragraph end after every `passage_chunks`
    chunks (so a passage never ends mid-paragraph); 0: the whole chapter as one passage,
    which keeps the chapter's id (as does a chapter too short to cut)."""
    if passage_chunks < 0:
        raise ValueError(f"passage_chunks={passage_chunks} must be >= 0")
    n = len(chapter.chunks)
    bounds, start = [], 0
    for i, chunk in enumerate(chapter.chunks):
        if passage_chunks and chunk.paragraph_end and i + 1 - start >= passage_chunks and i + 1 < n:
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, n))
    if len(bounds) == 1:
        return [Passage(chapter_id(chapter), chapter.index, 0, n)]
    return [Passage(f"{chapter_id(chapter)}-p{k + 1:02d}", chapter.index, a, b) for k, (a, b) in enumerate(bounds)]


class BookChanged(SynthError, ValueError):
    """The output holds a render of a different book text or narrator."""


def write_book_manifest(chapters: Sequence[Chapter], voice: str, store: Store, *, passage_chunks: int = 0) -> str:
    """Commit the chapters' passages as a scripts manifest (unit book-manifest); returns its URI.
    A relaunch on a render of different text or another voice is refused (its chunks were made
    from the old), and so is one whose passages are laid out differently (other ids or chunk
    counts), since committed chunks are numbered within their passage."""
    rows = [{"id": p.script_id, "voice": voice, "turns": [{"text": chunk.text} for chunk in c.chunks[p.start : p.stop]]}
            for c in chapters for p in passages(c, passage_chunks)]
    data = manifest_bytes(rows)
    previous = store.read_verified(MANIFEST_UNIT, BOOK_MANIFEST)
    if previous is not None and previous != data:
        previous_rows = pq.read_table(pa.BufferReader(previous)).to_pylist()
        layout, layout_before = ([(r["id"], len(r["turns"])) for r in t] for t in (rows, previous_rows))
        if layout != layout_before:
            where = next((f"first at {new[0]}" for new, old in zip(layout, layout_before) if new != old),
                          "the number of passages")
            before = [n for _, n in layout_before]
            raise BookChanged(f"{store.uri} holds a render whose passages are laid out differently ({where}: other "
                              f"chunks or --passage-chunks; it has {len(before)} passages of {min(before)}-"
                              f"{max(before)} chunks); committed chunks are numbered within their passage, so "
                              f"relaunch with the book text and --passage-chunks it was rendered with (0 for a "
                              f"render made before passages), or use a new --output")
        changed = [r["id"] for r, p in zip(rows, previous_rows) if _spoken(r) != _spoken(p)]
        raise BookChanged(f"{store.uri} holds a render of a different book text or voice (changed: "
                          f"{', '.join(changed[:5]) or 'the manifest'}): its chunks were made from the old one. "
                          "Use a new --output, or the book and voice it was rendered from.")
    if previous is None:
        store.retract(MANIFEST_UNIT)
        store.commit(MANIFEST_UNIT, [store.write(BOOK_MANIFEST, data)])
    return store.at(BOOK_MANIFEST).uri


def _spoken(row: dict) -> tuple:
    """What a passage's row says and in which voice (its other manifest columns are empty)."""
    return row["id"], row["voice"], [turn["text"] for turn in row["turns"]]


def book_run_config(config: SynthConfig, num_scripts: int, store: Store) -> SynthConfig:
    """The run's config for a book: passages spread evenly over the actors (each actor renders
    its passages at once, one chain each), and every passage committed as soon as it is done.
    A resumed render keeps the shard size it started with, whatever the actor count now. The
    text is normalised to its spoken form unless the config's `text.normalize` says false."""
    try:
        recorded = recorded_plan(store)
    except StoreError:  # damaged: the run rebuilds it if this render is the recorded one
        recorded = None
    per_shard = recorded.scripts_per_shard if recorded else max(1, math.ceil(num_scripts / config.actors.num_actors))
    output = config.output.model_copy(update={"scripts_per_shard": per_shard, "commit_every_scripts": 1})
    text = config.text.model_copy(update={"normalize": config.text.normalize is not False})
    return config.model_copy(update={"output": output, "text": text})


@dataclass(frozen=True)
class ChapterFiles:
    chapter: int
    title: str
    duration_s: float
    chunks: int
    missing_chunks: int
    files: tuple[str, ...]
    acx: AcxReport


def book_provenance(store: Store) -> Provenance:
    """What made the book's audio, from its rows' `model` and `model_weights` (read alone, per part):
    the marking of every chapter file and of the M4B. Rows of several models (a render continued with
    --allow-changes) are all named."""
    makers = set()
    for path in data_files(store):
        table = pq.read_table(store.location.fs.open_input_file(path), columns=["model", "model_weights"])
        makers |= set(zip(table.column(0).to_pylist(), table.column(1).to_pylist()))
    models, weights = ("; ".join(sorted({str(m[i]) for m in makers})) or None for i in (0, 1))
    return Provenance(True, models, weights)


def encode_marked(samples: np.ndarray, sample_rate_hz: int, fmt: str, provenance: Provenance, name: str) -> bytes:
    """A chapter's audio as one file format (wav, flac: 16-bit PCM; mp3), marked as what made it."""
    if fmt == "mp3":  # soundfile writes ID3v1 only (30-character fields): ID3v2 tags by a remux
        return tag_mp3(encode_chapter(samples, sample_rate_hz, fmt), {"title": name, **provenance.container_tags(name)})
    return encode_audio(samples, sample_rate_hz, fmt, provenance.audio_tags(name))


def _parts_by_script(store: Store) -> dict[str, list[str]]:
    """script id -> the data part files holding its rows (reads only the `script_id` column)."""
    parts: dict[str, list[str]] = defaultdict(list)
    fs = store.location.fs
    for path in data_files(store):
        table = pq.read_table(fs.open_input_file(path), columns=["script_id"])
        for script_id in set(table.column(0).to_pylist()):
            parts[script_id].append(path)
    return parts


def _chunk_audio(store: Store, paths: list[str], script_id: str) -> dict[int, tuple[np.ndarray, dict]]:
    """turn -> (audio [num_samples] float32, what else the row says: `spoken_text` and the QC
    scores it has) of one script (passage), from its part files. Where a turn has several rows
    (takes), the one that passed QC is used, else the latest take."""
    found: dict[int, tuple[tuple, np.ndarray, dict]] = {}
    fs = store.location.fs
    for path in paths:
        names = set(pq.read_schema(fs.open_input_file(path)).names)
        extra = [c for c in ("spoken_text", *QC_COLUMNS) if c in names]  # the QC columns: when QC ran
        table = pq.read_table(fs.open_input_file(path), columns=["script_id", "turn", "audio", *extra],
                              filters=[("script_id", "=", script_id)])
        for row in table.to_pylist():  # a null QC column: QC was off, or that metric was not measured
            scores = {c: row[c] for c in extra if c == "spoken_text" or row[c] is not None}
            rank = (bool(scores.get("qc_pass", True)), scores.get("take") or 0)
            if row["turn"] not in found or rank >= found[row["turn"]][0]:
                audio, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
                found[row["turn"]] = (rank, audio, scores)
    return {turn: (audio, scores) for turn, (_, audio, scores) in found.items()}


def assemble_chapters(book: Book, store: Store, *, sample_rate_hz: int, formats: Sequence[str],
                      passage_chunks: int = 0, settings: StitchSettings = StitchSettings(),
                      mastering: MasterSettings | None = MasterSettings(), title: str = "",
                      log=print) -> list[ChapterFiles]:
    """Stitch every chapter's chunks, from its passages, into OUT/chapters/ (audio, timing
    JSON, SRT, VTT), mastered with `mastering` (None: as stitched) and checked against ACX's
    numbers (a line per chapter in the log); with "m4b" among the formats, also the whole
    book as OUT/book.m4b with a marker per chapter, titled `title`, with the book's author,
    language and cover. A chunk that failed is left out and marked `missing` in the timing file."""
    parts = _parts_by_script(store)
    provenance = book_provenance(store)
    written = []
    m4b = None
    if M4B in formats:
        m4b = M4bBook(sample_rate_hz=sample_rate_hz, title=title, author=book.author,
                      language=book.language, cover=book.cover, cover_type=book.cover_type,
                      marking=provenance.container_tags(title or "book"))
        if m4b.cover_skipped:
            log(f"book: the cover is {book.cover_type}, which an M4B cannot carry (JPEG or PNG): left out")
    formats = [f for f in formats if f != M4B]
    if mastering is not None:  # room tone at the head and tail: the stitch's lead-in and tail, at least as long
        settings = replace(settings, lead_in_s=max(settings.lead_in_s, mastering.head_s),
                           tail_s=max(settings.tail_s, mastering.tail_s))
    about = {"title": title, "author": book.author, "language": book.language}
    try:
        for chapter in book.chapters:  # one chapter's audio in memory at a time
            written.append(_assemble_chapter(chapter, store, parts, sample_rate_hz=sample_rate_hz, formats=formats,
                                             passage_chunks=passage_chunks, settings=settings, mastering=mastering,
                                             about=about, m4b=m4b, provenance=provenance, log=log))
        if m4b is not None:
            store.retract(M4B_UNIT)
            store.commit(M4B_UNIT, [m4b.close_into(lambda chunks: store.write_stream(BOOK_M4B, chunks))])
            log(f"book: {len(book.chapters)} chapters with markers -> {store.at(BOOK_M4B).uri}")
    finally:
        if m4b is not None:
            m4b.discard()
    return written


def _assemble_chapter(chapter: Chapter, store: Store, parts: dict[str, list[str]], *, sample_rate_hz: int,
                      formats: Sequence[str], passage_chunks: int, settings: StitchSettings,
                      mastering: MasterSettings | None, about: dict, m4b: M4bBook | None, provenance: Provenance,
                      log) -> ChapterFiles:
    rows = {p.start + turn: found for p in passages(chapter, passage_chunks)
            for turn, found in _chunk_audio(store, parts.get(p.script_id, []), p.script_id).items()
            if turn < p.stop - p.start}
    pieces = [(chunk.text, rows[i][0] if i in rows else None, chunk.paragraph_end)
              for i, chunk in enumerate(chapter.chunks)]
    samples, timed = stitch(pieces, sample_rate_hz, settings)
    if mastering is not None:
        samples = master(samples, sample_rate_hz, mastering)
    acx = acx_check(samples, sample_rate_hz)
    stem = f"{CHAPTERS_DIR}/{chapter_id(chapter)}"
    store.retract(chapter_id(chapter))
    records = [store.write(f"{stem}.{fmt}",
                           encode_marked(samples, sample_rate_hz, fmt, provenance, chapter_id(chapter)))
               for fmt in dict.fromkeys(formats)]
    if m4b is not None:
        m4b.add_chapter(chapter.title, samples)
    timing = {"book": about, **timing_json(chapter.title, chapter.index, sample_rate_hz, len(samples), timed),
              "mastered": mastering is not None, "acx": acx.to_json()}
    for entry in timing["chunks"]:  # the written text stays `text`; what was said, and how well, beside it
        entry.update(rows[entry["index"]][1] if entry["index"] in rows else {})
    for suffix, text in ((".json", json.dumps(timing, indent=2, ensure_ascii=False)),
                         (".srt", to_srt(timed)), (".vtt", to_vtt(timed))):
        records.append(store.write(stem + suffix, text.encode()))
    store.commit(chapter_id(chapter), records)
    files = [store.at(record.path).uri for record in records]
    missing = sum(t.missing for t in timed)
    log(f"chapter {chapter.index + 1} ({chapter.title}): {len(samples) / sample_rate_hz:.1f} s, "
        f"{len(timed)} chunks" + (f", {missing} MISSING" if missing else "") + f" -> {store.at(stem).uri}.*")
    log(f"chapter {chapter.index + 1}: {acx.line()}")
    return ChapterFiles(chapter.index, chapter.title, len(samples) / sample_rate_hz, len(timed), missing, tuple(files),
                        acx)


FORMATS = (*AUDIO_FORMATS, M4B)
SAMPLE_RATE_HZ = 24000  # CSM's codec (Mimi): the rate of every chunk in the output


def render_book(config: SynthConfig, book_path: str, *, voice: str, output_uri: str, formats: Sequence[str],
                passage_chunks: int = 40, settings: StitchSettings = StitchSettings(), title: str | None = None,
                mastering: MasterSettings | None = MasterSettings(), strict: bool = False, keep_matter: bool = False,
                allow_changes: bool = False, adopt: bool = False, log=print) -> bool:
    """Render a book into `output_uri`: its passages through a synthesis run (resuming one
    that was killed), then every chapter's files. Returns True when every chunk was
    rendered and the run failed nowhere (and, when `strict`, every chapter passes the ACX
    check); raises a SynthError when nothing could run. `title`: the M4B's, else the book's
    own (an EPUB's metadata, a Markdown book's single top heading), else the file's name."""
    if voice not in config.voices:
        known = ", ".join(sorted(config.voices)) or "none"
        raise ConfigError(f"--voice {voice!r} is not in the config's voices ({known})")
    if not formats or any(f not in FORMATS for f in formats):
        raise ConfigError(f"--formats {','.join(formats)!r}: choose from {','.join(FORMATS)}")
    if passage_chunks < 0:
        raise ConfigError(f"--passage-chunks {passage_chunks}: must be >= 0")
    book = open_book(book_path, keep_matter=keep_matter, tables=config.text.tables)
    chapters = book.chapters
    title = title or book.title or os.path.splitext(os.path.basename(book_path))[0]
    if book.skipped:
        log(f"book: skipped as front/back matter: {', '.join(book.skipped)} (--keep-matter reads them)")
    num_passages = sum(len(passages(c, passage_chunks)) for c in chapters)
    log(f"book: {len(chapters)} chapters, {num_passages} passages, {sum(len(c.chunks) for c in chapters)} chunks "
        f"({sum(len(k.text) for c in chapters for k in c.chunks)} characters) from {book_path}")
    store = Store.at_uri(output_uri, BOOK)
    store.claim(adopt=adopt)
    # One lease over the whole render: the book's manifest, the run, the chapter files.
    with Lease.acquire(store, stale_after_s=config.job.lease_stale_seconds, log=log) as lease:
        store.run_id = lease.run_id
        manifest = write_book_manifest(chapters, voice, store, passage_chunks=passage_chunks)
        summary = run(book_run_config(config, num_passages, store), manifest, output_uri,
                      allow_changes=allow_changes, store=store, lease=lease, log=log)
        written = assemble_chapters(book, store, sample_rate_hz=SAMPLE_RATE_HZ, formats=formats,
                                    passage_chunks=passage_chunks, settings=settings, mastering=mastering,
                                    title=title, log=log)
    missing = sum(c.missing_chunks for c in written)
    hours = sum(c.duration_s for c in written) / 3600
    failing = [c.chapter + 1 for c in written if not c.acx.passes]
    log(f"book: {len(written)} chapters, {hours:.3f} h -> {output_uri}/chapters"
        + (f" ({missing} chunks missing: see {output_uri}/errors)" if missing else ""))
    log(f"book: ACX check: {len(written) - len(failing)} of {len(written)} chapters pass"
        + (f"; failing: chapters {', '.join(map(str, failing))}" + (" (--strict: exit 1)" if strict else "")
           if failing else ""))
    return summary["ok"] and not missing and not (strict and failing)
