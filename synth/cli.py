"""The `synth` command: one entry point for every job synth runs.

    synth run   --config configs/demo.yaml --input examples/dialogues.parquet --output out/demo
    synth run   --config configs/demo.yaml --input examples/dialogues.parquet --dry-run
    synth book  --config configs/demo.yaml --book examples/books/alice-ch1-3.md --voice narrator --output out/alice
    synth book  --config configs/demo.yaml --book book.epub --voice narrator --output out/book --strict
    synth verify out/demo                    (check an output against its commit markers)
    synth export out/demo --format lhotse_shar --to out/demo-shar   (also: nemo, webdataset; --split dev=0.01)
    synth card out/demo / synth report out/demo   (rewrite the dataset card / the HTML run report)
    synth acx out/alice/chapters/*.wav       (ACX's audio numbers, per file)
    synth train --config configs/train-demo.yaml --data out/demo --output out/demo-ft   (fine-tune CSM)
    synth import --clips recordings/ --model sesame/csm-1b --output out/recorded      (recorded data in)
    synth rescore out/demo --set qc.asr.model=openai/whisper-large-v3   (QC metrics of an existing dataset)
    synth bench --config tiny-cpu            (engine throughput; see BENCHMARKS.md)
    synth bench-driver --rows 1000000        (driver memory on a large manifest)
    synth bench-warmup --config tiny-cpu     (warm-up, cold against the compile cache)
    synth bench-loop --config tiny-cpu       (frame-loop host time against held caches and queue)

`pip install` puts `synth` on the PATH; `python -m synth ...` is the same without an
install (from the repository root), and `jobs/*.py` are the same commands as scripts
for `ray job submit`. This module parses arguments and calls the package; it imports
each command's modules only when that command runs, so `synth bench` works on a GPU
box without Ray or pydantic. Exit status: 0 done, 1 finished with failures, 2 nothing
ran (a bad config, manifest, book or output directory; the message says which).
"""

from __future__ import annotations

import argparse
import json
import sys

from synth.errors import SynthError


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set fast_engine.num_slots=4 (repeatable)")
    parser.add_argument("--allow-changes", action="store_true",
                        help="continue an output whose recorded settings differ from these")
    parser.add_argument("--adopt-output", action="store_true",
                        help="write into an existing non-empty directory synth did not create (synth then deletes "
                        "or moves only files named by its own layout)")


def _run_parser(sub) -> None:
    parser = sub.add_parser("run", help="synthesize a speech dataset from a Parquet manifest",
                            description="Synthesize a speech dataset from a Parquet manifest with CSM on Ray.")
    parser.add_argument("--config", help="YAML config (defaults when omitted)")
    parser.add_argument("--input", required=True, help="manifest: a .parquet file or a directory of them (local or URI)")
    parser.add_argument("--output", help="output dataset directory (local or URI); required unless --dry-run")
    parser.add_argument("--dry-run", action="store_true", help="validate the manifest and print the plan; load no model")
    _add_run_options(parser)


