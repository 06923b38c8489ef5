"""What an output holds, counted from its committed parts: the numbers the card and the report show.

This module owns `collect`: one pass over the committed data parts, reading only the
light columns (never audio or codes) a batch at a time, and over the parts' markers for
the error counts and commit times. It counts what the rows are (generated, or recordings
`synth import` brought in: `stop_reason` "recorded"), takes each row's QC verdict from data/
or, where data/ has none, from `synth rescore`'s scores (`synth.pipeline.qc_scores`), counts
QC failures by metric (a reason's values stay in the rows), and reads a book's committed
chapter records (title, duration, ACX check). Totals are exact; the per-row series the report
plots (durations, characters per second, QC metrics) keep at most `MAX_SAMPLES` values each,
drawn uniformly (reservoir), so memory stays bounded whatever the output's size. It knows
nothing about HTML or YAML.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from synth.pipeline.output import (
    BOOK_M4B,
    CHAPTERS_DIR,
    committed_parts,
    data_file,
    errors_file,
    part_name,
)
from synth.pipeline.provenance import RECORDED
from synth.pipeline.qc_scores import Rescored, rescored, scored_parts
from synth.pipeline.record import NUMERIC_METRICS, VERDICT
from synth.qc.policy import reason_metric
from synth.store.layout import marker_file
from synth.store.marker import Damaged
from synth.store.store import Store

MAX_SAMPLES = 200_000  # values kept per plotted series
EXAMPLES = 4  # clips the report embeds
# the QC metrics that are numbers are plotted when present (`NUMERIC_METRICS`); the verdict is counted apart
LIGHT_COLUMNS = ("id", "speaker", "voice", "text", "duration_s", "stop_reason", "model", "model_weights", "engine",
                 *VERDICT, *NUMERIC_METRICS)


class Reservoir:
    """A uniform sample of at most `size` values of a stream (Algorithm R, seeded)."""

    def __init__(self, size: int = MAX_SAMPLES, seed: int = 0):
        self.size, self.seen, self.values = size, 0, []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.size:
            self.values.append(value)
        elif (j := self._rng.randrange(self.seen)) < self.size:
            self.values[j] = value


@dataclass
class OutputStats:
    """Counts over an output's committed parts."""

    rows: int = 0
    error_rows: int = 0
    audio_seconds: float = 0.0
    seconds_by_speaker: Counter = field(default_factory=Counter)
    seconds_by_voice: Counter = field(default_factory=Counter)  # key "(none)" for rows without a voice
    stop_reasons: Counter = field(default_factory=Counter)
    error_reasons: Counter = field(default_factory=Counter)  # stage: first words of the reason
    qc_rows: int = 0  # rows that carry a qc_pass value (their own, or rescored)
    qc_passed: int = 0
    qc_failed_by_metric: Counter = field(default_factory=Counter)  # metric -> rows whose kept take failed it
    qc_rescored_rows: int = 0  # of qc_rows, those whose verdict is `synth rescore`'s (data/ has none)
    qc_rescore_settings: Counter = field(default_factory=Counter)  # settings hash -> rows it scored
    qc_rescore_thresholds: dict = field(default_factory=dict)  # settings hash -> the thresholds it used
    durations: Reservoir = field(default_factory=Reservoir)
    chars_per_s: Reservoir = field(default_factory=Reservoir)
    qc_metrics: dict = field(default_factory=lambda: defaultdict(Reservoir))
    commits: list = field(default_factory=list)  # (commit time, audio seconds) per committed part
    models: set = field(default_factory=set)  # (model, model_weights, engine) the rows name
    rows_by_settings: Counter = field(default_factory=Counter)  # settings hash (plan.json's history) -> rows
    examples: list = field(default_factory=list)  # (id, text, audio bytes) of a few rows
    columns: list = field(default_factory=list)
    chapters: list = field(default_factory=list)  # a book's committed chapter records, in order
    book_m4b: bool = False  # a book whose M4B is committed

    @property
    def has_qc(self) -> bool:
        return self.qc_rows > 0  # QC off: the column is there, all null, and nothing was rescored

    @property
    def rows_recorded(self) -> int:
        """Rows `synth import` brought in (recordings: nothing generated)."""
        return self.stop_reasons.get(RECORDED, 0)

    @property
    def rows_generated(self) -> int:
        return self.rows - self.rows_recorded

    @property
    def origin(self) -> str:
        """What the rows are: generated, recorded, mixed (both), or empty."""
        if not self.rows:
            return "empty"
        return "mixed" if self.rows_recorded and self.rows_generated else (
            "recorded" if self.rows_recorded else "generated")


def _error_reason(stage: str, reason: str) -> str:
    words = " ".join(reason.split()[:6])
    return f"{stage}: {words}"


