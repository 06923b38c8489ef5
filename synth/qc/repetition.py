"""Repetition: how much of a clip's codes go round in a loop.

This module owns `loop_score`, read from the codec codes rather than the audio: the
share of codebook 0's n-grams (n = `NGRAM_FRAMES`, 320 ms) that already occurred earlier
in the clip. Speech rarely repeats four frames of codebook 0 exactly (about 0 for fresh
speech or noise); a stuck loop or a held sound drives it towards 1 (1 - period / frames).
It knows nothing about audio or thresholds.
"""

from __future__ import annotations

import numpy as np

NGRAM_FRAMES = 4  # 4 frames of 80 ms


def loop_score(codes: np.ndarray) -> float | None:
    """Share of repeated codebook-0 n-grams of codes [num_frames, num_codebooks]; None when the
    clip is shorter than one n-gram."""
    first = np.asarray(codes)[:, 0] if np.ndim(codes) == 2 else np.asarray(codes)
    total = len(first) - NGRAM_FRAMES + 1
    if total <= 0:
        return None
    grams = {tuple(first[i : i + NGRAM_FRAMES].tolist()) for i in range(total)}
    return 1.0 - len(grams) / total
