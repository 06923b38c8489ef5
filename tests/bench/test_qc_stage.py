"""`synth bench --qc`'s stage with a stand-in scorer: inline scores each batch the engine hands over
before returning; beside returns at once and scores what queued meanwhile in one call; every turn is
scored once, as stored, with its speaker's first turn as the reference voice."""

import threading
import time

import numpy as np
import pytest

from synth.bench.qc_stage import QcStage
from synth.engine.interface import GenerationRequest, GenerationResult
from synth.qc.scorer import ScorerStats

RATE = 24000


class SlowScorer:
    """Counts what it is given; each call takes `seconds`, as a scorer holding its thread would."""

    def __init__(self, seconds: float):
        self.seconds, self.stats, self.calls, self.takes = seconds, ScorerStats(), [], []
        self.lock = threading.Lock()

    def score(self, takes):
        time.sleep(self.seconds)
        with self.lock:
            self.calls.append(len(takes))
            self.takes += takes
            self.stats.takes += len(takes)
            self.stats.audio_s += sum(len(t.audio) for t in takes) / RATE
            self.stats.busy_s += self.seconds
        return [{} for _ in takes]


def _turns(n: int):
    requests = [GenerationRequest(f"r{i}", f"text {i}", i % 2, 10, seed=i) for i in range(n)]
    loud = np.full(RATE // 2, 3.0, np.float32)  # past full scale: the stage scores it as stored
    results = [GenerationResult(r.request_id, np.zeros((6, 32), np.int16), loud * (1 + i), "max_length", 0)
               for i, r in enumerate(requests)]
    return requests, results


@pytest.mark.parametrize("mode", ["inline", "beside"])
def test_every_turn_is_scored_once_as_stored_with_its_speakers_first_turn_as_reference(mode):
    requests, results = _turns(6)
    scorer = SlowScorer(0.05)
    stage = QcStage(scorer, requests, mode)
    for result in results:  # the engine hands rows over one at a time, as it mostly does
        stage.prepare([result])
        assert stage(result) is None
    cost = stage.finish()
    assert sorted(t.text for t in scorer.takes) == sorted(r.text for r in requests)
    assert all(np.abs(t.audio).max() <= 10 ** (-1 / 20) + 1e-4 for t in scorer.takes)  # scaled to -1 dBFS
    by_text = {t.text: t for t in scorer.takes}
    assert by_text["text 0"].reference is None and by_text["text 1"].reference is None  # each speaker's first
    assert by_text["text 2"].reference is by_text["text 0"].audio and by_text["text 3"].reference is by_text["text 1"].audio
    assert cost.takes == 6 and cost.audio_s == pytest.approx(3.0) and cost.batches == len(scorer.calls)
    if mode == "inline":
        assert scorer.calls == [1] * 6 and cost.waited_s >= 6 * 0.05  # the frame loop waits for every call
    else:
        assert len(scorer.calls) < 6  # what queued while the scorer was busy went in one call
        assert cost.waited_s < 6 * 0.05


def test_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="QC mode 'later'"):
        QcStage(SlowScorer(0), [], "later")


def test_chains_with_qc_judge_the_same_takes_with_speculation_on_and_off(tiny_checkpoint):
    """`synth bench --qc`'s chained rows (`QcChains`), on the tiny CSM with the real level metric
    splitting its takes: speculation changes the order work is done in, not which takes are judged;
    when on, turns go ahead of their verdicts and some are thrown away, their frames counted."""
    from synth.bench.qc_stage import QcChains
    from synth.bench.throughput import SAMPLING, as_dialogues, workload
    from synth.engine.fast_engine import FastEngine
    from synth.qc.policy import QcSettings, Thresholds
    from synth.qc.scorer import TakeScorer

    engine = FastEngine.load(tiny_checkpoint, device="cpu", dtype="float32", num_slots=4, max_positions=256,
                             compile=False, warmup=False)
    settings = QcSettings(enabled=True, metrics=("level",), thresholds=Thresholds(min_loudness_lufs=-13.2))
    scorer = TakeScorer(settings, engine.sample_rate_hz).load()
    dialogues = as_dialogues(workload(12, max_cap=12), 4)
    runs = {}
    for speculate in (False, True):
        chains = QcChains(engine, scorer, speculate=speculate, max_takes=2)
        chains.run(dialogues, SAMPLING)
        runs[speculate] = chains
    off, on = runs[False], runs[True]
    assert off.counts.turns == on.counts.turns == 12 and off.live == on.live == 0
    assert 12 < off.counts.takes == on.counts.takes < 24  # some turns retaken, not all
    assert (off.counts.passed, off.judged_frames) == (on.counts.passed, on.judged_frames)
    assert off.counts.speculative_turns == 0 and on.counts.speculative_turns >= 9
    assert on.counts.speculative_discarded > 0
    engine.close()
