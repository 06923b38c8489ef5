"""The seam between the pipeline and the speech generators.

This module owns the records that cross it (`Segment`, `SamplingParams`,
`GenerationRequest`, `GenerationResult`) and the small `Engine` protocol that both
implementations satisfy: the transformers reference (`synth.engine.reference_engine`) and the
fast continuous-batching engine (`synth.engine.fast_engine`). It knows nothing about
manifests, Ray or output files; engines know nothing about them either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Protocol, Sequence

import numpy as np

StopReason = Literal["eos", "max_length", "silence", "loop"]


@dataclass(frozen=True)
class Segment:
    """One conversational turn used as context.

    audio: [num_samples] float32 mono at the codec's sample rate (24 kHz for CSM),
    or None for a text-only turn.
    """

    speaker: int
    text: str
    audio: np.ndarray | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Sampling for the backbone (codebook 0) and the depth decoder (codebooks 1..N-1).

    `do_sample=False` means greedy decoding on both; temperature and top-k then do
    nothing. `top_k=0` disables top-k filtering.
    """

    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    depth_temperature: float = 0.9
    depth_top_k: int = 50


@dataclass(frozen=True)
class GenerationRequest:
    """Generate one turn of `speaker` saying `text`, conditioned on `context`.

    max_frames: hard cap on generated audio frames (one frame = 80 ms for CSM).
    seed: per-row seed; engines that cannot seed per row record what they did.
    """

    request_id: str
    text: str
    speaker: int
    max_frames: int
    context: tuple[Segment, ...] = ()
    seed: int = 0


@dataclass
class GenerationResult:
    """What an engine returns for one request.

    codes: [num_frames, num_codebooks] int16, frames before the EOS frame (the EOS
      frame itself is not included).
    audio: [num_frames * samples_per_frame] float32 mono at `sample_rate_hz`.
    """

    request_id: str
    codes: np.ndarray
    audio: np.ndarray
    stop_reason: StopReason
    num_prompt_tokens: int
    info: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[0])


class Engine(Protocol):
    """A loaded CSM that turns requests into codes and audio."""

    name: str
    sample_rate_hz: int
    samples_per_frame: int
    num_codebooks: int
    max_positions: int

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        """Backbone positions the request's prompt occupies (text tokens + 1 per audio frame)."""
        ...

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationResult]:
        """Generate every request; results come back in the order of `requests`."""
        ...

    def run(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams,
        on_result: Callable[[GenerationResult], Iterable[GenerationRequest] | None] | None = None,
    ) -> list[GenerationResult]:
        """Generate `requests`; `on_result` sees each result when it is ready and may return
        follow-up requests (a conversation's next turn), which are generated too."""
        ...

    def encode_clips(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codec codes [T_i, num_codebooks] int16 of float32 clips at `sample_rate_hz`."""
        ...

    def remember_codes(self, clip: np.ndarray, codes: np.ndarray) -> None:
        """Use `codes` whenever `clip` appears as context, instead of encoding it again."""
        ...
