"""A fine-tuning run: the output it owns, the prepared train set, Ray Train's TorchTrainer, the record.

This module owns `synth train`: claiming the training output (new, empty, or one of its own
runs; anything else is refused), refusing a relaunch whose data or settings differ from the
recorded ones, preparing the train set once (synth.train.dataset, Mimi loaded only if some
context clip must be encoded) and listing the rows it skipped, then a `TorchTrainer` with one
worker per GPU (or CPU workers) running synth.train.loop, whose checkpoints live under the
output so that the same command after a kill resumes from the newest one, and at the end the
record `train.json` (written last) that says the model under `model/` is complete:

    OUT/train.json           ownership, the data and settings of the run, skipped rows, then the
                             steps, the loss history and `finished: true`
    OUT/train_set.parquet    the prepared examples every worker reads (codes, context by id)
    OUT/ray/run/...          Ray Train's checkpoints and its snapshot of them
    OUT/model/               the trained checkpoint: `from_pretrained` and synth's `model.id` load it

It knows nothing of the model math or the batch layout.
"""

from __future__ import annotations

import json
import os
import time

from synth import __version__
from synth.errors import SynthError
from synth.pipeline import storage
from synth.train.config import TrainConfig
from synth.train.dataset import TrainSet, prepare_train_set
from synth.train.sampler import BatchPlan

TRAIN_RECORD = "train.json"
TRAIN_SET_FILE = "train_set.parquet"
MODEL_DIR = "model"
RAY_DIR = "ray"
RUN_NAME = "run"


class TrainError(SynthError, RuntimeError):
    """A training run that cannot start or continue; the message says why."""


def _claim(out: storage.Location, data_uri: str, config: TrainConfig) -> dict:
    """The run's record: a new one for a new or empty OUT, the recorded one on a relaunch whose data
    and settings match; any other directory, or other data or settings, is refused."""
    if storage.exists(out) and not storage.is_dir(out):
        raise TrainError(f"--output {out.uri} is a file, not a directory")
    present = storage.entries(out)
    if TRAIN_RECORD in present:
        record = json.loads(storage.read_bytes(out.join(TRAIN_RECORD)))
        changed = [k for k in ("data",) if record.get(k) != data_uri]
        old, new = record.get("config", {}), config.identity()
        changed += [f"{section}.{field}" for section in new for field in new[section]
                    if old.get(section, {}).get(field) != new[section][field]]
        if changed:
            raise TrainError(f"{out.uri} holds a training run with other settings ({', '.join(changed)} differ): "
                             "use a new --output, or the recorded settings to resume it")
        return record
    if present:
        raise TrainError(f"--output {out.uri} is not empty and is not a synth training run (it holds "
                         f"{', '.join(present[:8])}): use a new or empty directory")
    record = {"synth": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "data": data_uri, "config": config.identity(), "finished": False}
    storage.write_bytes_atomic(out.join(TRAIN_RECORD), json.dumps(record, indent=2).encode())
    return record


def _codec_encoder(model_id: str):
    """clips -> codes through synth's batched Mimi, loaded on first use."""
    def encode(clips):
        from synth.train.importer import load_codec

        return [c.numpy() for c in load_codec(model_id).encode(clips)]
    return encode


def prepared_train_set(out: storage.Location, record: dict, data_uri: str, config: TrainConfig) -> TrainSet:
    """The run's train set: read back on a relaunch, else prepared from the dataset and stored."""
    path = out.join(TRAIN_SET_FILE)
    if storage.exists(path):
        return TrainSet.from_parquet(storage.read_bytes(path))
    from transformers import AutoConfig, AutoProcessor

    from synth.engine.checkpoint import resolve_checkpoint

    model_path = str(resolve_checkpoint(config.model.resolved_id))
    model_config = AutoConfig.from_pretrained(model_path)
    max_positions = config.data.max_positions or model_config.max_position_embeddings
    train_set, skipped = prepare_train_set(
        data_uri, processor=AutoProcessor.from_pretrained(model_path), model_config=model_config,
        qc_filter=config.data.qc_filter, max_positions=max_positions,
        encode=_codec_encoder(model_path))
    for line in skipped[:20]:
        print(f"train: skipped {line}", flush=True)
    if len(skipped) > 20:
        print(f"train: ... {len(skipped) - 20} more skipped rows (all in {TRAIN_RECORD})", flush=True)
    if not train_set.targets:
        raise TrainError(f"{data_uri}: no row can be trained on ({len(skipped)} skipped)")
    storage.write_bytes_atomic(path, train_set.to_parquet())
    record["skipped"] = skipped
    storage.write_bytes_atomic(out.join(TRAIN_RECORD), json.dumps(record, indent=2).encode())
    return train_set


