"""The dataset card: OUT/README.md, with the YAML header the Hugging Face hub reads.

This module owns the card's text: a YAML header (license, task categories, size category,
tags saying what the rows are, `configs` whose `data_files` point at `data/*.parquet` only
(never the store's own records), so that `datasets.load_dataset(OUT)` loads through it, the
features read from the data's own schema, and a `synth` block with what the rows are
(generated, recorded, or both, with counts), how the files are marked, the model, its
weights fingerprint, the settings, synth's version and the statistics), then prose: what the
corpus is, how it was made, its numbers (those of run.json: counted from the same committed
parts), QC failures by metric and where the verdicts came from (the run's QC or `synth
rescore`), a book's chapters with their durations, voice and ACX results, and the
intended-use note its kind of data needs.

Who owns README.md: synth writes it when it is absent, and rewrites it only when it holds
`CARD_MARK`, the comment line synth puts in every card it writes. A README.md without it
(a user's own, in an adopted directory, or a card whose mark the user removed to keep
their edits) is never touched: the card goes to README.synth.md instead.

An export's card (`EXPORT/README.md`, `write_export_card`) is shorter: the export's splits as
`configs`, so that `datasets.load_dataset(EXPORT)` gives train/dev/test, what was exported
from where with which filters, and how to load it in its own library. It knows nothing about
plots or Ray.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import yaml

from synth import __version__
from synth.export.destination import EXPORT_CARD, nemo_manifest, split_dir
from synth.export.options import TRAIN, ExportOptions
from synth.export.stats import OutputStats
from synth.pipeline.output import (
    CARD_FILE,
    CARD_FILE_ASIDE,
    DATA_DIR,
    RUN_RECORD,
    data_files,
)
from synth.pipeline.provenance import PARQUET_KEY
from synth.store.store import SETTINGS_HISTORY, Store

CARD_MARK = "# synth-card: written by synth after every run; delete this line to keep your edits from being replaced"
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"))


def size_category(rows: int) -> str:
    """The hub's size category for `rows` examples."""
    return next((name for bound, name in _SIZES if rows < bound), "n>10M")


def _features_yaml(output: Store) -> list | None:
    """The data's features as the hub's YAML lists them, from the first data part's schema."""
    from datasets import DatasetInfo, Features

    files = data_files(output)
    if not files:
        return None
    with output.location.fs.open_input_file(files[0]) as f:
        schema = pq.ParquetFile(f).schema_arrow
    return DatasetInfo(features=Features.from_arrow_schema(schema))._to_yaml_dict()["features"]


def statistics(stats: OutputStats) -> dict:
    """The card's numbers (the keys are run.json's where run.json has them)."""
    numbers = {
        "rows": stats.rows,
        "turns_generated": stats.rows_generated,
        "rows_recorded": stats.rows_recorded,
        "error_rows": stats.error_rows,
        "audio_seconds": round(stats.audio_seconds, 3),
        "audio_hours": round(stats.audio_seconds / 3600, 6),
        "speakers": len(stats.seconds_by_speaker),
        "voices": len([v for v in stats.seconds_by_voice if v != "(none)"]),
        "stop_reasons": dict(stats.stop_reasons),
    }
    if stats.has_qc:
        numbers["qc_rows"] = stats.qc_rows
        numbers["qc_passed"] = stats.qc_passed
        numbers["qc_pass_rate"] = round(stats.qc_passed / stats.qc_rows, 6) if stats.qc_rows else None
        numbers["qc_failed_by_metric"] = dict(sorted(stats.qc_failed_by_metric.items()))  # as run.json counts
        numbers["qc_rescored_rows"] = stats.qc_rescored_rows
    if stats.chapters:
        numbers["chapters"] = len(stats.chapters)
        numbers["chapters_passing_acx"] = sum(bool(c["acx"].get("passes")) for c in stats.chapters)
    return numbers


