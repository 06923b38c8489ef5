"""Helpers shared by the end-to-end tests: running the job, reading its output."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from contextlib import contextmanager

import numpy as np
import soundfile as sf
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def job_args(manifest: str, out: str, checkpoint: str, *extra: str) -> list[str]:
    """Arguments of jobs/synthesize.py for a greedy run of the tiny checkpoint."""
    return [
        "jobs/synthesize.py", "--config", "configs/demo.yaml", "--input", manifest, "--output", out,
        "--set", f"model.id={checkpoint}", "--set", "sampling.do_sample=false",
        "--set", "generation.max_audio_seconds=1.2", *extra,
    ]


def run_job(args: list[str], env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a job script with `env` applied to this environment (a None value removes a variable)."""
    full_env = {**os.environ, **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def dataset_store(path):
    """A run's output store at `path`, with no lease (tests that drive a worker or writer directly)."""
    from synth.pipeline.output import RUN
    from synth.store.store import Store

    return Store.at_uri(str(path), RUN)


def recommit(out, relative: str) -> None:
    """Record a rewritten file of a dataset in the marker that lists it (size, sha256), as synth would
    have had it made that file: for tests that stand in a column a real QC run would fill."""
    import hashlib

    progress = os.path.join(out, "_progress")
    data = open(os.path.join(out, relative), "rb").read()
    for name in os.listdir(progress):
        marker = json.load(open(os.path.join(progress, name)))
        for record in marker.get("files", []):
            if record["path"] == relative:
                record.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
                with open(os.path.join(progress, name), "w") as f:
                    json.dump(marker, f)
                return
    raise AssertionError(f"no marker lists {relative}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_errors(out) -> list[dict]:
    """Every row of OUT/errors/*.parquet, in file order."""
    import pyarrow.parquet as pq

    directory = os.path.join(out, "errors")
    return [r for f in sorted(os.listdir(directory)) for r in pq.read_table(os.path.join(directory, f)).to_pylist()]


def load_output(out: str):
    """The output through `datasets.load_dataset`, audio left as bytes (no torchcodec)."""
    from datasets import Audio, load_dataset

    ds = load_dataset("parquet", data_dir=os.path.join(out, "data"), split="train")
    assert isinstance(ds.features["audio"], Audio), ds.features
    return ds.cast_column("audio", Audio(decode=False))


def assert_exactly_once(ids: list[str], expected: list[str]) -> None:
    """Every expected id once, no other id, none twice."""
    import collections

    repeated = {i: n for i, n in collections.Counter(ids).items() if n > 1}
    assert not repeated, f"ids written more than once: {repeated}"
    assert sorted(ids) == sorted(expected), f"missing {set(expected) - set(ids)}, extra {set(ids) - set(expected)}"


def check_audio_rows(ds) -> None:
    """Every clip decodes to 24 kHz mono of num_frames x 1920 samples, codes have num_frames rows."""
    for row in ds:
        samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == 24000 and samples.ndim == 1, row["id"]
        assert len(samples) == row["num_frames"] * 1920, row["id"]
        assert np.array(row["codes"]).shape == (row["num_frames"], 32), row["id"]


def transformers_codes(model, processor, request, *, dtype: torch.dtype | None = None,
                       stop_at_eos: bool = False) -> np.ndarray:
    """Codes [frames, K] from calling transformers' greedy `generate` (both decoders) directly on
    `request` (a `GenerationRequest`: its context clips, text, speaker, `max_frames`), through
    CSM's processor and chat template. dtype: run the model (moved in place) and the audio
    inputs in this dtype. stop_at_eos: only the frames before the EOS frame (by the one EOS
    rule, `synth.engine.stop`); otherwise the EOS frame is included if one came. Both decoders
    keep off the ids Mimi cannot decode, by the engines' rule (`suppress_undecodable`)."""
    from synth.engine.prompt import conversation
    from synth.engine.reference_engine import suppress_undecodable
    from synth.engine.stop import frames_before_eos

    if dtype is not None:
        model = model.to(dtype)
    inputs = processor.apply_chat_template([conversation(request)], tokenize=True, return_dict=True)
    if dtype is not None:
        inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()}
    with torch.inference_mode():
        codes = model.generate(**inputs, max_new_tokens=request.max_frames, do_sample=False,
                               depth_decoder_do_sample=False, **suppress_undecodable(model.config))[0]
    if stop_at_eos:
        codes, _ = frames_before_eos(codes, model.config.codebook_eos_token_id)
    return codes.numpy()


def reference_codes(checkpoint: str, manifest_path: str, ds) -> dict[str, list]:
    """Codes from calling transformers' generate directly on each output row's inputs: the
    recorded context clips and the audio of the generated turns that conditioned it."""
    import pyarrow.parquet as pq
    from transformers import AutoProcessor, CsmForConditionalGeneration

    from synth.engine.interface import GenerationRequest, Segment
    from synth.pipeline.audio_io import decode_clip

    model = CsmForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    processor.tokenizer.pad_token = processor.tokenizer.eos_token
    scripts = {r["id"]: r for r in pq.read_table(manifest_path).to_pylist()}
    base = os.path.dirname(manifest_path)
    rows = {row["id"]: row for row in ds}
    expected = {}
    for row in ds:
        turns = scripts[row["script_id"]]["turns"]
        context = []
        for j in row["context_turns"]:
            if turns[j]["audio"]:  # a recorded turn
                clip = decode_clip(open(os.path.join(base, turns[j]["audio"]), "rb").read(), 24000)
            else:  # a generated turn: its own codes, Mimi-decoded
                codes = torch.tensor(rows[f"{row['script_id']}:{j}"]["codes"]).T[None]  # [1, K, T]
                with torch.inference_mode():
                    clip = model.codec_model.decode(codes).audio_values[0, 0].numpy()
            context.append(Segment(int(turns[j]["speaker"]), turns[j]["text"], clip))
        me = turns[row["turn"]]
        max_frames = json.loads(row["generation"])["max_frames"]
        request = GenerationRequest(row["id"], me["text"], int(me["speaker"]), max_frames, tuple(context))
        expected[row["id"]] = transformers_codes(model, processor, request, stop_at_eos=True).tolist()
    return expected


def write_mixed_manifest(directory, clip_path):
    """A scripts manifest with good rows and one of each kind of bad row.

    Returns (path, good_ids, bad_ids). Speakers are float64, as pandas writes
    integer columns with gaps: 1.0 is accepted, 1.5 is not.
    """
    import shutil

    import pyarrow as pa

    from synth.pipeline.manifest import write_manifest

    os.makedirs(os.path.join(directory, "clips"), exist_ok=True)
    shutil.copy(clip_path, os.path.join(directory, "clips", "voice.wav"))
    with open(os.path.join(directory, "clips", "corrupt.wav"), "wb") as f:
        f.write(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
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
    path = write_manifest(os.path.join(directory, "manifest.parquet"), rows, speaker_type=pa.float64())
    good = {"dialogue-a:1", "dialogue-a:2", "single-b:0", "context-c:1"}
    bad = {"bad-empty-text": "text must be a non-empty string", "bad-missing-audio": "not found",
           "bad-speaker": "speaker must be a non-negative integer", "bad-corrupt-audio": "cannot decode"}
    return path, good, bad


def write_scripts_manifest(directory: str, clip_path, num_scripts: int = 16) -> tuple[str, list[str]]:
    """A manifest of short scripts: one-turn, two generated turns, or a recorded context
    turn then a generated one. Returns (path, the output ids it must produce)."""
    import shutil

    from synth.pipeline.manifest import write_manifest

    os.makedirs(os.path.join(directory, "clips"), exist_ok=True)
    shutil.copy(clip_path, os.path.join(directory, "clips", "voice.wav"))
    context = {"speaker": 0, "text": "Hello there, this is a recorded voice prompt.", "audio": "clips/voice.wav"}
    rows, ids = [], []
    for i in range(num_scripts):
        kind = i % 3
        if kind == 0:
            turns = [context, {"speaker": 1, "text": f"Reply number {i}.", "audio": None}]
            ids.append(f"s{i:02d}:1")
        elif kind == 1:
            turns = [{"speaker": i % 4, "text": f"Line {i}, said once.", "audio": None}]
            ids.append(f"s{i:02d}:0")
        else:
            turns = [{"speaker": 0, "text": f"First {i}.", "audio": None},
                     {"speaker": 1, "text": f"Second {i}.", "audio": None}]
            ids += [f"s{i:02d}:0", f"s{i:02d}:1"]
        rows.append({"id": f"s{i:02d}", "turns": turns})
    return write_manifest(os.path.join(directory, "manifest.parquet"), rows), ids


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session `sid`, read from /proc."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            pids.append(int(name))
    return pids


def kill_session(sid: int, timeout: float = 60) -> None:
    """SIGKILL every process of session `sid` (a job started with start_new_session=True and
    the local Ray it started) until none is left."""
    import signal
    import time

    deadline = time.time() + timeout
    while pids := session_pids(sid):
        if time.time() > deadline:
            raise AssertionError(f"processes of session {sid} survive SIGKILL: {pids}")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


class JobProcess:
    """A job script running in its own session, output to a log file; `kill` takes down
    the session (the driver and a local Ray it started) with SIGKILL."""

    def __init__(self, args: list[str], env: dict, log_path: str):
        self.log_path = log_path
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-u", *args], cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        """Poll `predicate` until true; fail if the job exits first or time runs out."""
        import time

        deadline = time.time() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"job exited ({self.proc.returncode}) before {what}:\n{self.output()[-4000:]}")
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.output()[-4000:]}")
            time.sleep(0.1)

    def finish(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"job still running after {timeout} s:\n{self.output()[-4000:]}") from None

    def kill(self) -> None:
        kill_session(self.proc.pid)
        self.proc.wait()


@contextmanager
def private_ray():
    """The environment of a job with its own Ray: no RAY_ADDRESS, a private RAY_TMPDIR (short:
    Ray's socket paths must fit in 107 bytes), so that it neither joins nor is joined by another
    Ray on the machine. Afterwards whatever still names that directory is killed."""
    import shutil
    import signal
    import tempfile
    import time

    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0", RAY_DEDUP_LOGS="0")  # every progress line
    try:
        yield env
    finally:
        deadline = time.time() + 30  # a finished job's Ray shuts down on its own, not at once
        while pids_mentioning(ray_tmp) and time.time() < deadline:
            time.sleep(0.5)
        for pid in pids_mentioning(ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


@contextmanager
def ray_head(*, job_agent: bool = False, num_cpus: int = 2, probe_dir: str | None = None):
    """A private Ray head node (`ray start --head`; 2 CPUs, as on the CI machine) in its own session,
    temp dir, ports and auth token: the one way a test starts a cluster that jobs join. Yields
    {"env": the environment of a job that joins it (RAY_ADDRESS set: the GCS, or with `job_agent`
    the dashboard `ray job submit` talks to, once its job agent takes jobs), "session": the head's
    session id, "ray": the `ray` command}. Afterwards its processes, and only its, are killed
    (`ray stop` would take down every Ray on the machine, the test session's own included)."""
    import tempfile

    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    with private_ray() as env:
        env = {**env, "RAY_AUTH_MODE": "token"}
        env.pop("SYNTH_CRASH_AT", None)
        subprocess.run([ray_bin, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        port, dashboard = free_port(), free_port()
        args = [ray_bin, "start", "--head", "--num-cpus", str(num_cpus), "--port", str(port), "--disable-usage-stats",
                # its own agent and metrics ports: the defaults (52365...) are taken by any other Ray on the
                # machine, and an agent that cannot bind takes no jobs
                "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port())]
        args += (["--include-dashboard", "true", "--dashboard-port", str(dashboard)] if job_agent
                 else ["--include-dashboard", "false"])
        start = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 start_new_session=True)
        try:
            said, _ = start.communicate(timeout=120)
            assert start.returncode == 0, said
            env = {**env, "RAY_ADDRESS": f"http://127.0.0.1:{dashboard}" if job_agent else f"127.0.0.1:{port}"}
            if job_agent:
                _wait_for_job_agent(ray_bin, env, probe_dir or tempfile.mkdtemp(prefix="ray-probe-"))
            yield {"env": env, "session": start.pid, "ray": ray_bin}
        finally:
            kill_session(start.pid)  # the head's processes stay in the session `ray start` began


def _wait_for_job_agent(ray_bin: str, env: dict, probe_dir: str, timeout_s: float = 180) -> None:
    """`ray start` returns before the node's job agent has registered; until it has, a submit
    fails with "No available agent" (seen on a loaded 2-core box). Submit a no-op job until one
    is taken: nothing of the tests' own is submitted before the cluster can run it."""
    import time

    deadline = time.time() + timeout_s
    while True:
        probe = subprocess.run([ray_bin, "job", "submit", "--working-dir", probe_dir, "--", "python", "-c", "pass"],
                               env=env, capture_output=True, text=True, timeout=timeout_s)
        if probe.returncode == 0:
            return
        assert "No available agent" in probe.stderr + probe.stdout and time.time() < deadline, (
            probe.stdout + probe.stderr)[-3000:]
        time.sleep(2)


def pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains `text` (e.g. a private Ray temp dir)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            pids.append(int(name))
    return pids
