"""The scorer: every metric of a batch of takes, with each model loaded once.

This module owns `TakeScorer`: built once per actor (or per re-scoring run) from the `qc:`
settings, it loads the models of the metric groups that are on (Whisper, Resemblyzer,
Silero VAD, DNSMOS) on first use and keeps them; `score` takes a batch of takes (clip,
intended text, codes if any, the reference clip of the intended voice if any), resamples
each clip to 16 kHz once for the models that want it, runs the ASR batched, and returns
one metrics dict per take, keyed by the output's column names (`METRICS`; None where a
metric is off or undefined). It also counts what it scored and how long it took (`stats`),
for the QC stage's rate. It knows nothing about outputs, the policy's decision or Ray.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import soxr

from synth.qc import quality, repetition
from synth.qc.asr import ASR_RATE_HZ, Transcriber, error_rates
from synth.qc.policy import METRICS, QcSettings
from synth.qc.speaker import SpeakerEncoder
from synth.qc.timing import VoiceActivity


@dataclass(frozen=True)
class Take:
    """One clip to score. audio: [num_samples] float32 mono at the scorer's rate; codes:
    [num_frames, num_codebooks] or None (a dataset without codes); reference: the intended
    voice's clip at the same rate, or None."""

    audio: np.ndarray
    text: str
    codes: np.ndarray | None = None
    reference: np.ndarray | None = None


@dataclass
class ScorerStats:
    """What a scorer has done: takes, their audio seconds, seconds spent scoring."""

    takes: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0


class TakeScorer:
    """The QC metrics of takes at `sample_rate_hz`; see the module docstring."""

    def __init__(self, settings: QcSettings, sample_rate_hz: int, *, device: str = "cpu"):
        self.settings = settings
        self.sample_rate_hz = sample_rate_hz
        self.device = device
        self.groups = set(settings.metrics)
        self.stats = ScorerStats()
        self._asr: Transcriber | None = None
        self._speaker: SpeakerEncoder | None = None
        self._vad: VoiceActivity | None = None
        self._dnsmos: quality.Dnsmos | None = None
        self._references: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id -> (reference, it at 16 kHz)

    def load(self) -> "TakeScorer":
        """Load every model the settings need now (else on first use); returns self."""
        if "asr" in self.groups and self._asr is None:
            asr = self.settings.asr
            self._asr = Transcriber(asr.model, device=self.device, batch_size=asr.batch_size,
                                    max_new_tokens=asr.max_new_tokens)
        if "speaker" in self.groups and self._speaker is None:
            self._speaker = SpeakerEncoder(device=self.device)
        if "timing" in self.groups and self._vad is None:
            self._vad = VoiceActivity()
        if "dnsmos" in self.groups and self._dnsmos is None:
            import torch

            self._dnsmos = quality.Dnsmos(threads=torch.get_num_threads())
        return self

    def _at_16k(self, clip: np.ndarray) -> np.ndarray:
        if self.sample_rate_hz == ASR_RATE_HZ:
            return np.asarray(clip, np.float32)
        return soxr.resample(np.asarray(clip, np.float32), self.sample_rate_hz, ASR_RATE_HZ).astype(np.float32)

    def _reference_16k(self, reference: np.ndarray) -> np.ndarray:
        """A reference clip at 16 kHz, resampled once while the same array recurs (kept alive here,
        so its id cannot be reused by another)."""
        cached = self._references.get(id(reference))
        if cached is None or cached[0] is not reference:
            if len(self._references) >= 256:
                self._references.clear()
            cached = self._references[id(reference)] = (reference, self._at_16k(reference))
        return cached[1]

    def score(self, takes: Sequence[Take]) -> list[dict]:
        """One dict of every metric column per take (None: off or undefined), in order."""
        t0 = time.perf_counter()
        self.load()
        clips = [self._at_16k(t.audio) for t in takes]
        rows: list[dict] = [dict.fromkeys(METRICS) for _ in takes]
        if "asr" in self.groups:
            assert self._asr is not None
            for row, take, text in zip(rows, takes, self._asr.transcribe(clips)):
                row["asr_text"] = text
                row["wer"], row["cer"] = error_rates(take.text, text)
        for row, take, clip in zip(rows, takes, clips):
            if "speaker" in self.groups and take.reference is not None:
                assert self._speaker is not None
                row["speaker_sim"] = self._speaker.similarity(clip, self._reference_16k(take.reference))
            if "dnsmos" in self.groups:
                assert self._dnsmos is not None
                row["dnsmos"] = self._dnsmos.ovrl(clip)
            if "level" in self.groups:
                row["loudness_lufs"] = quality.loudness_lufs(take.audio, self.sample_rate_hz)
                row["peak_dbfs"] = quality.peak_dbfs(take.audio)
                row["clipped_fraction"] = quality.clipped_fraction(take.audio)
            if "timing" in self.groups:
                assert self._vad is not None
                timing = self._vad.timing(clip, take.text)
                row.update(leading_silence_s=timing.leading_silence_s, trailing_silence_s=timing.trailing_silence_s,
                           speech_ratio=timing.speech_ratio, chars_per_s=timing.chars_per_s)
            if "repetition" in self.groups and take.codes is not None:
                row["loop_score"] = repetition.loop_score(take.codes)
        self.stats.takes += len(takes)
        self.stats.audio_s += sum(len(t.audio) for t in takes) / self.sample_rate_hz
        self.stats.busy_s += time.perf_counter() - t0
        return rows
