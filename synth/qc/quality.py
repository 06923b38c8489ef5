"""Audio quality of a clip: a non-intrusive MOS estimate, loudness, peak level and clipping.

This module owns the quality metrics: DNSMOS OVRL (`speechmos`, Microsoft's DNSMOS ONNX
models shipped in its wheel; 16 kHz; clean espeak speech about 2.7, noise about 1.1),
integrated loudness in LUFS (`pyloudnorm`, ITU-R BS.1770; undefined under 0.4 s or on
silence), peak level in dBFS and the fraction of samples at full scale. DNSMOS runs on
windows stacked in a batch: on the CPU through onnxruntime (its session is shared by the
scorer's worker threads), or with its convolutions in bfloat16 through their torch rebuild
(`synth.qc.dnsmos_net`; `qc.dnsmos_precision`, bfloat16 where the CPU computes it natively,
within 0.01 MOS of onnxruntime, checked at load), or on a GPU through `onnx2torch`'s conversion
of the same graph where that converts and agrees with onnxruntime at load (`Dnsmos.placement`
says which, and why). On the CPU a clip shorter than the window, of whole 80 ms frames, is
scored from one period of its repeated window and the window's edges
(`synth.qc.dnsmos_periods`: the same value for a fraction of the cost; needs `onnx`). Only the
model OVRL comes from is run: speechmos also runs its P.808 model, whose score synth does not
use. It knows nothing about thresholds (`synth.qc.policy`) or where
clips come from.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Callable, Sequence

import numpy as np

from synth.qc.deps import require
from synth.qc.dnsmos_periods import WHOLE, FeatureGraph, dense_head, load_weights, plan
from synth.qc.dnsmos_periods import raw as periods_raw
from synth.qc.policy import DNSMOS_PRECISIONS

MOS_RATE_HZ = 16000  # DNSMOS's rate
CLIP_LEVEL = 0.999  # |sample| at or above this counts as clipped (16-bit full scale, less rounding)
MIN_LOUDNESS_S = 0.4  # BS.1770's gating block: pyloudnorm refuses shorter clips
CPU_ROWS = 2  # windows per onnxruntime call on the CPU: larger batches only add memory traffic there
DEVICE_ROWS = 64  # windows per call on a GPU (64 x 9 s)
TOLERANCE = 0.01  # most |OVRL| difference from onnxruntime's float32 at load, of the GPU or bfloat16 path


class Dnsmos:
    """speechmos's DNSMOS primary model (signal, background, overall), loaded once. On the CPU,
    onnxruntime held to `threads` threads per call (the scorer calls it from its worker threads),
    or with `precision` bfloat16 the torch rebuild of its convolutions (`synth.qc.dnsmos_net`) if it
    agrees with onnxruntime at load; with `device` a GPU, the converted graph there if it agrees."""

    def __init__(self, threads: int = 1, device: str = "cpu", precision: str = "auto"):
        """precision: the CPU path's, one of `DNSMOS_PRECISIONS` (auto: bfloat16 where the CPU computes it
        natively, `dnsmos_net.native_bfloat16`; else float32); a GPU's graph is float32."""
        if precision not in DNSMOS_PRECISIONS:
            raise ValueError(f"DNSMOS precision {precision!r}: expected one of {DNSMOS_PRECISIONS}")
        self._speechmos = require("speechmos.dnsmos")
        ort = require("onnxruntime")
        self.path = os.path.join(os.path.dirname(self._speechmos.__file__), "dnsmos_models", "sig_bak_ovr.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = max(1, threads)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.window = math.ceil(self._speechmos.INPUT_LENGTH * MOS_RATE_HZ)  # samples of one window (9.01 s)
        self.module, self.device = None, "cpu"
        self.placement = "cpu (onnxruntime)"
        if device != "cpu":
            self.module, self.placement = _on_device(self, device)
            self.device = device if self.module is not None else "cpu"
        # the CPU path's features of any stretch of a window (`dnsmos_periods`): short clips by their period,
        # and in bfloat16 every window; None on a GPU, or without `onnx`
        self.features: Callable[[np.ndarray], np.ndarray] | None = None
        self.head: dict = {}
        self.bfloat16 = False  # whether the CPU path runs its convolutions in bfloat16
        if self.module is not None:
            return
        try:
            onnx = importlib.import_module("onnx")
        except ImportError:
            return
        weights = load_weights(self.path, onnx)
        self.head = dense_head(weights)
        why_not = ""
        from synth.qc.dnsmos_net import FeatureNet, native_bfloat16  # here: torch only where DNSMOS runs

        if precision == "bfloat16" or (precision == "auto" and native_bfloat16()):
            self.features = FeatureNet(weights, "bfloat16")
            gap = _gap(self, lambda w: self._ovrl(periods_raw(self.features, self.head, w, (WHOLE,))))
            if gap <= TOLERANCE:
                where = (f"cpu (torch, convolutions in bfloat16, within {gap:.1g} MOS of onnxruntime; "
                         "short clips by their period)")
                self.placement = where if device == "cpu" else f"{where}; {self.placement}"  # and why not the GPU
                self.bfloat16 = True
                return
            why_not = f"; bfloat16 differs by {gap:.3g} MOS"
        self.features = FeatureGraph(self.path, options, onnx)
        if device == "cpu":
            self.placement = f"cpu (onnxruntime; short clips by their period{why_not})"

    def windows_of(self, clip_16k: np.ndarray) -> np.ndarray | None:
        """The windows DNSMOS scores for a 16 kHz clip [H, window], as speechmos cuts them; None for
        an empty clip or pure silence. A clip shorter than the 9 s window is repeated to fill exactly
        one window (speechmos itself doubles it past the window and scores every 1 s hop: 8 windows
        for a 1 s clip); a longer one gives a window every 1 s hop, as in speechmos."""
        if not len(clip_16k) or not np.any(clip_16k):
            return None
        clip = np.clip(np.asarray(clip_16k, np.float32), -1.0, 1.0)
        if len(clip) < self.window:
            return np.resize(clip, self.window)[None]
        length_s = self._speechmos.INPUT_LENGTH
        hops = int(np.floor(len(clip) / MOS_RATE_HZ) - length_s) + 1
        segments = [clip[int(i * MOS_RATE_HZ) : int((i + length_s) * MOS_RATE_HZ)] for i in range(hops)]
        return np.stack([s for s in segments if len(s) == self.window])  # speechmos's own cuts (and skips)

    def raw(self, windows: np.ndarray, *, on_cpu: bool = False) -> np.ndarray:
        """The model's raw (signal, background, overall) [B, 3] of windows [B, window], on its device
        (or on the CPU's onnxruntime with `on_cpu`)."""
        windows = np.ascontiguousarray(windows, np.float32)
        if self.module is None or on_cpu:
            out = [self.session.run(None, {"input_1": windows[i : i + CPU_ROWS]})[0]
                   for i in range(0, len(windows), CPU_ROWS)]
            return np.concatenate(out) if out else np.zeros((0, 3), np.float32)
        import torch

        with torch.inference_mode():
            return np.concatenate([self.module(torch.from_numpy(windows[i : i + DEVICE_ROWS]).to(self.device))
                                   .float().cpu().numpy() for i in range(0, len(windows), DEVICE_ROWS)])

    def ovrl_clips(self, clips_16k: Sequence[np.ndarray]) -> list[float | None]:
        """DNSMOS overall quality (1..5) of 16 kHz clips on the CPU: a short clip of whole 80 ms frames
        through one period of its window (`dnsmos_periods.plan`); the others by their windows, in
        bfloat16 one clip at a time, else in one onnxruntime pass (`ovrl_batch`); None for an empty
        clip or pure silence."""
        out: list[float | None] = [None] * len(clips_16k)
        whole: list[tuple[int, np.ndarray]] = []
        for i, clip in enumerate(clips_16k):
            windows = self.windows_of(clip)
            if windows is None:
                continue
            stretches = plan(len(clip)) if self.features is not None and len(clip) < self.window else None
            if stretches is None and self.bfloat16:
                stretches = (WHOLE,)
            if stretches is None:
                whole.append((i, windows))
            else:
                out[i] = float(np.mean(self._ovrl(periods_raw(self.features, self.head, windows, stretches))))
        for (i, _), value in zip(whole, self.ovrl_batch([w for _, w in whole], on_cpu=True)):
            out[i] = value
        return out

    def _ovrl(self, raw: np.ndarray) -> np.ndarray:
        """OVRL [B] from raw (signal, background, overall) [B, 3]: speechmos's own polynomial fit (not
        personalised; `self` is unused there)."""
        return self._speechmos.DNSMOS.get_polyfit_val(None, raw[:, 0], raw[:, 1], raw[:, 2], False)[2]

    def ovrl_batch(self, stacks: Sequence[np.ndarray | None], *, on_cpu: bool = False) -> list[float | None]:
        """DNSMOS overall quality (1..5) of clips given by their windows (`windows_of`; None stays None):
        every window of the batch in one pass, each clip's score the mean over its windows."""
        present = [w for w in stacks if w is not None]
        if not present:
            return [None] * len(stacks)
        ovrl = self._ovrl(self.raw(np.concatenate(present), on_cpu=on_cpu))
        out, at = [], 0
        for w in stacks:
            out.append(None if w is None else float(np.mean(ovrl[at : at + len(w)])))
            at += 0 if w is None else len(w)
        return out

    def ovrl(self, clip_16k: np.ndarray) -> float | None:
        """DNSMOS overall quality (1..5) of one 16 kHz clip; None for an empty clip or pure silence."""
        if self.module is None:
            return self.ovrl_clips([clip_16k])[0]
        return self.ovrl_batch([self.windows_of(clip_16k)])[0]


def _on_device(dnsmos: Dnsmos, device: str):
    """(the converted DNSMOS graph on `device`, its placement) where `onnx2torch` converts it and it
    agrees with onnxruntime on two fixed windows; else (None, the CPU placement and why)."""
    try:
        onnx, onnx2torch = importlib.import_module("onnx"), importlib.import_module("onnx2torch")
        module = onnx2torch.convert(onnx.load(dnsmos.path)).eval().to(device)
    except Exception as err:  # a missing or failing converter: the CPU path, with the reason on record
        return None, f"cpu (onnxruntime; no {device} path: {type(err).__name__}: {str(err)[:120]})"
    dnsmos.module, dnsmos.device = module, device
    gap = _gap(dnsmos, lambda w: dnsmos._ovrl(dnsmos.raw(w)))
    if gap > TOLERANCE:
        return None, f"cpu (onnxruntime; the {device} conversion differs by {gap:.3g} MOS)"
    return module, f"{device} (onnx2torch, within {gap:.1g} MOS of onnxruntime)"


def _gap(dnsmos: Dnsmos, ovrl: Callable[[np.ndarray], np.ndarray]) -> float:
    """The most |OVRL| difference between `ovrl` (of windows [B, window]) and onnxruntime's whole graph
    on two fixed windows of noise."""
    probe = np.concatenate([(np.random.default_rng(i).standard_normal((1, dnsmos.window)) * 0.1).astype(np.float32)
                            for i in (0, 1)])
    return float(np.max(np.abs(ovrl(probe) - dnsmos._ovrl(dnsmos.raw(probe, on_cpu=True)))))


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
