"""Voice: how much a clip sounds like the voice it should have.

This module owns the speaker encoder (Resemblyzer's GE2E `VoiceEncoder`, whose weights
ship in its wheel, so it runs offline), loaded once, and `speaker_sim`: the cosine
similarity of two clips' utterance embeddings (1 = same voice; espeak's own voice
against itself about 0.9, against another espeak voice about 0.65). It knows nothing
about which clip is whose reference: the caller picks it.
"""

from __future__ import annotations

import numpy as np

from synth.qc.deps import require

SPEAKER_RATE_HZ = 16000  # Resemblyzer's rate
MIN_SAMPLES = SPEAKER_RATE_HZ // 4  # shorter clips give no meaningful embedding


class SpeakerEncoder:
    """One loaded Resemblyzer encoder; embeddings are unit vectors [256]."""

    def __init__(self, *, device: str = "cpu"):
        self.encoder = require("resemblyzer").VoiceEncoder(device=device, verbose=False)

    def embed(self, clip_16k: np.ndarray) -> np.ndarray | None:
        """The utterance embedding [256] of a 16 kHz clip; None when it is too short."""
        if len(clip_16k) < MIN_SAMPLES:
            return None
        return np.asarray(self.encoder.embed_utterance(np.asarray(clip_16k, np.float32)), np.float32)

    def similarity(self, clip_16k: np.ndarray, reference_16k: np.ndarray) -> float | None:
        """Cosine similarity of the two clips' voices; None when either is too short."""
        a, b = self.embed(clip_16k), self.embed(reference_16k)
        if a is None or b is None:
            return None
        return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
