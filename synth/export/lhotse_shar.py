"""Lhotse Shar: one cut per generated turn, with its audio and its Mimi codes.

This module owns turning rows into Lhotse cuts (a recording from the row's own bytes,
one supervision with the written text, speaker and language, whose `custom` says which text
it holds and carries the spoken form beside it, the codes [num_frames, K] attached as a
temporal array of frame shift 0.08 s, synth's metadata in the cut's custom fields) and
writing one source part's rows of one split as one Shar shard: `shar/cuts.<part>.jsonl.gz`,
`shar/recording.<part>.tar`, `shar/codes.<part>.tar` (under `shar/<split>/` when the export
has splits), which `CutSet.from_shar(in_dir=...)` reads. The recordings are the output's own
file bytes, not a re-encoding of their samples, so each keeps its marking
(`synth.pipeline.provenance`). Where the files go and how they are committed is
`synth.export.job`'s.
"""

from __future__ import annotations

import json
import os
import tempfile
from io import BytesIO
from typing import Callable, Iterator

import numpy as np

from synth.export.rows import FRAME_SHIFT_S, SourcePart, audio_extension, metadata

LANGUAGE = "en"  # CSM-1B speaks English only; the manifest has no language column
CODES_FIELD = "codes"
TEXT_FORM = "written"  # what the supervision's `text` holds: the manifest's text, as written


def to_cut(row: dict):
    """A MonoCut of the row: its audio, one supervision, codes [T, K] as a temporal array, metadata.

    Codes keep the data column's layout, frames first (temporal_dim 0): lhotse's
    `load_custom` cuts a temporal array to the cut's duration along its first axis whatever
    `temporal_dim` says (lhotse 1.33), so [K, T] would come back as [K, K]."""
    from lhotse import Recording, SupervisionSegment

    recording = Recording.from_bytes(row["audio"]["bytes"], recording_id=row["id"])
    cut = recording.to_cut()
    spoken = {"spoken_text": row["spoken_text"]} if row.get("spoken_text") is not None else {}
    cut.supervisions = [SupervisionSegment(id=row["id"], recording_id=row["id"], start=0.0,
                                           duration=recording.duration, text=row["text"],
                                           speaker=str(row["speaker"]), language=LANGUAGE,
                                           custom={"text_form": TEXT_FORM, **spoken})]
    cut.custom = metadata(row)
    codes = np.asarray(row["codes"], dtype=np.int16)  # [num_frames, K]
    return cut.attach_tensor(CODES_FIELD, codes, frame_shift=FRAME_SHIFT_S, temporal_dim=0)


def _recording_writer(pattern: str, fmt: str):
    """Lhotse's recording tar writer, except that a clip's member is the bytes set in `pending` (the
    output's file, marking included) instead of its decoded samples encoded again."""
    from lhotse.shar.utils import to_shar_placeholder
    from lhotse.shar.writers.audio import AudioTarWriter

    class KeepBytes(AudioTarWriter):
        pending = b""

        def write(self, key, value, sampling_rate, manifest, original_format=None) -> None:
            self.tar_writer.write(f"{key}.{self.format}", BytesIO(self.pending))
            placeholder = json.dumps(to_shar_placeholder(manifest).to_dict()) + "\n"
            self.tar_writer.write(f"{key}.json", BytesIO(placeholder.encode()), count=False)

    return KeepBytes(pattern, shard_size=None, format=fmt)


def write_part(rows: Iterator[dict], part: SourcePart, put: Callable[[str, bytes], None],
               prefix: str = "shar") -> tuple[int, float]:
    """Write the rows as one Shar shard under `prefix` through `put(path under EXPORT, bytes)`;
    returns (rows, audio seconds). No rows (all filtered out): nothing is written."""
    from lhotse.shar import SharWriter

    count, seconds = 0, 0.0
    with tempfile.TemporaryDirectory(prefix="synth-shar-") as tmp:
        writer = recordings = None
        for row in rows:
            if writer is None:  # the clip format is the output's (wav or flac), kept as it is
                fmt = audio_extension(row)
                writer = SharWriter(tmp, fields={"recording": fmt, CODES_FIELD: "numpy"}, shard_size=None)
                recordings = writer.writers["recording"] = _recording_writer(f"{tmp}/recording.tar", fmt)
                writer.__enter__()
            recordings.pending = row["audio"]["bytes"]
            writer.write(to_cut(row))
            count, seconds = count + 1, seconds + row["duration_s"]
        if writer is None:
            return 0, 0.0
        writer.__exit__(None, None, None)
        for name in sorted(os.listdir(tmp)):  # cuts.jsonl.gz, recording.tar, codes.tar
            field, rest = name.split(".", 1)
            with open(os.path.join(tmp, name), "rb") as f:
                put(f"{prefix}/{field}.{part.name}.{rest}", f.read())
    return count, seconds
