"""The `data/` record (one row per generated turn, or imported clip) and the `takes/` record.

This module owns what a row of data/*.parquet and of takes/*.parquet is: its fields in order,
their Arrow types and the HF `datasets` features the files carry (so an output loads with
`load_dataset("parquet", ...)`), which fields QC fills (the metric names themselves are
`synth.qc.policy.METRICS`), the typed rows the worker and the importer build (`OutputRow`) and
the retake loop builds (`TakeRow`), the ids rows are known by, made and parsed here alone
(`row_id` "SCRIPT:TURN", `take_id` "SCRIPT:TURN#takeN", `voice_key` "voice:NAME"), and
`DATA_SCHEMA`, the version of these fields, tied to them by `DATA_FINGERPRINT` (a test fails
when the fields change and the two are not updated together).

To add a column: add its `Field` to `DATA_FIELDS` (or `TAKE_FIELDS`) and its attribute to the
row below, fill it where the row is built, bump `DATA_SCHEMA` and record the new fingerprint.
Readers of data/ that take every column (exports' metadata, the card's features) follow.
It knows nothing about files, commits, models or Ray.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

from synth.qc.policy import METRICS

if TYPE_CHECKING:
    import pyarrow as pa

# The version of data/'s and takes/'s fields: parts of two versions do not load as one dataset, so an
# output is only ever continued by its own (plan.json records it). 1: before plan.json recorded it;
# 2: adds `warnings`; 3: adds `spoken_text`; 4: adds the QC columns (`qc_pass`, ...); 5: takes/ adds
# `gain_db`, and a take louder than full scale is stored scaled, not clipped (an output of clipped
# takes is not continued with scaled ones). Bump it with every field change, and add the new version's
# `fingerprint()` to FINGERPRINTS (one per version since fingerprints were kept: a fingerprint changed
# without a new version is caught).
DATA_SCHEMA = 5
FINGERPRINTS = {5: "44c3bce35d090029"}  # version -> fingerprint() of DATA_FIELDS and TAKE_FIELDS at it
DATA_FINGERPRINT = FINGERPRINTS[DATA_SCHEMA]


@dataclass(frozen=True)
class Field:
    """One column: its name and type, as an HF `Value` dtype ("string", "int32", ...), "list<T>", or
    "audio" (an HF `Audio` cell: {bytes, path})."""

    name: str
    type: str


def _metric(name: str) -> Field:
    return Field(name, "string" if name == "asr_text" else "float64")


METRIC_FIELDS = tuple(_metric(name) for name in METRICS)  # null where QC, or that metric, is off
NUMERIC_METRICS = tuple(f.name for f in METRIC_FIELDS if f.type == "float64")  # the metrics that are numbers
QC_PASS = "qc_pass"
VERDICT_FIELDS = (Field(QC_PASS, "bool"), Field("qc_reasons", "list<string>"))  # QC's decision; null without QC
VERDICT = tuple(f.name for f in VERDICT_FIELDS)
QC_FIELDS = (*VERDICT, *METRICS)  # what QC says of a row: all `synth rescore` writes for it (besides its id)
QC_COLUMNS = (*VERDICT, "take", "num_takes", *METRICS)  # data/'s QC columns: also which take was kept, of how many

DATA_FIELDS = (
    Field("id", "string"),  # row_id(script_id, turn)
    Field("script_id", "string"),
    Field("turn", "int32"),
    Field("speaker", "int32"),
    Field("text", "string"),  # as written in the manifest
    Field("spoken_text", "string"),  # what the model was given: normalised, respelled (config `text:`)
    Field("audio", "audio"),
    Field("sampling_rate", "int32"),
    Field("duration_s", "float64"),
    Field("num_frames", "int32"),
    Field("codes", "list<list<int16>>"),  # [num_frames][num_codebooks]
    Field("stop_reason", "string"),
    Field("seed", "int64"),  # of the take kept
    Field("voice", "string"),
    Field("context_turns", "list<int32>"),
    Field("context_ids", "list<string>"),  # row ids and voice keys, in prompt order
    Field("num_prompt_tokens", "int32"),
    Field("model", "string"),
    Field("model_weights", "string"),
    Field("engine", "string"),
    Field("generation", "string"),  # the sampling settings, dtype and max_frames, as JSON
    Field("warnings", "string"),  # what the turn's context left out that it should have held, or null
    VERDICT_FIELDS[0],
    VERDICT_FIELDS[1],
    Field("take", "int32"),  # the take kept (1 without QC)
    Field("num_takes", "int32"),
    *METRIC_FIELDS,
    Field("trimmed_frames", "list<int32>"),  # [start, end] frames cut by qc.cleanup.trim_silence, or null
    # dB between generation and storage (`audio_io.as_stored`'s fit, then qc.cleanup.loudness_lufs), or null
    Field("gain_db", "float64"),
)

TAKE_FIELDS = (  # takes/: one row per rejected take
    Field("id", "string"),  # the turn's row id
    Field("script_id", "string"),
    Field("turn", "int32"),
    Field("take", "int32"),
    Field("kept_take", "int32"),  # the take data/ holds for this turn
    Field("seed", "int64"),
    Field("num_frames", "int32"),
    Field("stop_reason", "string"),
    Field("codes", "list<list<int16>>"),
    Field("audio", "audio"),  # null when qc.keep_take_audio is off
    *VERDICT_FIELDS,
    Field("num_takes", "int32"),  # always null: a take's row does not repeat its turn's count
    *METRIC_FIELDS,
    Field("gain_db", "float64"),  # the take scaled to fit full scale (`audio_io.as_stored`), or null
)

DATA_TYPES = {f.name: f.type for f in DATA_FIELDS}


# -- types ---------------------------------------------------------------------------

# pyarrow and datasets are imported where they are used: the ids are needed where they are missing (the
# benchmark on a bare GPU box plans context through `synth.pipeline.context_plan`)


def arrow_type(type_: str) -> pa.DataType:
    """The Arrow type of a field's type (as `datasets` stores it)."""
    import pyarrow as pa

    if type_ == "audio":
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    if type_.startswith("list<"):
        return pa.list_(arrow_type(type_[len("list<"):-1]))
    return {"string": pa.string(), "bool": pa.bool_(), "int16": pa.int16(), "int32": pa.int32(),
            "int64": pa.int64(), "float64": pa.float64()}[type_]


