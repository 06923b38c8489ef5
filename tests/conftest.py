"""Shared fixtures: a tiny CSM checkpoint on disk and real recorded speech clips."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from helpers import private_ray

from synth.engine.tiny_checkpoint import build_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random CSM (32 codebooks) saved with save_pretrained, shared by the session."""
    return str(build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-csm", seed=0))


@pytest.fixture
def ray_env():
    """The environment of a job with its own Ray (see `helpers.private_ray`)."""
    with private_ray() as env:
        yield env


@pytest.fixture(scope="session")
def speech_clip(tmp_path_factory):
    """A real recorded clip: espeak-ng speech, 22.05 kHz mono 16-bit WAV."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required for the speech fixtures: run scripts/setup.sh")
    path = tmp_path_factory.mktemp("clips") / "hello.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Hello there, this is a recorded voice prompt."], check=True)
    return path


def write_mixed_manifest(directory, clip_path):
    """A scripts manifest with good rows and one of each kind of bad row.

    Returns (path, good_ids, bad_ids). Speakers are float64, as pandas writes
    integer columns with gaps: 1.0 is accepted, 1.5 is not.
    """
    import os
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(os.path.join(directory, "clips"), exist_ok=True)
    shutil.copy(clip_path, os.path.join(directory, "clips", "voice.wav"))
    with open(os.path.join(directory, "clips", "corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    turn = pa.struct([("speaker", pa.float64()), ("text", pa.string()), ("audio", pa.string())])
    schema = pa.schema([("id", pa.string()), ("turns", pa.list_(turn)), ("seed", pa.int64())])
    ctx = {"speaker": 0.0, "text": "Hello there, this is a recorded voice prompt.", "audio": "clips/voice.wav"}
    rows = [
        {"id": "dialogue-a", "seed": 11, "turns": [ctx, {"speaker": 1.0, "text": "Nice to meet you.", "audio": None},
                                                   {"speaker": 0.0, "text": "Likewise, truly.", "audio": None}]},
        {"id": "single-b", "seed": None, "turns": [{"speaker": 2.0, "text": "Call me Ishmael.", "audio": None}]},
        {"id": "bad-empty-text", "seed": None, "turns": [{"speaker": 0.0, "text": "  ", "audio": None}]},
        {"id": "bad-missing-audio", "seed": None, "turns": [
            {"speaker": 0.0, "text": "Hi.", "audio": "clips/nope.wav"},
            {"speaker": 1.0, "text": "Hello.", "audio": None}]},
        {"id": "bad-speaker", "seed": None, "turns": [{"speaker": 1.5, "text": "Hello.", "audio": None}]},
        {"id": "bad-corrupt-audio", "seed": None, "turns": [
            {"speaker": 0.0, "text": "Hi.", "audio": "clips/corrupt.wav"},
            {"speaker": 1.0, "text": "Hello.", "audio": None}]},
        {"id": "context-c", "seed": 5, "turns": [ctx, {"speaker": 3.0, "text": "Yes.", "audio": None}]},
    ]
    path = os.path.join(directory, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    good = {"dialogue-a:1", "dialogue-a:2", "single-b:0", "context-c:1"}
    bad = {"bad-empty-text": "text must be a non-empty string", "bad-missing-audio": "not found",
           "bad-speaker": "speaker must be a non-negative integer", "bad-corrupt-audio": "cannot decode"}
    return path, good, bad
