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
