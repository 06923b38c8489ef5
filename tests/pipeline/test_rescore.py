"""`synth rescore`: the QC metrics of an output made without QC, beside its data, resumable; and of
a Parquet dataset synth did not write (an HF Audio column, a text column)."""

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers import dataset_store, write_scripts_manifest

from synth.cli import main
from synth.pipeline.config import load_config
from synth.pipeline.manifest import open_manifest
from synth.pipeline.output import FIXED, run_identity
from synth.pipeline.plan import plan_shards
from synth.pipeline.verify import verify_dataset
from synth.pipeline.worker import ShardWorker, load_engine

METRICS = "qc.metrics=[asr,speaker,level,timing,repetition]"


@pytest.fixture(scope="module")
def plain_output(tmp_path_factory, speech_clip, tiny_checkpoint):
    """An output of two scripts made without QC (its QC columns are null)."""
    work = tmp_path_factory.mktemp("no-qc")
    path, ids = write_scripts_manifest(str(work / "in"), speech_clip, num_scripts=3)
    config = load_config(None, [f"model.id={tiny_checkpoint}", "model.dtype=float32", "model.device=cpu",
                                "sampling.do_sample=false", "generation.max_audio_seconds=1.2"])
    manifest = open_manifest(path)
    plan = plan_shards(manifest, 100, config.output.commit_every_scripts)
    output = dataset_store(work / "out")
    output.claim()
    output.record_identity(run_identity(config, plan), fixed=FIXED)
    ShardWorker(config, load_engine(config), manifest, output, log=lambda m: None).run_shard(plan.shards[0])
    return str(work / "out"), ids


@pytest.mark.slow
def test_rescore_an_output_made_without_qc_beside_its_data(plain_output, tiny_whisper, capsys):
    out, ids = plain_output
    data = pq.read_table(os.path.join(out, "data")).to_pylist()
    assert all(row["qc_pass"] is None and row["wer"] is None for row in data)
    args = ["rescore", out, "--set", f"qc.asr.model={tiny_whisper}", "--set", METRICS]
    assert main(args) == 0
    scores = pq.read_table(os.path.join(out, "qc")).to_pylist()
    assert sorted(r["id"] for r in scores) == sorted(ids)
    assert all(r["qc_pass"] is False and r["wer"] is not None and r["loop_score"] is not None for r in scores)
    by_id = {r["id"]: r for r in scores}
    assert by_id["s02:1"]["speaker_sim"] is None  # speaker 1's first clip in its script: no reference
    report = verify_dataset(dataset_store(out))  # the scores are units of the dataset's store, beside its data
    assert report.ok and report.units == 2, report.render()
    assert main(args) == 0 and "0 file(s) scored, 1 already scored" in capsys.readouterr().out  # resumable
    stricter = [*args, "--set", "qc.thresholds.max_loop_score=-1"]  # new thresholds: scored again
    assert main(stricter) == 0
    rescored = pq.read_table(os.path.join(out, "qc")).to_pylist()
    assert all(any(x.startswith("loop_score") for x in r["qc_reasons"]) for r in rescored)


