"""Typed configuration of a fine-tuning job: what to train, on what, how, on how many workers.

This module owns the pydantic model of `synth train`'s YAML (sections `model`, `lora`, `data`,
`optim`, `checkpoints`, `workers`, `ray`), validated before any model or worker starts, with
`--set section.field=value` overrides read by synth.pipeline.config's loader. It knows nothing
of models, Ray or files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from synth.pipeline.config import RayConfig, load_config


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainModelConfig(_Section):
    """The checkpoint fine-tuned, and how."""

    id: str = Field("sesame/csm-1b", description="Base checkpoint: hub id or local directory.")
    method: Literal["full", "lora"] = Field("full", description="`full`: every weight but Mimi's; `lora`: adapters (peft).")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Compute dtype of forward/backward (weights and optimizer stay float32); "
        "`auto` = bfloat16 autocast on CUDA, float32 on CPU.")

    @property
    def resolved_id(self) -> str:
        return str(Path(self.id).expanduser()) if self.id.startswith(("~", "/", ".")) else self.id


class LoraConfig(_Section):
    """LoRA adapters (model.method: lora), merged into the weights of the saved model."""

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        description="Linear layers given adapters, in both the backbone and the depth decoder.")


class DataConfig(_Section):
    """Which rows train, and how they are batched."""

    qc_filter: bool = Field(False, description="Train only rows whose `qc_pass` column is true (the dataset must have it).")
    train_context: bool = Field(
        False, description="Also train on the context turns' frames (as the processor's labels do); "
        "false: a row's context only conditions, its own frames train.")
    max_positions: int | None = Field(None, ge=16, description="Longest example (text + frames); None = the model's.")
    batch_positions: int = Field(8192, ge=16, description="Rows x padded length of one worker's batch (length-bucketed).")


class OptimConfig(_Section):
    """AdamW and the length of the run."""

    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (None: all epochs).")
    seed: int = 0


class CheckpointConfig(_Section):
    """Checkpoints a killed job resumes from."""

    every_steps: int = Field(100, ge=1)
    keep: int = Field(2, ge=1, description="Checkpoints kept (the newest).")
    max_failures: int = Field(3, ge=0, description="Worker-group restarts (a lost node or worker) from the newest "
                              "checkpoint before the run fails; a killed driver is resumed by running it again.")


class WorkersConfig(_Section):
    """Ray Train's data-parallel workers: one per GPU."""

    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="Torch threads per worker; None = ceil(cpus_per_worker).")


class TrainConfig(_Section):
    """The whole fine-tuning configuration."""

    model: TrainModelConfig = TrainModelConfig()
    lora: LoraConfig = LoraConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    checkpoints: CheckpointConfig = CheckpointConfig()
    workers: WorkersConfig = WorkersConfig()
    ray: RayConfig = RayConfig()  # the same cluster conventions as a synthesis run

    @model_validator(mode="after")
    def _bf16_needs_gpu(self) -> "TrainConfig":
        if self.model.precision == "bfloat16" and not self.workers.use_gpu:
            raise ValueError("model.precision 'bfloat16' needs workers.use_gpu: true (CPU workers train in float32)")
        return self

    def identity(self) -> dict:
        """What a relaunch on the same output must not change (recorded in OUT/train.json); the run's
        length (optim.epochs, optim.max_steps) may change: a longer run continues a shorter one."""
        return self.model_dump(mode="json", include={"model": True, "lora": True, "data": True,
                                                     "optim": {"learning_rate", "weight_decay", "max_grad_norm", "seed"}})


def load_train_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    return load_config(path, overrides, schema=TrainConfig)
