"""The job as a user runs it on one machine: `python jobs/synthesize.py` starting a local Ray."""

import json
import os

import pytest
from helpers import (
    REPO,
    check_audio_rows,
    job_args,
    load_errors,
    load_output,
    run_job,
    write_mixed_manifest,
)

from synth.pipeline.output import RUN_RECORD, part_name
from synth.store.faults import RAISE_VAR
from synth.store.layout import marker_file


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, speech_clip):
    return write_mixed_manifest(str(tmp_path_factory.mktemp("manifest")), speech_clip)


def test_dry_run_validates_and_plans_without_a_model(mixed, tmp_path):
    path, good, bad = mixed
    result = run_job(["jobs/synthesize.py", "--config", "configs/demo.yaml", "--input", path, "--dry-run",
                      "--set", "model.id=/nonexistent/never-loaded"])
    assert result.returncode == 0, result.stderr
    # a missing clip is found here; a corrupt one only when it is decoded at run time
    assert "plan: 4 shards, 7 scripts (3 with errors)" in result.stdout
    assert f"turns to generate: {len(good) + 1}" in result.stdout
    assert "row 3 (id 'bad-missing-audio'), turn 0: audio file not found" in result.stdout
    assert "row 2 (id 'bad-empty-text'), turn 0: text must be a non-empty string" in result.stdout
    assert "row 4 (id 'bad-speaker'), turn 0: speaker must be a non-negative integer, got 1.5" in result.stdout


def test_bad_config_fails_before_anything_runs(mixed, tmp_path):
    result = run_job(job_args(mixed[0], str(tmp_path / "out"), "/nonexistent", "--set", "fast_engine.num_slots=-2"))
    assert result.returncode == 2
    assert "fast_engine.num_slots" in result.stderr and "-2" in result.stderr
    assert not (tmp_path / "out").exists()