def train(config: TrainConfig, data_uri: str, output_uri: str) -> dict:
    """Fine-tune on the dataset at `data_uri` into `output_uri` (resuming a killed run there); the record."""
    if not storage.exists(storage.resolve(data_uri).join("data")):  # before OUT is claimed for it
        raise TrainError(f"--data {data_uri} is not a synth dataset: it has no data/ directory")
    out = storage.resolve(output_uri)
    record = _claim(out, data_uri, config)
    train_set = prepared_train_set(out, record, data_uri, config)
    print(f"train: {len(train_set.targets)} examples ({sum(train_set.lengths)} positions) from {data_uri}, "
          f"{len(record.get('skipped', []))} rows skipped", flush=True)
    try:  # the workers' plan, checked here: a set too small for the workers fails before any starts
        BatchPlan(train_set.lengths, batch_positions=config.data.batch_positions,
                  num_workers=config.workers.num_workers, seed=config.optim.seed, epochs=config.optim.epochs,
                  max_steps=config.optim.max_steps)
    except ValueError as e:
        raise TrainError(str(e)) from None
    if record.get("finished"):  # a relaunch (a longer run) rewrites model/: it is not complete until the end
        record["finished"] = False
        storage.write_bytes_atomic(out.join(TRAIN_RECORD), json.dumps(record, indent=2).encode())
    metrics = _fit(config, out).metrics or {}  # none when a finished run is launched again with no step to do
    history = metrics.get("history", record.get("losses", []))
    record.update(finished=True, steps=metrics.get("step", record.get("steps")), losses=history, model=MODEL_DIR,
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    storage.write_bytes_atomic(out.join(TRAIN_RECORD), json.dumps(record, indent=2).encode())
    if history:
        print(f"train: done: {record['steps']} steps, loss {history[0][1]:.4f} at step {history[0][0]} -> "
              f"{history[-1][1]:.4f}; model in {out.join(MODEL_DIR).uri}", flush=True)
    return record


def _fit(config: TrainConfig, out: storage.Location):
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from synth.train.loop import train_loop

    if not ray.is_initialized():
        # as synth run: never join a cluster by accident; no address means a new local one
        address = config.ray.address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, log_to_driver=True, logging_level="warning")
    workers = config.workers
    resources = {"CPU": workers.cpus_per_worker, **({"GPU": 1} if workers.use_gpu else {})}
    cluster = ray.cluster_resources()
    if cluster.get("GPU", 0) < (workers.num_workers if workers.use_gpu else 0) or \
            cluster.get("CPU", 0) < workers.num_workers * workers.cpus_per_worker:
        raise TrainError(f"the Ray cluster has {cluster.get('CPU', 0)} CPUs and {cluster.get('GPU', 0)} GPUs; "
                         f"{workers.num_workers} workers need {resources} each (workers.*)")
    def where(name: str) -> str:  # absolute for local paths: workers need not share the driver's cwd
        return out.join(name).path if out.is_local else out.join(name).uri

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "train_set": where(TRAIN_SET_FILE),
                           "model_dir": where(MODEL_DIR)},
        scaling_config=ScalingConfig(num_workers=workers.num_workers, use_gpu=workers.use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=RUN_NAME, storage_path=where(RAY_DIR),
                             checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoints.keep),
                             failure_config=FailureConfig(max_failures=config.checkpoints.max_failures)),
    )
    try:
        return trainer.fit()
    except Exception as e:  # Ray's TrainingFailedError and the like: the worker's error is in the log above
        raise TrainError(f"training failed: {e}. Checkpoints are kept: run the same command again to resume "
                         "from the newest") from e
