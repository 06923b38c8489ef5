"""A fine-tuning run: the store it owns, the prepared train set, Ray Train's TorchTrainer, the record.

This module owns `synth train`: claiming the training output (a store of kind `train`:
new, empty, or one of its own runs; anything else is refused), taking its lease,
refusing a relaunch whose dataset (its committed parts, fingerprinted) or settings differ
from the recorded ones, preparing the train set once (synth.train.dataset, Mimi loaded
only if some context clip must be encoded; committed as a unit and read back only if its
bytes are the committed ones) and listing the rows it skipped, then a `TorchTrainer` with
one worker per GPU (or CPU workers) running synth.train.loop, whose checkpoints live under
the output so that the same command after a kill resumes from the newest one; rank 0
commits the trained model as a unit, and at the end `train.json` says it is complete. The
names are `synth.train.output`'s. It knows nothing of the model math or the batch layout.
"""

from __future__ import annotations

import os
import time

from synth.errors import SynthError
from synth.pipeline.output import committed_parts, dataset_store
from synth.store.lease import Lease
from synth.store.recovery import recover
from synth.store.store import Store, canonical_hash
from synth.train.config import TrainConfig
from synth.train.dataset import TrainSet, prepare_train_set
from synth.train.output import (
    MODEL_DIR,
    RAY_DIR,
    RUN_NAME,
    TRAIN,
    TRAIN_RECORD,
    TRAIN_SET_FILE,
    TRAIN_SET_UNIT,
)
from synth.train.sampler import BatchPlan

LEASE_STALE_S = 60.0  # as a run's job.lease_stale_seconds


class TrainError(SynthError, RuntimeError):
    """A training run that cannot start or continue; the message says why."""


def data_fingerprint(data: Store) -> str:
    """A hash of what a dataset has committed (each part's files and checksums): the rows a run trains on."""
    parts = committed_parts(data)
    return canonical_hash({f"{s}/{p}": [(f.path, f.sha256) for f in c.files] for (s, p), c in sorted(parts.items())})


def _codec_encoder(model_id: str):
    """clips -> codes through synth's batched Mimi, loaded on first use."""
    def encode(clips):
        from synth.train.importer import load_codec

        return [c.numpy() for c in load_codec(model_id).encode(clips)]
    return encode


def prepared_train_set(store: Store, record: dict, data_uri: str, config: TrainConfig) -> TrainSet:
    """The run's train set: read back on a relaunch (only if its bytes are the committed ones), else
    prepared from the dataset and committed."""
    data = store.read_verified(TRAIN_SET_UNIT, TRAIN_SET_FILE)
    if data is not None:
        return TrainSet.from_parquet(data)
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
    store.retract(TRAIN_SET_UNIT)
    store.commit(TRAIN_SET_UNIT, [store.write(TRAIN_SET_FILE, train_set.to_parquet())], {"skipped": len(skipped)})
    record["skipped"] = skipped
    store.write_record(TRAIN_RECORD, record)
    return train_set


def train(config: TrainConfig, data_uri: str, output_uri: str) -> dict:
    """Fine-tune on the dataset at `data_uri` into `output_uri` (resuming a killed run there); the record."""
    data = dataset_store(data_uri, "synth train --data")  # before OUT is claimed for it
    store = Store.at_uri(output_uri, TRAIN)
    store.claim()
    with Lease.acquire(store, stale_after_s=LEASE_STALE_S) as lease:
        store.run_id = lease.run_id
        store.settings = record_identity(store, data_uri, data, config)
        found = recover(store, batch=time.strftime("%Y%m%dT%H%M%SZ") + f"-{lease.run_id}")
        for finding in found.findings:
            print(f"train: VERIFY FAILED: {finding} (put aside; made again)", flush=True)
        record = store.read_record(TRAIN_RECORD) or {"data": data_uri, "finished": False}
        return _train_leased(config, data_uri, store, record)


def record_identity(store: Store, data_uri: str, data: Store, config: TrainConfig) -> str:
    """Record what the run trains on and how, or refuse a relaunch on other data or settings."""
    identity = {"data": data_uri, "data_fingerprint": data_fingerprint(data), "config": config.identity()}
    fixed = {"data": "it holds a training run on another dataset",
             "data_fingerprint": "the dataset's committed rows changed since this training run began (a part made "
                                 "again, or more parts committed)",
             "config": "it holds a training run with other settings (use the recorded settings to resume)"}
    return store.record_identity(identity, fixed=fixed)


def _train_leased(config: TrainConfig, data_uri: str, store: Store, record: dict) -> dict:
    train_set = prepared_train_set(store, record, data_uri, config)
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
        store.write_record(TRAIN_RECORD, record)
    metrics = _fit(config, store).metrics or {}  # none when a finished run is launched again with no step to do
    history = metrics.get("history", record.get("losses", []))
    record.update(finished=True, steps=metrics.get("step", record.get("steps")), losses=history, model=MODEL_DIR,
                  finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    store.write_record(TRAIN_RECORD, record)
    if history:
        print(f"train: done: {record['steps']} steps, loss {history[0][1]:.4f} at step {history[0][0]} -> "
              f"{history[-1][1]:.4f}; model in {store.at(MODEL_DIR).uri}", flush=True)
    return record


def _fit(config: TrainConfig, store: Store):
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
        return store.at(name).path if store.location.is_local else store.at(name).uri

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": config.model_dump(mode="json"), "store": store.location.path if store.location.is_local else store.uri, "run_id": store.run_id,
                           "settings": store.settings},
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
