"""Crashes with real processes and real files: the driver, an actor or a node killed with
SIGKILL mid-run, and a run on an S3-compatible store killed and resumed.

Each run here uses a private Ray temp dir (RAY_TMPDIR), so that it neither joins nor is
joined by another Ray cluster on the machine, and a new session, so that a kill takes down
exactly the job and the local Ray it started. Greedy decoding makes every row's codes
comparable with those of an uninterrupted reference run.
"""

import collections
import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from helpers import (
    REPO,
    JobProcess,
    assert_exactly_once,
    check_audio_rows,
    free_port,
    job_args,
    kill_session,
    load_output,
    pids_mentioning,
    private_ray,
    run_job,
    session_pids,
    write_scripts_manifest,
)

from synth.pipeline.output import (
    DATA_DIR,
    ERRORS_DIR,
    RUN,
    RUN_RECORD,
    audio_file,
    data_file,
    errors_file,
    parsed_part,
)
from synth.store import storage
from synth.store.layout import PROGRESS_DIR
from synth.store.recovery import recover
from synth.store.store import Store


def marked_part(name: str) -> tuple[int, int] | None:
    """(shard, part) of a part marker's file name; None for any other file."""
    return parsed_part(name.removesuffix(".json")) if name.endswith(".json") else None

NUM_SCRIPTS = 16
NUM_PARTS = NUM_SCRIPTS  # 4 shards of 4 scripts, one script per committed part
# One slot per actor: a shard's scripts then run one after another and its parts commit
# one by one, which leaves a crash room to land mid-shard (with more slots every script
# of a shard runs at once and its parts all commit within a fraction of a second).
SMALL_PARTS = ["--set", "output.scripts_per_shard=4", "--set", "output.commit_every_scripts=1",
               "--set", "fast_engine.num_slots=1"]
ALL_PARTS = {(shard, part) for shard in range(4) for part in range(4)}
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, speech_clip):
    return write_scripts_manifest(str(tmp_path_factory.mktemp("in")), speech_clip, NUM_SCRIPTS)


