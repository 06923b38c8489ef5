"""Recorded speech into synth's dataset schema, codes included, so real and synthetic data train alike.

This module owns `synth import`: a recorded corpus, either a directory of clips with
transcripts (each clip's `<stem>.txt` beside it, or an LJSpeech-style `metadata.csv` of
`name|text[|...]` at the top) or a Hugging Face audio dataset (`save_to_disk` output, or a
Parquet/hub dataset `load_dataset` opens offline), becomes an output of the same layout and
columns as `synth run` writes: each clip one row (a one-turn script, no context), decoded to
24 kHz mono, padded to whole 80 ms frames, Mimi-encoded in batches through synth's codec
(synth.engine.codec), and committed in parts into a dataset store of kind `import`
(synth.pipeline.output, synth.store: claimed, leased, its identity the corpus's clips with
their fingerprints; each clip's file marked as an imported recording, never as AI-generated,
synth.pipeline.provenance), so a killed import resumes, a relaunch on a changed corpus is refused
naming the clips, `synth verify` checks it and `synth train` reads it. A clip that cannot
be read or has no transcript is an error row naming it; the rest goes on. It knows nothing
of training.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from synth.errors import SynthError
from synth.pipeline.audio_io import AudioError, decode_clip, encode_audio
from synth.pipeline.manifest import RowError, ids_sha256
from synth.pipeline.output import IMPORT, accept_part, parsed_part
from synth.pipeline.plan import InputFile, Plan, Shard
from synth.pipeline.provenance import RECORDED, Provenance
from synth.pipeline.record import DATA_SCHEMA, OutputRow, codes_to_list, row_id
from synth.pipeline.writer import DatasetWriter
from synth.store import storage
from synth.store.errors import StoreError
from synth.store.lease import Lease
from synth.store.recovery import recover
from synth.store.store import Store

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
STOP_REASON = RECORDED  # the `stop_reason` of an imported row: nothing was generated


class CorpusError(SynthError, ValueError):
    """A corpus that cannot be imported as a whole; the message says why."""


@dataclass(frozen=True)
class Clip:
    """One recorded clip: its row id stem, transcript (None: missing), speaker, and how to read its bytes."""

    id: str
    text: str | None
    speaker: int
    read: Callable[[], bytes]
    name: str  # the file or dataset row, for messages
    fingerprint: str = ""  # what tells this clip's bytes from others' without reading them (size and mtime)


def clips_in_directory(directory: str, speaker: int) -> list[Clip]:
    """Every audio file under `directory` (sorted), with its `<stem>.txt` or metadata.csv transcript."""
    root = storage.resolve(directory)
    if not storage.is_dir(root):
        raise CorpusError(f"--clips {directory}: not a directory")
    metadata = {}
    if storage.exists(root.join("metadata.csv")):
        text = storage.read_bytes(root.join("metadata.csv")).decode("utf-8")
        for row in csv.reader(text.splitlines(), delimiter="|", quoting=csv.QUOTE_NONE):
            if len(row) >= 2:
                metadata[row[0]] = row[-1] if len(row) > 2 and row[-1].strip() else row[1]
    stats = storage.file_stats(root)
    clips = []
    for rel in sorted(stats):
        stem, suffix = os.path.splitext(rel)
        if suffix.lower() not in AUDIO_SUFFIXES:
            continue
        text = metadata.get(os.path.basename(stem), metadata.get(stem))
        if text is None and f"{stem}.txt" in stats:
            text = storage.read_bytes(root.join(f"{stem}.txt")).decode("utf-8")
        loc = root.join(rel)
        size, mtime_ns = stats[rel]
        clips.append(Clip(stem, text.strip() if text else None, speaker, lambda loc=loc: storage.read_bytes(loc),
                          loc.uri, f"{size}:{mtime_ns}"))
    if not clips:
        raise CorpusError(f"--clips {directory}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return clips


def clips_in_hf_dataset(path: str, *, split: str, audio_column: str, text_column: str,
                        speaker_column: str | None, speaker: int) -> list[Clip]:
    """Rows of a Hugging Face audio dataset (audio left undecoded: bytes, else its path)."""
    import datasets

    try:
        if os.path.isdir(path) and os.path.exists(os.path.join(path, "dataset_info.json")):
            ds = datasets.load_from_disk(path)
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(path, split=split)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise CorpusError(f"--hf-dataset {path} (split {split!r}) cannot be loaded: {e}") from None
    for column in (audio_column, text_column, *([speaker_column] if speaker_column else [])):
        if column not in ds.column_names:
            raise CorpusError(f"--hf-dataset {path}: no column {column!r} (it has {', '.join(ds.column_names)})")
    ds = ds.cast_column(audio_column, datasets.Audio(decode=False))
    clips = []
    for i, row in enumerate(ds):
        audio = row[audio_column] or {}

        def read(audio=audio, i=i) -> bytes:
            if audio.get("bytes"):
                return audio["bytes"]
            if audio.get("path"):
                return storage.read_bytes(storage.resolve(audio["path"]))
            raise AudioError(f"row {i}: no audio bytes or path")
        who = int(row[speaker_column]) if speaker_column and row[speaker_column] is not None else speaker
        clips.append(Clip(f"{i:08d}", row[text_column], who, read, f"{path} row {i}", f"{ds._fingerprint}:{i}"))
    return clips


def _plan(clips: list[Clip], source: str, rows_per_part: int) -> Plan:
    """The import's plan: a shard (one part) per `rows_per_part` clips, each holding the hash of its
    clips' ids, transcripts, speakers and fingerprints."""
    def digest(start: int, stop: int) -> str:
        return ids_sha256([c.id, c.text, c.speaker, c.fingerprint] for c in clips[start:stop])
    shards = tuple(Shard(k, 0, start, min(start + rows_per_part, len(clips)),
                         digest(start, min(start + rows_per_part, len(clips))))
                   for k, start in enumerate(range(0, len(clips), rows_per_part)))
    return Plan(shards, rows_per_part, (InputFile(source, len(clips)),), rows_per_part)