def _feature(type_: str, sample_rate_hz: int):
    from datasets import Audio, List, Value

    if type_ == "audio":
        return Audio(sampling_rate=sample_rate_hz)
    if type_.startswith("list<"):
        return List(_feature(type_[len("list<"):-1], sample_rate_hz))
    return Value(type_)


def features(record: tuple[Field, ...], sample_rate_hz: int):
    """The `datasets.Features` of a record (`DATA_FIELDS`, `TAKE_FIELDS`)."""
    from datasets import Features

    return Features({f.name: _feature(f.type, sample_rate_hz) for f in record})


def data_schema(sample_rate_hz: int) -> pa.Schema:
    """data/*.parquet's Arrow schema, with the HF metadata that makes `audio` load as `Audio`."""
    return features(DATA_FIELDS, sample_rate_hz).arrow_schema


def takes_schema(sample_rate_hz: int) -> pa.Schema:
    """takes/*.parquet's Arrow schema, with the HF metadata."""
    return features(TAKE_FIELDS, sample_rate_hz).arrow_schema


def data_columns_schema(names: tuple[str, ...] | list[str]) -> pa.Schema:
    """A plain Arrow schema of some of data/'s fields (no HF metadata), in the order given."""
    import pyarrow as pa

    return pa.schema([(name, arrow_type(DATA_TYPES[name])) for name in names])


def fingerprint() -> str:
    """A hash of every (field name, Arrow type) of data/ and takes/: what `DATA_SCHEMA` versions."""
    text = "\n".join(f"{record} {f.name} {arrow_type(f.type)}"
                     for record, fs in (("data", DATA_FIELDS), ("takes", TAKE_FIELDS)) for f in fs)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- ids -----------------------------------------------------------------------------

