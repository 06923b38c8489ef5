"""The fast engine against transformers' CSM on the tiny checkpoint (CPU).

Parity runs in float64 so float32 near-ties cannot flip a greedy argmax; the single
forward is compared in float32. The reference is transformers' own per-row
`CsmForConditionalGeneration.generate` (greedy on both decoders).
"""

from __future__ import annotations

import functools
import gc
import json
import shutil
import threading

import numpy as np
import pytest
import torch
from helpers import transformers_codes

from synth.engine.checkpoint import load_lean_csm
from synth.engine.fast_engine import FastEngine
from synth.engine.interface import GenerationRequest, SamplingParams, Segment
from synth.engine.lean_csm import rope_inv_freq
from synth.engine.options import FastEngineOptions
from synth.engine.prompt import conversation
from synth.engine.stop import StopRules
from synth.engine.tiny_checkpoint import CSM1B_ROPE

GREEDY = SamplingParams(do_sample=False)


def _clip(seconds: float, seed: int) -> np.ndarray:
    t = np.arange(int(24000 * seconds)) / 24000
    rng = np.random.RandomState(seed)
    return (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.randn(t.size)).astype(np.float32)


VOICE = _clip(1.03, 0)  # not a whole number of frames
REQUESTS = [
    GenerationRequest("plain-short", "Hello there.", 0, 5),
    GenerationRequest("plain-long", "It was the best of times, it was the worst of times, it was the age of wisdom.", 1, 9),
    GenerationRequest("ctx-audio", "Call me Ishmael.", 1, 7, context=(Segment(0, "Numbers like 42 appear.", VOICE),)),
    GenerationRequest("ctx-mixed", "Yes, she said.", 0, 6,
                      context=(Segment(1, "Hi.", None), Segment(0, "How are you doing today?", _clip(0.5, 1)),
                               Segment(1, "Fine, thanks.", VOICE))),
]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    from transformers import AutoProcessor, CsmForConditionalGeneration

    model = CsmForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    return model, AutoProcessor.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def reference_codes(reference):
    """transformers' greedy codes per request in float64: [frames, K], EOS frame included if one came."""
    return {r.request_id: transformers_codes(*reference, r, dtype=torch.float64) for r in REQUESTS}


def _engine(path, num_slots=2, dtype="float32", compile=False, **kw) -> FastEngine:
    return FastEngine.load(path, device="cpu", dtype=dtype, num_slots=num_slots, max_positions=256,
                           compile=compile, warmup=False, **kw)


@pytest.fixture(scope="module")
def engine64(tiny_checkpoint):
    return _engine(tiny_checkpoint, num_slots=3, dtype="float64")


def test_single_forward_logits_match_transformers(tiny_checkpoint, reference):
    ref, _ = reference
    ref = ref.to(torch.float32)
    lean, _ = load_lean_csm(tiny_checkpoint, dtype=torch.float32)
    lean.setup_caches(1, 64)
    torch.manual_seed(0)
    ids = torch.randint(0, 480, (1, 23))
    codes = torch.randint(0, 2048, (1, 32))
    with torch.no_grad():
        out = ref(input_ids=ids, output_hidden_states=True)
        hidden = lean.backbone.prefill(lean.embed_text_tokens(ids), torch.tensor([0]))
        torch.testing.assert_close(lean.lm_head(hidden), out.logits, rtol=1e-5, atol=1e-5)
        # Depth decoder: positions 0..31 fed one at a time through the static cache.
        h = out.hidden_states[-1][:, -1]
        dd = ref.depth_decoder(input_ids=torch.nn.functional.pad(codes[:, :-1], (1, 0)),
                               backbone_last_hidden_state=h)
        lean_logits = []
        x = h
        for p in range(32):
            d = lean.depth_step(x, torch.tensor([p]))
            if p:
                lean_logits.append(lean.codebook_logits(d, p))
            if p < 31:
                x = lean.embed_codebook(codes[:, p], p)
        torch.testing.assert_close(torch.stack(lean_logits, 1), dd.logits, rtol=1e-5, atol=1e-5)


