"""Optional clean-up of an accepted clip: silence trimmed in whole frames, loudness normalised.

This module owns the two edits synth may make to a kept take: cutting leading and
trailing silence in whole codec frames (80 ms for CSM), so the audio and its codes stay
aligned frame for frame, keeping a margin of silence, and scaling to a target integrated
loudness (`pyloudnorm`, BS.1770), never past a peak ceiling. Both return what they did,
for the row. It knows nothing about configs, outputs or the metrics' models.
"""

from __future__ import annotations

import math

import numpy as np

from synth.qc.deps import require


def frames_to_trim(leading_s: float, trailing_s: float, num_frames: int, frame_s: float,
                   keep_s: float) -> tuple[int, int]:
    """Whole frames to cut at the start and the end, leaving `keep_s` of each silence. A clip with
    no speech (its silences meet) keeps its first `keep_s` (whole frames, at least one)."""
    start = max(0, math.floor((leading_s - keep_s) / frame_s))
    end = max(0, math.floor((trailing_s - keep_s) / frame_s))
    if start + end >= num_frames:  # all silence
        kept = min(num_frames, max(1, math.ceil(keep_s / frame_s - 1e-9)))
        return 0, max(0, num_frames - kept)
    return start, end


def trim(audio: np.ndarray, codes: np.ndarray, cut: tuple[int, int], samples_per_frame: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """audio [T * samples_per_frame], codes [T, K] with `cut` = (start, end) frames removed."""
    start, end = cut
    stop = len(codes) - end
    return audio[start * samples_per_frame : stop * samples_per_frame], codes[start:stop]


def normalize_loudness(audio: np.ndarray, rate_hz: int, target_lufs: float, max_peak_dbfs: float
                       ) -> tuple[np.ndarray, float | None]:
    """audio scaled to `target_lufs` (less if its peak would pass `max_peak_dbfs`), and the gain
    in dB; unchanged with gain None when its loudness is undefined (under 0.4 s, silence)."""
    from synth.qc.quality import loudness_lufs

    loudness = loudness_lufs(audio, rate_hz)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if loudness is None or peak == 0.0:
        return audio, None
    require("pyloudnorm")
    gain_db = min(target_lufs - loudness, max_peak_dbfs - 20 * math.log10(peak))
    return (audio * 10 ** (gain_db / 20)).astype(np.float32), float(gain_db)