TURN_SEPARATOR = ":"  # row id: "SCRIPT:TURN" (a script id may hold ':' itself: parsed from the right)
TAKE_SEPARATOR = "#take"  # a take of a turn: "SCRIPT:TURN#takeN"
VOICE_PREFIX = "voice:"  # a voice prompt in `context_ids`: "voice:NAME"


def row_id(script_id: str, turn: int) -> str:
    """The id of a script's turn: its data/ row's `id`, its request's id, its key in `context_ids`."""
    return f"{script_id}{TURN_SEPARATOR}{turn}"


def parse_row_id(key: str) -> tuple[str, int] | None:
    """(script id, turn) of a row id; None for anything else (a voice key, a take id)."""
    script_id, sep, turn = key.rpartition(TURN_SEPARATOR)
    if not sep or not (turn.isascii() and turn.isdigit()):
        return None
    return script_id, int(turn)


def take_id(row: str, take: int) -> str:
    """The id of take `take` (1-based) of the turn whose row id is `row`."""
    return f"{row}{TAKE_SEPARATOR}{take}"


def parse_take_id(key: str) -> tuple[str, int] | None:
    """(row id, take) of a take id; None for anything else."""
    row, sep, take = key.rpartition(TAKE_SEPARATOR)
    if not sep or not (take.isascii() and take.isdigit()) or parse_row_id(row) is None:
        return None
    return row, int(take)


def voice_key(name: str) -> str:
    """The key of a voice prompt in a row's `context_ids`."""
    return f"{VOICE_PREFIX}{name}"


def voice_name(key: str) -> str | None:
    """The voice a `voice_key` names; None for a key that is not one."""
    return key[len(VOICE_PREFIX):] if key.startswith(VOICE_PREFIX) else None


# -- rows ----------------------------------------------------------------------------

QC_ROW_FIELDS = (*QC_COLUMNS, "trimmed_frames", "gain_db")  # `OutputRow.qc`'s keys


def no_qc() -> dict:
    """The QC fields of a row made without QC: one take, no verdict, metrics, trim or gain."""
    return {**dict.fromkeys(QC_ROW_FIELDS), "take": 1, "num_takes": 1}


def codes_to_list(codes: np.ndarray) -> list[list[int]]:
    """codes [num_frames, num_codebooks] int array -> the `codes` field's nested lists (int16)."""
    return codes.astype(np.int16).tolist()


@dataclass
class OutputRow:
    """One row of data/: the fields of `DATA_FIELDS` before the QC ones, and those in `qc`
    (`QC_ROW_FIELDS`; `no_qc()` for a generated row without QC; a field left out is null)."""

    id: str
    script_id: str
    turn: int
    speaker: int
    text: str
    spoken_text: str
    audio: dict  # {"bytes": encoded clip, "path": its file's path relative to the output}
    sampling_rate: int
    duration_s: float
    num_frames: int
    codes: list[list[int]]
    stop_reason: str
    seed: int | None
    voice: str | None
    context_turns: list[int]
    context_ids: list[str]
    num_prompt_tokens: int | None
    model: str
    model_weights: str | None
    engine: str
    generation: str
    warnings: str | None
    qc: dict = field(default_factory=no_qc)

    def to_dict(self) -> dict:
        """The row as the writer takes it: one key per field."""
        assert self.qc.keys() <= set(QC_ROW_FIELDS), f"not QC fields: {set(self.qc) - set(QC_ROW_FIELDS)}"
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "qc"}, **self.qc}


@dataclass
class TakeRow:
    """One row of takes/: a rejected take, its QC decision and metrics (`metrics`: `METRICS` keys)."""

    id: str
    script_id: str
    turn: int
    take: int
    kept_take: int
    seed: int
    num_frames: int
    stop_reason: str
    codes: list[list[int]]
    audio: dict | None
    qc_pass: bool
    qc_reasons: list[str]
    metrics: dict
    gain_db: float | None

    def to_dict(self) -> dict:
        assert self.metrics.keys() <= set(METRICS), f"not metrics: {set(self.metrics) - set(METRICS)}"
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}, **self.metrics}
