"""End to end on a real Ray cluster: `ray start --head` then `ray job submit`."""

import json
import os
import subprocess

import pytest
from helpers import (
    REPO,
    check_audio_rows,
    job_args,
    load_errors,
    load_output,
    ray_head,
    reference_codes,
    write_mixed_manifest,
)

from synth.pipeline.output import RUN_RECORD

pytestmark = pytest.mark.slow  # a Ray head node and `ray job submit`


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A private 2-CPU head node with its job agent (`helpers.ray_head`)."""
    with ray_head(job_agent=True, probe_dir=str(tmp_path_factory.mktemp("probe"))) as head:
        yield head


def test_ray_job_submit_writes_a_loadable_dataset_with_reference_codes(
    ray_cluster, tiny_checkpoint, speech_clip, tmp_path
):
    manifest, good, bad = write_mixed_manifest(str(tmp_path / "in"), speech_clip)
    out = str(tmp_path / "out")
    submit = subprocess.run(
        [ray_cluster["ray"], "job", "submit", "--working-dir", REPO, "--",
         "python", *job_args(manifest, out, tiny_checkpoint, "--set", "job.max_error_rate=0.6",
                             "--set", "generation.context_from=audio",  # as transformers chains turns
                             "--set", "output.scripts_per_shard=3")],
        cwd=REPO, env=ray_cluster["env"], capture_output=True, text=True, timeout=600,
    )
    log = submit.stdout + submit.stderr
    assert submit.returncode == 0, log
    assert "succeeded" in log and "synth: done" in log and "[3/3 shards]" in log

    ds = load_output(out)
    assert sorted(ds["id"]) == sorted(good)
    check_audio_rows(ds)
    assert set(ds["stop_reason"]) <= {"eos", "max_length"}
    assert all(m == tiny_checkpoint for m in ds["model"]) and len(set(ds["model_weights"])) == 1

    # the job's greedy codes are exactly transformers' generate on the same inputs
    expected = reference_codes(tiny_checkpoint, manifest, ds)
    for row in ds:
        assert row["codes"] == expected[row["id"]], row["id"]

    summary = json.load(open(os.path.join(out, RUN_RECORD)))
    assert summary["turns_generated"] == len(good) and summary["scripts_with_errors"] == len(bad)
    errors = load_errors(out)
    assert {e["id"] for e in errors} == set(bad)
    assert all(bad[e["id"]] in e["reason"] for e in errors)
    wav_files = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(out, "wav")) for f in fs]
    assert len(wav_files) == len(good)


def test_tiny_checkpoint_is_built_on_first_use_by_the_actor(ray_cluster, tmp_path):
    ckpt = tmp_path / "fresh-ckpt"
    out = str(tmp_path / "out")
    submit = subprocess.run(
        [ray_cluster["ray"], "job", "submit", "--working-dir", REPO, "--",
         "python", "jobs/synthesize.py", "--config", "configs/demo.yaml",
         "--input", "examples/dialogues.parquet", "--output", out,
         "--set", f"model.id={ckpt}", "--set", "generation.max_audio_seconds=0.8",
         "--set", "generation.min_audio_seconds=0.4"],
        cwd=REPO, env=ray_cluster["env"], capture_output=True, text=True, timeout=600,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    assert (ckpt / "model.safetensors").exists()
    ds = load_output(out)
    import pyarrow.parquet as pq

    scripts = pq.read_table(os.path.join(REPO, "examples/dialogues.parquet")).to_pylist()
    generated = {f"{s['id']}:{i}" for s in scripts for i, t in enumerate(s["turns"]) if t["audio"] is None}
    assert sorted(ds["id"]) == sorted(generated)  # every generated turn of the example manifest, voices included
    check_audio_rows(ds)