@pytest.fixture(scope="module")
def reference(manifest, tiny_checkpoint, tmp_path_factory):
    """Codes per output id from one uninterrupted run of the same job."""
    path, ids = manifest
    out = str(tmp_path_factory.mktemp("reference") / "out")
    with private_ray() as env:
        result = run_job(job_args(path, out, tiny_checkpoint, *SMALL_PARTS), {**env, "RAY_ADDRESS": None},
                         timeout=JOB_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    ds = load_output(out)
    assert sorted(ds["id"]) == sorted(ids)
    return {row["id"]: row["codes"] for row in ds}


# -- checks on an output directory ------------------------------------------------------


def part_markers(out: str) -> set[tuple[int, int]]:
    """(shard, part) of every part whose commit marker exists."""
    progress = os.path.join(out, PROGRESS_DIR)
    names = os.listdir(progress) if os.path.isdir(progress) else []
    return {marked for marked in map(marked_part, names) if marked}


def files_of(parts: set[tuple[int, int]]) -> set[str]:
    """The data/ and errors/ files (paths under OUT) that the parts may have."""
    return {name(*part) for part in parts for name in (data_file, errors_file)}


def part_files(out: str) -> dict[str, tuple[int, int]]:
    """data/ and errors/ part files -> (inode, mtime_ns): a rewrite changes both."""
    found = {}
    for sub in (DATA_DIR, ERRORS_DIR):
        directory = os.path.join(out, sub)
        for name in os.listdir(directory) if os.path.isdir(directory) else []:
            st = os.stat(os.path.join(directory, name))
            found[f"{sub}/{name}"] = (st.st_ino, st.st_mtime_ns)
    return found


def check_complete_output(out: str, expected: list[str], reference: dict) -> None:
    """Every id exactly once, loadable, no temp files, no part without its marker, the
    reference run's codes, and one audio file per row."""
    files = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
    assert not [f for f in files if storage.is_temp(f)], files
    markers = part_markers(out)
    assert markers == ALL_PARTS
    for name in part_files(out):
        assert name in files_of(markers), f"{name} has no commit marker"
    assert not [f for f in files if f.startswith("errors/")], "no row is bad: errors/ must be empty"
    ds = load_output(out)
    assert_exactly_once(ds["id"], expected)
    check_audio_rows(ds)
    for row in ds:
        assert row["codes"] == reference[row["id"]], f"{row['id']}: codes differ from the uninterrupted run"
    wav = {f for f in files if f.startswith("wav/")}
    assert wav == {row["audio"]["path"] for row in ds}
    summary = json.load(open(os.path.join(out, RUN_RECORD)))
    assert summary["turns_generated"] == len(expected) and not summary["shards_failed"]


def assert_untouched(before: dict[str, tuple[int, int]], out: str) -> None:
    """Parts committed before a crash are skipped afterwards, not written again."""
    after = part_files(out)
    rewritten = [name for name, stat in before.items() if after.get(name) != stat]
    assert not rewritten, f"committed parts were written again: {rewritten}"


def committed_before_crash(out: str) -> dict[str, tuple[int, int]]:
    markers = part_markers(out)
    assert 0 < len(markers) < NUM_PARTS, f"the crash must come mid-run; committed parts: {sorted(markers)}"
    return {k: v for k, v in part_files(out).items() if k in files_of(markers)}


# -- the tests --------------------------------------------------------------------------


@pytest.mark.slow
def test_driver_killed_after_first_commit_resumes_exactly_once(
    manifest, reference, tiny_checkpoint, ray_env, tmp_path
):
    path, ids = manifest
    out = str(tmp_path / "out")
    args = job_args(path, out, tiny_checkpoint, *SMALL_PARTS)
    job = JobProcess(args, ray_env, str(tmp_path / "first.log"))
    try:
        job.wait_until(lambda: part_markers(out), timeout=JOB_TIMEOUT_S, what="the first commit")
        ray_pids = [p for p in session_pids(job.proc.pid) if p != job.proc.pid]
    finally:
        job.kill()
    assert ray_pids, "the job's local Ray should run in the job's session"
    assert job.proc.returncode == -signal.SIGKILL
    # the local Ray went down with the driver: nothing of it is left running
    assert not session_pids(job.proc.pid) and not pids_mentioning(ray_env["RAY_TMPDIR"])
    committed = committed_before_crash(out)
    # what a kill in the middle of a part can leave: a temp file not yet renamed, and part
    # files whose marker never came (this run has no bad rows, so no errors/ file is real)
    uncommitted = sorted(ALL_PARTS - part_markers(out))[-1]
    os.makedirs(os.path.join(out, "errors"), exist_ok=True)
    for name in (data_file(*uncommitted), errors_file(*uncommitted),
                 storage.temp_name(data_file(*uncommitted), "0badf00d")):
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"PAR1 half-written")

    again = JobProcess(args, ray_env, str(tmp_path / "resume.log"))
    assert again.finish(JOB_TIMEOUT_S) == 0, again.output()
    assert "synth: done" in again.output()
    check_complete_output(out, ids, reference)
    assert_untouched(committed, out)


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _synth_actor_pids(session: int) -> list[int]:
    """Ray retitles an actor's process `ray::SynthActor` (`ray::SynthActor.run_shard` in a task)."""
    return [pid for pid in session_pids(session) if _cmdline(pid).startswith("ray::SynthActor")]


@pytest.mark.slow
def test_actor_killed_mid_shard_is_replaced_and_its_shard_retried(
    manifest, reference, tiny_checkpoint, ray_env, tmp_path
):
    path, ids = manifest
    out = str(tmp_path / "out")
    job = JobProcess(job_args(path, out, tiny_checkpoint, *SMALL_PARTS), ray_env, str(tmp_path / "job.log"))
    try:
        job.wait_until(lambda: part_markers(out) and _synth_actor_pids(job.proc.pid), timeout=JOB_TIMEOUT_S,
                       what="the first commit")
        (actor,) = _synth_actor_pids(job.proc.pid)
        os.kill(actor, signal.SIGKILL)
        committed = committed_before_crash(out)
        assert job.finish(JOB_TIMEOUT_S) == 0, job.output()
    finally:
        job.kill()
    log = job.output()
    assert re.search(r"shard \d+ attempt 1 failed .*; retrying", log), log
    ready = re.findall(r"actor ready: pid (\d+)", log)
    assert len(ready) == 2 and ready[0] == str(actor) != ready[1], ready  # a new process took over
    check_complete_output(out, ids, reference)
    assert_untouched(committed, out)


