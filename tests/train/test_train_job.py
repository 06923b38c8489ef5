"""The fine-tuning job end to end: a real synthesis run of the tiny CSM, a two-worker Ray Train run
(LoRA) whose driver is killed with SIGKILL after a checkpoint and which resumes, its model loaded by `from_pretrained` and
used by the synthesis job; and the training set's context, QC filter, bad rows and refusals."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import (
    REPO,
    JobProcess,
    free_port,
    job_args,
    load_output,
    ray_head,
    recommit,
    run_job,
)

from synth.pipeline.manifest import write_manifest
from synth.train.batches import CodesLoss, collate
from synth.train.dataset import DatasetError, TrainSet
from synth.train.importer import load_codec
from synth.train.output import (
    MODEL_DIR,
    RAY_DIR,
    RUN_NAME,
    TRAIN_RECORD,
    TRAIN_SET_FILE,
)

pytestmark = pytest.mark.slow  # a Ray Train run, killed and resumed

NUM_STEPS = 6


@pytest.fixture(scope="module")
def ray_job_env():
    """The environment of jobs on one private single-node Ray cluster (`helpers.ray_head`), shared by the
    module's jobs: a killed driver leaves it running, as on a real cluster."""
    with ray_head() as head:
        yield head["env"]


@pytest.fixture(scope="module")
def synth_output(tmp_path_factory, speech_clip, tiny_checkpoint, ray_job_env):
    """A synth output of the tiny CSM: a recorded context turn, a two-turn chain, a voice, singles."""
    root = tmp_path_factory.mktemp("synth")
    shutil.copy(speech_clip, root / "hello.wav")
    recorded = {"speaker": 0, "text": "Hello there, this is a recorded voice prompt.", "audio": "hello.wav"}
    rows = [{"id": "rec", "turns": [recorded, {"speaker": 1, "text": "A reply to the recording.", "audio": None},
                                    {"speaker": 0, "text": "And one more line.", "audio": None}]},
            {"id": "voiced", "voice": "narrator", "turns": [{"text": "The narrator reads a line.", "audio": None}]}]
    rows += [{"id": f"s{i}", "turns": [{"speaker": i % 3, "text": f"Line number {i}, said once.", "audio": None}]}
             for i in range(5)]
    manifest = write_manifest(str(root / "manifest.parquet"), rows)
    out = str(root / "out")
    result = run_job(job_args(manifest, out, tiny_checkpoint), ray_job_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return manifest, out


def _train_args(data: str, out: str, checkpoint: str) -> list[str]:
    return ["jobs/train.py", "--config", "configs/train-demo.yaml", "--data", data, "--output", out,
            "--set", f"model.id={checkpoint}", "--set", "model.method=lora", "--set", "lora.rank=8",
            "--set", "optim.learning_rate=0.01", "--set", f"optim.max_steps={NUM_STEPS}", "--set", "optim.epochs=3",
            "--set", "data.batch_positions=100", "--set", "checkpoints.every_steps=2",
            "--set", "workers.num_workers=2", "--set", "workers.cpus_per_worker=0.5",
            "--set", "workers.torch_threads=1"]


@pytest.fixture(scope="module")
def trained(synth_output, tiny_checkpoint, tmp_path_factory, ray_job_env):
    """Train, kill the driver with SIGKILL once a checkpoint is recorded, run it again."""
    _, data = synth_output
    root = tmp_path_factory.mktemp("train")
    out = str(root / "ft")
    snapshot = os.path.join(out, RAY_DIR, RUN_NAME, "checkpoint_manager_snapshot.json")
    first = JobProcess(_train_args(data, out, tiny_checkpoint), ray_job_env, str(root / "first.log"))
    first.wait_until(lambda: "train: checkpoint at step" in first.output() and os.path.exists(snapshot),
                     timeout=240, what="the first checkpoint")
    first.kill()
    second = run_job(_train_args(data, out, tiny_checkpoint), ray_job_env, timeout=300)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    return out, first.output(), second.stdout + second.stderr


def _set_loss(model_dir: str, train_set: TrainSet) -> float:
    """Mean loss of the whole training set (targets only) under the checkpoint at `model_dir`."""
    from transformers import AutoProcessor, CsmForConditionalGeneration

    model = CsmForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    batch = collate(processor, model.config, [train_set.example(i) for i in range(len(train_set.targets))],
                    train_context=False)
    with torch.no_grad():
        return CodesLoss(model)(batch).item()


def test_the_job_is_killed_resumes_from_its_checkpoint_and_lowers_the_loss(trained, tiny_checkpoint):
    out, first, second = trained
    assert "train: saved the model" not in first  # killed before the end
    resumed = re.search(r"train: resuming from the checkpoint of step (\d+)", second)
    assert resumed, second[-3000:]
    start = int(resumed.group(1))
    assert start >= 2 and start % 2 == 0
    # each step's line once (Ray Train's own `print` in the workers made the driver show every line twice)
    steps_run = [int(s) for s in re.findall(rf"train: step (\d+)/{NUM_STEPS} ", second)]
    assert steps_run == list(range(start + 1, NUM_STEPS + 1)), second[-3000:]  # nothing done twice or left out
    assert len(re.findall(r"train: resuming from the checkpoint", second)) == 1

    record = json.load(open(os.path.join(out, TRAIN_RECORD)))
    assert record["finished"] and record["steps"] == NUM_STEPS
    assert [s for s, _ in record["losses"]] == list(range(1, NUM_STEPS + 1))
    train_set = TrainSet.from_parquet(open(os.path.join(out, TRAIN_SET_FILE), "rb").read())
    before, after = _set_loss(tiny_checkpoint, train_set), _set_loss(os.path.join(out, MODEL_DIR), train_set)
    assert after < before - 0.05, (before, after)
    from synth.train.output import verify_train_at

    report = verify_train_at(out)  # the train set and the model committed, the lease given back
    assert report.ok and report.units == 2, report.render()
    assert not os.path.exists(os.path.join(out, "_lease.json"))


def test_the_trained_model_loads_and_runs_the_synthesis_job(trained, synth_output, tmp_path, ray_job_env):
    from safetensors.torch import load_file

    out, _, _ = trained
    model_dir = os.path.join(out, MODEL_DIR)
    names = load_file(os.path.join(model_dir, "model.safetensors")).keys()
    assert not [n for n in names if "lora" in n]  # adapters merged into plain weights
    manifest, _ = synth_output
    result = run_job(job_args(manifest, str(tmp_path / "out"), model_dir), ray_job_env)
    assert result.returncode == 0, result.stderr[-3000:]
    ds = load_output(str(tmp_path / "out"))
    assert len(ds) == 8 and set(ds["model"]) == {model_dir}


def test_the_train_set_holds_each_row_with_the_context_it_was_conditioned_on(trained, synth_output, speech_clip,
                                                                            tiny_checkpoint):
    out, _, _ = trained
    _, data = synth_output
    train_set = TrainSet.from_parquet(open(os.path.join(out, TRAIN_SET_FILE), "rb").read())
    targets = {tid: context for tid, context, _ in train_set.targets}
    assert set(targets) == {"rec:1", "rec:2", "voiced:0"} | {f"s{i}:0" for i in range(5)}
    assert targets["rec:2"] == ("rec:0", "rec:1") and targets["voiced:0"] == ("voice:narrator",)
    rows = {r["id"]: r for r in load_output(data)}
    assert np.array_equal(train_set.turns["rec:1"].codes, np.array(rows["rec:1"]["codes"]))
    # the voice prompt's codes are the run's cache of them; the recorded clip was encoded by synth's codec
    from synth.engine.codec import clip_key
    from synth.pipeline.audio_io import decode_clip
    from synth.pipeline.output import voice_codes_file

    with open(os.path.join(REPO, "examples/voices/narrator.wav"), "rb") as f:  # configs/demo.yaml's narrator
        cached = os.path.join(data, voice_codes_file(clip_key(decode_clip(f.read(), 24000))))
    assert np.array_equal(train_set.turns["voice:narrator"].codes, np.load(cached))
    recorded = train_set.turns["rec:0"]
    assert recorded.text.startswith("Hello there") and recorded.speaker == 0
    with open(speech_clip, "rb") as f:
        (expected,) = load_codec(tiny_checkpoint).encode([decode_clip(f.read(), 24000)])
    assert np.array_equal(recorded.codes, expected.numpy())


def _copy_with_qc(data: str, dest: str, qc: dict[str, bool], bad_codes: str | None = None) -> str:
    """A copy of a synth output whose data/ parts carry a `qc_pass` column (and one row's codes cut to 3 codebooks)."""
    shutil.copytree(data, dest)
    for path in glob.glob(os.path.join(dest, "data", "*.parquet")):
        table = pq.read_table(path)
        if bad_codes is not None:
            codes = [c if i != bad_codes else [f[:3] for f in c]
                     for i, c in zip(table.column("id").to_pylist(), table.column("codes").to_pylist())]
            table = table.set_column(table.schema.get_field_index("codes"), "codes",
                                     pa.array(codes, type=table.schema.field("codes").type))
        verdicts = pa.array([qc[i] for i in table.column("id").to_pylist()])
        index = table.schema.get_field_index("qc_pass")  # made with QC off: the column is there, all null
        table = table.set_column(index, "qc_pass", verdicts) if index >= 0 else table.append_column("qc_pass", verdicts)
        pq.write_table(table, path)
        recommit(dest, os.path.relpath(path, dest))
    return dest


def test_the_qc_filter_bad_rows_and_refusals(synth_output, tiny_checkpoint, tmp_path):
    from transformers import AutoConfig, AutoProcessor

    from synth.pipeline.output import dataset_store
    from synth.store.errors import StoreError
    from synth.store.store import Store
    from synth.train.config import load_train_config
    from synth.train.dataset import prepare_train_set
    from synth.train.job import record_identity
    from synth.train.output import TRAIN

    _, data = synth_output
    config = AutoConfig.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)

    def prepare(uri, qc_filter):
        return prepare_train_set(uri, processor=processor, model_config=config, qc_filter=qc_filter,
                                 max_positions=2048, encode=lambda clips: pytest.fail("nothing to encode"))

    with pytest.raises(DatasetError, match=r"has no `qc_pass` values .*and no `synth rescore` scores"):
        prepare(data, True)
    ids = [r["id"] for r in load_output(data)]
    qc = {i: not i.startswith("s") or i == "s0:0" for i in ids}  # s1..s4 fail QC
    qc_data = _copy_with_qc(data, str(tmp_path / "qc"), qc, bad_codes="s0:0")
    # the recorded clip of rec:0 is resolved through the manifest; point it at nothing to see its reason
    train_set, skipped = prepare_train_set(
        qc_data, processor=processor, model_config=config, qc_filter=True, max_positions=2048,
        encode=lambda clips: [np.zeros((5, 32), dtype=np.int16) for _ in clips])
    assert {t for t, _, _ in train_set.targets} == {"rec:1", "rec:2", "voiced:0"}
    assert skipped == ["row 's0:0': codes of shape [15, 3], expected [num_frames > 0, 32]"]
    _, too_long = prepare_train_set(qc_data, processor=processor, model_config=config, qc_filter=True,
                                    max_positions=40, encode=lambda clips: [np.zeros((5, 32)) for _ in clips])
    assert any(re.fullmatch(r"row 'rec:2': \d+ positions with its context, more than the 40 the model holds", s)
               for s in too_long), too_long

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    train_config = load_train_config("configs/train-demo.yaml", [f"model.id={tiny_checkpoint}"])
    with pytest.raises(StoreError, match="is not empty and is not a synth train store"):
        Store.at_uri(str(foreign), TRAIN).claim()
    mine = Store.at_uri(str(tmp_path / "mine"), TRAIN)
    mine.claim()
    source = dataset_store(data, "synth train")
    first = record_identity(mine, data, source, train_config)
    assert record_identity(mine, data, source, train_config) == first  # the same settings: a relaunch
    other = load_train_config("configs/train-demo.yaml", [f"model.id={tiny_checkpoint}", "optim.learning_rate=0.5"])
    with pytest.raises(StoreError, match=r"a training run with other settings .*config.optim.learning_rate: was "):
        record_identity(mine, data, source, other)
    with pytest.raises(StoreError, match="the dataset's committed rows changed since this training run began"):
        record_identity(mine, data, dataset_store(qc_data, "synth train"), train_config)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_the_qc_filter_takes_rescored_verdicts_and_names_a_filter_that_removes_every_row(synth_output,
                                                                                       tiny_checkpoint, tmp_path):
    """After `synth rescore OUT`, data.qc_filter uses the scores in qc/ (data/ has none); a filter that no row
    passes says it removed all N rows, not "no row can be trained on (0 skipped)"."""
    from transformers import AutoConfig, AutoProcessor

    from synth.cli import main
    from synth.train.dataset import prepare_train_set

    _, data = synth_output
    copy = str(tmp_path / "rescored")
    shutil.copytree(data, copy)
    ids = [r["id"] for r in load_output(copy)]

    def prepare():
        return prepare_train_set(copy, processor=AutoProcessor.from_pretrained(tiny_checkpoint),
                                 model_config=AutoConfig.from_pretrained(tiny_checkpoint), qc_filter=True,
                                 max_positions=2048, encode=lambda clips: [np.zeros((5, 32), np.int16) for _ in clips])

    rescore = ["rescore", copy, "--set", "qc.metrics=[repetition]"]
    assert main([*rescore, "--set", "qc.thresholds.max_loop_score=1.0"]) == 0  # every row passes
    train_set, skipped = prepare()
    assert {t for t, _, _ in train_set.targets} | {s.split("'")[1] for s in skipped} == set(ids)
    assert main([*rescore, "--set", "qc.thresholds.max_loop_score=-1"]) == 0  # rescored again: none passes
    with pytest.raises(DatasetError, match=rf"the QC filter \(data.qc_filter\) removed all {len(ids)} rows "
                                           rf"\({len(ids)} failed QC\)"):
        prepare()


