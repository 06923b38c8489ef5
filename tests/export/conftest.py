"""The export tests' shared outputs: two real syntheses of one manifest per test session, QC off and on.

Each run goes through the `synth run` command in this process (so it also writes the card
and the report, as every run does) on a Ray started here once for the package; the
exports run on the same Ray. `qc_output` is the same run with quality control on (`QC`):
its rows carry QC columns measured on their own audio and codes, and a verdict that
passes some rows and fails others.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from helpers import REPO

VOICES = {"narrator": "Good evening. This is the narrator speaking, slowly and clearly.",
          "guest": "Hi! Thanks for having me on the show."}

# Quality control at its cheapest (no model but Silero's VAD, one take per turn), tuned so that a
# real, explainable mix passes: the VAD hears no speech in the tiny model's noise, so a clip's
# trailing silence is its whole duration; turns cut at the 1.2 s cap (max_audio_seconds) fail
# `max_trailing_silence_s` 1.1, turns whose EOS came sooner pass. The timing checks that every
# noise clip would fail (leading silence, speech ratio) are off; the loop check stays on.
QC = ("qc:\n  enabled: true\n  metrics: [timing, repetition]\n  max_takes: 1\n  thresholds:\n"
      "    max_trailing_silence_s: 1.1\n    max_leading_silence_s: null\n"
      "    min_speech_ratio: null\n    max_loop_score: 0.5\n")


def write_manifest_with_voices(directory: str) -> tuple[str, list[str]]:
    """Scripts of one and two generated turns over four speakers, some in the voice library's
    voices, and one bad row (an error row). Returns (path, the ids the run must produce)."""
    from synth.pipeline.manifest import write_manifest

    rows, ids = [], []
    for i in range(10):
        if i % 3 == 0:
            turns = [{"speaker": None, "text": f"Voice line {i}.", "audio": None, "voice": ["narrator", "guest"][i % 2]}]
        elif i % 3 == 1:
            turns = [{"speaker": i % 4, "text": f"Line {i}, said once.", "audio": None}]
        else:
            turns = [{"speaker": 0, "text": f"First {i}.", "audio": None},
                     {"speaker": 2, "text": f"Second line {i}, longer.", "audio": None}]
        rows.append({"id": f"s{i:02d}", "turns": turns})
        ids += [f"s{i:02d}:{t}" for t in range(len(turns))]
    rows.append({"id": "bad-empty", "turns": [{"speaker": 0, "text": "  ", "audio": None}]})
    return write_manifest(os.path.join(directory, "manifest.parquet"), rows), ids


@pytest.fixture(scope="package")
def ray_here():
    """Ray in this process, private to it (its own temp dir), for the package's tests."""
    import ray

    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    os.environ.pop("RAY_ADDRESS", None)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=ray_tmp, logging_level="warning",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def run_synth(base, checkpoint: str, extra: str = "") -> tuple[str, list[str]]:
    """(OUT, expected ids): a run of `checkpoint` through `synth run` over the manifest above in
    `base`, with `extra` appended to its YAML config."""
    from synth.cli import main

    manifest, ids = write_manifest_with_voices(str(base))
    voices = "".join(f"  {name}:\n    audio: {REPO}/examples/voices/{name}.wav\n    text: {text!r}\n    speaker: {i}\n"
                     for i, (name, text) in enumerate(VOICES.items()))
    config = base / "config.yaml"
    config.write_text(f"model:\n  id: {checkpoint}\n  engine: fast\n  dtype: float32\n  device: cpu\n"
                      "sampling:\n  do_sample: false\ngeneration:\n  max_audio_seconds: 1.2\nfast_engine:\n  num_slots: 4\n"
                      "actors:\n  num_actors: 1\n  num_cpus: 1\noutput:\n  scripts_per_shard: 4\n"
                      "  commit_every_scripts: 2\njob:\n  max_error_rate: 0.5\n" f"voices:\n{voices}" + extra)
    out = str(base / "out")
    assert main(["run", "--config", str(config), "--input", manifest, "--output", out]) == 0
    return out, ids


@pytest.fixture(scope="package")
def synth_output(tmp_path_factory, tiny_checkpoint, ray_here):
    """(OUT, expected ids): one real run of the tiny checkpoint through `synth run`, QC off."""
    return run_synth(tmp_path_factory.mktemp("run"), tiny_checkpoint)


@pytest.fixture(scope="package")
def qc_output(tmp_path_factory, tiny_checkpoint, ray_here):
    """(OUT, expected ids): the same run with quality control on (`QC`)."""
    return run_synth(tmp_path_factory.mktemp("qc"), tiny_checkpoint, QC)