def _book_parser(sub) -> None:
    parser = sub.add_parser("book", help="render a book to one audio file per chapter in a narrator's voice",
                            description="Render an EPUB, Markdown or plain-text book to one audio file per "
                            "chapter, in one narrator's voice: text read in its spoken form, chapters mastered "
                            "for publication and checked against ACX's numbers.")
    parser.add_argument("--config", help="YAML config with a `voices:` library (defaults when omitted)")
    parser.add_argument("--book", required=True, help="the book: .epub (chapters in spine order), .md/.markdown "
                        "(chapters at headings) or plain text")
    parser.add_argument("--voice", required=True, help="narrator: a name from the config's voices")
    parser.add_argument("--output", required=True, help="output directory (local or URI)")
    parser.add_argument("--formats", default="wav,flac",
                        help="comma-separated: wav, flac, mp3 (one file per chapter), m4b (one file for the book "
                        "with a marker per chapter)")
    parser.add_argument("--title", help="the book's title in its M4B (default: the EPUB's title, a Markdown book's "
                        "single top heading, else the book file's name)")
    parser.add_argument("--keep-matter", action="store_true",
                        help="EPUB: also read front and back matter (cover, title page, contents, copyright, index)")
    parser.add_argument("--no-normalize", action="store_true",
                        help="read the text as written (same as --set text.normalize=false)")
    parser.add_argument("--lexicon", metavar="FILE",
                        help="pronunciation lexicon, `word = respelling` per line (same as --set text.lexicon=FILE)")
    parser.add_argument("--no-master", action="store_true",
                        help="chapters as stitched: no loudness normalisation, limiter or room tone")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a chapter fails the ACX check")
    parser.add_argument("--passage-chunks", type=int, default=40, metavar="N",
                        help="cut chapters into passages of at least N chunks, at paragraph ends, which render "
                        "in parallel, each with its own rolling context; 0: a chapter is one passage")
    parser.add_argument("--sentence-pause", type=float, metavar="S", help="seconds between sentences (default 0.25)")
    parser.add_argument("--paragraph-pause", type=float, metavar="S", help="seconds between paragraphs (default 0.7)")
    _add_run_options(parser)


def _acx_parser(sub) -> None:
    parser = sub.add_parser("acx", help="check audio files against ACX's numbers (RMS, peak, noise floor, room tone)",
                            description="Measure audio files (WAV, FLAC, MP3) as ACX does and print, per file, "
                            "whether it passes and what fails.")
    parser.add_argument("files", nargs="+", help="audio files, e.g. OUT/chapters/*.wav")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a file fails")


def acx_command(args: argparse.Namespace) -> int:
    import soundfile as sf

    from synth.book.acx import acx_check

    failed = 0
    for path in args.files:
        try:
            audio, rate = sf.read(path, dtype="float32", always_2d=True)
        except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
            raise SynthError(f"{path}: cannot read audio ({e})") from None
        report = acx_check(audio.mean(axis=1), rate)
        failed += not report.passes
        print(f"{path}: {report.line()}")
    print(f"acx: {len(args.files) - failed} of {len(args.files)} files pass")
    return 1 if failed and args.strict else 0


def _verify_parser(sub) -> None:
    parser = sub.add_parser("verify", help="check an output directory against its commit markers",
                            description="Check every committed part of an output against its marker (files present, "
                            "sizes and sha256), every row id exactly once, and every data part opening as the "
                            "dataset's Parquet. Changes nothing; exit 1 with the findings if anything is wrong.")
    parser.add_argument("output", help="the output directory (local or URI)")
    parser.add_argument("--sizes-only", action="store_true", help="skip the checksums (reads no file's contents)")


def _rescore_parser(sub) -> None:
    parser = sub.add_parser("rescore", help="compute the QC metrics of an existing dataset (nothing generated)",
                            description="Compute the quality-control metrics and decisions (the config's `qc:` "
                            "section) of every clip of a synth output or of any Parquet dataset with an HF Audio "
                            "column and a text column, into OUT/qc/<file>.parquet. Resumable: files scored with "
                            "the same settings are skipped.")
    parser.add_argument("input", help="a synth output, or a Parquet file or directory of them (local or URI)")
    parser.add_argument("--output", help="where the scores go (default: beside a synth output's data)")
    parser.add_argument("--config", help="YAML config whose `qc:` section applies (defaults when omitted)")
    parser.add_argument("--text-column", help="the column with each clip's intended text (default: `spoken_text` "
                        "where the dataset has it, as in a synth output, else `text`)")
    parser.add_argument("--audio-column", default="audio", help="the HF Audio column ({bytes, path})")
    parser.add_argument("--id-column", default="id", help="the row id column (default: row numbers if absent)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set qc.thresholds.max_wer=0.2 (repeatable)")
    parser.add_argument("--adopt-output", action="store_true",
                        help="write into an existing non-empty directory synth did not create")


