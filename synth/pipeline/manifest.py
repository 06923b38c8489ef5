"""Manifests: the Parquet files that say what to synthesize.

This module owns the manifest schema (and writing manifests in it: `write_manifest`),
opening one file or a directory of files on any pyarrow filesystem, reading a range of
rows without loading the rest, and turning each raw row into a validated `Script` or a
`RowError` that names the row and the problem.
It also refuses a manifest with no rows or an `id` column that is not strings
(`open_manifest`), or with duplicate ids (`check_unique_ids`; a null id is a bad row, not
a duplicate), before anything runs. Every value is checked against the range of the
output column it lands in (a speaker must fit `int32`, a seed plus its turns `int64`), so
a bad value is an error row naming it, never a failed shard. A run's actors open exactly
the files the plan lists (`open_planned`) and refuse rows whose ids are not the ones the
plan gave their shard (`read_shard`). It knows nothing about models, Ray or output files.

Two forms are accepted:

- scripts: `id` (unique string), `turns` (list of {speaker: int, text: str,
  audio: optional path/URI, voice: optional name}), optional `seed` (int),
  `max_audio_seconds` (float) and `voice` (name).
- flat: `id`, `text`, `speaker` and/or `voice` (+ the same optional columns): a one-turn script.

Turns that carry audio are context; every turn without audio is generated in order,
conditioned on the turns before it, given or generated. `voice` names an entry of the
config's voice library (`synth.pipeline.voices`); a turn may then leave out `speaker`. Relative
audio paths resolve against the directory of the manifest file that names them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from synth.errors import SynthError
from synth.store import storage
from synth.store.errors import InputChanged

INT32_MAX = 2**31 - 1  # speaker, turn: int32 columns of the output
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # seed: an int64 column (a script's seed + its turn index)


def scripts_schema(speaker_type: pa.DataType = pa.int64()) -> pa.Schema:
    """The Arrow schema of a scripts manifest holding every column synth reads.

    speaker_type: int64, or float64 as pandas writes integer columns with gaps (integral
    floats are accepted as speakers)."""
    turn = pa.struct([("speaker", speaker_type), ("text", pa.string()), ("audio", pa.string()),
                      ("voice", pa.string())])
    return pa.schema([("id", pa.string()), ("turns", pa.list_(turn)), ("voice", pa.string()), ("seed", pa.int64()),
                      ("max_audio_seconds", pa.float64())])


def scripts_table(rows: Sequence[dict[str, Any]], speaker_type: pa.DataType = pa.int64()) -> pa.Table:
    """Script rows (dicts of the manifest's columns; any optional field may be left out,
    it is then null) as a table of `scripts_schema`."""
    return pa.Table.from_pylist(list(rows), schema=scripts_schema(speaker_type))


def manifest_bytes(rows: Sequence[dict[str, Any]], *, speaker_type: pa.DataType = pa.int64(),
                   row_group_size: int | None = None) -> bytes:
    """Script rows as the bytes of a scripts manifest (Parquet): the same rows always give the same bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(scripts_table(rows, speaker_type), sink, row_group_size=row_group_size)
    return sink.getvalue().to_pybytes()


def write_manifest(path: str, rows: Sequence[dict[str, Any]], *, speaker_type: pa.DataType = pa.int64(),
                   row_group_size: int | None = None) -> str:
    """Write script rows as a scripts manifest at a local path or URI; returns the path."""
    data = manifest_bytes(rows, speaker_type=speaker_type, row_group_size=row_group_size)
    storage.write_bytes_atomic(storage.resolve(path), data)
    return path


class ManifestError(SynthError, ValueError):
    """The manifest as a whole cannot be used (missing file, wrong columns, duplicate ids)."""


@dataclass(frozen=True)
class Turn:
    speaker: int | None  # None: the speaker of the turn's (or the script's) voice
    text: str
    audio: str | None = None  # resolved path/URI of a context clip, or None to generate
    voice: str | None = None  # voice-library name this generated turn speaks in


