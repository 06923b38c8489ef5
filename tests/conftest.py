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


@pytest.fixture(scope="session")
def tiny_whisper(tmp_path_factory):
    """A tiny random Whisper saved with save_pretrained (QC's ASR offline), shared by the session."""
    from synth.qc.tiny_whisper import build_tiny_whisper

    return str(build_tiny_whisper(tmp_path_factory.mktemp("whisper") / "tiny-whisper"))
