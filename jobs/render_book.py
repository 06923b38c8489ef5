"""Render a plain-text or Markdown book to one audio file per chapter, in one narrator's voice.

    python jobs/render_book.py --config configs/demo.yaml --book examples/books/alice-ch1-3.md \
        --voice narrator --output out/alice
    ray job submit --working-dir . -- python jobs/render_book.py --config ... --book ... --voice ... --output ...

Chapters are cut into passages of about --passage-chunks sentence-sized chunks (at
paragraph ends); each passage renders as a chain with rolling context, and passages
render in parallel across the actors' slots. A killed render resumes (run the same
command again). The per-chunk dataset lands in OUT/data like any synthesis run, the
chapters in OUT/chapters; with `--formats ...,m4b` the whole book also lands as
OUT/book.m4b (AAC, one chapter marker per chapter).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from synth import storage  # noqa: E402
from synth.audiobook import assemble_chapters, book_run_config, passages, write_book_manifest  # noqa: E402
from synth.book import BookError, load_book  # noqa: E402
from synth.config import ConfigError, load_config  # noqa: E402
from synth.manifest import ManifestError  # noqa: E402
from synth.ray_runner import RunError, run  # noqa: E402
from synth.m4b import FORMAT as M4B  # noqa: E402
from synth.stitch import AUDIO_FORMATS, StitchSettings  # noqa: E402

FORMATS = (*AUDIO_FORMATS, M4B)

SAMPLE_RATE_HZ = 24000  # CSM's codec (Mimi)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config with a `voices:` library (defaults when omitted)")
    parser.add_argument("--book", required=True, help="the book: .md/.markdown (chapters at headings) or plain text")
    parser.add_argument("--voice", required=True, help="narrator: a name from the config's voices")
    parser.add_argument("--output", required=True, help="output directory (local or URI)")
    parser.add_argument("--formats", default="wav,flac",
                        help=f"audio formats, from {','.join(FORMATS)}: {','.join(AUDIO_FORMATS)} one file per chapter, "
                        f"{M4B} one file for the book with a marker per chapter")
    parser.add_argument("--title", help="the book's title in its M4B (default: the book file's name)")
    parser.add_argument("--passage-chunks", type=int, default=40, metavar="N",
                        help="cut chapters into passages of at least N chunks, at paragraph ends, which render "
                        "in parallel, each with its own rolling context; 0: a chapter is one passage")
    parser.add_argument("--sentence-pause", type=float, default=StitchSettings.sentence_pause_s, metavar="S")
    parser.add_argument("--paragraph-pause", type=float, default=StitchSettings.paragraph_pause_s, metavar="S")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--allow-changes", action="store_true",
                        help="continue an output whose recorded settings differ from these")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config, args.overrides)
        if args.voice not in config.voices:
            known = ", ".join(sorted(config.voices)) or "none"
            raise ConfigError(f"--voice {args.voice!r} is not in the config's voices ({known})")
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        if not formats or any(f not in FORMATS for f in formats):
            raise ConfigError(f"--formats {args.formats!r}: choose from {','.join(FORMATS)}")
        settings = StitchSettings(sentence_pause_s=args.sentence_pause, paragraph_pause_s=args.paragraph_pause)
        if args.passage_chunks < 0:
            raise ConfigError(f"--passage-chunks {args.passage_chunks}: must be >= 0")
        chapters = load_book(args.book)
        num_passages = sum(len(passages(c, args.passage_chunks)) for c in chapters)
        print(f"book: {len(chapters)} chapters, {num_passages} passages, {sum(len(c.chunks) for c in chapters)} chunks "
              f"({sum(len(k.text) for c in chapters for k in c.chunks)} characters) from {args.book}", flush=True)
        out = storage.resolve(args.output)
        manifest = write_book_manifest(chapters, args.voice, out, passage_chunks=args.passage_chunks,
                                       allow_changes=args.allow_changes)
        summary = run(book_run_config(config, num_passages, out), manifest, args.output,
                      allow_changes=args.allow_changes)
        title = args.title or os.path.splitext(os.path.basename(args.book))[0]
        written = assemble_chapters(chapters, out, sample_rate_hz=SAMPLE_RATE_HZ, formats=formats,
                                    passage_chunks=args.passage_chunks, settings=settings, title=title)
    except (ConfigError, ManifestError, RunError, BookError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = sum(c.missing_chunks for c in written)
    hours = sum(c.duration_s for c in written) / 3600
    print(f"book: {len(written)} chapters, {hours:.3f} h -> {args.output}/chapters"
          + (f" ({missing} chunks missing: see {args.output}/errors)" if missing else ""))
    return 0 if summary["ok"] and not missing else 1


if __name__ == "__main__":
    sys.exit(main())
