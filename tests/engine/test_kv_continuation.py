"""KV continuation of chains (issue 16): a chain's next turn that continues in the slot holding
the previous turn's cache generates exactly the codes of a full prefill of the same context.

float64, greedy, tiny checkpoint: chains with and without a voice prompt, long enough that the
context budget drops older turns, at several slot counts and arrival orders; and prompts whose
hint points at a cache that is not their prefix (a rejected take) fall back safely.
"""

from __future__ import annotations

import numpy as np
import pytest

from synth.engine.fast_engine import FastEngine
from synth.engine.held_cache import common_prefix, frame_keys, position_keys
from synth.engine.interface import GenerationRequest, SamplingParams, Segment
from synth.engine.options import FastEngineOptions
from synth.pipeline.chain import Chain, ChainTurn
from synth.pipeline.context_plan import ContextItem, SegmentCost

GREEDY = SamplingParams(do_sample=False)
MAX_POSITIONS = 96
TEXTS = ["Hello there, how are you?", "Fine thanks, and you?", "Call me Ishmael.", "Some years ago, never mind.",
         "It was the best of times.", "Quick brown fox.", "Yes, she said."]


def _engine(path, num_slots, kv_continuation=True, park_rows=None) -> FastEngine:
    return FastEngine.load(path, device="cpu", dtype="float64", num_slots=num_slots, max_positions=MAX_POSITIONS,
                           compile=False, warmup=False,
                           options=FastEngineOptions(kv_continuation=kv_continuation, park_rows=park_rows))


@pytest.fixture(scope="module")
def full_prefill(tiny_checkpoint):
    """The reference: every request prefilled in full (continuation off), one slot."""
    return _engine(tiny_checkpoint, 1, kv_continuation=False)