# A two-node cluster on this machine; its driver removes the worker node when told to.
CLUSTER_SCRIPT = r"""
import json, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
worker = cluster.add_node(num_cpus=1)
print(json.dumps({"address": cluster.address, "worker_raylet": worker.all_processes["raylet"][0].process.pid}),
      flush=True)
for line in sys.stdin:
    if line.strip() == "remove-worker":
        cluster.remove_node(worker, allow_graceful=False)
        print(json.dumps({"removed": True}), flush=True)
"""


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = collections.defaultdict(list)
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    children[int(f.read().rsplit(")", 1)[1].split()[1])].append(int(name))
            except OSError:
                pass
    found, todo = set(), [root]
    while todo:
        for child in children[todo.pop()]:
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_node_lost_mid_shard_the_run_completes_on_the_other_node(
    manifest, reference, tiny_checkpoint, ray_env, tmp_path
):
    path, ids = manifest
    out = str(tmp_path / "out")
    cluster_log = str(tmp_path / "cluster.log")
    with open(cluster_log, "w") as log:
        cluster = subprocess.Popen([sys.executable, "-u", "-c", CLUSTER_SCRIPT], cwd=REPO, env=ray_env,
                                   stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)

    def cluster_says(key):
        for line in open(cluster_log, errors="replace"):
            if line.startswith("{") and key in json.loads(line):
                return json.loads(line)
        return None

    job = None
    try:
        deadline = time.time() + 120
        while not (info := cluster_says("address")):
            assert cluster.poll() is None and time.time() < deadline, open(cluster_log).read()
            time.sleep(0.2)
        # one actor per node: each node has one CPU and each actor takes one
        job = JobProcess(
            job_args(path, out, tiny_checkpoint, *SMALL_PARTS, "--set", "actors.num_actors=2",
                     "--set", "actors.num_cpus=1"),
            {**ray_env, "RAY_ADDRESS": info["address"]}, str(tmp_path / "job.log"),
        )

        def worker_node_actor_mid_shard():
            """The worker node's actor has committed a part and is running a shard now."""
            on_worker = [p for p in _synth_actor_pids(cluster.pid) if p in _descendants(info["worker_raylet"])]
            return on_worker and re.search(rf"pid={on_worker[0]}\).*shard \d+ part \d+/", job.output()) and (
                _cmdline(on_worker[0]).startswith("ray::SynthActor.run_shard"))  # Ray's title while in a task

        job.wait_until(worker_node_actor_mid_shard, timeout=JOB_TIMEOUT_S, what="a commit on the worker node")
        cluster.stdin.write("remove-worker\n")
        cluster.stdin.flush()
        deadline = time.time() + 60
        while not cluster_says("removed"):
            assert time.time() < deadline, open(cluster_log).read()
            time.sleep(0.2)
        committed = committed_before_crash(out)
        assert job.finish(JOB_TIMEOUT_S) == 0, job.output()
    finally:
        if job is not None:
            job.kill()
        kill_session(cluster.pid)
        cluster.wait()
    log = job.output()
    assert re.search(r"shard \d+ attempt 1 failed .*; retrying", log), log
    check_complete_output(out, ids, reference)
    assert_untouched(committed, out)


# -- S3 ---------------------------------------------------------------------------------