def test_an_empty_manifest_is_refused_before_anything_runs(tmp_path):
    from synth.pipeline.manifest import write_manifest

    empty = write_manifest(str(tmp_path / "empty.parquet"), [])  # the right columns, zero rows
    for extra in ([], ["--dry-run"]):
        result = run_job(job_args(empty, str(tmp_path / "out"), "/nonexistent/never-loaded", *extra),
                         {"RAY_ADDRESS": None})
        assert result.returncode == 2, result.stdout + result.stderr
        assert "the manifest has no rows" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_plain_python_run_resume_and_refusal(mixed, tiny_checkpoint, tmp_path):
    path, good, bad = mixed
    out = str(tmp_path / "out")
    env = {"RAY_ADDRESS": None}  # no cluster: the job starts a local Ray
    first = run_job(job_args(path, out, tiny_checkpoint, "--set", "job.max_error_rate=0.6"), env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "synth: done" in first.stdout
    summary = json.load(open(os.path.join(out, RUN_RECORD)))
    assert summary["turns_generated"] == len(good)
    assert summary["scripts_with_errors"] == len(bad)
    assert summary["scripts_ok"] + summary["scripts_with_errors"] + summary["scripts_in_failed_shards"] == 7
    assert summary["audio_seconds"] > 0 and summary["wall_seconds"] > 0
    assert summary["turns_generated_this_run"] == len(good) and summary["audio_seconds_this_run"] == pytest.approx(
        summary["audio_seconds"])
    assert summary["x_real_time"] == pytest.approx(summary["audio_seconds"] / summary["wall_seconds"])
    assert f"(this run: {len(good)} turns, " in first.stdout
    ds = load_output(out)
    assert sorted(ds["id"]) == sorted(good)
    check_audio_rows(ds)
    files = sorted(os.listdir(os.path.join(out, "data")))

    again = run_job(job_args(path, out, tiny_checkpoint, "--set", "job.max_error_rate=0.6"), env)
    assert again.returncode == 0, again.stderr
    assert "4 already done, 0 to run" in again.stdout
    assert sorted(os.listdir(os.path.join(out, "data"))) == files
    # a relaunch with nothing to do says so, and reports no speed made of zero work; the totals stay
    relaunch = json.load(open(os.path.join(out, RUN_RECORD)))
    done_line = again.stdout.split("synth: done", 1)[1].splitlines()[0]
    assert f"(nothing to do); in all {len(good)} turns" in done_line and "real time" not in done_line
    assert relaunch["x_real_time"] is None and relaunch["turns_generated_this_run"] == 0
    assert relaunch["audio_seconds_this_run"] == 0
    assert relaunch["turns_generated"] == summary["turns_generated"]
    assert relaunch["audio_seconds"] == pytest.approx(summary["audio_seconds"])

    # shard 0 as a crash leaves it: part 0 (dialogue-a, 2 turns) committed, part 1 (single-b) not
    os.remove(os.path.join(out, marker_file(part_name(0, 1))))
    partial = run_job(job_args(path, out, tiny_checkpoint, "--set", "job.max_error_rate=0.6"), env)
    assert partial.returncode == 0, partial.stdout + partial.stderr
    assert "3 already done, 1 to run" in partial.stdout and "(this run: 1 turns, " in partial.stdout
    resumed = json.load(open(os.path.join(out, RUN_RECORD)))
    assert resumed["turns_generated_this_run"] == 1 and resumed["turns_generated"] == len(good)
    single_b = [r["duration_s"] for r in load_output(out) if r["id"] == "single-b:0"]
    assert resumed["audio_seconds_this_run"] == pytest.approx(sum(single_b))
    assert resumed["x_real_time"] == pytest.approx(sum(single_b) / resumed["wall_seconds"])
    assert sorted(os.listdir(os.path.join(out, "data"))) == files

    strict = run_job(job_args(path, out, tiny_checkpoint), env)  # default max_error_rate 0: 4/7 bad rows
    assert strict.returncode == 1

    changed = run_job(job_args(path, out, tiny_checkpoint, "--set", "sampling.top_k=7"), env)
    assert changed.returncode == 2
    assert "different settings" in changed.stderr and "sampling" in changed.stderr

    # parts are numbered by the plan: another shard size is refused even with --allow-changes
    replanned = run_job(job_args(path, out, tiny_checkpoint, "--set", "output.scripts_per_shard=3",
                                 "--allow-changes"), env)
    assert replanned.returncode == 2 and "made from other input" in replanned.stderr
    assert "output.scripts_per_shard: 2 -> 3" in replanned.stderr
    assert sorted(os.listdir(os.path.join(out, "data"))) == files


def test_demo_example_manifest_is_valid():
    result = run_job(["jobs/synthesize.py", "--config", "configs/demo.yaml",
                      "--input", os.path.join(REPO, "examples/dialogues.parquet"), "--dry-run"])
    assert result.returncode == 0, result.stderr
    assert "(0 with errors)" in result.stdout


@pytest.mark.slow
def test_a_row_that_fails_its_shard_costs_only_itself_and_a_shard_that_keeps_failing_is_recorded(
        mixed, tiny_checkpoint, tmp_path):
    """dialogue-a's generation raises every time (SYNTH_RAISE_AT): its shard's first attempt fails, the
    second runs each script alone, so dialogue-a becomes an error row and the rest of its shard is
    committed. Shard 1 fails every attempt before any script: recorded as failed, the rest completes."""
    path, good, bad = mixed
    out = tmp_path / "out"
    result = run_job(job_args(path, str(out), tiny_checkpoint, "--set", "job.max_error_rate=1.0",
                              "--set", "job.max_shard_attempts=2", "--set", "output.scripts_per_shard=2"),
                     {"RAY_ADDRESS": None, RAISE_VAR: "generate:dialogue-a,shard:1"})
    assert result.returncode == 1, result.stdout + result.stderr  # a failed shard: non-zero whatever the rate
    assert "shard 0 attempt 1 failed" in result.stdout and "shard 1 FAILED after 2 attempts" in result.stdout
    assert "row 0 ('dialogue-a') failed on its own" in result.stdout
    summary = json.load(open(out / RUN_RECORD))
    assert list(summary["shards_failed"]) == ["1"] and "InjectedFault" in summary["shards_failed"]["1"]
    assert summary["scripts_in_failed_shards"] == 2  # rows 2-3 (both bad rows), never read
    assert summary["scripts_ok"] + summary["scripts_with_errors"] + summary["scripts_in_failed_shards"] == 7
    (error,) = [e for e in load_errors(str(out)) if e["id"] == "dialogue-a"]
    assert error["stage"] == "generate" and "generation failed: InjectedFault" in error["reason"]
    ds = load_output(str(out))
    assert sorted(ds["id"]) == sorted(good - {"dialogue-a:1", "dialogue-a:2"})
    assert summary["turns_generated"] == len(ds)