@dataclass(frozen=True)
class Script:
    id: str
    turns: tuple[Turn, ...]
    row: int  # global row number in the manifest (files in sorted order)
    seed: int | None = None
    max_audio_seconds: float | None = None
    voice: str | None = None  # default voice of the turns that name neither voice nor speaker

    @property
    def turns_to_generate(self) -> list[int]:
        return [i for i, t in enumerate(self.turns) if t.audio is None]


@dataclass(frozen=True)
class RowError:
    """A manifest row (or one of its turns) that could not be synthesized."""

    row: int
    script_id: str | None
    stage: str  # "validate", "audio", "generate", ...
    reason: str
    turn: int | None = None

    def __str__(self) -> str:
        where = f"row {self.row}" + (f" (id {self.script_id!r})" if self.script_id is not None else "")
        if self.turn is not None:
            where += f", turn {self.turn}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class ManifestFile:
    path: str  # path within the filesystem
    uri: str
    num_rows: int
    first_row: int  # global row number of this file's first row


@dataclass(frozen=True)
class Manifest:
    location: storage.Location
    files: tuple[ManifestFile, ...]
    form: str  # "scripts" or "flat"

    @property
    def num_rows(self) -> int:
        return sum(f.num_rows for f in self.files)


def _form_of(schema: pa.Schema, uri: str) -> str:
    names = set(schema.names)
    if "id" not in names:
        raise ManifestError(f"{uri}: manifest needs an `id` column; columns are {sorted(names)}")
    id_type = schema.field("id").type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
        raise ManifestError(f"{uri}: the `id` column must hold strings (one id per script), it is {id_type}")
    if "turns" in names:
        return "scripts"
    if "text" in names and names & {"speaker", "voice"}:
        return "flat"
    raise ManifestError(
        f"{uri}: manifest needs either a `turns` column (scripts) or `text` and `speaker` "
        f"(or `voice`) columns (flat); columns are {sorted(names)}"
    )


def open_manifest(path_or_uri: str) -> Manifest:
    """Open a Parquet file or a directory of them (sorted by name); reads footers only."""
    loc = storage.resolve(path_or_uri)
    if not storage.exists(loc):
        raise ManifestError(f"manifest not found: {path_or_uri}")
    if storage.is_dir(loc):
        paths = storage.list_files(loc, ".parquet")
        if not paths:
            raise ManifestError(f"no .parquet files under {path_or_uri}")
    else:
        paths = [loc.path]
    files, forms, first_row = [], set(), 0
    for path in paths:
        mf, form = _open_file(loc, path, first_row)
        files.append(mf)
        forms.add(form)
        first_row += mf.num_rows
    if len(forms) > 1:
        raise ManifestError(f"{path_or_uri}: files mix the `turns` and flat forms")
    if first_row == 0:  # refused rather than a run that writes no dataset
        raise ManifestError(f"{path_or_uri}: the manifest has no rows ({len(files)} file(s), all empty): "
                            "nothing to synthesize")
    return Manifest(loc, tuple(files), forms.pop())


def _open_file(loc: storage.Location, path: str, first_row: int) -> tuple[ManifestFile, str]:
    """One manifest file's footer: the file as the manifest lists it, and its form."""
    uri = path if loc.is_local else f"{loc.uri.split('://')[0]}://{path}"
    try:
        meta = pq.ParquetFile(loc.fs.open_input_file(path)).metadata
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"{uri}: not a readable Parquet file ({e})") from None
    return ManifestFile(path, uri, meta.num_rows, first_row), _form_of(meta.schema.to_arrow_schema(), uri)


def open_planned(path_or_uri: str, names: Sequence[tuple[str, int]]) -> Manifest:
    """The manifest as a plan recorded it: exactly the files `names` lists ((name under the input,
    rows); "" for the input itself), in that order, never the directory's listing, so that a
    file added to it meanwhile is not read. A file gone or of another row count raises InputChanged."""
    loc = storage.resolve(path_or_uri)
    files, forms, first_row = [], set(), 0
    for name, num_rows in names:
        path = loc.join(name).path if name else loc.path
        try:
            mf, form = _open_file(loc, path, first_row)
        except ManifestError as e:
            raise InputChanged(f"the manifest changed under the run: {e}") from None
        if mf.num_rows != num_rows:
            raise InputChanged(f"the manifest changed under the run: {mf.uri} has {mf.num_rows} rows, the plan "
                               f"{num_rows}")
        files.append(mf)
        forms.add(form)
        first_row += num_rows
    if len(forms) != 1:
        raise InputChanged(f"the manifest changed under the run: {path_or_uri} mixes the `turns` and flat forms")
    return Manifest(loc, tuple(files), forms.pop())