def test_llama3_rope_frequencies_match_transformers():
    from transformers import CsmConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = CsmConfig(hidden_size=256, num_attention_heads=4, rope_parameters=dict(CSM1B_ROPE))
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config)
    torch.testing.assert_close(rope_inv_freq(CSM1B_ROPE, 64), expected, rtol=0, atol=0)


@pytest.mark.parametrize("num_slots,order", [(1, "forward"), (3, "reversed")])
def test_greedy_codes_equal_transformers_generate(tiny_checkpoint, reference_codes, num_slots, order):
    engine = _engine(tiny_checkpoint, num_slots=num_slots, dtype="float64")
    requests = REQUESTS if order == "forward" else REQUESTS[::-1]
    results = engine.generate(requests, GREEDY)
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    for req, res in zip(requests, results):
        np.testing.assert_array_equal(res.codes, reference_codes[req.request_id], err_msg=req.request_id)
        assert res.codes.dtype == np.int16 and res.stop_reason == "max_length"
        assert res.audio.dtype == np.float32 and res.audio.shape == (req.max_frames * engine.samples_per_frame,)
        assert res.num_prompt_tokens == engine.count_prompt_tokens(req)


def test_prompt_token_count_matches_processor(engine64, reference):
    _, processor = reference
    for req in REQUESTS:
        inputs = processor.apply_chat_template(conversation(req), tokenize=True, return_dict=True)
        assert engine64.count_prompt_tokens(req) == inputs["input_ids"].shape[1]


def test_slots_are_refilled_and_mostly_useful(tiny_checkpoint, reference_codes):
    engine = _engine(tiny_checkpoint, num_slots=2, dtype="float64")
    requests = REQUESTS + [GenerationRequest(f"extra-{i}", "Pack my box.", i, 3 + i) for i in range(3)]
    results = engine.generate(requests, GREEDY)
    stats = engine.scheduler.stats
    assert stats.prefill_rows == len(requests)
    assert stats.useful_frames == sum(r.max_frames for r in requests)
    # Rows leave the moment they finish: only the last few frames run half empty.
    assert stats.frames < sum(r.max_frames for r in requests) / 2 + max(r.max_frames for r in requests)
    assert {r.info.slot for r in results} == {0, 1}
    for req, res in zip(requests, results):
        if req.request_id in reference_codes:
            np.testing.assert_array_equal(res.codes, reference_codes[req.request_id])
        assert res.num_frames == req.max_frames


def test_max_frames_respected_including_zero(engine64):
    reqs = [GenerationRequest("zero", "Hello.", 0, 0), GenerationRequest("one", "Hello.", 0, 1),
            GenerationRequest("four", "Hello.", 0, 4)]
    results = engine64.generate(reqs, GREEDY)
    assert [r.num_frames for r in results] == [0, 1, 4]
    assert results[0].audio.shape == (0,)
    assert all(r.stop_reason == "max_length" for r in results)


def test_positions_cap_frames(tiny_checkpoint):
    engine = FastEngine.load(tiny_checkpoint, device="cpu", dtype="float32", num_slots=1, max_positions=24,
                             compile=False, warmup=False)
    req = GenerationRequest("long", "Hello there, how are you?", 0, 100)
    [res] = engine.generate([req], GREEDY)
    assert res.num_frames == 24 - engine.count_prompt_tokens(req)
    with pytest.raises(ValueError, match="prompt"):
        engine.generate([GenerationRequest("huge", "word " * 40, 0, 5)], GREEDY)