SHAPING = ("engine", "dtype", "sampling", "generation", "output")  # plan.json's settings the card shows
IMPORT_SETTINGS = ("imported_from", "model", "output")  # an import's identity instead


def _settings(output: Store) -> dict:
    """The settings that shaped the audio, from plan.json (the store's identity)."""
    identity = output.identity() or {}
    keys = IMPORT_SETTINGS if output.layout.kind == "import" else SHAPING
    return {k: identity.get(k) for k in keys}


def _settings_by_rows(output: Store, stats: OutputStats) -> str:
    """When rows were made with more than one set of settings (a relaunch with --allow-changes):
    each set, with how many rows it made and how it differs from the newest; "" otherwise."""
    if len(stats.rows_by_settings) < 2:
        return ""
    history = {h.get("settings"): h for h in (output.identity() or {}).get(SETTINGS_HISTORY, [])}
    newest = _settings(output)
    lines = ["", "These rows were not all made with those settings (the run was continued with "
             "`--allow-changes`): rows by the settings that made them (each part records its own):", ""]
    for key, rows in stats.rows_by_settings.most_common():
        values = history.get(key, {}).get("values", {})
        differs = {k: values.get(k) for k in SHAPING + ("model", "voices", "text", "qc")
                   if k in values and values.get(k) != (newest.get(k) if k in newest else values.get(k))}
        said = "the settings above" if not differs else "; ".join(
            f"{k}: {json.dumps(v)[:300]}" for k, v in differs.items())
        when = history.get(key, {}).get("recorded_at", "unknown time")
        lines.append(f"- {rows} rows, settings `{key}` (first used {when}): {said}")
    return "\n".join(lines) + "\n"


MARKING = {
    "audio_files": "each WAV/FLAC clip (the `audio` column, wav/ or flac/) and a book's chapter files carry a JSON "
                   "record in their comment (WAV INFO ICMT, FLAC Vorbis COMMENT, MP3 ID3v2 TXXX:comment, M4B ©cmt)",
    "parquet_key": PARQUET_KEY.decode(),
    "watermark": None,
}


def _what_it_is(stats: OutputStats, imported_from) -> str:
    """The card's opening paragraph: what the rows are."""
    if stats.origin == "recorded":
        return (f"**Recorded speech.** Every clip in this dataset is a recording that `synth import` brought in "
                f"(from `{imported_from}`); none of it was generated. The `codes` column holds each recording's "
                "Mimi codes, encoded with the codec of the model below, so that the rows train like generated ones.")
    if stats.origin == "mixed":
        return (f"**Generated and recorded speech.** {stats.rows_generated} clips were machine-generated by a "
                f"text-to-speech model (listed below) with synth; {stats.rows_recorded} clips (`stop_reason` "
                "`recorded`) are recordings that `synth import` brought in, not generated.")
    return (f"**Synthetic speech.** Every clip in this dataset was machine-generated by a text-to-speech model "
            f"(listed below) with synth version {__version__}; none of it is a recording of a person.")


def _marking_note(stats: OutputStats) -> str:
    said = [
        "Every audio file synth wrote says what made it, machine-readably: each clip's WAV/FLAC (in the `audio` "
        "column and under wav/ or flac/) carries a JSON record in its comment (the WAV's INFO chunk, the FLAC's "
        "Vorbis comments).",
        *(["Each generated clip's record says `AI-generated speech`, `ai_generated: true`, IPTC's digital source "
           "type `trainedAlgorithmicMedia`, the generator (synth and its version), the model, its weights "
           "fingerprint and the row id."] if stats.rows_generated else []),
        *(["An imported recording's record says so (`ai_generated: false`, no source type): it is never marked as "
           "AI-generated."] if stats.rows_recorded else []),
        f"Each data/ Parquet file's metadata (`{PARQUET_KEY.decode()}`) says the same of its rows, as do the "
        "`model`, `model_weights` and `stop_reason` columns of every row. No audio watermark is embedded in the "
        "samples.",
    ]
    return " ".join(said)


