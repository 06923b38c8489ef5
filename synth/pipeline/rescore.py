"""Re-scoring an existing dataset: the QC metrics of clips already written, nothing generated.

This module owns `rescore` (`synth rescore`): for a synth output, or any Parquet dataset
with an HF `Audio` column (bytes, or a path relative to its file) and a text column, it
computes the same metrics and decisions a run's QC computes (`synth.qc.scorer`,
`synth.qc.policy`; for instance with another ASR model or new thresholds) and writes one
scores file per input file, `qc/<stem>.parquet` (the row's id, `qc_pass`, `qc_reasons`
and the metric columns), beside a synth output's data (a unit `qc-<stem>` of that dataset's
store, under its lease) or into a store of kind `rescore` (`--output`). Each scores file
is committed with the settings it was scored with and the sha256 of the file it scored,
so a relaunch skips what is done and redoes what other settings scored or what was
scored from a file that changed since.
The intended voice of a row (`speaker_sim`) is the first clip of its speaker within its
script (`script_id`, when the dataset has one); for a speaker's first clip in its script (every
clip of a corpus of one-clip scripts, as an import is), the speaker's reference across the
whole dataset: its first clip (for that clip itself, its second), where the speaker is the same
voice in every script (a row's `voice`; or its `speaker` where speakers are people: recorded
rows, or a dataset synth did not generate). A generated row without a voice has none (its
speaker id names a role within its script). It holds no model math and runs in the calling
process (no Ray).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import SynthError
from synth.pipeline.audio_io import AudioError, decode_clip
from synth.pipeline.config import SynthConfig
from synth.pipeline.output import (
    DATASET_KINDS,
    RUN,
    SCORES_DIR,
    accept_part,
    committed_parts,
    data_file,
    part_name,
    scores_file,
    scores_unit,
)
from synth.pipeline.provenance import RECORDED
from synth.pipeline.qc_scores import INPUT_SHA256, SETTINGS_HASH, SETTINGS_KEY
from synth.pipeline.record import QC_FIELDS, data_columns_schema
from synth.qc.deps import check_installed
from synth.qc.policy import METRICS, judge
from synth.qc.scorer import Take, TakeScorer
from synth.store import storage
from synth.store.faults import crash_point
from synth.store.layout import Layout
from synth.store.lease import Lease
from synth.store.recovery import Verification, recover, verify
from synth.store.store import Store, canonical_hash

RATE_HZ = 16000  # every model of the scorer wants 16 kHz: clips are decoded straight to it
LEASE_STALE_S = 60.0  # as a run's job.lease_stale_seconds
# A store of scores only (`synth rescore --output`): the scored input is its identity.
RESCORE = Layout(kind="rescore", identity_file="_identity.json", unit_files=rf"{SCORES_DIR}/[A-Za-z0-9._-]+\.parquet",
                 adopt_option="--adopt-output")


class RescoreError(SynthError, ValueError):
    """The dataset cannot be re-scored as asked (no such column, no Parquet files); the message says why."""


@dataclass
class RescoreSummary:
    files: int = 0
    skipped: int = 0  # scored before with the same settings
    rows: int = 0
    passed: int = 0
    errors: int = 0  # rows whose audio could not be decoded (their reasons say why)
    audio_s: float = 0.0
    score_s: float = 0.0


def _dataset_kind(loc: storage.Location) -> str | None:
    """The kind of dataset store at `loc` (run, book, import), or None for anything else."""
    kind = Store(loc, RUN).recorded_kind() if storage.is_dir(loc) else None
    return kind if kind in DATASET_KINDS else None


def _input_files(loc: storage.Location) -> list[tuple[str, str, str]]:
    """(path, stem, sha256) of every Parquet file to score: a dataset's committed data parts (their
    checksums from their markers), a directory's files (stems: their paths below it), or one file."""
    kind = _dataset_kind(loc)
    if kind is not None:
        source = Store(loc, DATASET_KINDS[kind])
        return [(source.at(data_file(s, p)).path, part_name(s, p),
                 next(f.sha256 for f in c.files if f.path == data_file(s, p)))
                for (s, p), c in sorted(committed_parts(source).items()) if c.rows]
    if storage.is_dir(loc):
        files = storage.list_files(loc, ".parquet")
        prefix = loc.path.rstrip("/") + "/"
        found = [(f, f.removeprefix(prefix).removesuffix(".parquet").replace("/", "__")) for f in files]
    elif storage.exists(loc):
        found = [(loc.path, loc.path.rsplit("/", 1)[-1].removesuffix(".parquet"))]
    else:
        raise RescoreError(f"{loc.uri}: no such file or directory")
    if not found:
        raise RescoreError(f"{loc.uri}: holds no .parquet files to re-score")
    return [(path, stem, storage.sha256_of(storage.Location(loc.fs, path, path))[1]) for path, stem in found]