def test_eos_rule_codebooks_0_to_k_minus_2(tiny_checkpoint, reference):
    """All-zero heads make codebooks 0..30 argmax 0 (= codebook_eos_token_id): EOS on frame 0,
    and the EOS frame is not returned. Codebook 31 plays no part in the rule."""
    engine = _engine(tiny_checkpoint, num_slots=2)
    engine.model.lm_head.weight.zero_()
    engine.model.codebooks_head[:30].zero_()  # heads of codebooks 1..30; codebook 31 stays random
    results = engine.generate([GenerationRequest("a", "Hello.", 0, 8), GenerationRequest("b", "Bye.", 1, 8)], GREEDY)
    assert [(r.num_frames, r.stop_reason) for r in results] == [(0, "eos"), (0, "eos")]
    # transformers stops the same way, returning just the EOS frame.
    ref, _ = reference
    ref = ref.to(torch.float32)
    saved = ref.lm_head.weight.clone(), ref.depth_decoder.codebooks_head.weight.clone()
    try:
        ref.lm_head.weight.data.zero_()
        ref.depth_decoder.codebooks_head.weight.data[:30].zero_()
        codes = transformers_codes(*reference, GenerationRequest("a", "Hello.", 0, 8), dtype=torch.float32)
    finally:
        ref.lm_head.weight.data.copy_(saved[0])
        ref.depth_decoder.codebooks_head.weight.data.copy_(saved[1])
    assert codes.shape[0] == 1 and (codes[0, :31] == 0).all()

    # One non-EOS codebook among 0..30 is enough to keep going.
    engine.model.codebooks_head[29].normal_()
    [res] = engine.generate([GenerationRequest("c", "Hello.", 0, 5)], GREEDY)
    assert (res.num_frames, res.stop_reason) == (5, "max_length")


def test_silence_stop(tiny_checkpoint):
    engine = _engine(tiny_checkpoint, num_slots=2, stop_rules=StopRules(silence_frames=3))
    engine.model.lm_head.weight.zero_()  # codebook 0 holds one value: "silence"
    [res] = engine.generate([GenerationRequest("s", "Hello.", 0, 20)], GREEDY)
    assert res.stop_reason == "silence" and res.num_frames == 1  # the held tail is dropped


def test_sampling_seeded_reproducible_and_slot_independent(tiny_checkpoint):
    sampling = SamplingParams(do_sample=True, temperature=0.9, top_k=50, depth_temperature=0.8, depth_top_k=20)
    e1 = _engine(tiny_checkpoint, num_slots=1)
    e3 = _engine(tiny_checkpoint, num_slots=3)
    req = lambda rid, seed: GenerationRequest(rid, "Hello there.", 0, 6, seed=seed)  # noqa: E731
    [a] = e1.generate([req("a", 7)], sampling)
    b = e3.generate([req("x", 1), req("b", 7), req("y", 2)], sampling)
    np.testing.assert_array_equal(a.codes, b[1].codes)
    assert not np.array_equal(b[0].codes, b[1].codes) and not np.array_equal(b[0].codes, b[2].codes)
    [greedy] = e1.generate([req("g", 7)], GREEDY)
    assert not np.array_equal(a.codes, greedy.codes)
    # Top-k 1 is greedy whatever the seed.
    [k1] = e1.generate([req("k", 3)], SamplingParams(do_sample=True, top_k=1, depth_top_k=1))
    np.testing.assert_array_equal(k1.codes, greedy.codes)


def test_top_k_beyond_sampler_width_is_refused(engine64):
    req = [GenerationRequest("a", "Hello.", 0, 2)]
    for bad in (SamplingParams(top_k=0), SamplingParams(depth_top_k=engine64.step.top_k_max + 1)):
        with pytest.raises(ValueError, match="top_k"):
            engine64.generate(req, bad)


def test_follow_up_requests_join_while_running(engine64, reference_codes):
    first = REQUESTS[0]
    follow = REQUESTS[2]
    seen = []

    def on_result(res):
        seen.append(res.request_id)
        return [follow] if res.request_id == first.request_id else None

    results = engine64.run([first, REQUESTS[1]], GREEDY, on_result=on_result)
    assert sorted(seen) == sorted([first.request_id, REQUESTS[1].request_id, follow.request_id])
    got = {r.request_id: r.codes for r in results}
    np.testing.assert_array_equal(got[follow.request_id], reference_codes[follow.request_id])


