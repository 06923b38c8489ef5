"""When a generated CSM row stops, and the names of why.

This module owns CSM's EOS rule (a frame whose codebooks 0..K-2 all equal
`codebook_eos_token_id`; the last codebook plays no part, as in transformers'
`generate`), the early stops beyond it (`StopRules`: silence, loops), and the stop
codes the frame step records per slot with their names (`STOP_REASONS`, the
`stop_reason` of a result). It knows nothing about slots, sampling, prompts or audio;
the frame step applies these rules on the device, the reference engine and the tests
on whole code sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# stop_code values; 0 means still running.
RUNNING, STOP_EOS, STOP_MAX_LENGTH, STOP_SILENCE, STOP_LOOP = 0, 1, 2, 3, 4
STOP_REASONS = {STOP_EOS: "eos", STOP_MAX_LENGTH: "max_length", STOP_SILENCE: "silence", STOP_LOOP: "loop"}


def is_eos_frame(frames: torch.Tensor, eos_code: int) -> torch.Tensor:
    """frames: [..., K] codes -> [...] bool: codebooks 0..K-2 all equal `eos_code`."""
    return (frames[..., :-1] == eos_code).all(dim=-1)


def frames_before_eos(codes: torch.Tensor, eos_code: int) -> tuple[torch.Tensor, bool]:
    """codes: [T, K] -> (the frames before the first EOS frame [T', K], whether one came)."""
    eos = is_eos_frame(codes, eos_code).nonzero()
    if len(eos):
        return codes[: int(eos[0, 0])], True
    return codes, False


@dataclass(frozen=True)
class StopRules:
    """Early stops on generated frames, beyond EOS and the length cap (0 disables each).

    silence_frames: stop when codebook 0 has repeated one value this many frames in a
      row (the base model's silence is a held token); the repeated tail is dropped.
    loop_frames: stop when codebook 0 has repeated with some period 2..loop_max_period
      for this many frames; the repeating tail is dropped.
    """

    silence_frames: int = 0
    loop_frames: int = 0
    loop_max_period: int = 8

    def __post_init__(self):
        for name in ("silence_frames", "loop_frames"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.loop_frames and self.loop_max_period < 2:
            raise ValueError(f"loop_max_period={self.loop_max_period} must be >= 2")
