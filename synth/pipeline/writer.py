"""The output dataset: Parquet parts with the HF `Audio` feature, audio files, error rows.

This module owns the output layout and its commit protocol:

    OUT/data/shard-00003-part-0001.parquet    one row per generated turn
    OUT/errors/shard-00003-part-0001.parquet  one row per bad manifest row or turn
    OUT/wav/00003/<script>-<turn>.wav          the same audio as files (optional)
    OUT/_progress/shard-00003-part-0001.json  commit marker, written last

Every name is a pure function of the shard and part, every file is written atomically
(temp + rename locally, one PUT on object stores), and a part counts as committed only
once its marker exists, so a crashed part is simply redone over the same names.
It knows nothing about models or Ray.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synth.pipeline import storage
from synth.pipeline.manifest import RowError


def output_features(sample_rate_hz: int):
    """The `datasets.Features` of data/*.parquet; its arrow_schema carries the HF metadata."""
    from datasets import Audio, Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "script_id": Value("string"),
            "turn": Value("int32"),
            "speaker": Value("int32"),
            "text": Value("string"),
            "audio": Audio(sampling_rate=sample_rate_hz),
            "sampling_rate": Value("int32"),
            "duration_s": Value("float64"),
            "num_frames": Value("int32"),
            "codes": List(List(Value("int16"))),
            "stop_reason": Value("string"),
            "seed": Value("int64"),
            "voice": Value("string"),
            "context_turns": List(Value("int32")),
            "context_ids": List(Value("string")),
            "num_prompt_tokens": Value("int32"),
            "model": Value("string"),
            "model_weights": Value("string"),
            "engine": Value("string"),
            "generation": Value("string"),
        }
    )


ERROR_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("turn", pa.int32()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("shard", pa.int32()),
    ]
)


def part_name(shard: int, part: int) -> str:
    return f"shard-{shard:05d}-part-{part:04d}"


PART_MARKER = re.compile(r"shard-(\d{5})-part-\d{4}\.json")  # a committed part_name's marker


def safe_name(script_id: str) -> str:
    """A filesystem-safe, collision-free file stem for a script id."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", script_id)[:80]
    if slug == script_id:
        return slug
    return f"{slug}-{hashlib.sha1(script_id.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class PartCommit:
    """What a committed part holds; stored in its marker."""

    shard: int
    part: int
    rows: int
    errors: int
    audio_seconds: float
    scripts: int
    error_scripts: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class DatasetWriter:
    """Writes committed parts of one output dataset."""

    def __init__(self, out: storage.Location, *, sample_rate_hz: int, audio_format: str, write_audio_files: bool):
        self.out = out
        self.sample_rate_hz = sample_rate_hz
        self.audio_format = audio_format
        self.write_audio_files = write_audio_files
        self.schema = output_features(sample_rate_hz).arrow_schema

    def audio_path(self, shard: int, script_id: str, turn: int) -> str:
        """Relative path of a clip's file: deterministic, one per (script, turn)."""
        return f"{self.audio_format}/{shard:05d}/{safe_name(script_id)}-{turn:03d}.{self.audio_format}"

    def marker(self, shard: int, part: int) -> storage.Location:
        return self.out.join("_progress", part_name(shard, part) + ".json")

    def is_committed(self, shard: int, part: int) -> bool:
        return storage.exists(self.marker(shard, part))

    def read_commit(self, shard: int, part: int) -> PartCommit:
        return PartCommit(**json.loads(storage.read_bytes(self.marker(shard, part))))

    def _parquet_bytes(self, table: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()

    def commit_part(
        self, shard: int, part: int, rows: list[dict], errors: list[RowError], scripts: int
    ) -> PartCommit:
        """Write a part's audio files, errors and data, then its marker (last)."""
        name = part_name(shard, part)
        if self.write_audio_files:
            for row in rows:
                storage.write_bytes_atomic(self.out.join(row["audio"]["path"]), row["audio"]["bytes"])
        if errors:
            err_table = pa.Table.from_pylist(
                [
                    {"row": e.row, "id": e.script_id, "turn": e.turn, "stage": e.stage, "reason": e.reason, "shard": shard}
                    for e in errors
                ],
                schema=ERROR_SCHEMA,
            )
            storage.write_bytes_atomic(self.out.join("errors", name + ".parquet"), self._parquet_bytes(err_table))
        if rows:
            table = pa.Table.from_pylist(rows, schema=self.schema)
            storage.write_bytes_atomic(self.out.join("data", name + ".parquet"), self._parquet_bytes(table))
        commit = PartCommit(
            shard=shard,
            part=part,
            rows=len(rows),
            errors=len(errors),
            audio_seconds=float(sum(r["duration_s"] for r in rows)),
            scripts=scripts,
            error_scripts=len({e.row for e in errors}),
        )
        storage.write_bytes_atomic(self.marker(shard, part), commit.to_json().encode())
        return commit


def codes_to_list(codes: np.ndarray) -> list[list[int]]:
    """[num_frames, num_codebooks] int array -> nested lists for Arrow."""
    return codes.astype(np.int16).tolist()


def committed_parts(out: storage.Location, shards: set[int]) -> list[PartCommit]:
    """The commit records of every committed part of `shards` (one listing of OUT/_progress)."""
    if not shards:
        return []
    commits = []
    for path in storage.list_files(out.join("_progress"), ".json"):
        match = PART_MARKER.fullmatch(path.rsplit("/", 1)[-1])
        if match and int(match.group(1)) in shards:
            commits.append(PartCommit(**json.loads(storage.read_bytes(storage.Location(out.fs, path, path)))))
    return commits