def test_a_bad_training_config_fails_before_anything_runs(tmp_path, capsys):
    from synth.cli import main

    out = tmp_path / "ft"
    assert main(["train", "--data", str(tmp_path), "--output", str(out), "--set", "model.precision=bfloat16"]) == 2
    assert "model.precision 'bfloat16' needs workers.use_gpu: true" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--output", str(out), "--set", "optim.learning_rate=-1"]) == 2
    assert "optim.learning_rate" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--data", str(tmp_path), "--output", str(out)]) == 2
    assert "is no synth store; synth train --data needs one of: book, import, run" in capsys.readouterr().err
    assert not out.exists()


def test_the_train_set_reads_the_same_from_an_object_store(trained, synth_output, tiny_checkpoint, monkeypatch):
    """The synth output copied to a local S3 server (moto) prepares the same examples as the local one."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer
    from transformers import AutoConfig, AutoProcessor

    from synth.train.dataset import prepare_train_set

    out, _, _ = trained
    _, data = synth_output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        for key, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        # moto's in-process backend outlives its server: another test's bucket of the same name would be read too
        bucket = f"synth-train-{os.getpid()}"
        client.create_bucket(Bucket=bucket)
        for path in glob.glob(os.path.join(data, "**", "*"), recursive=True):
            if os.path.isfile(path) and not path.endswith((".wav", ".flac")):  # what training reads
                client.upload_file(path, bucket, "out/" + os.path.relpath(path, data))
        from_s3, skipped = prepare_train_set(
            f"s3://{bucket}/out", processor=AutoProcessor.from_pretrained(tiny_checkpoint),
            model_config=AutoConfig.from_pretrained(tiny_checkpoint), qc_filter=False, max_positions=2048,
            encode=lambda clips: load_codec(tiny_checkpoint).encode(clips))
    finally:
        server.stop()
    local = TrainSet.from_parquet(open(os.path.join(out, TRAIN_SET_FILE), "rb").read())
    assert not skipped and from_s3.targets == local.targets
    assert all(np.array_equal(from_s3.turns[k].codes, local.turns[k].codes) for k in local.turns)
