"""Prefill: prompt embeddings, the token budget, bucketed shapes and padding rows (CPU).

The memory test runs at CSM-1B's backbone widths (hidden 2048, FFN 8192, 32/8 heads, 32
codebooks x 2051) with random weights and one layer: a prefill's activations do not depend
on depth, since each layer's are freed before the next one's.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._C._profiler import _EventType

from synth.engine.frame_step import FrameStep
from synth.engine.interface import SamplingParams
from synth.engine.lean_csm import CsmArgs, DecoderArgs, LeanCsm
from synth.engine.scheduler import Job, PrefillBuckets, Scheduler
from synth.engine.tiny_checkpoint import CSM1B_ROPE

# csm-1b's backbone and audio table (transformers' CsmConfig defaults); a small text vocabulary and
# depth decoder, neither of which a prefill's activations depend on.
CSM1B_WIDTH = CsmArgs(
    backbone=DecoderArgs(hidden_size=2048, num_layers=1, num_heads=32, num_kv_heads=8, head_dim=64,
                         intermediate_size=8192, rms_norm_eps=1e-5, max_positions=2048, rope=dict(CSM1B_ROPE)),
    depth=DecoderArgs(hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
                      rms_norm_eps=1e-5, max_positions=33, rope=dict(CSM1B_ROPE)),
    num_codebooks=32, audio_vocab_size=2051, text_vocab_size=512, codebook_eos_token_id=0,
    codebook_pad_token_id=2050, audio_token_id=2, audio_eos_token_id=3,
)
TINY = replace(CSM1B_WIDTH, backbone=replace(CSM1B_WIDTH.backbone, hidden_size=64, num_layers=2, num_heads=4,
                                             num_kv_heads=2, head_dim=16, intermediate_size=128, max_positions=256),
               num_codebooks=4, audio_vocab_size=11, text_vocab_size=50)


def _model(args: CsmArgs, dtype=torch.float32, seed: int = 0) -> LeanCsm:
    torch.manual_seed(seed)
    model = LeanCsm(args).eval().to(dtype)
    with torch.no_grad():
        model.codebooks_head.normal_()
        for layer in model.backbone.layers:  # RMSNorm weights start at 1: make them count
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
    return model


def _job(key, length: int, args: CsmArgs, generator: torch.Generator, audio=(0, 0)) -> Job:
    """A prompt of `length` positions whose positions audio[0]..length-audio[1]-1 are audio frames."""
    ids = torch.randint(0, args.text_vocab_size, (length,), generator=generator)
    codes = torch.randint(0, args.audio_vocab_size, (length, args.num_codebooks), generator=generator)
    is_audio = torch.zeros(length, dtype=torch.bool)
    is_audio[audio[0]: length - audio[1]] = True
    return Job(key, ids, codes[is_audio], is_audio, max_frames=4, sampling=SamplingParams(do_sample=False))


def _peak_allocated_bytes(fn) -> int:
    """Peak bytes held by CPU tensors allocated while `fn` runs, beyond those held before it:
    the allocator's running total, as torch.profiler's memory events report it."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocations = []

    def walk(nodes):
        for node in nodes:
            if node.tag == _EventType.Allocation:
                allocations.append((node.start_time_ns, node.extra_fields.total_allocated,
                                    node.extra_fields.alloc_size))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    assert allocations, "the profiler reported no allocations: its API changed"
    allocations.sort()
    _, first_total, first_size = allocations[0]
    return max(total for _, total, _ in allocations) - (first_total - first_size)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_prompt_embedding_is_the_codebook_sum_at_audio_positions_only(dtype):
    """`embed_prompt` (audio positions gathered, codebooks summed one at a time, scattered into
    the text embeddings) equals the sum over all codebooks at every position, then a select."""
    args = TINY
    model = _model(args, dtype)
    g = torch.Generator().manual_seed(1)
    R, T = 3, 20
    ids = torch.randint(0, args.text_vocab_size, (R, T), generator=g)
    codes = torch.randint(0, args.audio_vocab_size, (R, T, args.num_codebooks), generator=g)
    is_audio = torch.rand(R, T, generator=g) < 0.6
    with torch.no_grad():
        want = torch.where(is_audio[..., None], model.embed_frames(codes), model.embed_text_tokens(ids))
        got = model.embed_prompt(ids, is_audio.flatten().nonzero()[:, 0], codes[is_audio])
        text_only = model.embed_prompt(ids, torch.zeros(0, dtype=torch.long), codes[:0, 0])
    assert got.dtype == dtype and got.shape == (R, T, args.backbone.hidden_size)
    torch.testing.assert_close(got, want, rtol=1e-12 if dtype == torch.float64 else 1e-2, atol=0)
    torch.testing.assert_close(text_only, model.embed_text_tokens(ids), rtol=0, atol=0)


