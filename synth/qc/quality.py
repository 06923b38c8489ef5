"""Audio quality of a clip: a non-intrusive MOS estimate, loudness, peak level and clipping.

This module owns the quality metrics: DNSMOS OVRL (`speechmos`, Microsoft's DNSMOS ONNX
models shipped in its wheel; 16 kHz; clean espeak speech about 2.7, noise about 1.1),
integrated loudness in LUFS (`pyloudnorm`, ITU-R BS.1770; undefined under 0.4 s or on
silence), peak level in dBFS and the fraction of samples at full scale. It knows nothing
about thresholds (`synth.qc.policy`) or where clips come from.
"""

from __future__ import annotations

import math
import os

import numpy as np

from synth.qc.deps import require

MOS_RATE_HZ = 16000  # DNSMOS's rate
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped (16-bit full scale, less rounding)
MIN_LOUDNESS_S = 0.4  # BS.1770's gating block: pyloudnorm refuses shorter clips


class Dnsmos:
    """speechmos's DNSMOS models, loaded once, with onnxruntime held to `threads` threads (the
    actor's CPU share, not every core)."""

    def __init__(self, threads: int = 1):
        dnsmos = require("speechmos.dnsmos")
        ort = require("onnxruntime")
        models = os.path.join(os.path.dirname(dnsmos.__file__), "dnsmos_models")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = max(1, threads)
        primary, p808 = os.path.join(models, "sig_bak_ovr.onnx"), os.path.join(models, "model_v8.onnx")
        self.model = dnsmos.DNSMOS(primary, p808)
        self.model.onnx_sess = ort.InferenceSession(primary, options, providers=["CPUExecutionProvider"])
        self.model.p808_onnx_sess = ort.InferenceSession(p808, options, providers=["CPUExecutionProvider"])
        self.window = math.ceil(dnsmos.INPUT_LENGTH * MOS_RATE_HZ)  # samples of one DNSMOS window (9.01 s)

    def ovrl(self, clip_16k: np.ndarray) -> float | None:
        """DNSMOS overall quality (1..5) of a 16 kHz clip; None for an empty clip or pure silence.
        A clip shorter than DNSMOS's 9 s window is repeated to fill exactly one window (speechmos
        itself doubles it past the window and scores every 1 s hop: 8 windows for a 1 s clip)."""
        if not len(clip_16k) or not np.any(clip_16k):
            return None
        clip = np.clip(np.asarray(clip_16k, np.float32), -1.0, 1.0)
        if len(clip) < self.window:
            clip = np.resize(clip, self.window)
        return float(self.model(clip, MOS_RATE_HZ, False)["ovrl_mos"])


def loudness_lufs(clip: np.ndarray, rate_hz: int) -> float | None:
    """Integrated loudness (LUFS, BS.1770); None under 0.4 s or on silence."""
    if len(clip) < MIN_LOUDNESS_S * rate_hz:
        return None
    value = require("pyloudnorm").Meter(rate_hz).integrated_loudness(np.asarray(clip, np.float64))
    return float(value) if math.isfinite(value) else None


def peak_dbfs(clip: np.ndarray) -> float | None:
    """The largest |sample| in dBFS (0 = full scale); None for silence."""
    peak = float(np.max(np.abs(clip))) if len(clip) else 0.0
    return 20 * math.log10(peak) if peak > 0 else None


def clipped_fraction(clip: np.ndarray) -> float | None:
    """The fraction of samples at full scale; None for an empty clip."""
    return float(np.mean(np.abs(clip) >= CLIP_LEVEL)) if len(clip) else None
