"""Recorded speech into synth's dataset schema, codes included, so real and synthetic data train alike.

This module owns `synth import`: a recorded corpus, either a directory of clips with
transcripts (each clip's `<stem>.txt` beside it, or an LJSpeech-style `metadata.csv` of
`name|text[|...]` at the top) or a Hugging Face audio dataset (`save_to_disk` output, or a
Parquet/hub dataset `load_dataset` opens offline), becomes an output of the same layout and
columns as `synth run` writes: each clip one row (a one-turn script, no context), decoded to
24 kHz mono, padded to whole 80 ms frames, Mimi-encoded in batches through synth's codec
(synth.engine.codec), and committed in parts with markers last (synth.pipeline.output), so a
killed import resumes, `synth verify` checks it and `synth train` reads it. A clip that cannot
be read or has no transcript is an error row naming it; the rest goes on. It knows nothing
of training.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from synth.errors import SynthError
from synth.pipeline import storage
from synth.pipeline.audio_io import AudioError, decode_clip, encode_audio
from synth.pipeline.manifest import RowError
from synth.pipeline.output import DATA_SCHEMA, PLAN_RECORD, OutputDir, ShardSummary
from synth.pipeline.plan import Plan, Shard
from synth.pipeline.writer import DatasetWriter, codes_to_list

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus")
STOP_REASON = "recorded"  # the `stop_reason` of an imported row: nothing was generated


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
    sizes = storage.file_sizes(root)
    clips = []
    for rel in sorted(sizes):
        stem, suffix = os.path.splitext(rel)
        if suffix.lower() not in AUDIO_SUFFIXES:
            continue
        text = metadata.get(os.path.basename(stem), metadata.get(stem))
        if text is None and f"{stem}.txt" in sizes:
            text = storage.read_bytes(root.join(f"{stem}.txt")).decode("utf-8")
        loc = root.join(rel)
        clips.append(Clip(stem, text.strip() if text else None, speaker, lambda loc=loc: storage.read_bytes(loc),
                          loc.uri))
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
        clips.append(Clip(f"{i:08d}", row[text_column], who, read, f"{path} row {i}"))
    return clips


def import_clips(clips: list[Clip], output_uri: str, *, source: str, codec, model_id: str,
                 rows_per_part: int = 64, audio_format: str = "flac", adopt: bool = False) -> dict:
    """Write `clips` as a synth output at `output_uri` (resuming a killed import); a summary.

    codec: a synth.engine.codec.MimiCodec (its `encode` batches clips; `sample_rate_hz`)."""
    output = OutputDir(storage.resolve(output_uri))
    output.claim(adopt=adopt)
    plan = Plan(tuple(Shard(k, 0, start, min(start + rows_per_part, len(clips)))
                      for k, start in enumerate(range(0, len(clips), rows_per_part))),
                rows_per_part, ((source, len(clips)),))
    identity = {"data_schema": DATA_SCHEMA, "imported_from": source, "model": model_id, "voices": {},
                "output": {"audio_format": audio_format, "commit_every_scripts": rows_per_part,
                           "scripts_per_shard": rows_per_part, "write_audio_files": True},
                "plan": plan.to_dict()}
    if storage.exists(output.at(PLAN_RECORD)):
        if output.read_json(PLAN_RECORD) != identity:
            raise CorpusError(f"{output.uri} holds another import or run (its {PLAN_RECORD} differs): use a new "
                               "--output, or the same source and settings to resume")
    else:
        output.write(PLAN_RECORD, json.dumps(identity, indent=2).encode())
    rate = codec.sample_rate_hz
    spf = codec.samples_per_frame
    writer = DatasetWriter(output, sample_rate_hz=rate, audio_format=audio_format, write_audio_files=True)
    committed, done = output.markers()
    totals = {"rows": 0, "errors": 0, "parts": 0, "skipped_parts": 0}
    for shard in plan.shards:
        if shard.index in done or (shard.index, 0) in committed:  # committed by a killed import
            if shard.index not in done:
                output.commit_shard(ShardSummary.of(shard.index, [output.read_commit(shard.index, 0)]))
            totals["skipped_parts"] += 1
            continue
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
        rows = [_row(clips[r], audio[r], codes[r].numpy(), writer, shard.index, rate, audio_format, model_id, source)
                for r in audio]
        commit = writer.commit_part(shard.index, 0, rows, errors, shard.num_scripts)
        output.commit_shard(ShardSummary.of(shard.index, [commit]))
        totals["rows"] += len(rows)
        totals["errors"] += len(errors)
        totals["parts"] += 1
        for e in errors:
            print(f"import: {e}", flush=True)
    return totals


def _row(clip: Clip, samples: np.ndarray, codes: np.ndarray, writer: DatasetWriter, shard: int, rate: int,
         audio_format: str, model_id: str, source: str) -> dict:
    """A data/ row of synth's schema for one recorded clip."""
    return {
        "id": f"{clip.id}:0", "script_id": clip.id, "turn": 0, "speaker": clip.speaker, "text": clip.text.strip(),
        "spoken_text": clip.text.strip(),
        "audio": {"bytes": encode_audio(samples, rate, audio_format), "path": writer.audio_path(shard, clip.id, 0)},
        "sampling_rate": rate, "duration_s": len(samples) / rate, "num_frames": len(codes),
        "codes": codes_to_list(codes), "stop_reason": STOP_REASON, "seed": None, "voice": None,
        "context_turns": [], "context_ids": [], "num_prompt_tokens": None, "model": model_id,
        "model_weights": None, "engine": "import", "generation": json.dumps({"source": source}), "warnings": None,
    }


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
