"""The scorer in its own process: the rows of the scorer on threads, its failures and death reported.

A real child process (a fresh interpreter running `synth.qc.scorer_process`), the real models
(the tiny offline Whisper, Resemblyzer, DNSMOS, Silero VAD), real clips.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from synth.qc.policy import AsrSettings, QcSettings
from synth.qc.scorer import Take, TakeScorer
from synth.qc.scorer_process import NICE, ScorerProcess, ScorerProcessError

pytestmark = pytest.mark.slow  # a child process loads every QC model (about 5 s)
RATE = 24000


@pytest.fixture(scope="module")
def settings(tiny_whisper):
    return QcSettings(enabled=True, asr=AsrSettings(model=tiny_whisper))


@pytest.fixture(scope="module")
def child(settings):
    scorer = ScorerProcess(settings, RATE)  # loads while the test goes on; its first call waits
    yield scorer
    scorer.close()


def _takes(seed: int, reference: np.ndarray) -> list[Take]:
    rng = np.random.default_rng(seed)
    return [Take((0.1 * rng.standard_normal(frames * 1920)).astype(np.float32), "hello there",
                 rng.integers(0, 2048, (frames, 8)), reference) for frames in (3, 20, 41)]


def test_the_child_scores_as_the_scorer_on_threads_and_at_a_lower_priority(child, settings):
    reference = (0.1 * np.random.default_rng(9).standard_normal(RATE)).astype(np.float32)
    takes = _takes(0, reference)
    here = TakeScorer(settings, RATE).load()
    assert child.score(takes) == here.score(takes)  # every metric, bit for bit
    assert child.placement == here.placement
    again = child.score(_takes(1, reference))  # the reference crossed once; its embedding is kept there
    assert [r["speaker_sim"] for r in again] == [r["speaker_sim"] for r in here.score(_takes(1, reference))]
    assert child.stats.takes == 6 and child.stats.cpu_s > 0  # the child's own counts
    parent_nice = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, child._process.pid) == min(19, parent_nice + NICE)
    here.close()


def test_a_failure_comes_back_with_its_traceback_and_a_death_with_its_exit_code(child):
    """Last in the module: it kills the module's child."""
    with pytest.raises(ScorerProcessError, match="Traceback"):
        child.score([Take(np.zeros((2, 2, 2), np.float32), "not a clip")])
    assert child.score([Take(np.zeros(RATE, np.float32), "silence")])[0]["dnsmos"] is None  # and it goes on
    os.kill(child._process.pid, signal.SIGKILL)
    with pytest.raises(ScorerProcessError, match="died, exit code -9"):
        child.score(_takes(2, None))
    child.close()  # a dead child closes without a word
