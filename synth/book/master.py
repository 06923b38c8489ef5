"""Mastering a chapter for publication: loudness to a target, peaks limited, room tone under it all.

This module owns turning a stitched chapter into audio a platform such as ACX accepts
(see `synth.book.acx` for the check): its integrated loudness (ITU-R BS.1770, measured
with pyloudnorm) is brought to `target_lufs`, then, if the whole file's RMS (pauses
included, as ACX measures it) falls outside ACX's -23..-18 dB, nudged to `rms_margin_db`
inside that window (loudness weights high frequencies up, so noisy or bright audio at
-20 LUFS can sit below -23 dB RMS), a look-ahead limiter holds every sample
at or below `ceiling_dbfs` without clipping, and a quiet bed of room tone (pink-ish noise
at `room_tone_dbfs`, the same for every chapter) fills the silences, so the head and tail
of the file (the stitch's lead-in and tail, at least `head_s` and `tail_s` long) are
room tone rather than digital silence. The chapter's length is unchanged, so its timing
files stay exact. It knows nothing about how the audio was made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.book.acx import RMS_DB
from synth.errors import SynthError
from synth.qc.quality import loudness_lufs  # the BS.1770 measure QC records per take


@dataclass(frozen=True)
class MasterSettings:
    # -20 LUFS lands speech's whole-file RMS inside ACX's -23..-18 dB with pauses included;
    # Emilia normalises to -20 dBFS, and EBU R128's -23 LUFS is broadcast's (too quiet for ACX).
    target_lufs: float = -20.0
    rms_margin_db: float = 1.0  # how far inside ACX's RMS window a nudged chapter lands
    ceiling_dbfs: float = -3.5  # ACX: peaks at or below -3 dBFS; half a dB of margin for the encoders
    room_tone_dbfs: float = -75.0  # RMS of the bed; ACX: noise floor below -60 dB
    head_s: float = 0.75  # ACX: 0.5-1 s of room tone at the head
    tail_s: float = 2.0  # ACX: 1-5 s at the tail
    lookahead_s: float = 0.005  # the limiter starts turning down this long before a peak
    release_s: float = 0.05  # and lets go over this long

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if not np.isfinite(value):
                raise ValueError(f"MasterSettings.{name} must be finite, got {value!r}")
        if self.ceiling_dbfs > 0 or self.target_lufs > 0 or self.room_tone_dbfs > self.ceiling_dbfs:
            raise ValueError(f"MasterSettings: levels must be <= 0 dB and the room tone below the ceiling: {self}")
        if min(self.head_s, self.tail_s, self.lookahead_s, self.release_s) < 0:
            raise ValueError(f"MasterSettings: durations must be >= 0: {self}")


def integrated_loudness(audio: np.ndarray, sample_rate_hz: int) -> float:
    """BS.1770 integrated loudness in LUFS; -inf for silence or audio under 0.4 s."""
    try:
        import pyloudnorm  # noqa: F401  (here only to name the book's extra when it is missing)
    except ImportError:
        raise SynthError("mastering needs pyloudnorm: pip install -e '.[book]' (or pip install pyloudnorm), "
                         "or render with --no-master") from None

    value = loudness_lufs(audio, sample_rate_hz)
    return float("-inf") if value is None else value


def master(audio: np.ndarray, sample_rate_hz: int, settings: MasterSettings = MasterSettings()) -> np.ndarray:
    """The chapter `audio` [num_samples] float32 mastered (same length): loudness, limiter,
    room tone. Audio too short or too quiet to measure keeps its level (limited, with room tone)."""
    audio = np.asarray(audio, dtype=np.float64)
    loudness = integrated_loudness(audio, sample_rate_hz)
    if np.isfinite(loudness):
        audio = audio * 10 ** ((settings.target_lufs - loudness) / 20)
    audio = limit(audio, sample_rate_hz, settings)
    low, high = RMS_DB[0] + settings.rms_margin_db, RMS_DB[1] - settings.rms_margin_db
    for _ in range(3):  # the limiter takes a little RMS back each time it works
        rms = float(np.sqrt(np.mean(audio**2))) if len(audio) else 0.0
        rms_db = 20 * np.log10(rms) if rms > 0 else float("-inf")
        if not np.isfinite(rms_db) or low <= rms_db <= high:
            break
        audio = limit(audio * 10 ** ((min(max(rms_db, low), high) - rms_db) / 20), sample_rate_hz, settings)
    audio = audio + room_tone(len(audio), sample_rate_hz, settings.room_tone_dbfs)
    ceiling = 10 ** (settings.ceiling_dbfs / 20)
    return np.clip(audio, -ceiling, ceiling).astype(np.float32)  # the bed may add a hair to a limited peak


def limit(audio: np.ndarray, sample_rate_hz: int, settings: MasterSettings) -> np.ndarray:
    """Look-ahead peak limiter: the gain each sample needs to stay under the ceiling, held as
    the minimum over a window around it and smoothed, so gain moves gently and never lets a
    peak through (a box average of window minima is at most the gain each sample needs)."""
    from scipy.ndimage import minimum_filter1d, uniform_filter1d

    ceiling = 10 ** (settings.ceiling_dbfs / 20)
    peak = np.abs(audio)
    needed = np.minimum(1.0, ceiling / np.maximum(peak, 1e-12))  # [num_samples]
    if needed.min() >= 1.0:
        return audio
    lookahead = max(1, int(settings.lookahead_s * sample_rate_hz))
    release = max(lookahead, int(settings.release_s * sample_rate_hz))
    held = minimum_filter1d(needed, size=2 * release + 1, mode="nearest")
    gain = uniform_filter1d(held, size=2 * lookahead + 1, mode="nearest")
    gain = np.minimum(gain, needed)  # the smoothing's rounding must not let a sample through
    return audio * gain


def room_tone(num_samples: int, sample_rate_hz: int, level_dbfs: float) -> np.ndarray:
    """A bed of soft, pink-ish noise [num_samples] at `level_dbfs` RMS; the same every time."""
    from scipy.signal import lfilter

    rng = np.random.default_rng(0)
    white = rng.standard_normal(num_samples)
    # Paul Kellet's economy pink filter: -3 dB per octave over the audible band
    pink = lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786],
                   [1, -2.494956002, 2.017265875, -0.522189400], white)
    rms = np.sqrt(np.mean(pink**2)) if num_samples else 1.0
    return pink * (10 ** (level_dbfs / 20) / max(rms, 1e-12))
