"""The per-worker training loop Ray Train runs: load, (LoRA), resume, step, checkpoint, save.

This module owns one data-parallel worker's life: the base CSM from `from_pretrained` in
float32 (Mimi frozen: its weights never train), LoRA adapters through peft when asked, the
model wrapped for data parallelism (`ray.train.torch.prepare_model`: DDP over gloo on CPU, NCCL
on GPUs), AdamW over the trainable weights, the resumed state when Ray Train hands the run a
checkpoint (weights, optimizer, step, loss history), then the plan's steps: its batch of
examples, collated from codes (synth.train.batches), forward under bfloat16 autocast on GPU,
backward, clipped step, the loss averaged over workers; a checkpoint every
`checkpoints.every_steps` and at the end; and, on rank 0, the final model (LoRA merged) with
the base's processor files committed as the training store's `model` unit, under the run's
lease (synth.train.output). It knows nothing of datasets on disk beyond the prepared train set.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time

import torch

from synth.store.store import Store
from synth.train.batches import CodesLoss, collate
from synth.train.config import TrainConfig
from synth.train.dataset import TrainSet
from synth.train.output import MODEL_DIR, MODEL_UNIT, TRAIN, TRAIN_SET_FILE
from synth.train.sampler import BatchPlan

STATE_FILE = "state.pt"


def say(line: str) -> None:
    """A line of the worker's log, printed once. Ray Train replaces `print` in its workers with one that
    logs the line and also prints it, so the driver, which shows both, would show every line twice."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def load_base(config: TrainConfig):
    """(model, processor, adapters) of the base checkpoint: float32, Mimi frozen; adapters is the
    peft wrapper when model.method is lora (its LoRA layers live inside `model`), else None."""
    from transformers import AutoProcessor, CsmForConditionalGeneration

    from synth.engine.checkpoint import resolve_checkpoint

    path = str(resolve_checkpoint(config.model.resolved_id))
    model = CsmForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    model.codec_model.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(path)
    adapters = None
    if config.model.method == "lora":
        import peft

        lora = config.lora
        adapters = peft.get_peft_model(model, peft.LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
            exclude_modules=r".*codec_model.*"))
    return model, processor, adapters


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_final_model(model, processor, adapters, directory: str) -> None:
    """The trained CSM as a checkpoint `from_pretrained` (and synth's engines) load: LoRA merged."""
    if adapters is not None:
        model = adapters.merge_and_unload()
    model.save_pretrained(directory)
    processor.save_pretrained(directory)


def train_loop(loop_config: dict) -> None:
    """Ray Train's `train_loop_per_worker`. loop_config: {"config": TrainConfig as dict, "store": the
    training output (path or URI), "run_id" and "settings": the run whose lease rank 0 commits the
    final model under}."""
    import ray.train
    import ray.train.torch

    config = TrainConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(config.workers.torch_threads or math.ceil(config.workers.cpus_per_worker))
    torch.manual_seed(config.optim.seed)  # the same adapters' initial weights on every worker

    store = Store.at_uri(loop_config["store"], TRAIN, run_id=loop_config["run_id"], settings=loop_config["settings"])
    train_set = TrainSet.from_parquet(store.read(TRAIN_SET_FILE))
    model, processor, adapters = load_base(config)
    params = trainable(model)
    optimizer = torch.optim.AdamW(params.values(), lr=config.optim.learning_rate,
                                  weight_decay=config.optim.weight_decay)
    plan = BatchPlan(train_set.lengths, batch_positions=config.data.batch_positions, num_workers=world,
                     seed=config.optim.seed, epochs=config.optim.epochs, max_steps=config.optim.max_steps)

    start, history = 0, []  # history: [step, mean loss over workers]
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, STATE_FILE), map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, value in state["weights"].items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        if rank == 0:
            say(f"train: resuming from the checkpoint of step {start}")

    module = ray.train.torch.prepare_model(CodesLoss(model))  # to the worker's device; DDP when world > 1
    device = ray.train.torch.get_device()
    bf16 = config.model.precision == "bfloat16" or (config.model.precision == "auto" and device.type == "cuda")
    if rank == 0:
        say(f"train: {len(train_set.targets)} examples, {plan.steps_per_epoch} steps per epoch on {world} "
            f"worker(s), steps {start + 1}..{plan.num_steps}, {sum(p.numel() for p in params.values())} "
            f"trainable weights ({config.model.method}), {'bfloat16' if bf16 else 'float32'} on {device.type}")
    module.train()
    for step in range(start, plan.num_steps):
        t0 = time.perf_counter()
        batch = collate(processor, model.config, [train_set.example(i) for i in plan.batch(step, rank)],
                        train_context=config.data.train_context).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().float()
        if world > 1:
            torch.distributed.all_reduce(mean)
            mean /= world
        history.append([step + 1, round(mean.item(), 6)])
        if rank == 0:
            say(f"train: step {step + 1}/{plan.num_steps} loss {mean.item():.4f} "
                f"({batch.num_positions} positions, {time.perf_counter() - t0:.2f} s)")
        if (step + 1) % config.checkpoints.every_steps == 0 or step + 1 == plan.num_steps:
            _report(step + 1, history, params, optimizer, rank)
    if rank == 0:
        store.retract(MODEL_UNIT)
        with tempfile.TemporaryDirectory() as directory:
            save_final_model(model, processor, adapters, directory)
            files = []
            for name in sorted(os.listdir(directory)):
                with open(os.path.join(directory, name), "rb") as f:
                    files.append(store.write_stream(f"{MODEL_DIR}/{name}", iter(lambda: f.read(1 << 20), b"")))
        store.commit(MODEL_UNIT, files)
        say(f"train: saved the model to {store.at(MODEL_DIR).uri}")


def _report(step: int, history: list, params: dict, optimizer, rank: int) -> None:
    """Report the step to Ray Train on every worker, with the checkpoint from rank 0 (weights are equal on all)."""
    import ray.train

    metrics = {"step": step, "loss": history[-1][1], "history": history}
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            state = {"step": step, "history": history, "optimizer": optimizer.state_dict(),
                     "weights": {name: p.detach().cpu() for name, p in params.items()}}
            torch.save(state, os.path.join(directory, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(metrics, checkpoint=checkpoint)
    if rank == 0:
        say(f"train: checkpoint at step {step}")