def _voice(engine) -> ContextItem:
    t = np.arange(int(24000 * 0.4)) / 24000
    clip = (0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    segment = Segment(0, "A voice.", clip)
    return ContextItem("voice:v", None, segment, SegmentCost(engine)(segment), pinned=True)


def _run_chains(engine, num_chains: int, voice: bool, order: str, turns: int = 5, low_water: float | None = None):
    """num_chains chains of `turns` turns (caps 6..14 frames: older turns fall out of the 96-position
    budget), all in flight at once, the context window rolling or sliding by blocks (`low_water`).
    Returns {request id: (request, result)}."""
    cost = SegmentCost(engine)
    prompts = (_voice(engine),) if voice else ()
    chains = [Chain([ChainTurn(f"c{c}:{i}", i % 2, TEXTS[(c + i) % len(TEXTS)], max_frames=6 + 2 * ((c + i) % 5),
                               seed=i) for i in range(turns)], engine, cost, prompts, context_low_water=low_water)
              for c in range(num_chains)]
    if order == "reversed":
        chains = chains[::-1]
    owner, done = {}, {}

    def next_of(chain):
        request = chain.next_request(skip=lambda turn, reason: pytest.fail(reason))
        if request is None:
            return []
        owner[request.request_id] = (chain, request)
        return [request]

    def on_result(result):
        chain, request = owner.pop(result.request_id)
        done[result.request_id] = (request, result)
        chain.add_result(result)
        return next_of(chain)

    engine.run([r for chain in chains for r in next_of(chain)], GREEDY, on_result=on_result)
    return done


@pytest.mark.parametrize("num_slots,num_chains,voice,order", [
    (1, 2, True, "forward"), (2, 3, False, "reversed"), (5, 3, True, "forward"),
])
def test_continued_turns_equal_a_full_prefill_of_the_same_context(tiny_checkpoint, full_prefill, num_slots,
                                                                   num_chains, voice, order):
    # Fewer slots than chains: a finished turn's cache is parked while another chain's turn takes
    # its slot, and comes back into whichever slot is free for the follow-up.
    engine = _engine(tiny_checkpoint, num_slots, park_rows=num_chains)
    done = _run_chains(engine, num_chains, voice, order)
    stats = engine.scheduler.stats
    assert len(done) == 5 * num_chains
    assert stats.continued_rows >= num_chains * 3  # most chained turns continued a cache
    evicted = [req for req, _ in done.values() if len(req.context) - voice < int(req.request_id.split(":")[1])]
    assert evicted, "no turn lost an older turn to the budget: the test would not cover evictions"
    # The reference generates every turn alone from a full prefill of the same context (the
    # generated turns' own codes, as the chain used them).
    for _, res in done.values():
        full_prefill.remember_codes(res.audio, res.codes)
    requests = [req for req, _ in done.values()]
    for req, ref in zip(requests, full_prefill.generate(requests, GREEDY)):
        np.testing.assert_array_equal(done[req.request_id][1].codes, ref.codes, err_msg=req.request_id)
    # Each continued turn computed only what is new: the end of the previous turn and its own text.
    full = sum(full_prefill.count_prompt_tokens(req) for req in requests)
    assert stats.prefill_tokens + stats.kept_positions == full
    assert stats.kept_positions > 0.4 * full, (stats.kept_positions, full)


def test_a_block_window_keeps_more_of_the_prefix_and_still_generates_a_full_prefills_codes(tiny_checkpoint,
                                                                                            full_prefill):
    """Chains of 8 turns, 2 slots, 2 chains: the window sliding by blocks (low-water 0.5) drops
    older turns, yet keeps more of each prompt in the cache than the rolling window, and every
    turn's codes equal a full prefill of its context."""
    kept = {}
    for low_water in (None, 0.5):
        engine = _engine(tiny_checkpoint, 2, park_rows=2)
        done = _run_chains(engine, 2, True, "forward", turns=8, low_water=low_water)
        requests = [req for req, _ in done.values()]
        assert any(len(req.context) - 1 < int(req.request_id.split(":")[1]) for req in requests)  # it slid
        full = sum(full_prefill.count_prompt_tokens(req) for req in requests)
        kept[low_water] = engine.scheduler.stats.kept_positions / full
    for _, res in done.values():
        full_prefill.remember_codes(res.audio, res.codes)
    for req, ref in zip(requests, full_prefill.generate(requests, GREEDY)):
        np.testing.assert_array_equal(done[req.request_id][1].codes, ref.codes, err_msg=req.request_id)
    assert kept[0.5] > kept[None] + 0.1, kept


def test_a_hint_to_a_cache_that_is_not_the_prefix_is_a_safe_fallback(tiny_checkpoint, full_prefill):
    """A follow-up whose hint names a row whose cache diverges from its prompt (another take, other
    context audio) keeps only the positions that match, and generates what a full prefill does."""
    engine = _engine(tiny_checkpoint, 1)
    first = GenerationRequest("take", "Hello there.", 0, 12, followed=True)
    (res,) = engine.generate([first], GREEDY)
    other = res.codes.copy()  # the frames of a rejected take: same length, another first frame
    other[0, 0] = (other[0, 0] + 1) % 2048
    engine.remember_codes(res.audio, other)
    full_prefill.remember_codes(res.audio, other)
    follow = GenerationRequest("next", "Fine thanks.", 1, 10, context=(Segment(0, "Hello there.", res.audio),),
                               continues="take")
    stats = engine.scheduler.stats
    before = (stats.continued_rows, stats.kept_positions)
    (got,) = engine.generate([follow], GREEDY)
    (ref,) = full_prefill.generate([follow], GREEDY)
    np.testing.assert_array_equal(got.codes, ref.codes)
    # Kept: the previous prompt, up to the first frame that differs.
    assert stats.continued_rows == before[0] + 1
    assert stats.kept_positions - before[1] == res.num_prompt_tokens
    # A hint to a row that never ran here, or none: a full prefill, same codes.
    for hint in ("nobody", None):
        engine.scheduler.stats.continued_rows = 0
        (again,) = engine.generate([GenerationRequest(**{**follow.__dict__, "request_id": f"n-{hint}",
                                                         "continues": hint})], GREEDY)
        np.testing.assert_array_equal(again.codes, ref.codes)
        assert engine.scheduler.stats.continued_rows == 0


def test_position_keys_and_common_prefix():
    ids = np.array([5, 6, 7, 7])
    import torch

    is_audio = torch.tensor([False, True, True, False])
    frames = torch.tensor([[1, 2], [3, 4]])
    keys = position_keys(torch.tensor(ids), frames, is_audio)
    assert keys.tolist() == [[5, -1, -1], [-1, 1, 2], [-1, 3, 4], [7, -1, -1]]
    assert common_prefix(keys, keys) == 4
    assert common_prefix(keys[:2], torch.cat([keys[:2], frame_keys(frames)])) == 2
    assert common_prefix(keys, torch.cat([keys[:2], frame_keys(frames[:1])])) == 2
