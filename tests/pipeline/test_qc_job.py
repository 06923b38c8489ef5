"""Quality control inside a run, on the tiny CSM (its "speech" is noise, so every take fails):
every take is recorded, the kept one is marked, later turns are conditioned on it, and a job
killed with SIGKILL mid-commit resumes exactly once, rejected takes included."""

import io
import json
import os
import shutil
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers import (
    JobProcess,
    assert_exactly_once,
    dataset_store,
    job_args,
    load_output,
    write_scripts_manifest,
)

from synth.engine.interface import GenerationRequest
from synth.pipeline.config import load_config
from synth.pipeline.manifest import open_manifest, write_manifest
from synth.pipeline.output import RUN_RECORD, committed_parts, takes_file
from synth.pipeline.plan import plan_shards
from synth.pipeline.provenance import read_audio_marking
from synth.pipeline.verify import verify_dataset
from synth.pipeline.worker import ShardWorker, load_engine
from synth.qc.policy import METRICS, take_seed

pytestmark = pytest.mark.slow  # QC models and jobs on a local Ray

QC_ON = ["qc.enabled=true", "qc.max_takes=2", "sampling.do_sample=true"]
JOB_TIMEOUT_S = 240


class ObservedEngine:
    """The real engine, with every result and every request it was handed (up front, as a follow-up
    or submitted from the QC stage) on record. A request id handed twice (a speculative turn
    cancelled, then generated again) keeps its last request and result."""

    def __init__(self, engine):
        self.engine = engine
        self.results, self.requests = {}, {}

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, requests):
        self.requests.update({r.request_id: r for r in requests})
        self.engine.submit(requests)

    def run(self, requests, sampling, on_result=None):
        observer = self

        def observed(result):
            observer.results[result.request_id] = result
            follow = list(on_result(result) or ())
            observer.requests.update({r.request_id: r for r in follow})
            return follow

        self.requests.update({r.request_id: r for r in requests})
        return self.engine.run(requests, sampling, on_result=observed)


@pytest.fixture(scope="module")
def qc_shard(tmp_path_factory, speech_clip, tiny_checkpoint, tiny_whisper):
    """One shard with QC on (every metric, two takes, loudness clean-up), run in this process."""
    work = tmp_path_factory.mktemp("qc-worker")
    os.makedirs(work / "clips")
    shutil.copy(speech_clip, work / "clips" / "voice.wav")
    ctx = {"speaker": 0, "text": "Hello there, this is a recorded voice prompt.", "audio": "clips/voice.wav"}
    rows = [{"id": "d", "seed": 7, "turns": [ctx, {"speaker": 0, "text": "I am the same voice.", "audio": None},
                                             {"speaker": 1, "text": "And I am a new one.", "audio": None},
                                             {"speaker": 1, "text": "Still the new one.", "audio": None}]},
            {"id": "s", "seed": 8, "turns": [{"speaker": 2, "text": "One line alone.", "audio": None}]}]
    path = write_manifest(str(work / "manifest.parquet"), rows)
    config = load_config(None, [
        f"model.id={tiny_checkpoint}", "model.dtype=float32", "model.device=cpu", "fast_engine.num_slots=4",
        "generation.max_audio_seconds=1.2", "output.commit_every_scripts=1", *QC_ON,
        f"qc.asr.model={tiny_whisper}", "qc.cleanup.loudness_lufs=-20", "qc.own_process=false"])
    engine = ObservedEngine(load_engine(config))
    manifest = open_manifest(path)
    (shard,) = plan_shards(manifest, 100).shards
    worker = ShardWorker(config, engine, manifest, dataset_store(work / "out"), log=lambda m: None)
    try:
        commits = worker.run_shard(shard)  # the scorer on threads (its process: tests/qc/test_scorer_process.py)
    finally:
        worker.close()
    data = pq.read_table(work / "out" / "data").to_pylist()
    takes = pq.read_table(work / "out" / "takes").to_pylist()
    return engine, commits, {r["id"]: r for r in data}, takes