@pytest.mark.parametrize("status_lag", [1, 3])
def test_result_thread_and_lagged_stop_flags_change_nothing(tiny_checkpoint, reference_codes, status_lag):
    """The CUDA defaults (rows finished on a worker thread, stop flags read frames late),
    forced on CPU: the same codes and audio as the synchronous loop, follow-ups included,
    with the callback off the frame loop's thread and frozen rows costing only the lag."""
    follow = {"plain-short": REQUESTS[2], "extra-1": REQUESTS[3]}  # chains: a finished row's next turn
    requests = REQUESTS[:2] + [GenerationRequest(f"extra-{i}", "Pack my box.", i, 3 + i) for i in range(3)]

    def run(engine):
        threads = set()

        def on_result(res):
            threads.add(threading.current_thread().name)
            return [follow[res.request_id]] if res.request_id in follow else None

        results = {r.request_id: r for r in engine.run(requests, GREEDY, on_result=on_result)}
        return results, threads, engine.scheduler.stats

    plain, plain_threads, plain_stats = run(_engine(tiny_checkpoint, num_slots=2, dtype="float64"))
    lagged, lagged_threads, lagged_stats = run(_engine(tiny_checkpoint, num_slots=2, dtype="float64",
                                                       options=FastEngineOptions(result_thread=True,
                                                                                 status_lag=status_lag)))
    assert plain_threads == {threading.main_thread().name}
    assert lagged_threads and threading.main_thread().name not in lagged_threads
    assert sorted(lagged) == sorted(plain) and len(plain) == len(requests) + len(follow)
    for key, res in plain.items():
        np.testing.assert_array_equal(lagged[key].codes, res.codes, err_msg=key)
        np.testing.assert_array_equal(lagged[key].audio, res.audio, err_msg=key)
        if key in reference_codes:
            np.testing.assert_array_equal(res.codes, reference_codes[key])
    assert lagged_stats.useful_frames == plain_stats.useful_frames
    # A finished row is seen `status_lag` frames late, so its slot idles that long before refill.
    extra = lagged_stats.frames - plain_stats.frames
    assert 0 <= extra <= status_lag * lagged_stats.prefill_rows, (extra, lagged_stats)


def test_attention_buckets_cover_every_row_and_change_nothing(tiny_checkpoint, reference_codes):
    """The backbone attends over the smallest bucket (64, 128, 192 or 256 of 256 positions)
    that covers every busy slot: rows that grow across buckets, next to short ones, give
    the codes of attention over all positions, while far fewer positions are read."""
    requests = REQUESTS + [GenerationRequest("long", "Pack my box with five dozen liquor jugs.", 1, 150),
                           GenerationRequest("late", "Hello.", 0, 70)]
    full = _engine(tiny_checkpoint, num_slots=3, dtype="float64", options=FastEngineOptions(num_kv_buckets=1))
    bucketed = _engine(tiny_checkpoint, num_slots=3, dtype="float64")
    assert bucketed.step.kv_buckets == [64, 128, 192, 256] and full.step.kv_buckets == [256]
    # every frame's bucket must reach past the position each running row writes in it
    frames = []
    run_frame = bucketed.scheduler.run_frame

    def checked(sample, kv_len):
        state = bucketed.step.state
        running = state.active & (state.stop_code == 0)
        frames.append((kv_len, int(state.pos[running].max())))
        run_frame(sample, kv_len)

    bucketed.scheduler.run_frame = checked
    want = {r.request_id: r.codes for r in full.generate(requests, GREEDY)}
    got = {r.request_id: r.codes for r in bucketed.generate(requests, GREEDY)}
    assert all(kv_len > pos for kv_len, pos in frames), [f for f in frames if f[0] <= f[1]]
    assert {kv_len for kv_len, _ in frames} == {64, 128, 192}
    assert (64, 63) in frames and (128, 64) in frames  # tight where a row crosses into the next bucket
    for key, codes in want.items():
        np.testing.assert_array_equal(got[key], codes, err_msg=key)
        if key in reference_codes:
            np.testing.assert_array_equal(codes, reference_codes[key])
    stats = bucketed.scheduler.stats
    assert stats.attended_positions / stats.frames < 0.6 * 256  # most frames read a short prefix
    assert full.scheduler.stats.attended_positions == 256 * full.scheduler.stats.frames


