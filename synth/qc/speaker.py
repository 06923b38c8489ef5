"""Voice: how much a clip sounds like the voice it should have.

This module owns the speaker encoder (Resemblyzer's GE2E `VoiceEncoder`, whose weights
ship in its wheel, so it runs offline), loaded once on the actor's device, and
`speaker_sim`: the cosine similarity of two clips' utterance embeddings (1 = same voice;
espeak's own voice against itself about 0.9, against another espeak voice about 0.65).
An utterance embedding is Resemblyzer's own (`embed_utterance`: 1.6 s partials at 1.3 per
second, each embedded, averaged, normalised), computed in two halves so a batch costs one
model call: `partials` (the mel spectrograms, CPU work a worker thread can do) and
`embed_batch` (every partial of every clip through the LSTM at once, on the device).
It knows nothing about which clip is whose reference: the caller picks it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from synth.qc.deps import require

SPEAKER_RATE_HZ = 16000  # Resemblyzer's rate
MIN_SAMPLES = SPEAKER_RATE_HZ // 4  # shorter clips give no meaningful embedding
PARTIALS_PER_S, MIN_COVERAGE = 1.3, 0.75  # embed_utterance's defaults
MAX_PARTIALS = 512  # partials [P, 160 frames, 40 mels] per LSTM call (about 13 MB of input)


class SpeakerEncoder:
    """One loaded Resemblyzer encoder on `device`; embeddings are unit vectors [256]."""

    def __init__(self, *, device: str = "cpu"):
        self.encoder = require("resemblyzer").VoiceEncoder(device=device, verbose=False)
        self._mel = require("resemblyzer.audio").wav_to_mel_spectrogram
        self.device = device

    def partials(self, clip_16k: np.ndarray) -> np.ndarray | None:
        """The mel spectrograms of a 16 kHz clip's partial utterances [P, 160, 40], sliced as
        `embed_utterance` slices them; None when the clip is too short to embed."""
        if len(clip_16k) < MIN_SAMPLES:
            return None
        wav = np.asarray(clip_16k, np.float32)
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), PARTIALS_PER_S, MIN_COVERAGE)
        if wav_slices[-1].stop >= len(wav):
            wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)), "constant")
        mel = self._mel(wav)  # [frames, 40]
        return np.array([mel[s] for s in mel_slices])

    def embed_batch(self, partials: Sequence[np.ndarray | None]) -> list[np.ndarray | None]:
        """Utterance embeddings [256] of clips given by their `partials` (None stays None): every
        partial of every clip through the encoder in as few calls as MAX_PARTIALS allows."""
        import torch

        counts = [0 if p is None else len(p) for p in partials]
        if not sum(counts):
            return [None] * len(partials)
        stacked = np.concatenate([p for p in partials if p is not None])  # [sum P, 160, 40]
        out = []
        with torch.inference_mode():
            for start in range(0, len(stacked), MAX_PARTIALS):
                mels = torch.from_numpy(stacked[start : start + MAX_PARTIALS]).to(self.device)
                out.append(self.encoder(mels).float().cpu().numpy())
        embeds, result, at = np.concatenate(out), [], 0
        for count in counts:
            if not count:
                result.append(None)
                continue
            raw = embeds[at : at + count].mean(axis=0)
            result.append((raw / np.linalg.norm(raw, 2)).astype(np.float32))
            at += count
        return result

    def embed(self, clip_16k: np.ndarray) -> np.ndarray | None:
        """The utterance embedding [256] of one 16 kHz clip; None when it is too short."""
        return self.embed_batch([self.partials(clip_16k)])[0]

    def similarity(self, clip_16k: np.ndarray, reference_16k: np.ndarray) -> float | None:
        """Cosine similarity of the two clips' voices; None when either is too short."""
        return cosine(self.embed(clip_16k), self.embed(reference_16k))


def cosine(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Cosine similarity of two embeddings; None when either is missing."""
    if a is None or b is None:
        return None
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
