"""WebDataset: tar shards of a bounded size, one sample per row (audio, codes, metadata JSON).

This module owns one source part's tar shards, `wds/<part>-000.tar`, `-001`, ... (under
`wds/<split>/` when the export has splits): each row is the members `<key>.<wav|flac>` (the
output's own bytes, marking included), `<key>.txt` (the text as written, the transcript
WebDataset pipelines read), `<key>.codes.npy` (int16 [num_frames, K]) and `<key>.json`
(every column but audio and codes: the spoken form, `spoken_text`, among them), which the
`webdataset` library groups into one sample by their shared key. A shard is closed once it
passes `shard_max_mb`.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Callable, Iterator

import numpy as np

from synth.export.rows import SourcePart, audio_extension, metadata, sample_key


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: a rerun writes the same bytes
    tar.addfile(info, io.BytesIO(data))


def _npy(codes) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(codes, dtype=np.int16))
    return buf.getvalue()


def write_part(rows: Iterator[dict], part: SourcePart, put: Callable[[str, bytes], None], *,
               shard_max_mb: float, directory: str = "wds") -> tuple[int, float]:
    """Write the part's rows as tar shards through `put`; returns (rows, audio seconds)."""
    max_bytes = int(shard_max_mb * 1024 * 1024)
    count, seconds, index = 0, 0.0, 0
    buf, tar = None, None

    def close() -> None:
        nonlocal buf, tar, index
        tar.close()
        put(f"{directory}/{part.name}-{index:03d}.tar", buf.getvalue())
        buf, tar, index = None, None, index + 1

    for row in rows:
        if tar is None:
            buf = io.BytesIO()
            tar = tarfile.open(fileobj=buf, mode="w")
        key = sample_key(row["id"])
        _member(tar, f"{key}.{audio_extension(row)}", row["audio"]["bytes"])
        _member(tar, f"{key}.txt", row["text"].encode())
        _member(tar, f"{key}.codes.npy", _npy(row["codes"]))
        _member(tar, f"{key}.json", json.dumps(metadata(row), ensure_ascii=False).encode())
        count, seconds = count + 1, seconds + row["duration_s"]
        if buf.tell() >= max_bytes:
            close()
    if tar is not None:
        close()
    return count, seconds
