"""NeMo: a JSON-lines manifest (`audio_filepath`, `duration`, `text`, `normalized_text`, speaker,
metadata) and its clips.

This module owns one source part's share of a NeMo export: each kept row's clip as
`nemo/audio/<shard>/<key>.<wav|flac>` (the output's own bytes, marking included) and its
manifest line in `nemo/manifests/<part>.jsonl` (per split: `synth.export.destination.split_dir`);
`audio_filepath` is relative to `nemo/`, where the whole manifest (`nemo/manifest.jsonl`, the
parts' lines in order) is written once every part is committed (`synth.export.job`). NeMo
resolves relative paths against the manifest's directory. `text` is the text as written;
`normalized_text`, which NeMo's TTS datasets read as the normalised form, is synth's
`spoken_text` (what the model was given).
"""

from __future__ import annotations

import json
from typing import Callable, Iterator

from synth.export.rows import SourcePart, audio_extension, metadata, sample_key


def manifest_line(row: dict, audio_path: str) -> dict:
    """The row's NeMo manifest entry: the fields NeMo reads, then speaker, QC fields and the rest."""
    spoken = row.get("spoken_text")
    return {"audio_filepath": audio_path, "duration": row["duration_s"], "text": row["text"],
            "normalized_text": spoken if spoken is not None else row["text"], **metadata(row)}


def write_part(rows: Iterator[dict], part: SourcePart, put: Callable[[str, bytes], None],
               lines_file: str | None = None) -> tuple[int, float]:
    """Write the part's clips, then its manifest lines (to `lines_file`, by default
    `nemo/manifests/<part>.jsonl`), through `put`; returns (rows, audio seconds)."""
    lines, seconds = [], 0.0
    for row in rows:
        audio_path = f"audio/{part.shard:05d}/{sample_key(row['id'])}.{audio_extension(row)}"
        put(f"nemo/{audio_path}", row["audio"]["bytes"])
        lines.append(json.dumps(manifest_line(row, audio_path), ensure_ascii=False))
        seconds += row["duration_s"]
    if lines:
        put(lines_file or f"nemo/manifests/{part.name}.jsonl", ("\n".join(lines) + "\n").encode())
    return len(lines), seconds