def _model_lines(stats: OutputStats) -> str:
    models = sorted({(m or "?", w or "?", e or "?") for m, w, e in stats.models})
    lines = [f"- `{m}`: its Mimi codec encoded the recordings' codes (nothing generated)" if e == "import"
             else f"- `{m}` (weights fingerprint `{w}`, {e} engine)" for m, w, e in models]
    return "\n".join(lines) or "- (no rows)"


def _qc_section(stats: OutputStats, numbers: dict, models: dict | None = None) -> str:
    """The QC rows of the statistics table, failures by metric, where the verdicts came from, and
    where the run's QC models ran (run.json's qc.models: a device, a precision, a shortcut)."""
    if not stats.has_qc:
        return "| QC | not measured (no `qc_pass` values, in data/ or from `synth rescore`) |\n"
    failed = ", ".join(f"{metric} {n}" for metric, n in numbers["qc_failed_by_metric"].items()) or "none"
    lines = [f"| QC pass rate | {numbers['qc_pass_rate']:.1%} ({stats.qc_passed} of {stats.qc_rows}) |",
             f"| QC failures, rows by metric | {failed} |"]
    if stats.qc_rescored_rows:
        own = stats.qc_rows - stats.qc_rescored_rows
        by = "; ".join(f"settings `{k}`: {n} rows (thresholds {json.dumps(stats.qc_rescore_thresholds.get(k))})"
                       for k, n in stats.qc_rescore_settings.most_common())
        lines.append(f"| QC verdicts from | the run's QC (data/): {own} rows; `synth rescore` (qc/, used where data/ "
                     f"has none; a part's newest scores win): {stats.qc_rescored_rows} rows ({by}) |")
    if models:
        lines.append("| QC models (the run's) | " + "; ".join(f"{group}: {' or '.join(where)}"
                                                        for group, where in models.items()) + " |")
    return "\n".join(lines) + "\n"


def _book_section(stats: OutputStats) -> str:
    """A book's chapters: number, title, duration, files and ACX result; its narrator and M4B."""
    if not stats.chapters:
        return ""
    voices = ", ".join(f"`{v}`" for v in sorted(stats.seconds_by_voice) if v != "(none)") or "none recorded"
    rows = "\n".join(
        f"| {c['number']} | {c['title']} | {c['duration_s'] or 0:.1f} s | {', '.join(c['formats'])} | "
        + ("pass" if c["acx"].get("passes") else "FAIL: " + "; ".join(c["acx"].get("reasons") or ["not checked"]))
        + " |" for c in stats.chapters)
    total = sum(c["duration_s"] or 0 for c in stats.chapters)
    m4b = " The whole book is also `book.m4b`, with a chapter marker at each chapter's start." if stats.book_m4b else ""
    return f"""
## The book

{len(stats.chapters)} chapters, {total / 60:.1f} minutes, narrated in the voice {voices}. Each chapter is in
`chapters/` (audio, its timing in JSON, SRT and WebVTT).{m4b} ACX results are each chapter's own check
(RMS, peak, noise floor, room tone; see the README's *Publishable audio*).

| chapter | title | duration | files | ACX |
|---|---|---|---|---|
{rows}
"""


def _intended_use(stats: OutputStats) -> str:
    if stats.origin == "recorded":
        return ("Intended for training or evaluating speech models beside synthetic data. These are recordings "
                "of people: use them only as their speakers consented and their source's licence allows, and "
                "do not use them to imitate a speaker's voice without consent.")
    return """Intended for research and for training or evaluating speech models (text-to-speech, speech
recognition, codec language models: the Mimi codes are in the `codes` column), ideally mixed with
real recordings. The voices are synthetic or cloned from the reference clips the run was given:
use only voices you have the right to use, and do not use this data to impersonate a real person
or to deceive anyone about whether speech is real. Synthetic speech may mispronounce words,
repeat or drop text, drift in voice over long contexts or carry the model's biases; check the QC
columns (when present) and listen before relying on it. Disclose that the data is
machine-generated wherever you publish it or models trained on it. The license of this data
must respect the license of the model that generated it."""