def _check_corpus(store: Store, plan: Plan, clips: list[Clip]) -> None:
    """Refuse a relaunch on another corpus, or one whose clips changed, naming them."""
    identity = store.identity()
    if identity is None or identity.get("plan") == plan.to_dict():
        return
    recorded = Plan.from_dict(identity["plan"]) if "plan" in identity else None
    if recorded is not None and recorded.scripts_per_shard != plan.scripts_per_shard:
        raise StoreError(f"{store.uri} was imported with --rows-per-part {recorded.scripts_per_shard}: its parts are "
                         "numbered by it, so it is continued only with the same (or use a new --output)")
    if recorded is None or len(recorded.shards) != len(plan.shards) or recorded.manifest_files != plan.manifest_files:
        raise StoreError(f"{store.uri} holds an import of another corpus or of another size ({identity.get('imported_from')}, "
                         f"{sum(f.num_rows for f in recorded.manifest_files) if recorded else '?'} clips; now {len(clips)}): "
                         "use a new --output, or the corpus and --rows-per-part it was imported from")
    changed = [s for s, old in zip(plan.shards, recorded.shards) if s != old]
    where = "; ".join(f"clips {clips[s.start].id} .. {clips[s.stop - 1].id}" for s in changed[:3])
    raise StoreError(f"{store.uri}: the corpus changed since it was imported ({where}: a clip added, removed, "
                     "rewritten or re-transcribed): use a new --output, or restore the corpus")