def read_rows(manifest: Manifest, file_index: int, start: int, stop: int) -> list[dict[str, Any]]:
    """Raw rows [start, stop) of one manifest file (file-local row numbers), reading only the
    row groups that hold them."""
    mf = manifest.files[file_index]
    pf = pq.ParquetFile(manifest.location.fs.open_input_file(mf.path))
    tables, offset = [], 0
    for rg in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(rg).num_rows
        lo, hi = max(start, offset), min(stop, offset + n)
        if lo < hi:
            tables.append(pf.read_row_group(rg).slice(lo - offset, hi - lo))
        offset += n
    return pa.concat_tables(tables).to_pylist() if tables else []


def iter_ids(manifest: Manifest, batch_rows: int = 65536) -> Iterator[tuple[int, Any]]:
    """(global row, id) for every row, streamed a batch at a time."""
    for mf in manifest.files:
        pf = pq.ParquetFile(manifest.location.fs.open_input_file(mf.path))
        row = mf.first_row
        for batch in pf.iter_batches(batch_size=batch_rows, columns=["id"]):
            for value in batch.column(0).to_pylist():
                yield row, value
                row += 1


def ids_sha256(ids: Iterable[Any]) -> str:
    """The hash of a sequence of row ids, in order (any JSON value: a null id too)."""
    digest = hashlib.sha256()
    for value in ids:
        digest.update(json.dumps(value, default=str).encode() + b"\n")
    return digest.hexdigest()


def _as_int(value: Any) -> int | None:
    """An integer, or an integral float; None for anything else (strings, bools, NaN, 1.5)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _resolve_audio(ref: str, base: storage.Location) -> str:
    """Relative clip paths resolve against the manifest file's directory."""
    if "://" in ref or ref.startswith("/"):
        return ref
    parent = base.uri.rsplit("/", 1)[0] if "/" in base.uri else "."
    return f"{parent}/{ref}"


def parse_row(raw: dict[str, Any], row: int, form: str, manifest_file: storage.Location) -> Script | RowError:
    """Validate one raw manifest row; every cheap check happens here."""
    script_id = raw.get("id")
    if not isinstance(script_id, str) or not script_id.strip():
        return RowError(row, None, "validate", f"`id` must be a non-empty string, got {script_id!r}")

    def bad(reason: str, turn: int | None = None) -> RowError:
        return RowError(row, script_id, "validate", reason, turn)

    raw_turns = raw.get("turns") if form == "scripts" else [
        {"speaker": raw.get("speaker"), "text": raw.get("text"), "audio": raw.get("audio")}
    ]
    script_voice = raw.get("voice")
    if script_voice is not None and (not isinstance(script_voice, str) or not script_voice.strip()):
        return bad(f"voice must be a voice name, got {script_voice!r}")
    if not isinstance(raw_turns, list) or not raw_turns:
        return bad(f"`turns` must be a non-empty list, got {raw_turns!r}")
    turns = []
    for i, t in enumerate(raw_turns):
        if not isinstance(t, dict):
            return bad(f"turn must be a struct of speaker/text/audio, got {t!r}", i)
        voice = t.get("voice")
        if voice is not None and (not isinstance(voice, str) or not voice.strip()):
            return bad(f"voice must be a voice name, got {voice!r}", i)
        speaker = _as_int(t.get("speaker"))
        if t.get("speaker") is None and (voice or script_voice) and not t.get("audio"):
            speaker = None  # the voice says who speaks
        elif speaker is None or speaker < 0:
            return bad(f"speaker must be a non-negative integer, got {t.get('speaker')!r}", i)
        elif speaker > INT32_MAX:
            return bad(f"speaker must be at most {INT32_MAX} (the dataset's `speaker` column is int32), got "
                       f"{speaker}", i)
        text = t.get("text")
        if not isinstance(text, str) or not text.strip():
            return bad(f"text must be a non-empty string, got {text!r}", i)
        audio = t.get("audio")
        if audio is not None and (not isinstance(audio, str) or not audio.strip()):
            return bad(f"audio must be a path or URI string, got {audio!r}", i)
        if audio and voice:
            return bad("a turn with audio is context; `voice` applies to generated turns only", i)
        turns.append(Turn(speaker, text.strip(), _resolve_audio(audio, manifest_file) if audio else None,
                          voice.strip() if voice else None))
    if all(t.audio is not None for t in turns):
        return bad("no turn to generate: every turn carries audio")

    seed = raw.get("seed")
    if seed is not None:
        seed = _as_int(seed)
        if seed is None or not INT64_MIN <= seed <= INT64_MAX - (len(turns) - 1):
            return bad(f"seed must be an integer from {INT64_MIN} to {INT64_MAX - (len(turns) - 1)} (each turn's "
                       f"seed is the script's plus its turn number), got {raw.get('seed')!r}")
    max_s = raw.get("max_audio_seconds")
    if max_s is not None:
        if isinstance(max_s, bool) or not isinstance(max_s, (int, float)) or not (max_s > 0) or math.isinf(max_s):
            return bad(f"max_audio_seconds must be a positive number, got {max_s!r}")
        max_s = float(max_s)
    return Script(script_id, tuple(turns), row, seed, max_s, script_voice.strip() if script_voice else None)