def test_prefills_take_bucketed_shapes_within_the_budget_and_change_nothing(tiny_checkpoint, reference,
                                                                            reference_codes):
    """Prompts of 10 to about 170 positions admitted 1 to 4 at a time, with a budget of 256
    positions (of 256): every prefill runs at one of six shapes, rows in powers of two up to
    256 / length, lengths 64, 128 or 256, so some carry padding rows and all padding
    positions; the codes stay transformers' own."""
    extra = [GenerationRequest("ctx-6s", "And then?", 0, 2, context=(Segment(1, "Go on.", _clip(6.0, 2)),)),
             GenerationRequest("ctx-5s", "Right.", 1, 3, context=(Segment(0, "So it goes.", _clip(5.0, 3)),)),
             GenerationRequest("ctx-12s", "The end.", 0, 2, context=(Segment(1, "Once upon a time.", _clip(12.0, 4)),)),
             *(GenerationRequest(f"short-{i}", "Pack my box." * (i + 1), i, 1 + i % 3) for i in range(5))]
    requests = REQUESTS + extra
    engine = _engine(tiny_checkpoint, num_slots=6, dtype="float64", options=FastEngineOptions(prefill_tokens=256))
    buckets = engine.scheduler.prefill
    assert buckets.all_shapes() == {(1, 64), (2, 64), (4, 64), (1, 128), (2, 128), (1, 256)}
    calls = []
    prefill = engine.model.prefill

    def recording(embeds, lengths, slots):
        calls.append((tuple(embeds.shape[:2]), len(lengths), int(lengths.max())))
        return prefill(embeds, lengths, slots)

    engine.model.prefill = recording
    results = engine.generate(requests, GREEDY)
    assert {shape for shape, _, _ in calls} <= buckets.all_shapes()
    assert {shape[1] for shape, _, _ in calls} == {64, 128, 256}
    assert any(rows > n for (rows, _), n, _ in calls)  # padding rows
    assert all(rows * length <= 256 and longest <= length for (rows, length), _, longest in calls)
    assert sum(n for _, n, _ in calls) == len(requests) and len(calls) > 3
    stats = engine.scheduler.stats
    assert stats.prefill_positions == sum(rows * length for (rows, length), _, _ in calls) > stats.prefill_tokens
    want = {**reference_codes, **{r.request_id: transformers_codes(*reference, r, dtype=torch.float64) for r in extra}}
    for req, res in zip(requests, results):
        np.testing.assert_array_equal(res.codes, want[req.request_id], err_msg=req.request_id)


def test_codec_batched_decode_and_encode_are_exact(engine64, reference):
    codec = engine64.codec
    rng = np.random.RandomState(0)
    rows = [rng.randint(0, 2048, size=(n, 32)).astype(np.int16) for n in (7, 3, 12, 1)]
    batched = codec.decode(rows)
    codec.max_batch = 1
    try:
        single = codec.decode(rows)
    finally:
        codec.max_batch = 16
    for b, s, r in zip(batched, single, rows):
        assert b.shape == (len(r) * 1920,)
        np.testing.assert_allclose(b, s, rtol=0, atol=1e-9)
    # Encoding: cached by content, and equal to what transformers' Mimi gives per clip.
    ref, _ = reference
    clips = [_clip(0.7, 5), _clip(1.3, 6), _clip(0.7, 7)]
    hits = codec.cache_hits
    codes = codec.encode(clips)
    again = codec.encode(clips[:1])
    assert codec.cache_hits == hits + 1 and torch.equal(again[0], codes[0])
    # Clips of whole frames (generated turns) of different lengths share one padded batch.
    whole = [_clip(1.0, 10 + n)[: n * 1920] for n in (3, 12, 7)]
    calls = []
    encode = codec.mimi.encode
    codec.mimi.encode = lambda x, **kw: calls.append(tuple(x.shape)) or encode(x, **kw)
    try:
        whole_codes = codec.encode(whole)
    finally:
        del codec.mimi.encode
    assert calls == [(3, 1, 12 * 1920)]
    assert [len(c) for c in whole_codes] == [3, 12, 7]
    mimi = ref.codec_model.to(torch.float64)
    for clip, c in zip(clips + whole, codes + whole_codes):
        with torch.no_grad():
            want = mimi.encode(torch.from_numpy(clip).double()[None, None]).audio_codes[0].T
        assert torch.equal(c, want.long())


