"""The dataset card: OUT/README.md, with the YAML header the Hugging Face hub reads.

This module owns the card's text: a YAML header (license, task categories, size category,
tags marking the data synthetic, `configs` whose `data_files` point at `data/*.parquet`
so that `datasets.load_dataset(OUT)` loads through it, the features read from the data's
own schema, and a `synth` block with the model, its weights fingerprint, the settings,
synth's version and the statistics), then prose: what the corpus is, how it was made, its
numbers (those of run.json: counted from the same committed parts) and the intended-use
note a synthetic speech corpus needs.

Who owns README.md: synth writes it when it is absent, and rewrites it only when it holds
`CARD_MARK`, the comment line synth puts in every card it writes. A README.md without it
(a user's own, in an adopted directory, or a card whose mark the user removed to keep
their edits) is never touched: the card goes to README.synth.md instead. It knows nothing
about plots or Ray.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import yaml

from synth import __version__
from synth.export.stats import OutputStats
from synth.pipeline.output import (
    CARD_FILE,
    CARD_FILE_ASIDE,
    DATA_DIR,
    RUN_RECORD,
    data_files,
)
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
        "turns_generated": stats.rows,
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
        numbers["qc_failure_reasons"] = dict(stats.qc_reasons.most_common(20))
    return numbers


SHAPING = ("engine", "dtype", "sampling", "generation", "output")  # plan.json's settings the card shows


def _settings(output: Store) -> dict:
    """The settings that shaped the audio, from plan.json (the run's identity)."""
    identity = output.identity() or {}
    return {k: identity.get(k) for k in SHAPING}


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


def card_text(output: Store, stats: OutputStats, *, license_id: str = "other") -> str:
    """The whole README.md."""
    models = sorted({(m or "?", w or "?", e or "?") for m, w, e in stats.models})
    numbers = statistics(stats)
    settings = _settings(output)
    header = {
        "license": license_id,
        "task_categories": ["text-to-speech", "automatic-speech-recognition"],
        "language": ["en"],
        "size_categories": [size_category(stats.rows)],
        "tags": ["synthetic", "machine-generated", "speech", "csm"],
        "pretty_name": f"synth corpus {output.uri.rstrip('/').rsplit('/', 1)[-1]}",
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": f"{DATA_DIR}/*.parquet"}]}],
    }
    features = _features_yaml(output)
    if features is not None:
        num_bytes = sum(output.file_sizes(DATA_DIR).values())  # the Parquet parts, as the hub counts them
        header["dataset_info"] = {"features": features,
                                  "splits": [{"name": "train", "num_bytes": num_bytes, "num_examples": stats.rows}]}
    header["synth"] = {
        "machine_generated": True,
        "synth_version": __version__,
        "models": [{"model": m, "model_weights": w, "engine": e} for m, w, e in models],
        "settings": settings,
        "statistics": numbers,
    }
    yaml_text = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120)
    model_lines = "\n".join(f"- `{m}` (weights fingerprint `{w}`, {e} engine)" for m, w, e in models) or "- (no rows)"
    speakers = ", ".join(f"{k}: {v / 3600:.3f} h" for k, v in sorted(stats.seconds_by_speaker.items(),
                                                                      key=lambda kv: str(kv[0])))
    qc = (f"| QC pass rate | {numbers['qc_pass_rate']:.1%} ({stats.qc_passed} of {stats.qc_rows}) |\n"
          if stats.has_qc and stats.qc_rows else "| QC | not measured (no `qc_pass` column) |\n")
    run_note = ("" if output.exists(RUN_RECORD) else
                "\nNo run.json yet: the run has not finished; these numbers are what it has committed so far.\n")
    return f"""---
{CARD_MARK}
{yaml_text}---

# {header['pretty_name']}

**Synthetic speech.** Every clip in this dataset was machine-generated by a text-to-speech model
(listed below) with synth version {__version__}; none of it is a recording of a
person. The clips carry no audio watermark: their provenance is this card, the `model` and
`model_weights` columns of every row, and the run records (`plan.json`, `run.json`).

## How it was made

{model_lines}

Settings that shaped the audio (from `plan.json`):

```json
{json.dumps(settings, indent=2)[:4000]}
```
{_settings_by_rows(output, stats)}
## Statistics

| | |
|---|---|
| turns (rows) | {stats.rows} |
| audio | {stats.audio_seconds / 3600:.4f} h ({stats.audio_seconds:.1f} s) |
| error rows | {stats.error_rows} |
| speakers | {numbers['speakers']} ({speakers or 'none'}) |
| voices | {numbers['voices']} |
{qc}{run_note}
## Loading

```python
from datasets import load_dataset, Audio
ds = load_dataset("path/to/this/directory", split="train").cast_column("audio", Audio(decode=False))
```

## Intended use and limitations

Intended for research and for training or evaluating speech models (text-to-speech, speech
recognition, codec language models: the Mimi codes are in the `codes` column), ideally mixed with
real recordings. The voices are synthetic or cloned from the reference clips the run was given:
use only voices you have the right to use, and do not use this data to impersonate a real person
or to deceive anyone about whether speech is real. Synthetic speech may mispronounce words,
repeat or drop text, drift in voice over long contexts or carry the model's biases; check the QC
columns (when present) and listen before relying on it. Disclose that the data is
machine-generated wherever you publish it or models trained on it. The license of this data
must respect the license of the model that generated it.
"""


def write_card(output: Store, stats: OutputStats, *, license_id: str = "other", log=print) -> str:
    """Write the card as README.md (or README.synth.md when README.md is not synth's); returns its name."""
    target = CARD_FILE
    if output.exists(CARD_FILE) and CARD_MARK not in output.read(CARD_FILE).decode(errors="replace"):
        target = CARD_FILE_ASIDE
        log(f"synth: {output.at(CARD_FILE).uri} is not a card synth wrote: left as it is; the card is {target}")
    output.write(target, card_text(output, stats, license_id=license_id).encode())
    return target