def collect(output: Store, *, examples: int = EXAMPLES) -> OutputStats:
    """Count what the committed parts of `output` hold (see the module docstring); a damaged
    marker is a StoreError naming it (`synth.pipeline.output.committed_parts`)."""
    stats = OutputStats()
    parts = committed_parts(output)
    scored = scored_parts(output)
    progress = {info.path.rsplit("/", 1)[-1]: info.mtime.timestamp() for info in output.location.fs.get_file_info(
        [output.at(marker_file(part_name(s, p))).path for s, p in sorted(parts)]) if info.mtime is not None}
    for (shard, part), commit in sorted(parts.items()):
        stats.error_rows += commit.errors
        stats.rows_by_settings[commit.settings or "(not recorded)"] += commit.rows
        when = progress.get(f"{part_name(shard, part)}.json")
        if when is not None:
            stats.commits.append((when, commit.audio_seconds))
        if commit.errors:
            _count_errors(output, errors_file(shard, part), stats)
        if commit.rows:
            record = next((f for f in commit.files if f.path == data_file(shard, part)), None)
            scores = (rescored(output, shard, part, record.sha256)
                      if record is not None and part_name(shard, part) in scored else None)
            _count_rows(output, data_file(shard, part), stats, examples, scores)
    stats.commits.sort()
    if output.layout.kind == "book":
        stats.chapters, stats.book_m4b = book_chapters(output)
    return stats


_CHAPTER_UNIT = re.compile(r"chapter-(\d{3,})")


def book_chapters(output: Store) -> tuple[list[dict], bool]:
    """A book's committed chapters, in order (number, title, duration, formats, ACX check, from each
    chapter's timing record, read only if its bytes are the committed ones), and whether its M4B is
    committed; ([], False) for any other dataset."""
    chapters, m4b = [], False
    for unit, marker in sorted(output.markers().items()):
        if isinstance(marker, Damaged):
            continue
        m4b = m4b or any(f.path == BOOK_M4B for f in marker.files)
        match = _CHAPTER_UNIT.fullmatch(unit)
        if match is None:
            continue
        timing = output.read_verified(unit, f"{CHAPTERS_DIR}/{unit}.json")
        if timing is None:
            continue
        record = json.loads(timing)
        chapters.append({"number": int(match.group(1)), "title": record.get("title"),
                         "duration_s": record.get("duration_s"), "acx": record.get("acx") or {},
                         "formats": sorted(f.path.rsplit(".", 1)[-1] for f in marker.files
                                           if not f.path.endswith((".json", ".srt", ".vtt")))})
    return chapters, m4b


def _count_errors(output: Store, path: str, stats: OutputStats) -> None:
    table = pq.read_table(output.at(path).path, filesystem=output.location.fs, columns=["stage", "reason"])
    for row in table.to_pylist():
        stats.error_reasons[_error_reason(row["stage"], row["reason"])] += 1


def _count_rows(output: Store, path: str, stats: OutputStats, examples: int, scores: Rescored | None) -> None:
    location = output.at(path)
    with location.fs.open_input_file(location.path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        stats.columns = stats.columns or names
        wanted = [c for c in LIGHT_COLUMNS if c in names]
        for batch in parquet.iter_batches(batch_size=1024, columns=wanted):
            for row in batch.to_pylist():
                if scores is not None and scores.fill(row):
                    stats.qc_rescored_rows += 1
                    stats.qc_rescore_settings[scores.settings] += 1
                    stats.qc_rescore_thresholds.setdefault(scores.settings, scores.thresholds)
                _count_row(row, stats)
        if len(stats.examples) < examples:
            table = parquet.read_row_group(0, columns=["id", "text", "audio"])
            for row in table.slice(0, examples - len(stats.examples)).to_pylist():
                stats.examples.append((row["id"], row["text"], row["audio"]["bytes"]))


def _count_row(row: dict, stats: OutputStats) -> None:
    duration = row["duration_s"]
    stats.rows += 1
    stats.audio_seconds += duration
    stats.seconds_by_speaker[row["speaker"]] += duration
    stats.seconds_by_voice[row.get("voice") or "(none)"] += duration
    stats.stop_reasons[row["stop_reason"]] += 1
    stats.models.add((row.get("model"), row.get("model_weights"), row.get("engine")))
    stats.durations.add(duration)
    if duration > 0:
        stats.chars_per_s.add(len(row["text"]) / duration)
    if row.get("qc_pass") is not None:
        stats.qc_rows += 1
        stats.qc_passed += bool(row["qc_pass"])
        stats.qc_failed_by_metric.update({reason_metric(r) for r in row.get("qc_reasons") or []})
    for metric in NUMERIC_METRICS:
        value = row.get(metric)
        if value is not None:
            stats.qc_metrics[metric].add(float(value))
