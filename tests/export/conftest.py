"""The export tests' shared outputs: ONE real synthesis per test session, and its with-QC copy.

The run goes through the `synth run` command in this process (so it also writes the card
and the report, as every run does) on a Ray started here once for the package; the
exports run on the same Ray. `qc_output` is the same output with issue #12's QC columns
(`qc_columns.with_qc_columns`, the one place to switch to a real QC run).
"""

from __future__ import annotations

import os
import tempfile

import pytest
from helpers import REPO
from qc_columns import with_qc_columns

VOICES = {"narrator": "Good evening. This is the narrator speaking, slowly and clearly.",
          "guest": "Hi! Thanks for having me on the show."}


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


@pytest.fixture(scope="package")
def synth_output(tmp_path_factory, tiny_checkpoint, ray_here):
    """(OUT, expected ids): one real run of the tiny checkpoint through `synth run`."""
    from synth.cli import main

    base = tmp_path_factory.mktemp("run")
    manifest, ids = write_manifest_with_voices(str(base))
    voices = "".join(f"  {name}:\n    audio: {REPO}/examples/voices/{name}.wav\n    text: {text!r}\n    speaker: {i}\n"
                     for i, (name, text) in enumerate(VOICES.items()))
    config = base / "config.yaml"
    config.write_text(f"model:\n  id: {tiny_checkpoint}\n  engine: fast\n  dtype: float32\n  device: cpu\n"
                      "sampling:\n  do_sample: false\ngeneration:\n  batch_size: 4\n  max_audio_seconds: 1.2\n"
                      "actors:\n  num_actors: 1\n  num_cpus: 1\noutput:\n  scripts_per_shard: 4\n"
                      "  commit_every_scripts: 2\njob:\n  max_error_rate: 0.5\n" f"voices:\n{voices}")
    out = str(base / "out")
    assert main(["run", "--config", str(config), "--input", manifest, "--output", out]) == 0
    return out, ids


@pytest.fixture(scope="package")
def qc_output(synth_output, tmp_path_factory):
    """(OUT, expected ids): the run's output with QC columns in its data parts."""
    out, ids = synth_output
    return with_qc_columns(out, str(tmp_path_factory.mktemp("qc") / "out")), ids
