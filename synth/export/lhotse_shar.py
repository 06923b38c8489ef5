"""Lhotse Shar: one cut per generated turn, with its audio and its Mimi codes.

This module owns turning rows into Lhotse cuts (a recording from the row's own bytes,
one supervision with text, speaker and language, the codes [num_frames, K] attached as a
temporal array of frame shift 0.08 s, synth's metadata in the cut's custom fields) and
writing one source part as one Shar shard: `shar/cuts.<part>.jsonl.gz`, `shar/recording.<part>.tar`,
`shar/codes.<part>.tar`, which `CutSet.from_shar(in_dir=EXPORT/shar)` reads. Where the
files go and how they are committed is `synth.export.job`'s.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterator

import numpy as np

from synth.export.rows import FRAME_SHIFT_S, SourcePart, audio_extension, metadata

LANGUAGE = "en"  # CSM-1B speaks English only; the manifest has no language column
CODES_FIELD = "codes"


def to_cut(row: dict):
    """A MonoCut of the row: its audio, one supervision, codes [T, K] as a temporal array, metadata.

    Codes keep the data column's layout, frames first (temporal_dim 0): lhotse's
    `load_custom` cuts a temporal array to the cut's duration along its first axis whatever
    `temporal_dim` says (lhotse 1.33), so [K, T] would come back as [K, K]."""
    from lhotse import Recording, SupervisionSegment

    recording = Recording.from_bytes(row["audio"]["bytes"], recording_id=row["id"])
    cut = recording.to_cut()
    cut.supervisions = [SupervisionSegment(id=row["id"], recording_id=row["id"], start=0.0,
                                           duration=recording.duration, text=row["text"],
                                           speaker=str(row["speaker"]), language=LANGUAGE)]
    cut.custom = metadata(row)
    codes = np.asarray(row["codes"], dtype=np.int16)  # [num_frames, K]
    return cut.attach_tensor(CODES_FIELD, codes, frame_shift=FRAME_SHIFT_S, temporal_dim=0)


def write_part(rows: Iterator[dict], part: SourcePart, put: Callable[[str, bytes], None]) -> tuple[int, float]:
    """Write the part's rows as one Shar shard through `put(path under EXPORT, bytes)`; returns
    (rows, audio seconds). A part whose rows were all filtered out writes nothing."""
    from lhotse.shar import SharWriter

    count, seconds = 0, 0.0
    with tempfile.TemporaryDirectory(prefix="synth-shar-") as tmp:
        writer = None
        for row in rows:
            if writer is None:  # the clip format is the output's (wav or flac), kept as it is
                writer = SharWriter(tmp, fields={"recording": audio_extension(row), CODES_FIELD: "numpy"},
                                    shard_size=None)
                writer.__enter__()
            writer.write(to_cut(row))
            count, seconds = count + 1, seconds + row["duration_s"]
        if writer is None:
            return 0, 0.0
        writer.__exit__(None, None, None)
        for name in sorted(os.listdir(tmp)):  # cuts.jsonl.gz, recording.tar, codes.tar
            field, rest = name.split(".", 1)
            with open(os.path.join(tmp, name), "rb") as f:
                put(f"shar/{field}.{part.name}.{rest}", f.read())
    return count, seconds