def test_tied_audio_table_loaded_from_either_name(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "backbone-only"
    shutil.copytree(tiny_checkpoint, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    table = tensors.pop("depth_decoder.model.embed_tokens.weight")
    tensors["backbone_model.embed_tokens.embed_audio_tokens.weight"] = table
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    lean, _ = load_lean_csm(str(ckpt))
    assert torch.equal(lean.embed_audio_tokens.weight, table)
    # Both stored and different: the depth decoder's is the tie source, as in from_pretrained.
    tensors["depth_decoder.model.embed_tokens.weight"] = table + 1
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    lean, _ = load_lean_csm(str(ckpt))
    assert torch.equal(lean.embed_audio_tokens.weight, table + 1)
    assert json.loads((ckpt / "config.json").read_text())["tie_codebooks_embeddings"] is True


def test_compiled_steps_equal_transformers_generate(tiny_checkpoint, reference_codes):
    """The torch.compile'd frame pieces (what CUDA runs, and `model.compile: true` on CPU) give
    transformers' greedy codes exactly, in float64 so that fused kernels cannot flip a near-tie."""
    engine = _engine(tiny_checkpoint, num_slots=3, dtype="float64", compile=True)
    results = engine.generate(REQUESTS, GREEDY)
    for req, res in zip(REQUESTS, results):
        np.testing.assert_array_equal(res.codes, reference_codes[req.request_id], err_msg=req.request_id)


SAMPLED = SamplingParams(do_sample=True, temperature=0.9, top_k=50, depth_temperature=0.9, depth_top_k=50)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("compile", [False, True], ids=["eager-steps", "compiled-steps"])
def test_cuda_graph_matches_eager(tiny_checkpoint, compile, dtype):
    """One CUDA-graph replay per frame gives the codes of the same steps launched eagerly, bit for
    bit, greedy and sampled, in float32 and bfloat16 (production's dtype), compiled or not: a graph
    replays the very kernels an eager frame launches."""
    reqs = REQUESTS + [GenerationRequest(f"x{i}", "Pack my box.", i, 4 + i) for i in range(4)]
    kw = dict(device="cuda", dtype=dtype, num_slots=3, max_positions=256, warmup=False)
    engine = FastEngine.load(tiny_checkpoint, compile=compile, **kw)
    graphed = {mode: engine.generate(reqs, sampling) for mode, sampling in (("greedy", GREEDY), ("sampled", SAMPLED))}
    engine.scheduler.run_frame = engine.step.frame  # the same steps, launched eagerly on the same device
    for mode, sampling in (("greedy", GREEDY), ("sampled", SAMPLED)):
        for g, e in zip(graphed[mode], engine.generate(reqs, sampling)):
            np.testing.assert_array_equal(g.codes, e.codes, err_msg=f"{mode} {g.request_id}")
            assert g.stop_reason == e.stop_reason
    if compile:
        # Against steps that are not compiled: fused kernels round differently, and a greedy row
        # diverges from its first flipped near-tie on. Rare in float32; in bfloat16 every rounding is
        # 2^-8, so only the lengths are compared there (tests/engine/test_attention.py bounds the
        # bfloat16 attention's error directly).
        plain = FastEngine.load(tiny_checkpoint, compile=False, **kw)
        plain.scheduler.run_frame = plain.step.frame
        reference = plain.generate(reqs, GREEDY)
        assert [g.codes.shape for g in graphed["greedy"]] == [r.codes.shape for r in reference]
        if dtype == "float32":
            assert np.mean([np.mean(g.codes == r.codes) for g, r in zip(graphed["greedy"], reference)]) > 0.95


@pytest.mark.slow
def test_compiled_engines_of_any_slot_count_and_bucket_count_share_a_process(tiny_checkpoint, reference_codes,
                                                                           monkeypatch):
    """Compiled engines of 1, 2 and 3 slots in one process, the third with 10 attention buckets:
    each compiled piece holds one graph in a cache of its own, so neither more engines nor more
    buckets reach dynamo's recompile limit (8), which with fullgraph=True raised
    FailOnRecompileLimitHit in the third engine's frame. A counting backend (dynamo's
    tracing and guards, no inductor) keeps it fast and shows every graph the engines made."""
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting_backend))
    sampling = SamplingParams(do_sample=True, top_k=20, depth_top_k=20)
    sampled = [GenerationRequest("s", "Hello there.", 0, 3, seed=5)]
    eager = _engine(tiny_checkpoint, num_slots=1, dtype="float64")
    [want] = eager.generate(sampled, sampling)
    for num_slots, max_positions, buckets in [(1, 256, 4), (2, 256, 4), (3, 640, 10)]:
        before = len(graphs)
        engine = FastEngine.load(tiny_checkpoint, device="cpu", dtype="float64", num_slots=num_slots,
                                 max_positions=max_positions, compile=True, warmup=False,
                                 options=FastEngineOptions(num_kv_buckets=buckets))
        assert len(engine.step.kv_buckets) == buckets
        for req, res in zip(REQUESTS[:2], engine.generate(REQUESTS[:2], GREEDY)):
            np.testing.assert_array_equal(res.codes, reference_codes[req.request_id], err_msg=req.request_id)
        [got] = engine.generate(sampled, sampling)
        np.testing.assert_array_equal(got.codes, want.codes)
        # codebooks 0-1 and the depth step per sampling mode, the rest of the frame per bucket
        assert len(graphs) - before == 2 + 2 + buckets, (num_slots, buckets)