def test_every_take_is_scored_recorded_and_the_kept_one_marked(qc_shard):
    engine, commits, data, takes = qc_shard
    assert sorted(data) == ["d:1", "d:2", "d:3", "s:0"]
    for key, row in data.items():
        assert row["num_takes"] == 2 and row["take"] in (1, 2), row  # noise fails: both takes are tried
        assert row["qc_pass"] is False and row["qc_reasons"] and "wer" in " ".join(row["qc_reasons"])
        base_seed = {"d": 7, "s": 8}[row["script_id"]] + row["turn"]
        assert row["seed"] == take_seed(base_seed, row["take"])  # the kept take's own seed
        assert row["asr_text"] is not None and row["wer"] is not None and row["dnsmos"] is not None
        assert row["loop_score"] is not None and row["leading_silence_s"] is not None
        (rejected,) = [t for t in takes if t["id"] == key]
        assert rejected["take"] == 3 - row["take"] and rejected["kept_take"] == row["take"]
        assert rejected["seed"] == take_seed(base_seed, rejected["take"]) and rejected["qc_pass"] is False
        take_id = key if rejected["take"] == 1 else f"{key}#take2"
        assert np.array_equal(np.array(rejected["codes"]), engine.results[take_id].codes)  # its codes, on record
        assert rejected["audio"]["bytes"]  # qc.keep_take_audio (default on)
        marked = read_audio_marking(rejected["audio"]["bytes"])  # a rejected take's clip is marked too, as a take
        assert marked["ai_generated"] is True and marked["id"] == f"{key}#take{rejected['take']}"
        assert read_audio_marking(row["audio"]["bytes"])["id"] == key  # the kept one as its row
        kept_id = key if row["take"] == 1 else f"{key}#take2"
        assert np.array_equal(np.array(row["codes"]), engine.results[kept_id].codes)
        assert not np.array_equal(engine.results[kept_id].codes, engine.results[take_id].codes)  # a new seed
        # the loudness clean-up: a gain recorded, the peak held under the ceiling
        samples, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert row["gain_db"] is not None and 20 * np.log10(np.abs(samples).max()) <= -0.99
    # the voice: the recorded clip for speaker 0; speaker 1's first turn has none, its second has the first
    assert data["d:1"]["speaker_sim"] is not None and data["d:2"]["speaker_sim"] is None
    assert data["d:3"]["speaker_sim"] is not None and data["s:0"]["speaker_sim"] is None
    totals = [c.qc for c in commits]
    assert sum(t["turns"] for t in totals) == 4 and sum(t["takes"] for t in totals) == 8
    assert sum(t["failed"]["wer"] for t in totals) == 4 and sum(t["passed"] for t in totals) == 0


def test_level_metrics_describe_the_stored_take_never_clipped(qc_shard):
    """The tiny CSM's takes peak far past full scale: each is stored scaled to -1 dBFS, with its gain on
    its row, and its level metrics are those of the stored samples (a rejected take's file holds them)."""
    engine, _, data, takes = qc_shard
    for take in takes:
        key = take["id"] if take["take"] == 1 else f"{take['id']}#take{take['take']}"
        generated = engine.results[key].audio
        samples, _ = sf.read(io.BytesIO(take["audio"]["bytes"]), dtype="float32")
        assert np.abs(generated).max() > 1.0 and take["gain_db"] < 0  # louder than full scale as generated
        assert take["peak_dbfs"] == pytest.approx(20 * np.log10(float(np.abs(samples).max())), abs=1e-9)
        assert take["peak_dbfs"] <= -0.99
        assert take["clipped_fraction"] == 0 and np.abs(samples).max() < 0.999
        assert np.allclose(samples, generated * 10 ** (take["gain_db"] / 20), atol=0.5 / 32768 + 1e-6)
    for row in data.values():  # kept takes: the fit, then the clean-up's normalisation, in one gain
        samples, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert row["peak_dbfs"] <= -0.99 and row["clipped_fraction"] == 0