def _scores_store(config: SynthConfig, input_uri: str, output_uri: str | None, adopt: bool) -> Store:
    """Where the scores go: the input dataset's own store (no --output), or a `rescore` store."""
    source = storage.resolve(input_uri)
    if output_uri is None:
        kind = _dataset_kind(source)
        if kind is None:
            raise RescoreError(f"{input_uri} is not a synth dataset: give --output, a directory for the scores "
                               "(synth writes nothing into a dataset it did not make)")
        return Store(source, DATASET_KINDS[kind])
    store = Store.at_uri(output_uri, RESCORE)
    store.claim(adopt=adopt)
    return store


def rescore(config: SynthConfig, input_uri: str, output_uri: str | None = None, *, text_column: str | None = None,
            audio_column: str = "audio", id_column: str = "id", adopt: bool = False, log=print) -> RescoreSummary:
    """Score every clip of `input_uri` into `output_uri` (default: the input itself, if it is a
    synth dataset); see the module docstring. text_column: None = `spoken_text` where the dataset
    has it (what synth asked the model to say, as a run's QC compares), else `text`."""
    check_installed()
    source = storage.resolve(input_uri)
    files = _input_files(source)
    store = _scores_store(config, input_uri, output_uri, adopt)
    settings = json.dumps(config.qc.identity(), sort_keys=True).encode()
    summary = RescoreSummary()
    with Lease.acquire(store, stale_after_s=LEASE_STALE_S, log=log) as lease:
        store.run_id = lease.run_id
        if store.layout is RESCORE:
            store.settings = store.record_identity({"input": source.path}, fixed={
                "input": "it holds the scores of another dataset"})
        found = recover(store, batch=time.strftime("%Y%m%dT%H%M%SZ") + f"-{lease.run_id}", accept=accept_part)
        for finding in found.findings:
            log(f"synth rescore: VERIFY FAILED: {finding} (put aside; made again)")
        scorer: TakeScorer | None = None
        across = _speaker_references(files, source, audio_column) if "speaker" in config.qc.metrics else {}
        chosen = canonical_hash({repr(k): [[p, i] for p, i, _ in refs] for k, refs in sorted(across.items(), key=repr)})
        for path, stem, sha in files:
            unit = scores_unit(stem)
            marker = found.units.get(unit)
            wanted = {SETTINGS_HASH: canonical_hash(settings.decode()), INPUT_SHA256: sha, "speaker_references": chosen}
            if marker is not None and all(marker.meta.get(k) == v for k, v in wanted.items()):
                summary.skipped += 1
                continue
            if scorer is None:
                scorer = TakeScorer(config.qc, RATE_HZ).load()
            data = storage.read_bytes(storage.Location(source.fs, path, path))
            if hashlib.sha256(data).hexdigest() != sha:  # changed since it was listed (a dataset's: since committed)
                raise RescoreError(f"{path} changed while it was being scored (or no longer matches its marker): "
                                   "run `synth verify` on it, then rescore again")
            table = pq.read_table(pa.BufferReader(data))
            base = path.rsplit("/", 1)[0]
            rows = _score_table(table, storage.Location(source.fs, base, base), scorer, config,
                                text_column=text_column, audio_column=audio_column, id_column=id_column,
                                name=path, summary=summary, across=across)
            store.retract(unit)
            record = store.write(scores_file(stem), _scores_bytes(rows, settings))
            crash_point("rescore-scored")  # the torn unit: its scores written, its marker not
            store.commit(unit, [record], wanted)
            summary.files += 1
            log(f"synth rescore: {path}: {len(rows)} rows, {sum(bool(r['qc_pass']) for r in rows)} pass "
                f"-> {store.at(scores_file(stem)).uri}")
        if scorer is not None:
            summary.audio_s, summary.score_s = scorer.stats.audio_s, scorer.stats.busy_s
    return summary


