"""DNSMOS's feature network rebuilt in torch: float32 is the onnxruntime graph, bfloat16 is close to it.

The real speechmos model both ways, on espeak-ng speech (clean, under noise) and noise, at the
lengths takes have (whole 80 ms frames, scored by their period) and longer (whole windows).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf

from synth.qc import quality
from synth.qc.dnsmos_net import FeatureNet, native_bfloat16
from synth.qc.dnsmos_periods import PERIOD_SAMPLES, plan
from synth.qc.policy import QcSettings

pytest.importorskip("speechmos")
pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def exact():
    return quality.Dnsmos(precision="float32")


@pytest.fixture(scope="module")
def bf16():
    model = quality.Dnsmos(precision="bfloat16")
    assert model.bfloat16 and "bfloat16" in model.placement, model.placement
    return model


@pytest.fixture(scope="module")
def clips(speech_clip):
    """16 kHz clips: speech, speech under two levels of noise, noise; cut to whole codec frames."""
    import soxr

    audio, rate = sf.read(speech_clip, dtype="float32")
    speech = soxr.resample(audio, rate, 16000).astype(np.float32)
    rng = np.random.default_rng(0)
    out = {"speech": speech, "noise": (0.1 * rng.standard_normal(len(speech))).astype(np.float32)}
    for level in (0.02, 0.1):
        out[f"speech+{level}"] = speech + (level * rng.standard_normal(len(speech))).astype(np.float32)
    return {name: clip[: len(clip) // PERIOD_SAMPLES * PERIOD_SAMPLES] for name, clip in out.items()}


@pytest.mark.parametrize("rows", [3, 30, 80])
def test_float32_features_are_onnxruntimes(exact, clips, rows):
    window = exact.windows_of(clips["speech"][: rows * PERIOD_SAMPLES])[0]
    net = FeatureNet(quality.load_weights(exact.path, pytest.importorskip("onnx")), "float32")
    for stretch in plan(rows * PERIOD_SAMPLES):
        samples = window[None, stretch.start : stretch.stop]
        want = exact.features(samples)
        np.testing.assert_allclose(net(samples), want, atol=1e-5 * np.abs(want).max())


def test_bfloat16_scores_within_a_hundredth_of_onnxruntime(exact, bf16, clips):
    """Takes' lengths (by their period) and a long clip (its windows, a hop apart): within 0.01 MOS,
    the tolerance `Dnsmos` checks at load; on this box within 0.005."""
    cut = [clip[:frames * PERIOD_SAMPLES] for clip in clips.values() for frames in (2, 12, 40)]
    long = np.concatenate([clips["speech+0.02"]] * 6)
    assert len(long) > exact.window + 16000
    cut.append(long)
    got, want = bf16.ovrl_clips(cut), exact.ovrl_clips(cut)
    gaps = [abs(g - w) for g, w in zip(got, want)]
    assert max(gaps) <= quality.TOLERANCE, gaps
    assert len(set(np.round(want, 2))) > 3  # the clips differ: a constant would not pass for a score


def test_auto_takes_bfloat16_only_where_the_cpu_computes_it(exact):
    auto = quality.Dnsmos()
    assert auto.bfloat16 == native_bfloat16()
    assert not exact.bfloat16 and exact.placement == "cpu (onnxruntime; short clips by their period)"


def test_bfloat16_that_strays_from_onnxruntime_at_load_falls_back(monkeypatch):
    monkeypatch.setattr(quality, "TOLERANCE", 0.0)
    model = quality.Dnsmos(precision="bfloat16")
    assert not model.bfloat16 and "bfloat16 differs by" in model.placement


def test_the_precision_is_checked_and_is_not_part_of_a_runs_identity():
    with pytest.raises(ValueError, match="fp8"):
        QcSettings(dnsmos_precision="fp8")
    with pytest.raises(ValueError, match="fp8"):
        quality.Dnsmos(precision="fp8")
    assert replace(QcSettings(), dnsmos_precision="bfloat16").identity() == QcSettings().identity()