def rescore_command(args: argparse.Namespace) -> int:
    import time

    from synth.pipeline.config import load_config
    from synth.pipeline.rescore import render, rescore

    t0 = time.time()
    config = load_config(args.config, args.overrides)
    summary = rescore(config, args.input, args.output, text_column=args.text_column,
                      audio_column=args.audio_column, id_column=args.id_column, adopt=args.adopt_output)
    print(render(summary, t0))
    return 0


def _export_parser(sub) -> None:
    parser = sub.add_parser("export", help="export an output as Lhotse Shar, NeMo JSON lines or WebDataset shards",
                            description="Export the committed parts of an output into a separate directory, part "
                            "by part on Ray; a rerun with the same options finishes an interrupted export.")
    parser.add_argument("output", help="the synth output to export (local or URI)")
    parser.add_argument("--format", required=True, choices=["lhotse_shar", "nemo", "webdataset"])
    parser.add_argument("--to", required=True, dest="destination",
                        help="the export directory: new, empty, or an earlier export of the same options")
    parser.add_argument("--qc-pass-only", action="store_true", help="keep only rows that passed QC (qc_pass)")
    parser.add_argument("--min-duration", type=float, metavar="S", help="drop rows shorter than S seconds")
    parser.add_argument("--max-duration", type=float, metavar="S", help="drop rows longer than S seconds")
    parser.add_argument("--speakers", help="comma-separated speaker ids to keep")
    parser.add_argument("--voices", help="comma-separated voice names to keep")
    parser.add_argument("--split", dest="splits", metavar="NAME=FRACTION,...",
                        help="held-out splits by fraction of scripts, e.g. dev=0.01,test=0.01 (by script id, so a "
                        "conversation is never in two; the rest is train; each split gets its own files)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="webdataset: tar shard size in MB (256)")
    parser.add_argument("--workers", type=int, default=2, help="parts exported at once (Ray tasks, 2)")
    parser.add_argument("--ray-address", help="as ray.address for a run (default: RAY_ADDRESS, else a local Ray)")


def _describe_parsers(sub) -> None:
    card = sub.add_parser("card", help="(re)write an output's dataset card, OUT/README.md",
                          description="Write OUT/README.md (the Hugging Face dataset card) from the committed parts; "
                          "a README.md synth did not write is left alone and the card goes to README.synth.md.")
    card.add_argument("output", help="the output directory (local or URI)")
    card.add_argument("--license", default="other", help="the card's license field (default: other)")
    report = sub.add_parser("report", help="(re)write an output's HTML run report, OUT/report.html",
                            description="Write OUT/report.html: plots and example clips, self-contained.")
    report.add_argument("output", help="the output directory (local or URI)")


def export_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from synth.export.job import run_export
    from synth.export.options import ExportOptions, parse_splits
    from synth.pipeline.config import ConfigError

    split = (lambda text, kind: tuple(kind(x.strip()) for x in text.split(",") if x.strip()) if text else None)
    try:
        options = ExportOptions(format=args.format, qc_pass_only=args.qc_pass_only, min_duration_s=args.min_duration,
                                max_duration_s=args.max_duration, speakers=split(args.speakers, int),
                                voices=split(args.voices, str), shard_max_mb=args.shard_mb, num_workers=args.workers,
                                ray_address=args.ray_address, splits=parse_splits(args.splits or "") or None)
    except (ValidationError, ValueError) as e:
        raise ConfigError(f"synth export: {e}") from None
    record = run_export(args.output, args.destination, options)
    return 0 if record["finished"] else 1


def card_command(args: argparse.Namespace) -> int:
    from synth.export.describe import describe_output

    describe_output(args.output, report=False, license_id=args.license)
    return 0


def report_command(args: argparse.Namespace) -> int:
    from synth.export.describe import describe_output

    describe_output(args.output, card=False)
    return 0


def _train_parser(sub) -> None:
    parser = sub.add_parser("train", help="fine-tune CSM on a synth dataset (Ray Train; resumes a killed run)",
                            description="Fine-tune CSM (full or LoRA) on a synth dataset's stored codes with Ray "
                            "Train, one worker per GPU; the same command resumes a killed run from its newest "
                            "checkpoint. OUTPUT/model/ is then a checkpoint synth run takes as model.id.")
    parser.add_argument("--config", help="YAML training config (defaults when omitted; see configs/train-*.yaml)")
    parser.add_argument("--data", required=True, help="a synth output directory (local or URI): its data/ rows train")
    parser.add_argument("--output", required=True, help="training output directory (local or URI)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a config field, e.g. --set model.method=lora (repeatable)")


def train_command(args: argparse.Namespace) -> int:
    from synth.train.config import load_train_config
    from synth.train.job import train

    record = train(load_train_config(args.config, args.overrides), args.data, args.output)
    return 0 if record["finished"] else 1


def _import_parser(sub) -> None:
    parser = sub.add_parser("import", help="bring recorded speech into synth's dataset schema, codes included",
                            description="Turn a recorded corpus (a directory of clips with transcripts, or a Hugging "
                            "Face audio dataset) into a synth output (same layout and columns as synth run, Mimi "
                            "codes included), committed in parts: a killed import resumes; synth train reads it.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--clips", help="directory of audio files, each with <stem>.txt beside it or a line in "
                        "metadata.csv (name|text, LJSpeech style) at the top")
    source.add_argument("--hf-dataset", help="a datasets.save_to_disk directory, a Parquet dataset directory, or a "
                        "hub dataset in the local cache")
    parser.add_argument("--split", default="train", help="--hf-dataset's split (default train)")
    parser.add_argument("--audio-column", default="audio")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--speaker-column", help="integer speaker ids (default: --speaker for every row)")
    parser.add_argument("--speaker", type=int, default=0, help="the speaker id of every clip (default 0)")
    parser.add_argument("--model", required=True, help="CSM checkpoint whose Mimi encodes the clips (hub id or dir); "
                        "train with the same one")
    parser.add_argument("--output", required=True, help="output dataset directory (local or URI)")
    parser.add_argument("--rows-per-part", type=int, default=64, help="clips per committed part (default 64)")
    parser.add_argument("--audio-format", choices=["wav", "flac"], default="flac")
    parser.add_argument("--adopt-output", action="store_true", help="write into a non-empty directory synth did not create")


def import_command(args: argparse.Namespace) -> int:
    from synth.train import importer

    if args.rows_per_part < 1:
        raise SynthError(f"--rows-per-part must be at least 1, got {args.rows_per_part}")
    if args.speaker < 0:
        raise SynthError(f"--speaker must be a non-negative integer, got {args.speaker}")
    if args.clips:
        clips, source = importer.clips_in_directory(args.clips, args.speaker), args.clips
    else:
        clips = importer.clips_in_hf_dataset(args.hf_dataset, split=args.split, audio_column=args.audio_column,
                                             text_column=args.text_column, speaker_column=args.speaker_column,
                                             speaker=args.speaker)
        source = f"{args.hf_dataset}[{args.split}]"
    totals = importer.import_clips(clips, args.output, source=source, codec=importer.load_codec(args.model),
                                   model_id=args.model, rows_per_part=args.rows_per_part,
                                   audio_format=args.audio_format, adopt=args.adopt_output)
    print(f"import: {totals['rows']} rows, {totals['errors']} error rows in {totals['parts']} parts "
          f"({totals['skipped_parts']} committed before) -> {args.output}", flush=True)
    _describe(args.output)
    return 1 if totals["errors"] else 0


# `synth verify` by store kind: the module and function that check it (each returns a Verification)
VERIFIERS = {
    "run": ("synth.pipeline.verify", "verify_dataset_at"),
    "book": ("synth.pipeline.verify", "verify_dataset_at"),
    "import": ("synth.pipeline.verify", "verify_dataset_at"),
    "export": ("synth.export.job", "verify_export_at"),
    "rescore": ("synth.pipeline.rescore", "verify_rescore_at"),
    "train": ("synth.train.output", "verify_train_at"),
}


def verify_command(args: argparse.Namespace) -> int:
    import importlib

    from synth.pipeline.output import RUN
    from synth.store.store import Store

    store = Store.at_uri(args.output, RUN)
    kind = store.open_existing(VERIFIERS, "synth verify")
    module, function = VERIFIERS[kind]
    report = getattr(importlib.import_module(module), function)(args.output, checksums=not args.sizes_only)
    print(f"{args.output}: a synth {kind} store")
    print(report.render())
    return 0 if report.ok else 1


def run_command(args: argparse.Namespace) -> int:
    from synth.pipeline.config import load_config
    from synth.pipeline.dry_run import dry_run_report
    from synth.pipeline.runner import run

    config = load_config(args.config, args.overrides)
    if args.dry_run:
        print(dry_run_report(config, args.input).render())
        return 0
    if not args.output:
        raise SynthError("--output is required unless --dry-run")
    summary = run(config, args.input, args.output, allow_changes=args.allow_changes, adopt=args.adopt_output)
    _describe(args.output, config.job.lease_stale_seconds)
    return 0 if summary["ok"] else 1


def _describe(output: str, lease_stale_seconds: float = 60.0) -> None:
    """The dataset card and report, as every command that writes a dataset ends (run, book, import)."""
    from synth.export.describe import describe_output

    try:  # the rows are committed: a card that cannot be written fails nothing
        describe_output(output, lease_stale_seconds=lease_stale_seconds)
    except (SynthError, OSError) as e:
        print(f"warning: the dataset card and report were not written ({e}); `synth card` / `synth report` "
              "write them later", file=sys.stderr)


def book_command(args: argparse.Namespace) -> int:
    from synth.book.master import MasterSettings
    from synth.book.render import render_book
    from synth.book.stitch import StitchSettings
    from synth.pipeline.config import ConfigError, load_config

    shortcuts = (["text.normalize=false"] if args.no_normalize else []) + (
        [f"text.lexicon={json.dumps(args.lexicon)}"] if args.lexicon else [])  # a YAML string, whatever the path
    config = load_config(args.config, [*args.overrides, *shortcuts])
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    pauses = {"sentence_pause_s": args.sentence_pause, "paragraph_pause_s": args.paragraph_pause}
    try:
        settings = StitchSettings(**{k: v for k, v in pauses.items() if v is not None})
    except ValueError as e:
        raise ConfigError(f"--sentence-pause/--paragraph-pause: {e}") from None
    ok = render_book(config, args.book, voice=args.voice, output_uri=args.output, formats=formats,
                     passage_chunks=args.passage_chunks, settings=settings, title=args.title,
                     mastering=None if args.no_master else MasterSettings(), strict=args.strict,
                     keep_matter=args.keep_matter, allow_changes=args.allow_changes, adopt=args.adopt_output)
    _describe(args.output, config.job.lease_stale_seconds)
    return 0 if ok else 1


# Tools with their own argument parsers: the rest of the command line goes to them.
TOOLS = {
    "bench": ("synth.bench.throughput", "engine throughput: the fast engine against the transformers reference"),
    "bench-driver": ("synth.bench.driver_memory", "driver time and memory on a large manifest"),
    "bench-warmup": ("synth.bench.warmup", "a compiled engine's warm-up, cold against loaded from the compile cache"),
    "bench-loop": ("synth.bench.frame_loop", "the frame loop's host time per frame against held caches and queued rows"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        import importlib

        module = importlib.import_module(TOOLS[argv[0]][0])
        return module.main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="synth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_parser(sub)
    _book_parser(sub)
    _verify_parser(sub)
    _acx_parser(sub)
    _export_parser(sub)
    _describe_parsers(sub)
    _train_parser(sub)
    _import_parser(sub)
    _rescore_parser(sub)
    for name, (_, help_text) in TOOLS.items():
        sub.add_parser(name, help=help_text + " (options: synth " + name + " --help)", add_help=False)
    args = parser.parse_args(argv)
    command = {"run": run_command, "book": book_command, "verify": verify_command, "acx": acx_command,
               "export": export_command, "card": card_command, "report": report_command, "train": train_command,
               "import": import_command, "rescore": rescore_command}[args.command]
    try:
        return command(args)
    except SynthError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