def card_text(output: Store, stats: OutputStats, *, license_id: str = "other") -> str:
    """The whole README.md."""
    models = sorted({(m or "?", w or "?", e or "?") for m, w, e in stats.models})
    numbers = statistics(stats)
    settings = _settings(output)
    generated = stats.rows_generated > 0
    header = {
        "license": license_id,
        "task_categories": ["text-to-speech", "automatic-speech-recognition"],
        "language": ["en"],
        "size_categories": [size_category(stats.rows)],
        "tags": (["synthetic", "machine-generated"] if generated else []) + (
            ["recorded-speech"] if stats.rows_recorded else []) + ["speech", "csm"],
        "pretty_name": f"synth corpus {output.uri.rstrip('/').rsplit('/', 1)[-1]}",
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}],
    }
    features = _features_yaml(output)
    if features is not None:
        num_bytes = sum(output.file_sizes(DATA_DIR).values())  # the Parquet parts, as the hub counts them
        header["dataset_info"] = {"features": features,
                                  "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": stats.rows}]}
    header["synth"] = {
        "origin": stats.origin,
        "machine_generated": generated,  # some rows are machine-generated; `origin` and the counts say which
        "rows_generated": stats.rows_generated,
        "rows_recorded": stats.rows_recorded,
        "marking": MARKING,
        "synth_version": __version__,
        "models": [{"model": m, "model_weights": w, "engine": e} for m, w, e in models],
        "settings": settings,
        "statistics": numbers,
    }
    if stats.qc_rescored_rows:
        header["synth"]["qc_rescored"] = {"rows": stats.qc_rescored_rows, "settings": dict(stats.qc_rescore_settings)}
    if stats.chapters:
        header["synth"]["chapters"] = [{"number": c["number"], "title": c["title"], "duration_s": c["duration_s"],
                                        "acx_passes": c["acx"].get("passes")} for c in stats.chapters]
    yaml_text = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120)
    speakers = ", ".join(f"{k}: {v / 3600:.3f} h" for k, v in sorted(stats.seconds_by_speaker.items(),
                                                                      key=lambda kv: str(kv[0])))
    run_note = ("" if output.exists(RUN_RECORD) or output.layout.kind == "import" else
                "\nNo run.json yet: the run has not finished; these numbers are what it has committed so far.\n")
    made = "Settings that shaped the audio" if generated else "How it was imported"
    return f"""---
{CARD_MARK}
{yaml_text}---

# {header['pretty_name']}

{_what_it_is(stats, settings.get("imported_from"))}

{_marking_note(stats)}

## How it was made

{_model_lines(stats)}

{made} (from `plan.json`):

```json
{json.dumps(settings, indent=2)[:4000]}
```
{_settings_by_rows(output, stats)}{_book_section(stats)}
## Statistics

| | |
|---|---|
| rows | {stats.rows} ({stats.rows_generated} generated, {stats.rows_recorded} recorded) |
| audio | {stats.audio_seconds / 3600:.4f} h ({stats.audio_seconds:.1f} s) |
| error rows | {stats.error_rows} |
| speakers | {numbers['speakers']} ({speakers or 'none'}) |
| voices | {numbers['voices']} |
{_qc_section(stats, numbers, ((output.read_record(RUN_RECORD) or {}).get("qc") or {}).get("models"))}{run_note}
## Loading

```python
from datasets import load_dataset, Audio
ds = load_dataset("path/to/this/directory", split="train").cast_column("audio", Audio(decode=False))
```

Every row of every committed part is in `train` here (a part holds rows of many scripts): for
train/dev/test splits that keep each conversation whole, export it with `synth export --split
dev=0.01,test=0.01`, whose own card gives `load_dataset` the three splits.

## Intended use and limitations

{_intended_use(stats)}
"""


