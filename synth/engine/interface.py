"""The seam between the pipeline and the speech generators.

This module owns the records that cross it (`Segment`, `SamplingParams`,
`GenerationRequest`, `GenerationResult` with its `ResultInfo`, `EngineInfo`), the dtype
names an engine loads in, and the small `Engine` protocol that both
implementations satisfy: the transformers reference (`synth.engine.reference_engine`) and the
fast continuous-batching engine (`synth.engine.fast_engine`). It knows nothing about
manifests, Ray or output files; engines know nothing about them either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, Literal, Protocol, Sequence

import numpy as np

StopReason = Literal["eos", "max_length", "silence", "loop"]

# The dtypes an engine loads in, by torch's names (`synth.engine.checkpoint` maps them to torch).
DTYPE_NAMES = ("float32", "bfloat16", "float16", "float64")


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
    continues: the request id of the turn whose context this one extends (its context is that
      turn's context plus that turn): a hint an engine with KV continuation may use to find the
      cache to keep; it checks the positions itself. Others ignore it.
    followed: a later request will continue this one (a chain's next turn): a hint to keep its
      cache a while.
    chain_frames: frames this request and the rest of its chain may generate (the sum of their
      caps): a scheduling hint; the fast engine (`longest_first`) starts the requests with the
      most work left first, so the longest chains do not make the run's tail. 0: this request's
      max_frames.
    speculative: generated before the take it continues has passed QC, which may still cancel it:
      the fast engine admits it only to slots no other request waits for.
    """

    request_id: str
    text: str
    speaker: int
    max_frames: int
    context: tuple[Segment, ...] = ()
    seed: int = 0
    continues: str | None = None
    followed: bool = False
    chain_frames: int = 0
    speculative: bool = False


@dataclass(frozen=True)
class ResultInfo:
    """How an engine produced a result, for benchmarks and tests. A field an engine does not
    measure keeps its default.

    slot: the fast engine's decoding slot (-1: none, e.g. a row of zero frames).
    queued_s, generate_s: seconds from submission to a slot, and in the slot (fast engine).
    ready_s: seconds from the start of the `run` call until the result was ready (fast engine).
    batch_frames, batch_size: the padded `generate` call the row rode in: frames computed
      for every row, and rows (reference engine).
    """

    slot: int = -1
    queued_s: float = 0.0
    generate_s: float = 0.0
    ready_s: float = 0.0
    batch_frames: int = 0
    batch_size: int = 0


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
    info: ResultInfo = field(default_factory=ResultInfo)

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[0])


# What `Engine.run` calls with each result: it may return follow-up requests (e.g. a conversation's next turn).
# An `on_result` object may also have a `prepare(results)` method: engines call it with every result
# that became ready together, before `on_result` sees each of them (`prepare_results`).
OnResult = Callable[[GenerationResult], Iterable[GenerationRequest] | None]
OnCancelled = Callable[[int], None]  # `Engine.cancel`'s acknowledgement: the frames thrown away


def prepare_results(on_result: OnResult | None, results: Sequence[GenerationResult]) -> None:
    """Hand results that became ready together to `on_result.prepare`, if it has one (e.g. to score
    a batch of takes at once, `synth.pipeline.retakes`)."""
    prepare = getattr(on_result, "prepare", None)
    if prepare is not None and results:
        prepare(results)


@dataclass(frozen=True)
class EngineInfo:
    """What a loaded engine is, for logs and the Ray actor's `ready` report; a field that does
    not apply to an engine is None (and left out of `to_dict`).

    compiled: steps compiled (fast) or static caches auto-compiled (reference).
    model: the checkpoint it was loaded from (reference engine).
    num_slots, max_positions, warmup_s, result_thread, status_lag: the fast engine's slots,
      KV-cache positions per slot, seconds of warm-up, and how its frame loop handles finished
      rows (see `FastEngineOptions`); compile_s, capture_s: of the warm-up, the compile of its
      steps and the capture of its CUDA graphs; compile_cache: "loaded" when the compiled steps
      came from the compile cache, "cold" when they were compiled into it.
    """

    engine: str
    dtype: str
    device: str
    compiled: bool
    model: str | None = None
    num_slots: int | None = None
    max_positions: int | None = None
    warmup_s: float | None = None
    compile_s: float | None = None
    capture_s: float | None = None
    compile_cache: str | None = None
    result_thread: bool | None = None
    status_lag: int | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


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
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams, on_result: OnResult | None = None,
    ) -> list[GenerationResult]:
        """Generate `requests`; `on_result` sees each result when it is ready and may return
        follow-up requests (a conversation's next turn), which are generated too."""
        ...

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Hand requests over from any thread: the `run` under way (else the next) generates them as
        if its `on_result` had returned them."""
        ...

    def cancel(self, request_id: str, on_cancelled: OnCancelled | None = None) -> None:
        """Drop a request from any thread, wherever it is short of being handed to `on_result`.
        on_cancelled(frames), on the engine's thread once the cancel is applied (before the `run`
        under way returns): the frames the request had generated, now thrown away (0 when it had
        none, or when its result had been handed to `on_result` already)."""
        ...

    def open_submissions(self) -> None:
        """More work will be handed over (`submit`): `run` waits for it instead of ending, until
        the matching `close_submissions` (calls nest)."""
        ...

    def close_submissions(self) -> None:
        ...

    def encode_clips(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codec codes [T_i, num_codebooks] int16 of float32 clips at `sample_rate_hz`."""
        ...

    def remember_codes(self, clip: np.ndarray, codes: np.ndarray) -> None:
        """Use `codes` whenever `clip` appears as context, instead of encoding it again."""
        ...

    def forget_codes(self, clip: np.ndarray) -> None:
        """Undo `remember_codes` for `clip`: encode it again if it comes."""
        ...

    def describe(self) -> EngineInfo:
        """What this engine is (kind, dtype, device, settings), for logs."""
        ...