def iter_scripts(manifest: Manifest, batch_rows: int = 4096) -> Iterator[Script | RowError]:
    """Every row of the manifest, validated, streamed a batch at a time (bounded memory)."""
    for mf in manifest.files:
        base = storage.Location(manifest.location.fs, mf.path, mf.uri)
        pf = pq.ParquetFile(manifest.location.fs.open_input_file(mf.path))
        row = mf.first_row
        for batch in pf.iter_batches(batch_size=batch_rows):
            for raw in batch.to_pylist():
                yield parse_row(raw, row, manifest.form, base)
                row += 1


def read_scripts(manifest: Manifest, file_index: int, start: int, stop: int,
                 expected_ids_sha256: str = "") -> list[Script | RowError]:
    """Validated scripts for file-local rows [start, stop) of one manifest file. With
    `expected_ids_sha256` (the plan's hash of the shard's ids), rows whose ids hash otherwise
    raise InputChanged: the file was rewritten (reordered, edited) since it was planned."""
    mf = manifest.files[file_index]
    base = storage.Location(manifest.location.fs, mf.path, mf.uri)
    rows = read_rows(manifest, file_index, start, stop)
    if expected_ids_sha256 and ids_sha256(raw.get("id") for raw in rows) != expected_ids_sha256:
        raise InputChanged(f"the manifest changed under the run: the ids of rows {start}..{stop - 1} of {mf.uri} are "
                           "not the ones planned (the file was rewritten); nothing of them was generated")
    return [parse_row(raw, mf.first_row + start + i, manifest.form, base) for i, raw in enumerate(rows)]


def _id_hash(value) -> int:
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def check_unique_ids(manifest: Manifest) -> None:
    """Duplicate ids would make output ids ambiguous: refuse before anything runs.

    Memory stays at 8 bytes per row: ids are hashed to 64 bits and sorted; only rows whose
    hash collides are looked at again, by id, in a second streaming pass."""
    ids = ((row, v) for row, v in iter_ids(manifest) if isinstance(v, str))  # a null id is a bad row (parse_row)
    hashes = np.fromiter((_id_hash(v) for _, v in ids), dtype=np.int64)
    ordered = np.sort(hashes)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del hashes, ordered
    if len(repeated) == 0:
        return
    suspects = set(repeated.tolist())
    first_row: dict[str, int] = {}
    dupes = []
    for row, value in iter_ids(manifest):
        if not isinstance(value, str) or _id_hash(value) not in suspects:
            continue
        if value in first_row:
            dupes.append(f"id {value!r} at rows {first_row[value]} and {row}")
        else:
            first_row[value] = row
    if dupes:
        more = f" (and {len(dupes) - 5} more)" if len(dupes) > 5 else ""
        raise ManifestError("duplicate ids in the manifest: " + "; ".join(dupes[:5]) + more)
