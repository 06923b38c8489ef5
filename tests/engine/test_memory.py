"""The fast engine's memory: parked caches only for chains, the plan against real buffers, refusals.

The parked-cache test runs at CSM-1B's backbone widths (hidden 2048, 8 kv heads of 64, so a
parked row of 256 positions is 1 MiB per layer) with two layers and random weights: what is
measured is which buffers exist, not what they compute.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_prefill import CSM1B_WIDTH, _job, _model

from synth.engine import fast_engine
from synth.engine.fast_engine import FastEngine
from synth.engine.frame_step import FrameStep
from synth.engine.interface import GenerationRequest, SamplingParams
from synth.engine.memory import GIB, EngineMemoryError, headroom_bytes
from synth.engine.options import FastEngineOptions
from synth.engine.scheduler import Scheduler

TWO_LAYERS = replace(CSM1B_WIDTH, backbone=replace(CSM1B_WIDTH.backbone, num_layers=2))
GREEDY = SamplingParams(do_sample=False)


def _buffer_bytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_a_flat_run_allocates_no_parked_cache_and_chains_only_what_they_park():
    """Twelve rows through 4 slots with room for 4 parked rows: rows nobody follows park nothing,
    so no parked cache exists, in bytes. Followed rows (a chain's turns) whose slots the queue
    takes are parked, and only as many rows as are used are allocated, each one slot's cache of
    every layer: 2 layers x 2 (k, v) x 8 kv heads x 256 positions x 64 x 4 bytes = 2 MiB."""
    model = _model(TWO_LAYERS)
    num_slots, positions = 4, 256
    step = FrameStep(model, num_slots, positions)
    scheduler = Scheduler(model, step, park_rows=4)
    g = torch.Generator().manual_seed(0)
    for i in range(12):
        scheduler.submit(_job(f"flat{i}", 40 + i, TWO_LAYERS, g))
    assert len(scheduler.run()) == 12
    assert model.parked_bytes() == 0 and model.parked == [None] * 4

    b = TWO_LAYERS.backbone
    row_bytes = b.num_layers * 2 * b.num_kv_heads * positions * b.head_dim * 4
    assert row_bytes == 2 * 2**20
    for i in range(6):  # six followed rows through 4 slots: the last two take the slots of two of the first four
        scheduler.submit(replace(_job(f"turn{i}", 40 + i, TWO_LAYERS, g), followed=True))
    scheduler.run()
    assert model.parked_bytes() == 2 * row_bytes  # allocated on demand: two parked, two never used
    assert sum(h is not None for h in scheduler.held.held[num_slots:]) == 2


def test_the_plan_counts_the_buffers_the_engine_allocates(tiny_checkpoint):
    """The plan's KV caches and slot history are the bytes of the buffers the engine holds; its
    startup log line names every item; parked caches are a bound, not an allocation."""
    lines = []
    engine = FastEngine.load(tiny_checkpoint, device="cpu", dtype="float32", num_slots=6, max_positions=256,
                             compile=False, warmup=False, max_audio_seconds=4.0, log=lines.append)
    plan, model = engine.memory, engine.model
    caches = [layer.self_attn.cache for d in (model.backbone, model.depth) for layer in d.layers]
    assert plan.kv_caches == _buffer_bytes(*(t for c in caches for t in (c.k, c.v)))
    history = engine.step.state.history
    assert history.numel() * 4 <= plan.slot_state < history.numel() * 4 + 6 * 4096
    assert plan.weights == _buffer_bytes(*model.parameters(), *engine.codec.mimi.parameters())
    assert plan.park_rows == 6 and model.parked_bytes() == 0
    backbone = model.backbone.layers[0].self_attn.cache.k
    assert plan.parked_row_bytes == len(model.backbone.layers) * 2 * _buffer_bytes(backbone[0])
    assert plan.decode_frames == 50 and plan.decode_rows == min(16, engine.codec.max_batch)  # 4 s at 12.5 Hz
    assert lines[0].startswith("fast engine memory on cpu (float32; estimates): weights ")
    for item in ("KV caches", "6 slots x 256 positions", "parked caches up to", "none in a flat run", "slot state",
                 "frame step", "prefill", "decode", "2 rows x 50 frames", "total"):
        assert item in lines[0], item


def test_sizes_that_cannot_fit_are_refused_with_the_numbers_and_parking_shrinks_to_fit(tiny_checkpoint,
                                                                                       monkeypatch):
    """With the device's free memory just under the plan, loading fails before any cache exists,
    naming each item and what is free; with room for two and a half parked rows beyond the rest, a
    default `park_rows` becomes 2, and an explicit one that does not fit is refused."""
    load = dict(device="cpu", dtype="float32", num_slots=8, max_positions=256, compile=False, warmup=False)
    plan = FastEngine.load(tiny_checkpoint, **load).memory
    total = 4 * GIB
    need = plan.up_front + headroom_bytes(total)

    monkeypatch.setattr(fast_engine, "available_bytes", lambda device: (need - 1, total))
    with pytest.raises(EngineMemoryError) as refused:
        FastEngine.load(tiny_checkpoint, **load)
    message = str(refused.value)
    for item in ("do not fit cpu", "free of 4.00 GiB", "KV caches", "8 slots x 256 positions", "prefill",
                 "decode", "fast_engine.num_slots"):
        assert item in message, item

    monkeypatch.setattr(fast_engine, "available_bytes",
                        lambda device: (need + int(2.5 * plan.parked_row_bytes), total))
    assert FastEngine.load(tiny_checkpoint, **load).memory.park_rows == 2
    with pytest.raises(EngineMemoryError, match="parked caches"):
        FastEngine.load(tiny_checkpoint, **load, options=FastEngineOptions(park_rows=3))
    engine = FastEngine.load(tiny_checkpoint, **load, options=FastEngineOptions(kv_continuation=False))
    assert engine.memory.park_rows == 0
    engine.generate([GenerationRequest("a", "Hello there.", 0, 3)], GREEDY)
    assert engine.model.parked_bytes() == 0
