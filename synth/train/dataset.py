"""A synth dataset as a training set: every trained turn with the context it was conditioned on, as codes.

This module owns reading a synth output (local or object store) for training: the rows of its
committed parts (the `qc_pass` filter when asked, with `synth rescore`'s verdicts where data/
has none; the text the model was given, `spoken_text`, where the output has it), each row's context from `context_ids`
resolved to coded turns (generated turns: their stored codes; voice prompts: the run's
OUT/_voices/ cache where its bytes are what their marker recorded, or encoded; recorded
manifest clips: read through the run's manifest (run.json's input, plan.json's files) and
Mimi-encoded, all in one batched call of synth's codec), per-row checks (codes of the wrong
shape or out of the codec's range, an unresolvable context, an example longer than the model
holds: each skipped with a reason naming the row), and the prepared set as one Parquet file
(`train_set.parquet`: one row per turn, targets marked) that every worker reads. Context turns
are stored once, however many rows they condition. It knows nothing of Ray or optimizers.

A generated context turn contributes the codes it generated. At generation time it conditioned
the next turn through its audio, Mimi-encoded again, whose codes differ from the generated ones
in a few places (Mimi is not idempotent): training sees the generated codes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth.engine.codec import clip_key
from synth.errors import SynthError
from synth.pipeline.audio_io import AudioError, decode_clip
from synth.pipeline.config import TextConfig
from synth.pipeline.manifest import ManifestError, Script, iter_scripts, open_manifest
from synth.pipeline.output import (
    PLAN_RECORD,
    RUN_RECORD,
    committed_parts,
    data_file,
    dataset_store,
    part_name,
    read_data_part,
    voice_codes_file,
    voice_unit,
)
from synth.pipeline.qc_scores import rescored, scored_parts
from synth.pipeline.record import QC_PASS, parse_row_id, row_id, voice_name
from synth.pipeline.spoken import spoken_text
from synth.store import storage
from synth.store.errors import StoreError
from synth.store.store import Store
from synth.train.batches import CodedTurn, Example, render_ids

COLUMNS = ["id", "speaker", "text", "codes", "context_ids"]
SPOKEN_COLUMN = "spoken_text"  # what the model was given (data schema 3 on); `text` before it

TRAIN_SET_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("speaker", pa.int32()),
    ("text", pa.string()),
    ("codes", pa.list_(pa.list_(pa.int16()))),  # [num_frames][K]
    ("target", pa.bool_()),  # trained on; false: only context of others
    ("context_ids", pa.list_(pa.string())),  # of a target: the turns before it, in prompt order
    ("num_positions", pa.int32()),  # of a target: backbone positions of its whole example
])


def codes_arrays(column: pa.ChunkedArray) -> list[np.ndarray | None]:
    """A `list<list<int>>` codes column -> per row an int64 array [num_frames, width], read from Arrow's
    buffers (no Python int per code); None for a null row or one whose frames differ in width."""
    out: list[np.ndarray | None] = []
    for chunk in column.chunks:
        outer = chunk.offsets.to_numpy()  # [rows + 1] into chunk.values (the slice's own offsets)
        inner = chunk.values.offsets.to_numpy()  # [frames + 1] into chunk.values.values
        values = chunk.values.values.to_numpy(zero_copy_only=False).astype(np.int64)
        nulls = chunk.is_null().to_numpy(zero_copy_only=False)
        for i in range(len(chunk)):
            a, b = outer[i], outer[i + 1]
            widths = np.diff(inner[a:b + 1])
            if nulls[i] or (len(widths) and (widths != widths[0]).any()):
                out.append(None)
                continue
            out.append(values[inner[a]:inner[b]].reshape(b - a, widths[0] if len(widths) else 0))
    return out


def codes_column(codes: Sequence[np.ndarray]) -> pa.Array:
    """Arrays [num_frames_i, K] -> a `list<list<int16>>` column, built from numpy buffers."""
    frames = np.array([len(c) for c in codes], dtype=np.int32)
    widths = np.concatenate([np.full(len(c), c.shape[1] if c.ndim == 2 else 0, dtype=np.int32) for c in codes]
                            ) if codes else np.zeros(0, np.int32)
    values = np.concatenate([np.asarray(c, dtype=np.int16).reshape(-1) for c in codes]) if codes else np.zeros(0, np.int16)
    inner = pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(widths)]).astype(np.int32)),
                                     pa.array(values, type=pa.int16()))
    return pa.ListArray.from_arrays(pa.array(np.concatenate([[0], np.cumsum(frames)]).astype(np.int32)), inner)


class DatasetError(SynthError, ValueError):
    """A dataset that cannot be trained on as a whole; the message names it and says why."""


@dataclass
class TrainSet:
    """Coded turns by id, and the examples (targets with their context ids), in id order."""

    turns: dict[str, CodedTurn]
    targets: list[tuple[str, tuple[str, ...], int]]  # (id, context ids, num_positions)

    def example(self, index: int) -> Example:
        tid, context, _ = self.targets[index]
        return Example(tid, tuple(self.turns[c] for c in context), self.turns[tid])

    @property
    def lengths(self) -> list[int]:
        return [n for _, _, n in self.targets]

    def to_parquet(self) -> bytes:
        targets = {tid: (context, n) for tid, context, n in self.targets}
        ids = sorted(self.turns)
        table = pa.table({
            "id": pa.array(ids, pa.string()),
            "speaker": pa.array([self.turns[i].speaker for i in ids], pa.int32()),
            "text": pa.array([self.turns[i].text for i in ids], pa.string()),
            "codes": codes_column([np.asarray(self.turns[i].codes) for i in ids]),
            "target": pa.array([i in targets for i in ids]),
            "context_ids": pa.array([list(targets[i][0]) if i in targets else [] for i in ids], pa.list_(pa.string())),
            "num_positions": pa.array([targets[i][1] if i in targets else 0 for i in ids], pa.int32()),
        }, schema=TRAIN_SET_SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_parquet(cls, data: bytes) -> "TrainSet":
        table = pq.read_table(pa.BufferReader(data))
        codes = codes_arrays(table.column("codes"))
        turns, targets = {}, []
        for row, c in zip(table.drop_columns(["codes"]).to_pylist(), codes):
            turns[row["id"]] = CodedTurn(row["speaker"], row["text"], c.astype(np.int16))
            if row["target"]:
                targets.append((row["id"], tuple(row["context_ids"]), row["num_positions"]))
        return cls(turns, targets)


def read_rows(output: Store, *, qc_filter: bool) -> tuple[list[dict], set[str]]:
    """Rows of the committed parts (data/ files a sound marker covers; codes as arrays), and the ids to train
    on. With `qc_filter`, a row's verdict is its own `qc_pass`, else `synth rescore`'s for its part
    (`synth.pipeline.qc_scores`); a filter that leaves no row is an error saying how many it removed."""
    tables, verdicts = [], {}
    scored = scored_parts(output) if qc_filter else set()
    for (shard, part), commit in sorted(committed_parts(output).items()):
        if not commit.rows:  # a part whose rows all failed has no data file
            continue
        record = next(f for f in commit.files if f.path == data_file(shard, part))
        with pa.BufferReader(read_data_part(output, shard, part, record.sha256)) as f:
            names = pq.read_schema(f).names
            table = pq.read_table(f, columns=[c for c in (*COLUMNS, SPOKEN_COLUMN, QC_PASS) if c in names
                                              and (c != QC_PASS or qc_filter)])
            if SPOKEN_COLUMN in names:  # the model read the spoken form: train on what it read
                spoken = pc.coalesce(table.column(SPOKEN_COLUMN), table.column("text"))
                table = table.set_column(table.schema.get_field_index("text"), "text", spoken).drop_columns(
                    [SPOKEN_COLUMN])
        if qc_filter:
            scores = rescored(output, shard, part, record.sha256) if part_name(shard, part) in scored else None
            own = table.column(QC_PASS).to_pylist() if QC_PASS in table.column_names else [None] * len(table)
            for row_id, verdict in zip(table.column("id").to_pylist(), own):
                if verdict is None and scores is not None:
                    verdict = scores.scores.get(row_id, {}).get(QC_PASS)
                verdicts[row_id] = verdict
            table = table.drop_columns([c for c in (QC_PASS,) if c in table.column_names])
        tables.append(table)
    if not tables:
        raise DatasetError(f"{output.uri} has no committed rows to train on")
    table = pa.concat_tables(tables, promote_options="default")
    rows = table.drop_columns(["codes"]).to_pylist()
    for row, codes in zip(rows, codes_arrays(table.column("codes"))):
        row["codes"] = codes  # [num_frames, K] int64, or None (null, or frames of different widths)
    if not qc_filter:
        return rows, {r["id"] for r in rows}
    unscored = sum(v is None for v in verdicts.values())
    if unscored == len(rows):  # made with QC off (the column all null, or absent) and never rescored
        raise DatasetError(
            f"{output.uri} has no `{QC_PASS}` values (it was generated with QC off) and no `synth rescore` scores, "
            f"so data.qc_filter cannot pick rows: score it first (synth rescore {output.uri}), or train without "
            "data.qc_filter")
    train = {r["id"] for r in rows if verdicts.get(r["id"]) is True}
    if not train:
        failed = len(rows) - unscored
        raise DatasetError(
            f"{output.uri}: the QC filter (data.qc_filter) removed all {len(rows)} rows ({failed} failed QC"
            + (f", {unscored} have no QC verdict" if unscored else "") + "): none can be trained on. Train "
            "without data.qc_filter, or on data that passes QC")
    return rows, train


class _ClipsToEncode:
    """Context clips (voices, recorded turns) read now, encoded at the end in one batched call."""

    def __init__(self, sample_rate_hz: int):
        self.sample_rate_hz = sample_rate_hz
        self.pending: dict[str, tuple[int, str, np.ndarray]] = {}  # context id -> speaker, text, clip

    def read(self, ref: str) -> np.ndarray:
        try:
            data = storage.read_bytes(storage.resolve(ref))
        except (OSError, StoreError) as e:
            raise AudioError(f"{ref}: cannot read ({e})") from None
        return decode_clip(data, self.sample_rate_hz, name=ref)


def _voice_turns(output: Store, voices: dict, needed: set[str], clips: _ClipsToEncode,
                 ) -> tuple[dict[str, CodedTurn], dict[str, str]]:
    """voice key ("voice:NAME") -> its coded turn (codes from OUT/_voices/ when cached and what their
    marker recorded, else queued); and problems."""
    found, problems = {}, {}
    for key in sorted(needed):
        name = voice_name(key)
        voice = voices.get(name)
        if voice is None:
            problems[key] = f"voice {name!r} is not in {PLAN_RECORD}'s voices"
            continue
        try:
            clip = clips.read(voice["audio"])
        except AudioError as e:
            problems[key] = f"voice {name!r}: {e}"
            continue
        cached = output.read_verified(voice_unit(clip_key(clip)), voice_codes_file(clip_key(clip)))
        if cached is not None:
            found[key] = CodedTurn(voice["speaker"], voice["text"], np.load(io.BytesIO(cached)))
        else:
            clips.pending[key] = (voice["speaker"], voice["text"], clip)
    return found, problems


def _recorded_turns(manifest_uris: Sequence[str], needed: set[str], clips: _ClipsToEncode,
                    voices: dict, spoken: Callable[[str], str]) -> dict[str, str]:
    """Queue the recorded manifest turns (`script:turn`) among `needed`, their transcripts in the spoken
    form the run gave the model (`spoken`); returns problems by id."""
    problems: dict[str, str] = {}
    wanted: dict[str, set[int]] = {}
    for key in needed:
        parsed = parse_row_id(key)
        if parsed is not None:
            wanted.setdefault(parsed[0], set()).add(parsed[1])
    for uri in manifest_uris:
        try:
            scripts = list(iter_scripts(open_manifest(uri)))
        except (ManifestError, OSError) as e:
            for key in needed:
                problems.setdefault(key, f"cannot read the run's manifest {uri}: {e}")
            continue
        for script in scripts:
            if isinstance(script, Script) and script.id in wanted:
                for i in wanted[script.id]:
                    key = row_id(script.id, i)
                    turn = script.turns[i] if i < len(script.turns) else None
                    if turn is None or turn.audio is None:
                        continue
                    speaker = turn.speaker if turn.speaker is not None else voices.get(
                        turn.voice or script.voice or "", {}).get("speaker", 0)
                    try:
                        clips.pending[key] = (speaker, spoken(turn.text), clips.read(turn.audio))
                        problems.pop(key, None)
                    except AudioError as e:
                        problems[key] = str(e)
    return problems


def _manifest_uris(output: Store, plan: dict) -> list[str]:
    """The run's manifest files: its input (run.json's `input`) joined with the names plan.json lists."""
    try:
        run = output.read_record(RUN_RECORD) or {}
    except StoreError:
        run = {}
    files = plan.get("plan", {}).get("manifest_files", [])
    if not run.get("input"):
        return []
    root = storage.resolve(run["input"])
    return [root.join(f["name"]).uri if f.get("name") else root.uri for f in files if isinstance(f, dict)]


def prepare_train_set(data_uri: str, *, processor, model_config, qc_filter: bool, max_positions: int,
                      encode: Callable[[list[np.ndarray]], list[np.ndarray]]) -> tuple[TrainSet, list[str]]:
    """A synth output -> its TrainSet, and one message per skipped row (naming it and why).

    encode: clips [samples] float32 at the codec rate -> codes [T, K] (synth's batched Mimi);
    called once, only if some context clip has no stored codes."""
    output = dataset_store(data_uri, "synth train")
    rows, train = read_rows(output, qc_filter=qc_filter)
    K = model_config.num_codebooks
    codebook_size = model_config.codec_config.codebook_size
    turns: dict[str, CodedTurn] = {}
    skipped: list[str] = []
    for row in rows:
        codes = row["codes"]
        if codes is None:
            bad = "codes missing, or frames of different widths"
        elif codes.shape[1] != K or len(codes) == 0:
            bad = f"codes of shape {list(codes.shape)}, expected [num_frames > 0, {K}]"
        elif codes.min() < 0 or codes.max() >= codebook_size:
            bad = f"codes outside the codec's 0..{codebook_size - 1}"
        else:
            turns[row["id"]] = CodedTurn(int(row["speaker"]), row["text"], codes.astype(np.int16))
            continue
        skipped.append(f"row {row['id']!r}: {bad}")
        train.discard(row["id"])
    needed = {c for r in rows if r["id"] in train for c in r["context_ids"] or ()} - set(turns)
    plan = output.identity() or {}
    voices = plan.get("voices", {})
    clips = _ClipsToEncode(model_config.codec_config.sampling_rate)
    found, problems = _voice_turns(output, voices, {k for k in needed if voice_name(k) is not None}, clips)
    turns.update(found)
    recorded = {k for k in needed if voice_name(k) is None}
    manifests = _manifest_uris(output, plan)
    # the run's `text:` settings (plan.json), as its worker applied them to recorded transcripts
    spoken = spoken_text(TextConfig(**plan["text"])) if "text" in plan else (lambda text: text)
    problems.update(_recorded_turns(manifests, recorded, clips, voices, spoken))
    if clips.pending:
        keys = sorted(clips.pending)
        for key, codes in zip(keys, encode([clips.pending[k][2] for k in keys])):
            speaker, text, _ = clips.pending[key]
            turns[key] = CodedTurn(speaker, text, np.asarray(codes, dtype=np.int16))
    targets = []
    for row in sorted(rows, key=lambda r: r["id"]):
        if row["id"] not in train:
            continue
        context = tuple(row["context_ids"] or ())
        missing = [c for c in context if c not in turns]
        if missing:
            reasons = "; ".join(f"{c}: {problems.get(c, 'not found in the dataset, its voices or its manifest')}"
                                for c in missing)
            skipped.append(f"row {row['id']!r}: its context cannot be rebuilt ({reasons})")
            continue
        example = Example(row["id"], tuple(turns[c] for c in context), turns[row["id"]])
        num_positions = len(render_ids(processor, example)) - (len(context) + 1) + example.num_frames
        if num_positions > max_positions:
            skipped.append(f"row {row['id']!r}: {num_positions} positions with its context, more than "
                           f"the {max_positions} the model holds")
            continue
        targets.append((row["id"], context, num_positions))
    used = {t for tid, context, _ in targets for t in (tid, *context)}
    return TrainSet({k: v for k, v in turns.items() if k in used}, targets), skipped