def import_clips(clips: list[Clip], output_uri: str, *, source: str, codec, model_id: str,
                 rows_per_part: int = 64, audio_format: str = "flac", adopt: bool = False,
                 lease_stale_seconds: float = 60.0, log=print) -> dict:
    """Write `clips` as a synth dataset at `output_uri` (resuming a killed import); a summary.

    codec: a synth.engine.codec.MimiCodec (its `encode` batches clips; `sample_rate_hz`)."""
    store = Store.at_uri(output_uri, IMPORT)
    store.claim(adopt=adopt)
    plan = _plan(clips, source, rows_per_part)
    identity = {"data_schema": DATA_SCHEMA, "imported_from": source, "model": model_id, "voices": {},
                "output": {"audio_format": audio_format, "write_audio_files": True}, "plan": plan.to_dict()}
    with Lease.acquire(store, stale_after_s=lease_stale_seconds, log=log) as lease:
        store.run_id = lease.run_id
        _check_corpus(store, plan, clips)
        store.settings = store.record_identity(identity, fixed={k: f"its {k} differs" for k in identity})
        batch = time.strftime("%Y%m%dT%H%M%SZ") + f"-{lease.run_id}"
        found = recover(store, batch=batch, accept=accept_part)
        for finding in found.findings:
            log(f"import: VERIFY FAILED: {finding} (put aside in _quarantine/{batch}; imported again)")
        committed = {parsed_part(unit) for unit in found.units} - {None}
        writer = DatasetWriter(store, sample_rate_hz=codec.sample_rate_hz, audio_format=audio_format,
                               write_audio_files=True)
        totals = {"rows": 0, "errors": 0, "parts": 0, "skipped_parts": 0}
        for shard in plan.shards:
            if (shard.index, 0) in committed:  # committed by an earlier, killed import
                totals["skipped_parts"] += 1
                continue
            commit = _import_part(clips, shard, writer, codec, model_id=model_id, source=source, log=log)
            totals["rows"] += commit.rows
            totals["errors"] += commit.errors
            totals["parts"] += 1
    return totals


def _import_part(clips: list[Clip], shard: Shard, writer: DatasetWriter, codec, *, model_id: str, source: str, log):
    """Decode, encode and commit one part's clips; a clip that cannot be used is an error row."""
    rate, spf = codec.sample_rate_hz, codec.samples_per_frame
    audio, errors = {}, []
    for row in range(shard.start, shard.stop):
        clip = clips[row]
        if not clip.text or not clip.text.strip():
            errors.append(RowError(row, clip.id, "import", f"{clip.name}: no transcript"))
            continue
        try:
            samples = decode_clip(clip.read(), rate, name=clip.name)
        except (AudioError, OSError) as e:
            errors.append(RowError(row, clip.id, "import", str(e)))
            continue
        frames = -(-len(samples) // spf)
        audio[row] = np.pad(samples, (0, frames * spf - len(samples)))  # whole frames: samples = frames x spf
    codes = dict(zip(audio, codec.encode(list(audio.values()))))
    rows = [_row(clips[r], audio[r], codes[r].numpy(), writer, shard.index, rate, writer.audio_format, model_id,
                 source) for r in audio]
    commit = writer.commit_part(shard.index, 0, rows, errors, shard.num_scripts,
                                manifest_rows={row_id(clips[r].id, 0): r for r in audio})
    for e in errors:
        log(f"import: {e}")
    return commit


def _row(clip: Clip, samples: np.ndarray, codes: np.ndarray, writer: DatasetWriter, shard: int, rate: int,
         audio_format: str, model_id: str, source: str) -> dict:
    """A data/ row of synth's schema for one recorded clip (nothing measured: its QC fields null)."""
    key = row_id(clip.id, 0)
    return OutputRow(
        id=key, script_id=clip.id, turn=0, speaker=clip.speaker, text=clip.text.strip(), spoken_text=clip.text.strip(),
        audio={"bytes": encode_audio(samples, rate, audio_format,  # marked as imported, never as generated
                                     Provenance(False, model_id).audio_tags(key)),
               "path": writer.audio_path(shard, clip.id, 0)},
        sampling_rate=rate, duration_s=len(samples) / rate, num_frames=len(codes), codes=codes_to_list(codes),
        stop_reason=STOP_REASON, seed=None, voice=None, context_turns=[], context_ids=[], num_prompt_tokens=None,
        model=model_id, model_weights=None, engine="import", generation=json.dumps({"source": source}),
        warnings=None, qc={},
    ).to_dict()


def load_codec(model_id: str):
    """synth's batched Mimi codec from a CSM checkpoint's `codec_model` weights (GPU when there is one)."""
    import torch
    from transformers import AutoConfig

    from synth.engine.checkpoint import resolve_checkpoint
    from synth.engine.codec import MimiCodec, load_mimi

    path = resolve_checkpoint(model_id)
    config = AutoConfig.from_pretrained(str(path))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return MimiCodec(load_mimi(path, config, device=device, dtype=torch.float32), num_codebooks=config.num_codebooks)
