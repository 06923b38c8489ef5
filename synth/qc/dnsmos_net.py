"""DNSMOS's feature network rebuilt in torch, so its convolutions can run in bfloat16 on a CPU.

This module owns `FeatureNet`: speechmos's `sig_bak_ovr.onnx` up to its global maximum (the
cut `synth.qc.dnsmos_periods.FeatureGraph` makes: features [B, 64, rows, 20] of any whole
number of STFT frames), built from the graph's own weights. Why: 97 % of DNSMOS's
multiply-adds are three 3x3 convolutions at full resolution (128->64, 64->64, 64->32 channels
over 161 bins), which onnxruntime already runs at the CPU's float32 peak; a CPU with native
bfloat16 (AVX512-BF16, AMX) does twice the multiply-adds per cycle in bfloat16, which
onnxruntime's CPU provider has no kernels for and oneDNN (through torch) has.

The framing, the DFT and the log power stay float32 (the log of a small power is where
precision matters); the first convolution (one input channel, so a poor fit for a
convolution kernel) is one matrix product of each bin's 3x3 neighbourhood, in float32, and
its output is the next layer's channels-last input; the six convolutions after it run in
`dtype`, channels-last, with their ReLUs and 2x2 max-pools. In float32 it agrees with
onnxruntime within float rounding; in bfloat16 the OVRL it leads to is within 0.005 MOS of
onnxruntime's on speech and noise (tests/qc/test_dnsmos_net.py; `synth.qc.quality.Dnsmos`
checks its own tolerance at load). It knows nothing about windows, periods or the scorer.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

HOP = 160  # samples per STFT hop; a frame is two hops (320 samples)
LAYERS = ("_1", "_2", "_3", "_4", "_5", "_6")  # the convolutions after the first, in order
POOLED = ("_3", "_4", "_5")  # each followed by a 2x2 max-pool
MIN_POWER = 1e-12  # the graph's floor under the power before its log
CHUNK_FRAMES = 64  # the first convolution's float32 output is made this many frames at a time (stays in cache)


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): bfloat16 is then about
    twice float32's speed in oneDNN's convolutions; elsewhere it is emulated, and slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


class FeatureNet:
    """The DNSMOS graph up to its global maximum, in torch, its convolutions in `dtype`."""

    def __init__(self, weights: dict[str, np.ndarray], dtype: str = "bfloat16"):
        """weights: the graph's initializers by name (`onnx.numpy_helper.to_array` of each); dtype: the
        convolutions' torch dtype, by name."""
        self.dtype = dtype = getattr(torch, dtype)
        real = weights["time2freq/stft-real/kernel:0"][:, :, 0]  # [161, 320]
        imag = weights["time2freq/stft-imag/kernel:0"][:, :, 0]
        self.num_bins = len(real)
        self.dft = torch.from_numpy(np.concatenate([real, imag]).T.copy())  # [320, 2 * 161]: frame -> (re, im)
        first = weights["conv2d/kernel:0"]  # [128, 1, 3, 3]
        self.patch_weight = torch.from_numpy(first.reshape(len(first), 9).T.copy())  # [9, 128]
        self.patch_bias = torch.from_numpy(weights["conv2d/bias:0"].copy())  # [128]
        self.convs = [(torch.from_numpy(weights[f"conv2d{layer}/kernel:0"].copy()).to(dtype)
                       .contiguous(memory_format=torch.channels_last),
                       torch.from_numpy(weights[f"conv2d{layer}/bias:0"].copy()).to(dtype),
                       layer in POOLED) for layer in LAYERS]

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """Features [B, 64, rows, 20] float32 of samples [B, HOP * (num_frames + 1)] float32."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(samples, np.float32))
            frames = x.unfold(1, 2 * HOP, HOP)  # [B, F, 320]: frame i is samples [160 i, 160 i + 320)
            spectrum = frames @ self.dft  # [B, F, 322]
            bins = self.num_bins
            power = spectrum[..., :bins] ** 2 + spectrum[..., bins:] ** 2
            logpow = torch.log10(torch.clamp(power, min=MIN_POWER))  # [B, F, 161]
            batch, num_frames, _ = logpow.shape
            # the first 3x3 convolution ('same' padding) as a product [B * F * 161, 9] @ [9, 128], in float32,
            # cast to `dtype` by chunks: the whole float32 output would be 4x its cache-sized chunk's traffic
            patches = F.pad(logpow, (1, 1, 1, 1)).unfold(1, 3, 1).unfold(2, 3, 1).reshape(-1, 9)
            h = torch.empty(len(patches), len(self.patch_bias), dtype=self.dtype)
            step = CHUNK_FRAMES * bins
            chunk = torch.empty(step, len(self.patch_bias))
            for at in range(0, len(patches), step):
                part = chunk[: min(step, len(patches) - at)]
                torch.addmm(self.patch_bias, patches[at : at + step], self.patch_weight, out=part)
                h[at : at + len(part)] = torch.relu_(part)
            h = h.view(batch, num_frames, bins, -1).permute(0, 3, 1, 2)  # [B, 128, F, 161], channels-last
            for weight, bias, pooled in self.convs:
                h = torch.relu_(F.conv2d(h, weight, bias, padding=1))
                if pooled:
                    h = F.max_pool2d(h, 2)
            return h.float().contiguous().numpy()  # [B, 64, F // 8, 20]
