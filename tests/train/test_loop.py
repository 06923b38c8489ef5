"""Full fine-tuning and LoRA: what trains, and the saved model `from_pretrained` loads (no Ray here)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synth.train.batches import CodedTurn, CodesLoss, Example, collate
from synth.train.config import TrainConfig
from synth.train.loop import load_base, save_final_model, trainable


def _example(seed: int) -> Example:
    rng = np.random.default_rng(seed)
    turn = lambda s, t, n: CodedTurn(s, t, rng.integers(0, 2048, size=(n, 32)).astype(np.int16))  # noqa: E731
    return Example(str(seed), (turn(0, "Some context.", 6),), turn(1, "The target turn.", 9))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_changes_only_what_the_method_trains_and_the_saved_model_loads(method, tiny_checkpoint, tmp_path):
    from transformers import CsmForConditionalGeneration

    config = TrainConfig.model_validate({"model": {"id": tiny_checkpoint, "method": method}, "lora": {"rank": 4}})
    model, processor, adapters = load_base(config)
    params = trainable(model)
    assert params and not [n for n in params if "codec_model" in n]  # Mimi never trains
    if method == "lora":
        assert all("lora_" in n for n in params)
    else:
        assert len(params) == len([n for n, _ in model.named_parameters() if "codec_model" not in n])
    batch = collate(processor, model.config, [_example(1), _example(2)])
    optimizer = torch.optim.AdamW(params.values(), lr=1e-2)
    losses = []
    for _ in range(2):
        loss = CodesLoss(model)(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    save_final_model(model, processor, adapters, str(tmp_path / "model"))
    loaded = CsmForConditionalGeneration.from_pretrained(str(tmp_path / "model"), dtype=torch.float32).eval()
    with torch.no_grad():
        assert CodesLoss(loaded)(batch).item() == pytest.approx(CodesLoss(model.eval())(batch).item(), rel=1e-5)
    base = load_file(os.path.join(tiny_checkpoint, "model.safetensors"))
    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert not [n for n in saved if "lora" in n] and set(saved) == set(base)  # adapters merged: the base's names
    changed = {n for n in base if not torch.equal(saved[n], base[n])}
    assert "backbone_model.layers.0.self_attn.q_proj.weight" in changed
    assert not [n for n in changed if n.startswith("codec_model.")]
    if method == "lora":  # only the adapted projections moved
        assert all(n.endswith(("_proj.weight")) for n in changed), sorted(changed)[:5]