def verify_rescore_at(uri: str, *, checksums: bool = True) -> Verification:
    """`synth verify` of a `rescore` store: each scores file against its marker."""
    store = Store.at_uri(uri, RESCORE)
    store.open_existing({"rescore"}, "synth verify")
    report, _ = verify(store, checksums=checksums)
    return report


SCORES_SCHEMA = data_columns_schema(["id", *QC_FIELDS])


def _scores_bytes(rows: list[dict], settings: bytes) -> bytes:
    table = pa.Table.from_pylist(rows, schema=SCORES_SCHEMA.with_metadata({SETTINGS_KEY: settings}))
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _voice_key(row: dict, generated_columns: bool):
    """What names a clip's speaker as the same voice in every script: its voice, else its speaker id where
    speakers are people (a recorded row; any row of a dataset synth did not generate, which has no
    `stop_reason`); None for a generated row without a voice, whose speaker id is a role in its script."""
    if row.get("voice"):
        return ("voice", row["voice"])
    if row.get("speaker") is None or (generated_columns and row.get("stop_reason") != RECORDED):
        return None
    return ("speaker", row["speaker"])


def _in_order(table: pa.Table) -> list[int]:
    """A file's rows in the order they are scored: by script, then turn (the first of a script's speaker
    is its reference), then file order."""
    has = set(table.column_names)
    scripts = table.column("script_id").to_pylist() if "script_id" in has else [None] * table.num_rows
    turns = table.column("turn").to_pylist() if "turn" in has else list(range(table.num_rows))
    return sorted(range(table.num_rows), key=lambda i: (str(scripts[i]), turns[i] or 0, i))


def _speaker_references(files: list[tuple[str, str, str]], source: storage.Location,
                        audio_column: str) -> dict[tuple, list[tuple[str, int, np.ndarray]]]:
    """Each cross-script voice's first two clips in scoring order, (file, row, clip at 16 kHz): its
    reference across the dataset, and the one its reference is compared with. {} without speakers."""
    light = ("speaker", "voice", "stop_reason", "script_id", "turn")
    picked: dict[tuple, list[tuple[str, int]]] = {}
    for path, _, _ in files:
        names = pq.read_schema(source.fs.open_input_file(path)).names
        if "speaker" not in names or audio_column not in names:
            return {}
        table = pq.read_table(path, filesystem=source.fs, columns=[c for c in light if c in names])
        rows = table.to_pylist()
        for i in _in_order(table):
            key = _voice_key(rows[i], "stop_reason" in names)
            if key is not None and len(picked.setdefault(key, [])) < 2:
                picked[key].append((path, i))
    found: dict[tuple, list[tuple[str, int, np.ndarray]]] = {}
    for key, places in picked.items():
        for path, i in places:
            audio = pq.read_table(path, filesystem=source.fs, columns=[audio_column]).column(0)[i].as_py()
            base = path.rsplit("/", 1)[0]
            try:
                found.setdefault(key, []).append((path, i, _clip(audio, storage.Location(source.fs, base, base),
                                                                  f"{path} row {i}")))
            except AudioError:  # an unreadable reference: that clip gets its own error, the voice no reference
                continue
    return found