def test_rescore_a_dataset_synth_did_not_write(tmp_path, speech_clip, tiny_whisper, capsys):
    """An HF Audio column (bytes, or a path relative to the file) and a text column of another name."""
    from datasets import Audio, Features, Value

    src = tmp_path / "theirs"
    os.makedirs(src / "clips")
    shutil.copy(speech_clip, src / "clips" / "hello.wav")
    silence = src / "clips" / "silence.wav"
    sf.write(silence, np.zeros(32000, np.float32), 16000)
    hello = (src / "clips" / "hello.wav").read_bytes()
    text = "Hello there, this is a recorded voice prompt."
    # every clip alone in its script, as in an imported corpus: a speaker's voice is checked across scripts
    features = Features({"sentence": Value("string"), "speaker": Value("string"), "script_id": Value("string"),
                         "audio": Audio()})
    rows = [{"sentence": text, "speaker": "a", "script_id": "r0", "audio": {"bytes": hello, "path": None}},
            {"sentence": text, "speaker": "a", "script_id": "r1", "audio": {"bytes": None, "path": "clips/hello.wav"}},
            {"sentence": text, "speaker": "b", "script_id": "r2", "audio": {"bytes": silence.read_bytes(), "path": None}},
            {"sentence": text, "speaker": "c", "script_id": "r3", "audio": {"bytes": b"not audio", "path": None}}]
    pq.write_table(pa.Table.from_pylist(rows, schema=features.arrow_schema), src / "train.parquet")
    base = ["rescore", str(src), "--text-column", "sentence", "--set", f"qc.asr.model={tiny_whisper}",
            "--set", "qc.metrics=[asr,speaker,level,timing]"]
    assert main(base) == 2  # no --output: synth writes nothing into a dataset it did not make
    assert "give --output" in capsys.readouterr().err and not (src / "qc").exists()
    assert main([*base, "--output", str(tmp_path / "scores")]) == 0
    bytes_row, path_row, silent, broken = pq.read_table(tmp_path / "scores" / "qc" / "train.parquet").to_pylist()
    assert [r["id"] for r in (bytes_row, path_row, silent, broken)] == ["0", "1", "2", "3"]  # no id column
    assert bytes_row["speech_ratio"] > 0.7
    # a's reference across scripts is its first clip; that clip itself is compared with a's second (the same audio)
    assert path_row["speaker_sim"] == pytest.approx(1.0, abs=1e-4)  # the same clip, read from its path
    assert bytes_row["speaker_sim"] == pytest.approx(1.0, abs=1e-4)
    assert silent["speaker_sim"] is None  # b's only clip: nothing to compare it with
    assert path_row["speech_ratio"] == bytes_row["speech_ratio"]
    assert {r.split(":")[0] for r in silent["qc_reasons"]} >= {"speech_ratio", "leading_silence_s"}
    assert broken["qc_reasons"][0].startswith("audio:") and "cannot decode" in broken["qc_reasons"][0]


@pytest.mark.slow
def test_rescore_killed_mid_commit_resumes_and_repairs_its_store(plain_output, tiny_whisper, tmp_path, capsys):
    """`synth rescore --output` killed between a scores file and its marker (as `kill -9` leaves it),
    then run again: each row scored once, the store verified; a scores file changed afterwards is
    found by verify and scored again by the same command."""
    from helpers import run_job

    from synth.pipeline.rescore import verify_rescore_at
    from synth.store import faults

    out, ids = plain_output
    scores = str(tmp_path / "scores")
    args = ["-m", "synth", "rescore", out, "--output", scores, "--set", f"qc.asr.model={tiny_whisper}",
            "--set", METRICS]
    token = str(tmp_path / "crashed")
    first = run_job(args, {faults.ENV_VAR: f"rescore-scored:1:{token}"})
    assert first.returncode == faults.CRASH_EXIT_STATUS and os.path.exists(token), first.stdout + first.stderr
    assert not os.listdir(os.path.join(scores, "_progress")) if os.path.isdir(os.path.join(scores, "_progress")) else True
    again = run_job(args)
    assert again.returncode == 0 and "1 file(s) scored" in again.stdout, again.stdout + again.stderr
    report = verify_rescore_at(scores)
    assert report.ok and report.units == 1, report.render()
    assert sorted(r["id"] for r in pq.read_table(os.path.join(scores, "qc")).to_pylist()) == sorted(ids)
    (scored,) = os.listdir(os.path.join(scores, "qc"))
    with open(os.path.join(scores, "qc", scored), "r+b") as f:
        f.truncate(100)
    assert not verify_rescore_at(scores).ok
    assert main(args[2:]) == 0 and "1 file(s) scored" in capsys.readouterr().out  # made again
    assert verify_rescore_at(scores).ok