def write_card(output: Store, stats: OutputStats, *, license_id: str = "other", log=print) -> str:
    """Write the card as README.md (or README.synth.md when README.md is not synth's); returns its name."""
    target = CARD_FILE
    if output.exists(CARD_FILE) and CARD_MARK not in output.read(CARD_FILE).decode(errors="replace"):
        target = CARD_FILE_ASIDE
        log(f"synth: {output.at(CARD_FILE).uri} is not a card synth wrote: left as it is; the card is {target}")
    output.write(target, card_text(output, stats, license_id=license_id).encode())
    return target


def _export_files(fmt: str, split: str | None) -> str:
    """The files `load_dataset` reads for one split of an export: WebDataset tars (HF's webdataset
    builder), the NeMo manifest or the Lhotse cut manifests (JSON lines: metadata, the audio stays in
    the tars)."""
    if fmt == "webdataset":
        return f"{split_dir('wds', split)}/*.tar"
    if fmt == "nemo":
        return nemo_manifest(split)
    return f"{split_dir('shar', split)}/cuts.*.jsonl.gz"


def export_card_text(options: ExportOptions, record: dict) -> str:
    """An export's README.md: its splits as `configs` (so `load_dataset(EXPORT)` gives train/dev/test),
    what was exported from where, with which filters, and how to load it in its own library."""
    split = bool(options.splits)
    counts = record.get("splits") or {TRAIN: record.get("rows", 0)}
    present = [name for name in options.split_names if counts.get(name)]
    header = {
        "license": "other",
        "task_categories": ["text-to-speech", "automatic-speech-recognition"],
        "language": ["en"],
        "tags": ["speech", "csm"],
        "pretty_name": f"synth export ({options.format})",
        "configs": [{"config_name": "default", "data_files": [
            {"split": name, "path": _export_files(options.format, name if split else None)} for name in present]}],
        "synth": {"export": record.get("identity"), "rows": record.get("rows"), "splits": counts,
                  "finished": record.get("finished"), "marking": MARKING, "synth_version": __version__},
    }
    if not present:
        del header["configs"]
    first = TRAIN if split else None
    how = {
        "lhotse_shar": f'from lhotse import CutSet\ncuts = CutSet.from_shar(in_dir="{split_dir("shar", first)}")',
        "nemo": f"# NeMo: manifest_filepath: {nemo_manifest(first)} (audio paths relative to nemo/)",
        "webdataset": "import glob, webdataset as wds\n"
                      f'ds = wds.WebDataset(sorted(glob.glob("{split_dir("wds", first)}/*.tar")))',
    }[options.format]
    rule = (f"Rows are split by script id (a hash of it), so that a conversation is never in two splits: "
            f"{', '.join(f'{k} {v:g}' for k, v in (options.splits or {}).items())} of the scripts, {TRAIN} the rest."
            if split else f"No held-out splits were asked for (`--split`): every row is in `{TRAIN}`.")
    rows = "\n".join(f"| {name} | {counts.get(name, 0)} |" for name in options.split_names)
    return f"""---
{CARD_MARK}
{yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120)}---

# {header['pretty_name']}

An export of the synth dataset `{(record.get('identity') or {}).get('source')}` as {options.format}, with
the filters and splits recorded in `_identity.json` (what the rows are, generated or recorded, is in that
dataset's own card). The clips are the dataset's own files, each still marked with what made it (a JSON
record in its comment: see the dataset's card).

{rule}

| split | rows |
|---|---|
{rows}

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/directory")   # the splits above, through this card's configs
{how}
```
"""


def write_export_card(dest: Store, options: ExportOptions, record: dict) -> str:
    """Write an export's README.md (the export directory is synth's alone); returns its name."""
    dest.write(EXPORT_CARD, export_card_text(options, record).encode())
    return EXPORT_CARD