def _score_table(table: pa.Table, base: storage.Location, scorer: TakeScorer, config: SynthConfig, *,
                 text_column: str | None, audio_column: str, id_column: str, name: str,
                 summary: RescoreSummary, across: dict | None = None) -> list[dict]:
    """The scores rows of one input file, in its row order. across: the cross-script references
    (`_speaker_references`) for a speaker's first clip in its script."""
    if text_column is None:
        text_column = "spoken_text" if "spoken_text" in table.column_names else "text"
    for column in (text_column, audio_column):
        if column not in table.column_names:
            raise RescoreError(f"{name}: has no column {column!r} (its columns: {', '.join(table.column_names)}); "
                               "name the right one with --text-column / --audio-column")
    has = set(table.column_names)
    ids = table.column(id_column).to_pylist() if id_column in has else [str(i) for i in range(table.num_rows)]
    texts = table.column(text_column).to_pylist()
    audios = table.column(audio_column).to_pylist()
    codes = table.column("codes").to_pylist() if "codes" in has else [None] * table.num_rows
    scripts = table.column("script_id").to_pylist() if "script_id" in has else [None] * table.num_rows
    speakers = table.column("speaker").to_pylist() if "speaker" in has else [None] * table.num_rows
    light = table.select([c for c in ("speaker", "voice", "stop_reason") if c in has]).to_pylist()
    order = _in_order(table)
    references: dict[tuple, np.ndarray] = {}  # (script, speaker) -> its first clip
    rows: dict[int, dict] = {}
    batch: list[tuple[int, Take]] = []
    measured = config.qc.measured()

    def flush() -> None:
        for (i, _), metrics in zip(batch, scorer.score([take for _, take in batch])):
            reasons = judge(metrics, config.qc.thresholds, measured)
            rows[i] = {"id": str(ids[i]), "qc_pass": not reasons, "qc_reasons": reasons, **metrics}
            summary.passed += not reasons
        batch.clear()

    for i in order:
        summary.rows += 1
        try:
            clip = _clip(audios[i], base, f"{name} row {i}")
        except AudioError as e:
            rows[i] = {"id": str(ids[i]), "qc_pass": False, "qc_reasons": [f"audio: {e}"], **dict.fromkeys(METRICS)}
            summary.errors += 1
            continue
        key = (scripts[i], speakers[i])
        reference = references.get(key) if speakers[i] is not None else None
        if speakers[i] is not None:
            references.setdefault(key, clip)
        if reference is None and across:  # its speaker's first clip in its script: the voice's across scripts
            voice = _voice_key(light[i], "stop_reason" in has)
            reference = next((c for p, r, c in across.get(voice, ()) if (p, r) != (name, i)), None)
        row_codes = np.asarray(codes[i]) if codes[i] is not None else None
        batch.append((i, Take(clip, str(texts[i] or ""), row_codes, reference)))
        if len(batch) >= config.qc.asr.batch_size:
            flush()
    flush()
    return [rows[i] for i in range(table.num_rows)]


def _clip(audio, base: storage.Location, name: str) -> np.ndarray:
    """An HF `Audio` cell ({bytes, path}) as 16 kHz float32 mono."""
    if not isinstance(audio, dict):
        raise AudioError(f"{name}: the audio cell is not an HF Audio value ({{bytes, path}})")
    data = audio.get("bytes")
    if data is None:
        path = audio.get("path")
        if not path:
            raise AudioError(f"{name}: the audio cell holds neither bytes nor a path")
        loc = storage.resolve(path) if "://" in path or path.startswith("/") else base.join(path)
        try:
            data = storage.read_bytes(loc)
        except (OSError, pa.ArrowException) as e:
            raise AudioError(f"{name}: cannot read {loc.uri}: {e}") from None
    return decode_clip(data, RATE_HZ, name=name)


def render(summary: RescoreSummary, t0: float) -> str:
    rate = summary.audio_s / summary.score_s if summary.score_s else None
    return (f"synth rescore: {summary.files} file(s) scored, {summary.skipped} already scored with these settings; "
            f"{summary.rows} rows, {summary.passed} pass, {summary.errors} unreadable; "
            f"{summary.audio_s:.1f} s audio in {time.time() - t0:.1f} s"
            + (f" (scoring {rate:.2f} audio s/s)" if rate else ""))
