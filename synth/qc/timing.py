"""Timing of a clip: silence before and after the speech, how much of it is speech, how fast.

This module owns the voice-activity detector (Silero VAD, whose TorchScript model ships
in the `silero-vad` wheel; loaded once, 16 kHz) and the timing metrics drawn from its
speech segments: leading and trailing silence (s), speech ratio (speech seconds over
the clip's), and characters per second of speech. CSM's reported failures (pauses that
grow over many turns, speech cut off by the length cap) show up here. It knows nothing
about thresholds or where clips come from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.qc.deps import require

VAD_RATE_HZ = 16000  # Silero's rate (8 kHz is its only other)


@dataclass(frozen=True)
class Timing:
    """What the VAD found in one clip; chars_per_s is None when it found no speech."""

    leading_silence_s: float
    trailing_silence_s: float
    speech_ratio: float
    chars_per_s: float | None


class VoiceActivity:
    """One loaded Silero VAD."""

    def __init__(self):
        silero = require("silero_vad")
        self._timestamps = silero.get_speech_timestamps
        self.model = silero.load_silero_vad(onnx=False)

    def speech(self, clip_16k: np.ndarray) -> list[tuple[int, int]]:
        """Speech segments of a 16 kHz clip as (start, end) sample indices."""
        import torch

        if not len(clip_16k):
            return []
        spans = self._timestamps(torch.from_numpy(np.asarray(clip_16k, np.float32)), self.model,
                                 sampling_rate=VAD_RATE_HZ)
        return [(int(s["start"]), int(s["end"])) for s in spans]

    def timing(self, clip_16k: np.ndarray, text: str) -> Timing:
        """The timing metrics of a clip meant to say `text` (characters: the text's, stripped)."""
        duration_s = len(clip_16k) / VAD_RATE_HZ
        spans = self.speech(clip_16k)
        if not spans:
            return Timing(duration_s, duration_s, 0.0, None)
        speech_s = sum(end - start for start, end in spans) / VAD_RATE_HZ
        return Timing(
            leading_silence_s=spans[0][0] / VAD_RATE_HZ,
            trailing_silence_s=(len(clip_16k) - spans[-1][1]) / VAD_RATE_HZ,
            speech_ratio=speech_s / max(duration_s, 1e-9),
            chars_per_s=len(text.strip()) / speech_s,
        )
