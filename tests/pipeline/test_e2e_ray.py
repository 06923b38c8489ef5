"""End to end on a real Ray cluster: `ray start --head` then `ray job submit`."""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import (
    REPO,
    check_audio_rows,
    free_port,
    job_args,
    kill_session,
    load_errors,
    load_output,
    private_ray,
    reference_codes,
    write_mixed_manifest,
)

from synth.pipeline.output import RUN_RECORD


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A 2-CPU head node, as on the CI machine, in a private temp dir; afterwards its processes,
    and only its, are killed (`ray stop` would take down every Ray on the machine, the test
    session's own included)."""
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    dashboard = free_port()
    with private_ray() as env:
        env = {**env, "RAY_AUTH_MODE": "token"}
        subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        start = subprocess.Popen(
            [ray_bin, "start", "--head", "--num-cpus", "2", "--port", str(free_port()),
             "--dashboard-port", str(dashboard), "--include-dashboard", "true", "--disable-usage-stats",
             # the job agent's own port: its default (52365) is taken by any other Ray on the machine
             # (e.g. a test's in-process one), and an agent that cannot bind takes no jobs
             "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        try:
            said, _ = start.communicate(timeout=120)
            assert start.returncode == 0, said
            env = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}"}
            _wait_for_job_agent(ray_bin, env, tmp_path_factory.mktemp("probe"))
            yield {"ray": ray_bin, "env": env}
        finally:
            kill_session(start.pid)  # the head's processes stay in the session `ray start` began


def _wait_for_job_agent(ray_bin: str, env: dict, probe_dir, timeout_s: float = 180) -> None:
    """`ray start` returns before the node's job agent has registered; until it has, a submit
    fails with "No available agent" (seen on a loaded 2-core box). Submit a no-op job until one
    is taken: nothing of the tests' own is submitted before the cluster can run it."""
    deadline = time.time() + timeout_s
    while True:
        probe = subprocess.run([ray_bin, "job", "submit", "--working-dir", str(probe_dir), "--", "python", "-c", "pass"],
                               env=env, capture_output=True, text=True, timeout=timeout_s)
        if probe.returncode == 0:
            return
        assert "No available agent" in probe.stderr + probe.stdout and time.time() < deadline, (
            probe.stdout + probe.stderr)[-3000:]
        time.sleep(2)


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
