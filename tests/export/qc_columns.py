"""The with-QC fixture, in one place: a second output whose data parts carry issue #12's QC columns.

Until QC runs in the pipeline (issue #12), this copies a real run's output and adds the QC
columns to every committed data part, then rewrites the parts' markers (sizes, sha256) so
that the copy is a consistent, verifiable synth output. The values that are cheap to
measure are measured from the row's own audio and text (peak, clipping, edge silence,
characters per second); the model-based ones (WER, CER, speaker similarity, DNSMOS, loop
score) and the verdict are stand-ins derived from the row id, so that passes and failures
mix. Once #12 lands, replace `with_qc_columns` by a real QC run; nothing else changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

QC_FIELDS = {"qc_pass": "bool", "qc_reasons": "list<string>", "take": "int32", "num_takes": "int32", "asr_text": "string",
             **{metric: "float64" for metric in ("wer", "cer", "speaker_sim", "dnsmos", "loudness_lufs", "peak_dbfs",
                                                 "clipped_fraction", "leading_silence_s", "trailing_silence_s",
                                                 "speech_ratio", "chars_per_s", "loop_score")}}
SILENCE = 10 ** (-40 / 20)  # -40 dBFS


def qc_values(row: dict) -> dict:
    samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    loud = np.flatnonzero(np.abs(samples) > SILENCE)
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    h = zlib.crc32(row["id"].encode())
    passed = h % 3 != 0
    wer = (h % 100) / 200 if passed else 0.5 + (h % 50) / 100
    return {
        "qc_pass": passed, "qc_reasons": [] if passed else ["wer_above_max"], "take": 0, "num_takes": 1,
        "asr_text": row["text"] if passed else "", "wer": wer, "cer": wer / 2, "speaker_sim": 0.5 + (h % 40) / 100,
        "dnsmos": 1.5 + (h % 20) / 10, "loudness_lufs": float(20 * np.log10(np.sqrt(np.mean(samples ** 2)) + 1e-9)),
        "peak_dbfs": float(20 * np.log10(peak + 1e-9)), "clipped_fraction": float(np.mean(np.abs(samples) >= 0.999)),
        "leading_silence_s": float(loud[0] / rate) if len(loud) else row["duration_s"],
        "trailing_silence_s": float((len(samples) - 1 - loud[-1]) / rate) if len(loud) else row["duration_s"],
        "speech_ratio": float(len(loud) / max(1, len(samples))), "chars_per_s": len(row["text"]) / row["duration_s"],
        "loop_score": (h % 10) / 10,
    }


def with_qc_columns(source: str, destination: str) -> str:
    """Copy the output `source` to `destination` with QC columns in every data part; returns destination."""
    from datasets import Features, Value
    from datasets import List as HFList

    shutil.copytree(source, destination)
    progress = os.path.join(destination, "_progress")
    records = {}
    for name in sorted(os.listdir(os.path.join(destination, "data"))):
        path = os.path.join(destination, "data", name)
        table = pq.read_table(path)
        rows = table.to_pylist()
        features = Features.from_arrow_schema(table.schema)
        for key, kind in QC_FIELDS.items():
            features[key] = HFList(Value("string")) if kind == "list<string>" else Value(kind)
        new = pa.Table.from_pylist([{**r, **qc_values(r)} for r in rows], schema=features.arrow_schema)
        pq.write_table(new, path, compression="zstd")
        data = open(path, "rb").read()
        records[f"data/{name}"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    for name in os.listdir(progress):  # part markers and done markers record the data files: update them
        marker = os.path.join(progress, name)
        committed_at = os.stat(marker).st_mtime  # kept: the report plots throughput from commit times
        text = json.load(open(marker))
        for commit in [text, *text.get("parts", [])]:
            for record in commit.get("files", []):
                record.update(records.get(record["path"], {}))
        with open(marker, "w") as f:
            json.dump(text, f)
        os.utime(marker, (committed_at, committed_at))
    return destination
