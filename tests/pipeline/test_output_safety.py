"""Ways a run used to lose data while exiting 0, tried as a user would, with real processes.

Each ends with the user's files untouched, every row id exactly once, the dataset loading,
and `synth verify` finding nothing: a foreign directory given as --output, a done shard
whose part marker is lost, a second job on the same output, a truncated committed part,
and a full disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import (
    REPO,
    JobProcess,
    assert_exactly_once,
    check_audio_rows,
    job_args,
    load_output,
    ray_head,
    run_job,
    write_scripts_manifest,
)

from synth.pipeline.output import data_file, part_name
from synth.pipeline.verify import verify_dataset_at
from synth.store.layout import LEASE_FILE, OWNER_RECORD, QUARANTINE_DIR, marker_file

pytestmark = pytest.mark.slow  # every test runs jobs on a local Ray

NUM_SCRIPTS = 8  # 2 shards of 4 one-script parts; one slot, so parts commit one by one
PARTS = ["--set", "output.scripts_per_shard=4", "--set", "output.commit_every_scripts=1",
         "--set", "fast_engine.num_slots=1"]
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, speech_clip):
    return write_scripts_manifest(str(tmp_path_factory.mktemp("in")), speech_clip, NUM_SCRIPTS)


@pytest.fixture(scope="module")
def cluster():
    """One private 2-CPU head node the module's jobs join (a job's own local Ray costs its start-up each time)."""
    with ray_head() as head:
        yield head


def _run(cluster, manifest, out, checkpoint, *extra: str) -> subprocess.CompletedProcess:
    return run_job(job_args(manifest[0], str(out), checkpoint, *PARTS, *extra), cluster["env"], timeout=TIMEOUT_S)


def _synth_verify(out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synth", "verify", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def check_output(out, manifest) -> None:
    """Every id exactly once, the dataset loading with whole audio, verify finding nothing."""
    ds = load_output(str(out))
    assert_exactly_once(ds["id"], manifest[1])
    check_audio_rows(ds)
    report = verify_dataset_at(str(out))  # `synth verify`'s check, in this process
    assert report.ok, report.render()


@pytest.fixture(scope="module")
def two_jobs(cluster, manifest, tiny_checkpoint, tmp_path_factory):
    """Job A writes OUT; once it has committed a part, job B is started on the same OUT."""
    work = tmp_path_factory.mktemp("two-jobs")
    out = work / "out"
    # both join the module's cluster; B is refused before it starts anything there
    a = JobProcess(job_args(manifest[0], str(out), tiny_checkpoint, *PARTS), cluster["env"], str(work / "a.log"))
    a.wait_until(lambda: (out / marker_file(part_name(0, 0))).exists(), TIMEOUT_S, "job A's first commit")
    lease_during = json.loads((out / LEASE_FILE).read_text())
    # a stale window of 2 s of its own is no licence to take a live run's lease on this host
    b = run_job(job_args(manifest[0], str(out), tiny_checkpoint, *PARTS, "--set", "job.lease_stale_seconds=2"),
                cluster["env"], timeout=TIMEOUT_S)
    a_rc = a.finish(TIMEOUT_S)
    return out, a, a_rc, lease_during, b


def test_a_second_job_on_a_busy_output_is_refused_and_the_first_finishes_whole(two_jobs, manifest):
    out, a, a_rc, lease_during, b = two_jobs
    assert lease_during["pid"] == a.proc.pid
    assert b.returncode == 2, b.stdout + b.stderr
    # job A's run, or (if its run ended meanwhile) the lease A takes again to write the card and report
    assert "is being written by another synth command (run " in b.stderr
    assert f"pid {a.proc.pid}" in b.stderr and "wait for it to finish" in b.stderr
    assert a_rc == 0, a.output()[-3000:]
    assert not (out / LEASE_FILE).exists()  # given back at the end
    check_output(out, manifest)


def test_a_shard_that_lost_a_part_marker_is_redone_and_a_damaged_marker_quarantined(cluster, two_jobs, manifest,
                                                                                    tiny_checkpoint, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(two_jobs[0], copy)
    os.remove(copy / marker_file(part_name(1, 2)))  # its files can no longer be trusted: made again
    garbled = copy / marker_file(part_name(0, 3))
    garbled.write_bytes(garbled.read_bytes()[:20])  # cut short
    again = _run(cluster, manifest, copy, tiny_checkpoint)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"VERIFY FAILED: {part_name(0, 3)}: its marker is damaged" in again.stdout
    assert "uncommitted file(s) left by an interrupted run" in again.stdout  # the two parts' files: no marker lists them
    assert "0 already done, 2 to run" in again.stdout
    (batch,) = os.listdir(copy / QUARANTINE_DIR)  # the damaged marker is moved aside, not deleted
    kept = [os.path.relpath(os.path.join(d, f), copy / QUARANTINE_DIR / batch)
            for d, _, fs in os.walk(copy / QUARANTINE_DIR) for f in fs]
    assert kept == [marker_file(part_name(0, 3))]
    check_output(copy, manifest)


def test_a_damaged_committed_part_is_found_quarantined_and_generated_again(cluster, two_jobs, manifest, tiny_checkpoint,
                                                                          tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(two_jobs[0], copy)
    damaged = copy / data_file(0, 1)
    size = damaged.stat().st_size
    with open(damaged, "r+b") as f:
        f.truncate(size // 2)
    found = _synth_verify(copy)
    assert found.returncode == 1 and f"{data_file(0, 1)} has {size // 2} bytes, its marker says {size}" in found.stdout
    again = _run(cluster, manifest, copy, tiny_checkpoint)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"VERIFY FAILED: {part_name(0, 1)}: {data_file(0, 1)} has" in again.stdout
    assert damaged.stat().st_size == size  # generated again, whole
    check_output(copy, manifest)


def test_a_foreign_directory_is_refused_untouched_and_an_adopted_one_keeps_its_files(cluster, manifest, tiny_checkpoint,
                                                                                    tmp_path):
    foreign = tmp_path / "foreign"
    (foreign / "data").mkdir(parents=True)
    (foreign / "data" / "train.parquet").write_text("x")
    refused = _run(cluster, manifest, foreign, tiny_checkpoint)
    assert refused.returncode == 2 and "is not empty and is not a synth run store (it holds data)" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(os.listdir(foreign)) == ["data"] and (foreign / "data" / "train.parquet").read_text() == "x"

    adopted = tmp_path / "adopted"
    adopted.mkdir()
    (adopted / "notes.txt").write_text("the user's notes")
    result = _run(cluster, manifest, adopted, tiny_checkpoint, "--adopt-output")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (adopted / "notes.txt").read_text() == "the user's notes"
    assert json.loads((adopted / OWNER_RECORD).read_text())["found"] == ["notes.txt"]
    check_output(adopted, manifest)


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs: room for the run's records, not for its audio."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN) here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_run_and_a_relaunch_with_space_loses_nothing(cluster, manifest, tiny_checkpoint, small_disk):
    out = small_disk / "out"
    filler = small_disk / "filler"  # the disk 100 % full before the run starts
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    refused = _run(cluster, manifest, out, tiny_checkpoint)
    assert refused.returncode == 2 and "no space left on the device" in refused.stderr, refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr and not [p for p in out.rglob("*") if p.is_file()]  # no 0-byte lease
    filler.unlink()
    full = _run(cluster, manifest, out, tiny_checkpoint)
    assert full.returncode == 2, full.stdout + full.stderr
    assert "no space left on the device" in full.stderr and "run the same command again to resume" in full.stderr
    assert "retrying" not in full.stdout and "FAILED after" not in full.stdout  # not retried as a crash
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = _run(cluster, manifest, out, tiny_checkpoint)
    assert again.returncode == 0, again.stdout + again.stderr
    check_output(out, manifest)
    # the finished output remounted read-only: a relaunch says so and changes nothing
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        read_only = _run(cluster, manifest, out, tiny_checkpoint)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert read_only.returncode == 2 and "read-only" in read_only.stderr, read_only.stdout + read_only.stderr
    assert "Traceback" not in read_only.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