def test_later_turns_are_conditioned_on_the_kept_take(qc_shard):
    engine, _, data, _ = qc_shard
    for earlier, later in (("d:1", "d:2"), ("d:2", "d:3")):
        kept = engine.results[earlier if data[earlier]["take"] == 1 else f"{earlier}#take2"]
        rejected = engine.results[f"{earlier}#take2" if data[earlier]["take"] == 1 else earlier]
        request: GenerationRequest = engine.requests[later]
        last = request.context[-1]
        assert last.text == data[earlier]["text"]
        # the kept take's audio as generated, scaled by the row's gain (the fit to full scale, then the
        # clean-up's normalisation, which lowers it here), within half a 16-bit step: what the row holds
        gain = 10 ** (data[earlier]["gain_db"] / 20)
        assert np.allclose(last.audio, kept.audio * gain, atol=0.5 / 32768 + 1e-6)
        samples, _ = sf.read(io.BytesIO(data[earlier]["audio"]["bytes"]), dtype="float32")
        assert np.array_equal(samples, last.audio.astype(np.float32)) or np.allclose(samples, last.audio, atol=1 / 32768)
        assert not np.allclose(last.audio[: len(rejected.audio)], (rejected.audio * gain)[: len(last.audio)])


# -- the job on Ray, killed mid-commit and resumed -------------------------------------


def test_qc_job_killed_mid_commit_resumes_exactly_once_takes_included(tmp_path, speech_clip, tiny_checkpoint,
                                                                       tiny_whisper, ray_env):
    path, ids = write_scripts_manifest(str(tmp_path / "in"), speech_clip, num_scripts=3)
    out = str(tmp_path / "out")
    args = job_args(path, out, tiny_checkpoint, "--set", "output.scripts_per_shard=4",
                    "--set", "output.commit_every_scripts=1", *[a for o in QC_ON for a in ("--set", o)],
                    "--set", f"qc.asr.model={tiny_whisper}", "--set", "qc.metrics=[asr,speaker,level,timing,repetition]",
                    # on the actor's threads: the QC process (tests/qc/test_scorer_process.py, the card's job in
                    # tests/export) would only add its start to each of this test's actors
                    "--set", "qc.own_process=false")
    token = str(tmp_path / "torn-commit")
    # the actor dies as `kill -9` leaves it after the second part's data and takes, before its marker;
    # then the whole job (driver and its local Ray) is killed with SIGKILL before Ray can retry the shard
    job = JobProcess(args, {**ray_env, "SYNTH_CRASH_AT": f"commit-data:2:{token}"}, str(tmp_path / "first.log"))
    try:
        job.wait_until(lambda: os.path.exists(token), timeout=JOB_TIMEOUT_S, what="the torn commit")
    finally:
        job.kill()
    assert job.proc.returncode == -signal.SIGKILL
    output = dataset_store(out)
    committed = set(committed_parts(output))
    torn = [p for p in ((0, part) for part in range(3)) if p not in committed
            and os.path.exists(os.path.join(out, takes_file(*p)))]
    assert len(committed) == 1 and len(torn) == 1, (committed, os.listdir(os.path.join(out, "takes")))
    torn_takes = pq.read_table(os.path.join(out, takes_file(*torn[0]))).to_pylist()

    again = JobProcess(args, ray_env, str(tmp_path / "resume.log"))
    assert again.finish(JOB_TIMEOUT_S) == 0, again.output()
    assert "removed" in again.output() and "QC passed 0/" in again.output()
    ds = load_output(out)
    assert_exactly_once(ds["id"], ids)
    assert all(n == 2 for n in ds["num_takes"]) and not any(ds["qc_pass"])
    takes = pq.read_table(os.path.join(out, "takes")).to_pylist()
    assert_exactly_once([f"{t['id']}#{t['take']}" for t in takes],
                        [f"{row['id']}#{3 - row['take']}" for row in ds])  # the one rejected take of each turn
    for (shard, part), commit in sorted(committed_parts(output).items()):  # each part's takes file is in its marker
        assert takes_file(shard, part) in {f.path for f in commit.files}
    # the torn part was generated again with the same seeds: the same takes, the same decisions
    again_takes = {t["id"]: t for t in pq.read_table(os.path.join(out, takes_file(*torn[0]))).to_pylist()}
    for t in torn_takes:
        assert (again_takes[t["id"]]["seed"], again_takes[t["id"]]["codes"]) == (t["seed"], t["codes"])
    report = verify_dataset(output)
    assert report.ok and report.rows == len(ids) and not report.missing, report.render()
    with open(os.path.join(out, RUN_RECORD)) as f:
        qc = json.load(f)["qc"]
    assert qc["turns"] == len(ids) and qc["takes"] == 2 * len(ids) and qc["takes_per_turn"] == 2.0
    assert qc["pass_rate"] == 0 and qc["failed_by_metric"]["wer"] == len(ids)
    assert set(METRICS) >= set(qc["takes_failed_by_metric"])
    # where each model ran, as the actors' scorers said (one actor kind here: one placement each)
    assert qc["models"] == {"asr": ["cpu (Whisper, batched)"], **{g: qc["models"][g] for g in ("speaker", "level", "timing")},
                            "repetition": ["cpu (from the codes)"]}
    # a turn that keeps failing counts toward job.max_error_rate (0 here) only if the config says so
    strict = JobProcess([*args, "--set", "qc.count_failures_as_errors=true", "--allow-changes"], ray_env,
                        str(tmp_path / "strict.log"))
    assert strict.finish(JOB_TIMEOUT_S) == 1, strict.output()
    assert "nothing to do" in strict.output()
    with open(os.path.join(out, RUN_RECORD)) as f:
        record = json.load(f)
    assert record["qc"]["scripts_failing_qc"] == 3 and record["shards_failed"] == {}


