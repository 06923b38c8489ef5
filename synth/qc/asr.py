"""Intelligibility: a clip's transcript from a Whisper checkpoint, and its WER/CER against the text.

This module owns the speech recogniser (transformers' `automatic-speech-recognition`
pipeline over any Whisper loaded through `from_pretrained`, once, batched, greedy unless
told otherwise, in half precision on a GPU; 16 kHz arrays in, so neither torchaudio nor
ffmpeg is needed) and the error rates (`jiwer`,
after Whisper's English text normaliser from `whisper-normalizer`, so punctuation,
case and spelled-out forms do not count as errors). It knows nothing about outputs,
configs or Ray.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from synth.qc.deps import require

ASR_RATE_HZ = 16000  # Whisper's feature extractor's rate


class Transcriber:
    """One loaded Whisper; `transcribe` takes 16 kHz clips in batches. On a GPU it runs in half
    precision; it decodes with `num_beams` beams (1: greedy, synth's default; transformers' pipeline
    would otherwise search 5)."""

    def __init__(self, model, *, device: str = "cpu", batch_size: int = 8, max_new_tokens: int = 128,
                 num_beams: int = 1, processor=None):
        """model: a checkpoint `from_pretrained` loads (hub id or directory), or a loaded Whisper with its
        `processor` (e.g. `synth.qc.tiny_whisper.random_whisper`'s), used in the dtype it has."""
        transformers = require("transformers")
        if processor is not None:
            parts = {"tokenizer": processor.tokenizer, "feature_extractor": processor.feature_extractor}
        else:
            parts = {"dtype": require("torch").float16} if device != "cpu" else {}
        self.pipe = transformers.pipeline("automatic-speech-recognition", model=model, device=device, **parts)
        self.batch_size, self.num_beams = batch_size, num_beams
        # Whisper's prompt takes 4 positions (start, language, task, no timestamps)
        self.max_new_tokens = min(max_new_tokens, self.pipe.model.config.max_target_positions - 4)

    def transcribe(self, clips_16k: Sequence[np.ndarray]) -> list[str]:
        """Transcripts of [num_samples] float32 clips at 16 kHz, in order (an empty clip: "")."""
        texts = [""] * len(clips_16k)
        todo = [i for i, clip in enumerate(clips_16k) if len(clip)]
        if not todo:
            return texts
        inputs = [{"raw": np.asarray(clips_16k[i], np.float32), "sampling_rate": ASR_RATE_HZ} for i in todo]
        # The cap goes in as `max_length`, which Whisper's generate counts after its prompt, as it counts
        # `max_new_tokens`: given `max_new_tokens`, transformers 5 warns that both are set on every batch
        # (Whisper's generate fills in a default `max_length` first).
        out = self.pipe(inputs, batch_size=self.batch_size,
                        generate_kwargs={"language": "en", "task": "transcribe", "max_length": self.max_new_tokens,
                                         "num_beams": self.num_beams})
        for i, item in zip(todo, out):
            texts[i] = item["text"].strip()
        return texts


_normalizer = None


def normalize(text: str) -> str:
    """Whisper's English normaliser: lower case, no punctuation, spelled-out forms unified."""
    global _normalizer
    if _normalizer is None:
        _normalizer = require("whisper_normalizer.english").EnglishTextNormalizer()
    return " ".join(_normalizer(text).split())


def error_rates(reference: str, hypothesis: str) -> tuple[float | None, float | None]:
    """(WER, CER) of a transcript against the intended text, both normalised; None when the
    normalised reference is empty (no words to get wrong)."""
    jiwer = require("jiwer")
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return None, None
    if not hyp:
        return 1.0, 1.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))