@pytest.fixture
def s3(manifest):
    """A moto S3 server on 127.0.0.1 with the manifest and its clip under s3://synth-test/in/."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket="synth-test")
    base = os.path.dirname(manifest[0])
    client.upload_file(manifest[0], "synth-test", "in/manifest.parquet")
    client.upload_file(os.path.join(base, "clips", "voice.wav"), "synth-test", "in/clips/voice.wav")
    fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1")
    try:
        yield {"env": env, "fs": fs}
    finally:
        server.stop()


def _s3_files(fs, prefix: str) -> list[str]:
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
                  if i.type == pafs.FileType.File)


@pytest.mark.slow
def test_s3_input_and_output_killed_and_resumed(manifest, reference, tiny_checkpoint, ray_env, s3, tmp_path):
    _, ids = manifest
    env = {**ray_env, **s3["env"]}
    fs, out = s3["fs"], "synth-test/out"
    args = job_args("s3://synth-test/in/manifest.parquet", f"s3://{out}", tiny_checkpoint, *SMALL_PARTS)

    def markers():
        return {marked for p in _s3_files(fs, f"{out}/{PROGRESS_DIR}") if (marked := marked_part(p.rsplit("/", 1)[1]))}

    def committed_data():
        """data/ objects with a marker -> mtime (S3's Last-Modified): a rewrite changes it."""
        done = files_of(markers())
        return {i.path: i.mtime for i in fs.get_file_info(pafs.FileSelector(f"{out}/{DATA_DIR}", allow_not_found=True))
                if i.path.removeprefix(f"{out}/") in done}

    job = JobProcess(args, env, str(tmp_path / "first.log"))
    try:
        job.wait_until(markers, timeout=JOB_TIMEOUT_S, what="the first commit on S3")
    finally:
        job.kill()
    assert 0 < len(markers()) < NUM_PARTS
    before = committed_data()
    assert before
    # a part file whose marker never came (no row is bad, so no errors/ object is real)
    with fs.open_output_stream(f"{out}/{errors_file(*sorted(ALL_PARTS - markers())[-1])}") as f:
        f.write(b"PAR1 half-written")
    time.sleep(1.1)  # Last-Modified has 1 s resolution: a rewrite now would show

    again = JobProcess(args, env, str(tmp_path / "resume.log"))
    assert again.finish(JOB_TIMEOUT_S) == 0, again.output()
    assert "synth: done" in again.output()
    after = committed_data()
    assert all(after[path] == mtime for path, mtime in before.items()), "committed parts were written again"

    files = _s3_files(fs, out)
    assert not [f for f in files if storage.is_temp(f)], files
    committed = markers()
    assert committed == ALL_PARTS
    parts = [f for f in files if f.startswith((f"{out}/data/", f"{out}/errors/"))]
    for f in parts:
        assert f.removeprefix(f"{out}/") in files_of(committed), f"{f} has no commit marker"
    assert not [f for f in parts if f.startswith(f"{out}/errors/")], "no row is bad: errors/ must be empty"
    # read the data back from S3, then through datasets from a local copy
    local = tmp_path / "copy"
    (local / "data").mkdir(parents=True)
    rows = []
    for f in (f for f in parts if f.startswith(f"{out}/data/")):
        table = pq.read_table(f, filesystem=fs)
        assert b"huggingface" in table.schema.metadata
        rows += table.select(["id", "codes"]).to_pylist()
        pafs.copy_files(f, str(local / "data" / f.rsplit("/", 1)[1]), source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
    assert_exactly_once([r["id"] for r in rows], ids)
    for r in rows:
        assert r["codes"] == reference[r["id"]], f"{r['id']}: codes differ from the local uninterrupted run"
    ds = load_output(str(local))
    assert_exactly_once(ds["id"], ids)
    check_audio_rows(ds)
    wav = {f.removeprefix(f"{out}/") for f in files if f.startswith(f"{out}/wav/")}
    assert wav == {row["audio"]["path"] for row in ds}
    summary = json.loads(fs.open_input_stream(f"{out}/{RUN_RECORD}").read())
    assert summary["turns_generated"] == len(ids) and not summary["shards_failed"]


def test_cleanup_removes_temp_audio_files(tmp_path):
    leftover = tmp_path / storage.temp_name(audio_file(0, "s01", 0, "wav"), "0badf00d")  # killed before its rename
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"RIFF half-written")
    recover(Store.at_uri(str(tmp_path), RUN), batch="test")
    assert not leftover.exists()