def test_padding_rows_write_no_cache_row():
    """Rows past `slots` (a bucketed prefill's padding rows) change no cache row, and the real
    rows' caches and hidden states are those of a prefill without them."""
    model = _model(TINY, torch.float64)
    model.setup_caches(4, 64)
    layers = [layer.self_attn.cache for layer in model.backbone.layers]
    x = torch.randn(4, 16, TINY.backbone.hidden_size, dtype=torch.float64)
    slots, lengths = torch.tensor([2, 1]), torch.tensor([16, 9])
    with torch.no_grad():
        for cache in layers:
            cache.k.fill_(7.0)
            cache.v.fill_(7.0)
        want = model.prefill(x[:2], lengths, slots)
        want_k = [cache.k.clone() for cache in layers]
        for cache in layers:
            cache.k.fill_(7.0)
            cache.v.fill_(7.0)
        got = model.prefill(x, lengths, slots)  # rows 2 and 3 are padding
    torch.testing.assert_close(got, want)
    for cache, k in zip(layers, want_k):
        torch.testing.assert_close(cache.k, k)
        assert (cache.k[[0, 3]] == 7.0).all() and (cache.v[[0, 3]] == 7.0).all()
        assert (cache.k[[1, 2], :, 16:] == 7.0).all()  # and nothing past the prefill's length


def test_prefill_buckets():
    """Lengths from 64 and rows in powers of two, within the budget: at csm-1b's sizes (2048
    positions, 256 slots, the default 16384 positions) a run's prefills take one of 39 shapes."""
    buckets = PrefillBuckets(max_positions=2048, max_rows=256, tokens=16384)
    lengths = [64, 128, 256, 512, 1024, 2048]
    assert buckets.all_shapes() == {(1 << i, T) for T in lengths for i in range(9) if (1 << i) * T <= 16384}
    assert len(buckets.all_shapes()) == 39
    assert [buckets.length(n) for n in (1, 64, 65, 129, 700, 2047)] == [64, 64, 128, 256, 1024, 2048]
    assert buckets.row_cap(2048) == 8 and buckets.row_cap(64) == 256
    assert buckets.shape(5, 100) == (8, 128) and buckets.shape(3, 1500) == (4, 2048)
    # Caps that are not powers of two are a bucket of their own; the budget always holds one longest row.
    small = PrefillBuckets(max_positions=200, max_rows=3, tokens=100)
    assert small.tokens == 200 and small.all_shapes() == {(1, 64), (2, 64), (3, 64), (1, 128), (1, 200)}
    with pytest.raises(ValueError, match="tokens=0"):
        PrefillBuckets(max_positions=200, max_rows=3, tokens=0)


def test_prefill_memory_is_bounded_by_the_token_budget():
    """At CSM-1B's widths, one admission of 16 prompts of 150-300 positions (mostly audio) with a
    budget of 2048 positions: split into several prefills of at most 2048 positions each, it
    peaks under budget x (4 x FFN + 5 x hidden) values, the MLP's gate/up, activation and
    product plus a few residual-width tensors per position. The old path (all codebooks embedded
    at every position, every free slot in one prefill) held 16 x 300 x 32 x 2048 values in
    its embedding alone, 3.6 times this bound (1239 MiB measured, against 320 MiB now)."""
    args = CSM1B_WIDTH
    model = _model(args)
    num_slots, budget = 16, 2048
    step = FrameStep(model, num_slots, 512)
    scheduler = Scheduler(model, step, prefill_tokens=budget)
    g = torch.Generator().manual_seed(0)
    jobs = [_job(i, 150 + 10 * i, args, g, audio=(10, 5)) for i in range(num_slots)]
    for job in jobs:
        scheduler.submit(job)
    shapes = []
    prefill = model.prefill

    def recording(embeds, lengths, slots):
        shapes.append((*embeds.shape[:2], len(lengths)))
        return prefill(embeds, lengths, slots)

    model.prefill = recording
    peak = _peak_allocated_bytes(scheduler._admit)

    b = args.backbone
    itemsize = torch.finfo(torch.float32).bits // 8
    bound = budget * (4 * b.intermediate_size + 5 * b.hidden_size) * itemsize
    old_embedding = num_slots * max(len(j.input_ids) for j in jobs) * args.num_codebooks * b.hidden_size * itemsize
    assert old_embedding > 3 * bound  # what the bound excludes
    assert peak < bound, (peak / 2**20, bound / 2**20)
    assert peak > bound / 2  # the measurement sees the prefill's activations at all
    assert all(rows * length <= budget for rows, length, _ in shapes), shapes
    assert sum(n for _, _, n in shapes) == num_slots and len(shapes) >= 3
    assert {(rows, length) for rows, length, _ in shapes} <= scheduler.prefill.all_shapes()
    assert not scheduler.queue and all(row is not None for row in scheduler.rows)
    stats = scheduler.stats
    assert stats.prefill_rows == num_slots and stats.prefill_tokens == sum(len(j.input_ids) for j in jobs)
    assert stats.prefill_positions == sum(rows * length for rows, length, _ in shapes)
