"""The rows an export reads: committed data parts of an output, streamed, with the filters applied.

This module owns which source parts count (those a sound commit marker covers: a partly
finished output exports what it committed; a damaged marker stops the export, naming
it), reading one part batch by batch (memory stays bounded by a batch, whatever the
output's size) for one split at a time (`ExportOptions.split_of`: by script, so a
conversation never straddles two), each row's QC verdict (its own, else `synth rescore`'s
for its part, `synth.pipeline.qc_scores`), the export filters (QC pass, duration range,
speakers, voices) with a count of what each dropped, and the metadata a row carries into
every format (every column but the audio and the codes, QC columns included when the rows
have them). It knows nothing about the formats' files or Ray.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import SynthError
from synth.export.options import ExportOptions
from synth.pipeline.output import committed_parts as dataset_parts
from synth.pipeline.output import data_file, read_data_part
from synth.pipeline.qc_scores import rescored, scored_parts
from synth.pipeline.record import QC_PASS
from synth.store.store import Store

READ_BATCH_ROWS = 32  # rows decoded at once: a batch of clips, not a part
HEAVY_COLUMNS = ("audio", "codes")  # what the metadata leaves out (each format stores them its own way)
FRAME_SHIFT_S = 0.08  # one Mimi frame: 1920 samples at 24 kHz (a row's duration_s = num_frames x this)


class ExportError(SynthError, RuntimeError):
    """The export cannot run as asked (no such output, no QC columns for --qc-pass-only...)."""


@dataclass(frozen=True)
class SourcePart:
    """One committed data part of the source output: the unit an export task handles."""

    shard: int
    part: int
    rows: int
    data_sha256: str = ""  # the data file's sha256, as the source's marker records it

    @property
    def name(self) -> str:
        return f"shard-{self.shard:05d}-part-{self.part:04d}"

    @property
    def data_path(self) -> str:
        return data_file(self.shard, self.part)


def committed_parts(source: Store) -> list[SourcePart]:
    """Every committed part of the dataset `source` that holds rows, in (shard, part) order."""
    found = []
    for (shard, part), commit in sorted(dataset_parts(source).items()):
        record = next((f for f in commit.files if f.path == data_file(shard, part)), None)
        if commit.rows:
            found.append(SourcePart(shard, part, commit.rows, record.sha256 if record else ""))
    return found


def has_qc_verdicts(source: Store, parts: list[SourcePart]) -> bool:
    """Whether some committed row has a QC verdict: a `qc_pass` value in data/ (an output made with QC off
    has the column, all null), or `synth rescore`'s scores for its part."""
    scored = scored_parts(source)
    for part in parts:
        if part.name in scored and rescored(source, part.shard, part.part, part.data_sha256) is not None:
            return True
        location = source.at(part.data_path)
        with location.fs.open_input_file(location.path) as f:
            parquet = pq.ParquetFile(f)
            if QC_PASS in parquet.schema_arrow.names and (
                    parquet.read(columns=[QC_PASS]).column(QC_PASS).null_count < parquet.metadata.num_rows):
                return True
    return False


def check_filters(options: ExportOptions, source: Store, parts: list[SourcePart]) -> None:
    """Refuse filters the output cannot answer, before anything runs."""
    if options.qc_pass_only and parts and not has_qc_verdicts(source, parts):
        raise ExportError(f"--qc-pass-only: {source.uri} has no `{QC_PASS}` column with values (it was generated "
                          "without QC) and no `synth rescore` scores of its parts, so no row can be said to pass; "
                          f"export it without --qc-pass-only, or score it first (synth rescore {source.uri})")


def drop_reason(row: dict, options: ExportOptions) -> str | None:
    """Why the filters drop `row` (qc, duration, speaker, voice), or None when it is kept."""
    if options.qc_pass_only and not row.get(QC_PASS):
        return "qc"
    duration = row["duration_s"]
    if (options.min_duration_s is not None and duration < options.min_duration_s) or (
            options.max_duration_s is not None and duration > options.max_duration_s):
        return "duration"
    if options.speakers is not None and row["speaker"] not in options.speakers:
        return "speaker"
    if options.voices is not None and row.get("voice") not in options.voices:
        return "voice"
    return None


def read_rows(source: Store, part: SourcePart, options: ExportOptions, dropped: Counter,
              split: str | None = None) -> Iterator[dict]:
    """The part's rows (of `split` alone, when given) that pass the filters, a batch at a time, each with
    its rescored QC verdict where it has none of its own; counts the rest of the split's rows in
    `dropped` by reason."""
    data = read_data_part(source, part.shard, part.part, part.data_sha256)
    scores = rescored(source, part.shard, part.part, part.data_sha256)
    with pa.BufferReader(data) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_BATCH_ROWS):
            for row in batch.to_pylist():
                if split is not None and options.split_of(row["script_id"]) != split:
                    continue
                if scores is not None:
                    scores.fill(row)
                reason = drop_reason(row, options)
                if reason is None:
                    yield row
                else:
                    dropped[reason] += 1


def metadata(row: dict) -> dict:
    """Everything a row says but its audio and codes: the manifest's fields, seed, voice,
    context, model, and the QC columns when the output has them."""
    return {k: v for k, v in row.items() if k not in HEAVY_COLUMNS}


def sample_key(row_id: str) -> str:
    """A file-name-safe key for a row id, unique per id (WebDataset keys hold no '.')."""
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", row_id)[:100]
    return slug if slug == row_id else f"{slug}-{hashlib.sha1(row_id.encode()).hexdigest()[:8]}"


def audio_extension(row: dict) -> str:
    """wav or flac: the format the output stored the clip in (its `audio.path`'s suffix)."""
    path = row["audio"].get("path") or ""
    return "flac" if path.endswith(".flac") else "wav"
