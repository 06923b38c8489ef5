"""The ACX check: whether a chapter file meets Audible's (ACX) audio submission numbers.

This module owns measuring a chapter as ACX's own check (and Audacity's "ACX Check")
does and saying what fails: RMS of the whole file between -23 and -18 dB, peaks at or
below -3 dBFS, a noise floor (the quietest half second's RMS) below -60 dB, and room tone
at the head (at least 0.5 s) and tail (at least 1 s) before the first and after the last
speech (ACX asks for 0.5-1 s and 1-5 s; longer is not failed, since where speech starts
depends on how softly it begins). Levels
are dB relative to full scale on the sample values (a full-scale square wave is 0 dB).
It knows nothing about how the audio was made or mastered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RMS_DB = (-23.0, -18.0)
PEAK_MAX_DBFS = -3.0
NOISE_FLOOR_MAX_DB = -60.0
HEAD_S = (0.5, 1.0)
TAIL_S = (1.0, 5.0)
NOISE_WINDOW_S = 0.5
SPEECH_DB = -45.0  # a 50 ms block this loud (RMS) is speech, not room tone, for the head and tail


@dataclass(frozen=True)
class AcxReport:
    rms_db: float
    peak_dbfs: float
    noise_floor_db: float
    head_s: float  # room tone before the first speech
    tail_s: float  # and after the last
    reasons: tuple[str, ...] = field(default=())  # what fails, in words; empty when it passes

    @property
    def passes(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict:
        """The report as JSON values (a level of digital silence, -inf, as null)."""
        levels = {k: (v if np.isfinite(v) else None) for k, v in
                  (("rms_db", self.rms_db), ("peak_dbfs", self.peak_dbfs), ("noise_floor_db", self.noise_floor_db))}
        return {**levels, "head_s": self.head_s, "tail_s": self.tail_s, "passes": self.passes,
                "reasons": list(self.reasons)}

    def line(self) -> str:
        """One line: pass or fail, the measurements, and for a failure what fails."""
        numbers = (f"RMS {self.rms_db:.1f} dB, peak {self.peak_dbfs:.1f} dBFS, noise floor {self.noise_floor_db:.1f} dB, "
                   f"room tone {self.head_s:.2f} s head / {self.tail_s:.2f} s tail")
        return f"ACX pass ({numbers})" if self.passes else f"ACX FAIL: {'; '.join(self.reasons)} ({numbers})"


def _db(value: float) -> float:
    return float(20 * np.log10(value)) if value > 0 else float("-inf")


def acx_check(audio: np.ndarray, sample_rate_hz: int) -> AcxReport:
    """Measure `audio` [num_samples] (float, full scale 1.0) against ACX's numbers."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1 or not len(audio):
        raise ValueError(f"acx_check needs mono audio [num_samples], got shape {audio.shape}")
    rms = _db(np.sqrt(np.mean(audio**2)))
    peak = _db(np.max(np.abs(audio)))
    block = max(1, int(0.05 * sample_rate_hz))  # 50 ms blocks
    blocks = len(audio) // block
    block_rms = np.sqrt(np.mean(audio[: blocks * block].reshape(blocks, block) ** 2, axis=1)) if blocks else np.zeros(0)
    per_window = max(1, int(NOISE_WINDOW_S / 0.05))
    if blocks >= per_window:  # the quietest half second: mean power over each run of 10 blocks
        power = np.convolve(block_rms**2, np.ones(per_window) / per_window, mode="valid")
        floor = _db(np.sqrt(power.min()))
    else:
        floor = rms
    loud = np.flatnonzero(block_rms > 10 ** (SPEECH_DB / 20))
    head = loud[0] * block / sample_rate_hz if len(loud) else len(audio) / sample_rate_hz
    tail = (len(audio) - (loud[-1] + 1) * block) / sample_rate_hz if len(loud) else 0.0

    reasons = []
    if not RMS_DB[0] <= rms <= RMS_DB[1]:
        reasons.append(f"RMS {rms:.1f} dB is {'below' if rms < RMS_DB[0] else 'above'} {RMS_DB[0]:.0f}..{RMS_DB[1]:.0f} dB")
    if peak > PEAK_MAX_DBFS:
        reasons.append(f"peak {peak:.1f} dBFS is above {PEAK_MAX_DBFS:.0f} dBFS")
    if floor >= NOISE_FLOOR_MAX_DB:
        reasons.append(f"noise floor {floor:.1f} dB is not below {NOISE_FLOOR_MAX_DB:.0f} dB")
    if not HEAD_S[0] <= head + 1e-9:
        reasons.append(f"room tone at the head {head:.2f} s is under {HEAD_S[0]} s")
    if not TAIL_S[0] <= tail + 1e-9:
        reasons.append(f"room tone at the tail {tail:.2f} s is under {TAIL_S[0]} s")
    return AcxReport(rms, peak, floor, float(head), float(tail), tuple(reasons))