def _unmix32(h: np.ndarray) -> np.ndarray:
    """The inverse of `frame_step._mix32` (xorshifts and odd multipliers are bijections on 32 bits)."""
    m = np.uint64(0xFFFFFFFF)
    h = h.astype(np.uint64)
    h = h ^ (h >> np.uint64(16))
    h = (h * np.uint64(pow(0x5BD1E995, -1, 2**32))) & m
    h = h ^ (h >> np.uint64(15)) ^ (h >> np.uint64(30))
    h = (h * np.uint64(pow(0x7FEB352D, -1, 2**32))) & m
    return h ^ (h >> np.uint64(16))


def test_gumbel_noise_is_finite_at_every_extreme_hash():
    """Every hash whose top 24 bits are among the 2^16 smallest or largest values (low byte
    0x00 and 0xFF), reached through row keys that hash to them: the noise stays finite. A
    uniform from 24 bits, u = (m + 0.5) / 2^24, rounds to 1.0 in float32 at the top value,
    and -log(-log(u)) was +inf there."""
    from synth.engine.frame_step import _mix32, gumbel_noise

    top = np.concatenate([np.arange(2**16), np.arange(2**24 - 2**16, 2**24)]).astype(np.uint64)
    hashes = np.concatenate([top << np.uint64(8), (top << np.uint64(8)) | np.uint64(0xFF)])
    keys = torch.from_numpy(_unmix32(hashes).astype(np.int64))
    assert torch.equal(_mix32(keys), torch.from_numpy(hashes.astype(np.int64)))  # the keys hash to them
    noise = gumbel_noise(keys, torch.zeros(len(keys), 1, dtype=torch.long))[:, 0]
    assert noise.dtype == torch.float32 and bool(torch.isfinite(noise).all())
    # the smallest u gives the smallest noise, the largest u the largest: about -2.8 and 16.6
    assert -2.9 < float(noise.min()) < -2.7 and 16.5 < float(noise.max()) < 17.4
    assert float(noise[2**16 - 1]) < float(noise[2**16])  # and it still grows with the hash across the range


