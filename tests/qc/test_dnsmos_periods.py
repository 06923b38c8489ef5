"""DNSMOS of a short clip from one period of its repeated window: the whole window's value, for less.

The real speechmos model through onnxruntime, both ways: the whole 9.01 s window (what
speechmos scores) and the two stretches `plan` picks; the values must agree to float rounding.
"""

from __future__ import annotations

import numpy as np
import pytest

from synth.qc.dnsmos_periods import FRAMES, HOP, MAX_SHARE, PERIOD_SAMPLES, WHOLE, plan, raw

pytest.importorskip("speechmos")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def dnsmos():
    from synth.qc.quality import Dnsmos

    model = Dnsmos(precision="float32")  # onnxruntime's float32 graph: the exact path
    assert model.features is not None and "by their period" in model.placement
    return model


def _clip(num_samples: int, seed: int) -> np.ndarray:
    """Speech-like: noise under a slow swell and a few bursts (no two periods of the window alike)."""
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples)
    swell = 0.5 + 0.5 * np.sin(t / (300 + 50 * seed)) * np.sin(t / 4100)
    return (rng.standard_normal(num_samples) * 0.1 * swell).astype(np.float32)


@pytest.mark.parametrize("rows", [1, 5, 12, 30, 52, 70])
def test_a_short_clip_by_its_period_scores_as_the_whole_window(dnsmos, rows):
    clip = _clip(rows * PERIOD_SAMPLES, rows)
    stretches = plan(len(clip))
    assert stretches is not None
    computed = sum(s.stop - s.start - HOP for s in stretches) // HOP  # STFT frames run
    assert computed <= MAX_SHARE * FRAMES
    whole = dnsmos.ovrl_batch([dnsmos.windows_of(clip)], on_cpu=True)[0]
    (by_period,) = dnsmos.ovrl_clips([clip])
    assert by_period == pytest.approx(whole, abs=1e-5)
    raw_whole = dnsmos.raw(dnsmos.windows_of(clip), on_cpu=True)[0]
    raw_period = raw(dnsmos.features, dnsmos.head, dnsmos.windows_of(clip), stretches)[0]
    np.testing.assert_allclose(raw_period, raw_whole, atol=1e-5)


def test_the_shortcut_takes_only_whole_rows_that_fit_and_pay():
    assert plan(12 * PERIOD_SAMPLES + 7) is None  # not whole 80 ms frames: no period of whole rows
    assert plan(0) is None
    assert plan(100 * PERIOD_SAMPLES) is None  # 8 s: most of the window anyway
    head, tail = plan(12 * PERIOD_SAMPLES)
    assert (head.start, tail.stop) == (0, HOP * (FRAMES + 1))  # the window's start and its end, as the model sees them
    assert head.stop_row - head.first_row == 3 + 12 and tail.stop_row - tail.first_row == 3


def test_a_batch_mixes_both_paths_and_keeps_its_order(dnsmos):
    clips = [_clip(12 * PERIOD_SAMPLES, 1), np.zeros(PERIOD_SAMPLES, np.float32), _clip(12 * PERIOD_SAMPLES + 7, 2),
             _clip(10 * 16000, 3), np.zeros(0, np.float32)]
    scores = dnsmos.ovrl_clips(clips)
    expected = dnsmos.ovrl_batch([dnsmos.windows_of(c) for c in clips], on_cpu=True)
    assert scores[1] is None and scores[4] is None  # silence, empty
    for got, want in zip(scores, expected):
        assert (got is None and want is None) or got == pytest.approx(want, abs=1e-5)


def test_the_whole_window_as_one_stretch_is_the_whole_graph(dnsmos):
    """`WHOLE` through the cut graph and the numpy head: the model's own output on the window."""
    clip = _clip(10 * 16000, 4)
    windows = dnsmos.windows_of(clip)  # two windows, a hop apart
    np.testing.assert_allclose(raw(dnsmos.features, dnsmos.head, windows, (WHOLE,)), dnsmos.raw(windows, on_cpu=True),
                               atol=1e-5)