def test_the_kept_take_is_trimmed_in_whole_frames_with_its_codes(qc_shard, speech_clip):
    """`qc.cleanup.trim_silence` on a real clip with silence around it, through a real chain."""
    from synth.engine.interface import GenerationResult
    from synth.pipeline.audio_io import decode_clip
    from synth.pipeline.chain import Chain, ChainTurn
    from synth.pipeline.context_plan import SegmentCost
    from synth.pipeline.retakes import Accepted, QcCounts, Retakes
    from synth.qc.policy import CleanupSettings, QcSettings
    from synth.qc.scorer import TakeScorer

    engine = qc_shard[0].engine
    spf, rate = engine.samples_per_frame, engine.sample_rate_hz
    speech = decode_clip(open(speech_clip, "rb").read(), rate)
    audio = np.concatenate([np.zeros(rate, np.float32), speech, np.zeros(rate, np.float32)])
    frames = len(audio) // spf
    audio = audio[: frames * spf]
    codes = np.random.default_rng(0).integers(0, 2048, (frames, 32)).astype(np.int16)
    settings = QcSettings(enabled=True, metrics=("timing",), max_takes=1,
                          cleanup=CleanupSettings(trim_silence=True, keep_silence_s=0.16))
    retakes = Retakes(settings, TakeScorer(settings, rate).load(), samples_per_frame=spf,
                      encode_audio=lambda a, key: b"")
    chain = Chain([ChainTurn("t:0", 0, "Hello there, this is a recorded voice prompt.", max_frames=frames, seed=3),
                   ChainTurn("t:1", 0, "And then the next turn.", max_frames=8, seed=4)], engine, SegmentCost(engine))
    retakes.start_chain(chain)
    request = chain.next_request(lambda turn, reason: pytest.fail(reason))
    result = GenerationResult(request.request_id, codes, audio, "eos", 0)
    accepted = retakes.on_take(chain, result, QcCounts(), "t")
    assert isinstance(accepted, Accepted)
    start, end = accepted.columns["trimmed_frames"]
    # ~1 s of silence added each side (espeak leaves some of its own at the end), less 0.16 s kept, in 80 ms frames
    assert 9 <= start <= 12 and 9 <= end <= 18
    kept = accepted.result
    assert len(kept.audio) == kept.num_frames * spf and kept.num_frames == frames - start - end
    assert np.array_equal(kept.codes, codes[start : frames - end])
    assert np.array_equal(kept.audio, audio[start * spf : (frames - end) * spf])
    chain.add_result(kept)
    later = chain.next_request(lambda turn, reason: pytest.fail(reason))
    assert np.array_equal(later.context[-1].audio, kept.audio)  # the next turn hears the trimmed take