def test_the_result_thread_lives_as_long_as_the_engine(tiny_checkpoint):
    """One worker thread finishes rows for every run of an engine (its per-thread state stays
    warm); close() stops it, and so does dropping the engine."""
    reqs = [GenerationRequest("a", "Hello.", 0, 2), GenerationRequest("b", "Bye.", 1, 3)]

    def threads_of_a_run(engine) -> set[threading.Thread]:
        seen = set()
        engine.run(reqs, GREEDY, on_result=lambda res: seen.add(threading.current_thread()))
        return seen

    engine = _engine(tiny_checkpoint, options=FastEngineOptions(result_thread=True))
    [first] = threads_of_a_run(engine)
    assert threads_of_a_run(engine) == {first} and first is not threading.main_thread() and first.is_alive()
    engine.result_thread = False  # a run may finish rows inline, and the thread waits for the next
    assert threads_of_a_run(engine) == {threading.main_thread()} and first.is_alive()
    engine.result_thread = True
    assert threads_of_a_run(engine) == {first}
    engine.close()
    assert not first.is_alive()
    with pytest.raises(RuntimeError, match="close"):
        engine.generate(reqs, GREEDY)

    engine = _engine(tiny_checkpoint, options=FastEngineOptions(result_thread=True))
    [thread] = threads_of_a_run(engine)
    del engine
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def _favouring_undecodable_ids(tiny_checkpoint, directory):
    """A copy of the tiny checkpoint whose heads (backbone and depth) score CSM's specials
    2048..2050 far above every code Mimi has, for any hidden state: ids 2048 and 2049 get +-50
    times one direction, 2050 another."""
    from safetensors.torch import load_file, save_file

    ckpt = directory / "favours-specials"
    shutil.copytree(tiny_checkpoint, ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    lm_head = tensors["lm_head.weight"]  # [V, Db]
    u, v = torch.randn(2, lm_head.shape[1], generator=gen)
    lm_head[2048], lm_head[2049], lm_head[2050] = 50 * u, -50 * u, 50 * v
    heads = tensors["depth_decoder.codebooks_head.weight"]  # [K-1, Dd, V]
    u, v = torch.randn(2, heads.shape[1], generator=gen)
    heads[:, :, 2048], heads[:, :, 2049], heads[:, :, 2050] = 50 * u, -50 * u, 50 * v
    save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    return str(ckpt)


def test_no_engine_emits_a_code_the_codec_cannot_decode(tiny_checkpoint, tmp_path):
    """CSM scores 2051 audio ids; Mimi decodes 2048 (the tiny checkpoint's as the real one).
    With heads that favour the specials, both engines, greedy or sampled, still emit only codes
    below 2048 (an undecodable one was an IndexError in Mimi on CPU, a device-side assert on
    CUDA), the audio decodes, and the greedy codes stay the same in both engines."""
    from synth.engine.reference_engine import TransformersEngine

    ckpt = _favouring_undecodable_ids(tiny_checkpoint, tmp_path)
    reqs = [GenerationRequest("a", "Hello there.", 0, 4, seed=1),
            GenerationRequest("b", "Call me Ishmael.", 1, 5, context=(Segment(0, "Hi."),), seed=2)]
    fast = _engine(ckpt, dtype="float64")
    reference = TransformersEngine.load(ckpt, device="cpu", dtype="float64", compile=False)
    assert reference.model.codec_model.config.codebook_size == 2048

    # Unchecked, the heads pick the specials nearly always.
    inputs = reference._inputs(reqs[:1])
    with torch.inference_mode():
        raw = reference.model.generate(**inputs, max_new_tokens=3, do_sample=False, depth_decoder_do_sample=False,
                                       suppress_tokens=None, depth_decoder_suppress_tokens=None)
    assert (raw >= 2048).float().mean() > 0.9

    sampling = SamplingParams(do_sample=True, top_k=50, depth_top_k=50)
    results = {}
    for name, engine in [("fast", fast), ("transformers", reference)]:
        for mode, params in [("greedy", GREEDY), ("sampled", sampling)]:
            results[name, mode] = engine.generate(reqs, params)
            for req, res in zip(reqs, results[name, mode]):
                assert res.num_frames == req.max_frames, (name, mode, req.request_id)
                assert int(res.codes.max()) < 2048 and int(res.codes.min()) >= 0, (name, mode, req.request_id)
                assert res.audio.shape == (req.max_frames * 1920,) and np.isfinite(res.audio).all()
    for f, r in zip(results["fast", "greedy"], results["transformers", "greedy"]):
        np.testing.assert_array_equal(f.codes, r.codes, err_msg=f.request_id)
