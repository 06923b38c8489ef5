"""Timing of a clip: silence before and after the speech, how much of it is speech, how fast.

This module owns the voice-activity detector (Silero VAD, whose TorchScript model ships
in the `silero-vad` wheel; loaded once, 16 kHz, run on a batch of clips at once: one model
call per 32 ms chunk of the longest, not per chunk of every clip; the segments come from
silero's own `get_speech_timestamps_from_probs`) and the timing metrics drawn from its
speech segments: leading and trailing silence (s), speech ratio (speech seconds over
the clip's), and characters per second of speech. CSM's reported failures (pauses that
grow over many turns, speech cut off by the length cap) show up here. It knows nothing
about thresholds or where clips come from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from synth.qc.deps import require

VAD_RATE_HZ = 16000  # Silero's rate (8 kHz is its only other)
CHUNK = 512  # samples Silero scores at a time at 16 kHz (32 ms)


@dataclass(frozen=True)
class Timing:
    """What the VAD found in one clip; chars_per_s is None when it found no speech."""

    leading_silence_s: float
    trailing_silence_s: float
    speech_ratio: float
    chars_per_s: float | None


class VoiceActivity:
    """One loaded Silero VAD (stateful: one per thread that uses it)."""

    def __init__(self):
        import torch

        threads = torch.get_num_threads()
        silero = require("silero_vad")
        torch.set_num_threads(threads)  # importing silero_vad sets the whole process to one torch thread
        self._from_probs = silero.get_speech_timestamps_from_probs
        self.model = silero.load_silero_vad(onnx=False)

    def probabilities(self, clips_16k: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each 16 kHz clip's speech probability per 512-sample chunk, the batch's chunk t of every
        clip in one model call, as `get_speech_timestamps` computes them one clip at a time (the
        last chunk zero-padded; a clip's own chunks do not depend on the longer clips beside it)."""
        import torch

        lengths = [len(c) for c in clips_16k]
        chunks = [math.ceil(n / CHUNK) for n in lengths]
        if not clips_16k or not max(chunks):
            return [np.zeros(0, np.float32) for _ in clips_16k]
        audio = np.zeros((len(clips_16k), max(chunks) * CHUNK), np.float32)  # [B, T * 512]
        for row, clip in zip(audio, clips_16k):
            row[: len(clip)] = clip
        batch = torch.from_numpy(audio)
        self.model.reset_states()
        with torch.inference_mode():
            probs = torch.cat([self.model(batch[:, t * CHUNK : (t + 1) * CHUNK], VAD_RATE_HZ)
                               for t in range(max(chunks))], dim=1).numpy()  # [B, T]
        return [probs[i, :n] for i, n in enumerate(chunks)]

    def speech_batch(self, clips_16k: Sequence[np.ndarray]) -> list[list[tuple[int, int]]]:
        """Speech segments of each 16 kHz clip as (start, end) sample indices."""
        out = []
        for clip, probs in zip(clips_16k, self.probabilities(clips_16k)):
            spans = self._from_probs(probs.tolist(), sampling_rate=VAD_RATE_HZ, audio_length_samples=len(clip)) \
                if len(clip) else []
            out.append([(int(s["start"]), int(s["end"])) for s in spans])
        return out

    def speech(self, clip_16k: np.ndarray) -> list[tuple[int, int]]:
        """Speech segments of one 16 kHz clip as (start, end) sample indices."""
        return self.speech_batch([clip_16k])[0]

    def timing_batch(self, clips_16k: Sequence[np.ndarray], texts: Sequence[str]) -> list[Timing]:
        """The timing metrics of clips meant to say `texts`, their VAD run as one batch."""
        return [timing_of(clip, text, spans) for clip, text, spans in zip(clips_16k, texts, self.speech_batch(clips_16k))]

    def timing(self, clip_16k: np.ndarray, text: str) -> Timing:
        """The timing metrics of a clip meant to say `text` (characters: the text's, stripped)."""
        return self.timing_batch([clip_16k], [text])[0]


def timing_of(clip_16k: np.ndarray, text: str, spans: list[tuple[int, int]]) -> Timing:
    """The timing metrics of a 16 kHz clip meant to say `text`, from its speech segments."""
    duration_s = len(clip_16k) / VAD_RATE_HZ
    if not spans:
        return Timing(duration_s, duration_s, 0.0, None)
    speech_s = sum(end - start for start, end in spans) / VAD_RATE_HZ
    return Timing(
        leading_silence_s=spans[0][0] / VAD_RATE_HZ,
        trailing_silence_s=(len(clip_16k) - spans[-1][1]) / VAD_RATE_HZ,
        speech_ratio=speech_s / max(duration_s, 1e-9),
        chars_per_s=len(text.strip()) / speech_s,
    )
