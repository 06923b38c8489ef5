"""The fast engine's settings as typed records, importable without torch or pydantic.

This module owns `FastEngineOptions`, how the fast engine runs (CUDA graphs, compile
mode, attention buckets, how its frame loop handles finished rows, the codec's dtype,
admission, prefill sizes), none of which changes what it generates; and
`FastEngineSettings`, a run config's whole `fast_engine:` section: those options plus the
engine's sizes (slots, positions) and early stops. Both are frozen stdlib dataclasses that
check their values when built, so the benchmark's flags, the device check (`from_dict`, no
pydantic) and a run's YAML (`synth.pipeline.config`, whose pydantic validates them from a
dict and, through `__pydantic_config__`, refuses unknown keys) fill the same records. It
knows nothing about torch, models, configs or Ray; `synth.engine.fast_engine` reads the options.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from synth.engine.interface import DTYPE_NAMES

# `torch.compile` modes without CUDA graphs of their own. The engine captures each whole frame as
# one CUDA graph; "reduce-overhead" and "max-autotune" would turn on inductor's own CUDA graphs
# (cudagraph trees) inside that capture.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class FastEngineOptions:
    """How the fast engine runs; outputs do not depend on any of these. None: the engine
    chooses by device (see each field)."""

    __pydantic_config__ = {"extra": "forbid"}  # a plain dict: the engine layer does not import pydantic

    cuda_graph: bool | None = None
    """Replay each frame as one captured CUDA graph; None: on CUDA."""

    compile_mode: str | None = None
    """`torch.compile` mode of the frame's steps when they are compiled (`model.compile`), one
    without CUDA graphs of its own (`COMPILE_MODES`: "default", "max-autotune-no-cudagraphs");
    None: inductor's default."""

    num_kv_buckets: int = 4
    """The backbone attends over the smallest of this many equal prefixes of the KV cache that
    covers every slot (each its own compiled graph); 1: always all positions."""

    result_thread: bool | None = None
    """Finish rows (Mimi decode, the `on_result` callback, follow-ups' prompts and context
    encodes) on a worker thread while the frame loop goes on; None: on CUDA only (on a small
    CPU the two threads fight over the cores)."""

    status_lag: int | None = None
    """Frames the host reads the stop flags behind the newest queued frame, so the GPU never
    waits on the host (a finished row then idles in its slot that long); None: 2 on CUDA, 0 on CPU."""

    decode_batch: int = 16
    """Finished rows are Mimi-decoded in batches of this many, or sooner (`decode_interval_frames`)."""

    decode_interval_frames: int = 12
    """Decode the finished rows waiting once the oldest has waited this many frames, even if
    fewer than `decode_batch`."""

    longest_first: bool = True
    """Queue rows by the work they have left, most first: a chain's turn by the frames its chain may
    still generate (`GenerationRequest.chain_frames`), any other row by its `max_frames`; equals
    first come, first served. Short rows and short chains fill the tail, and slots rarely sit idle
    (better packing, later first audio). False: first come, first served."""

    codec_dtype: str | None = None
    """The dtype Mimi runs in (one of `DTYPE_NAMES`); None: float32, or float64 for a float64 model."""

    min_admit: int | None = None
    """While rows are decoding, wait until this many slots are free before a prefill (fewer,
    larger prefills); None: num_slots // 32, at least 1."""

    max_prefill_rows: int | None = None
    """Most rows prefilled in one batch; None: all slots."""

    prefill_tokens: int = 16384
    """Most positions one prefill computes: rows x length, both rounded up to their buckets
    (powers of two; lengths from 64). A larger admission is split into several prefills. This
    bounds a prefill's memory (about 4 x (FFN + hidden) values per position, the MLP's
    activations: 16384 positions hold about 1.25 GiB at CSM-1B's widths in bf16) and how long
    it holds up the frames. Raised to the longest length bucket (max_positions) when below it."""

    kv_continuation: bool = True
    """A chain's next turn whose prompt starts with what a free slot's KV cache holds (the previous
    turn's prompt and frames) continues in that slot and prefills only its new positions. Exact
    in exact arithmetic; in low precision the kept positions (computed one frame at a time) may
    differ from a full prefill's in the last bits, as any two kernels do."""

    hold_frames: int = 0
    """Frames a finished turn's slot waits for the chain's next turn (being prepared: decode, the
    callback, its prompt) before another queued turn may take it. 0: never wait (the cache is
    parked instead, `park_rows`): a hold makes chains run depth first, and the run's tail longer."""

    park_rows: int | None = None
    """Most slot caches that can be set aside (parked, on the device) when another turn takes the
    slot, until the chain's next turn continues them in any free slot; each costs one slot's KV
    cache (max_positions positions) and is allocated the first time it is used, so a run without
    chained turns allocates none. None: as many as slots, or fewer where the device's memory
    holds fewer beside everything else (the startup log says how many). 0: none."""

    compile_cache: str | None = "~/.cache/synth/compile"
    """Directory of the compiled frame steps, one subdirectory per model architecture, shapes,
    dtype, torch version and device (`synth.engine.compile_cache`): the first start compiles into
    it, later starts with the same key load instead. On storage every node mounts, a cluster
    compiles once. null: inductor's own per-machine cache only."""

    def __post_init__(self):
        at_least = {"num_kv_buckets": 1, "hold_frames": 0, "park_rows": 0, "decode_batch": 1, "decode_interval_frames": 0, "status_lag": 0,
                    "min_admit": 1, "max_prefill_rows": 1, "prefill_tokens": 1}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"{name}={value!r} must be >= {low}")
        if self.codec_dtype is not None and self.codec_dtype not in DTYPE_NAMES:
            raise ValueError(f"codec_dtype={self.codec_dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={self.compile_mode!r}: expected one of {', '.join(COMPILE_MODES)} "
                             "(or null); the engine captures each frame as one CUDA graph itself, and modes such as "
                             "reduce-overhead or max-autotune turn on inductor's own CUDA graphs inside that capture")


@dataclass(frozen=True)
class FastEngineSettings(FastEngineOptions):
    """A run config's `fast_engine:` section: how the engine runs (`FastEngineOptions`, the fields
    above), how large it is, and when it stops a row early. The sizes and stops come after the options."""

    num_slots: int = 8
    """Rows generated at once (the KV cache holds this many x max_positions positions). Before this
    section held it: `generation.batch_size` (which for the transformers engine is rows per call)."""

    max_positions: int | None = None
    """KV-cache positions per slot (prompt + generated frames); None: the model's maximum. Smaller is
    faster: every step attends over all of them. Before: `generation.max_positions`."""

    silence_stop_frames: int = 0
    """Stop a row whose codebook 0 holds one value this many frames (0: off); stop_reason `silence`.
    Before: `generation.silence_stop_frames`."""

    loop_stop_frames: int = 0
    """Stop a row whose codebook 0 repeats with a period of at most `loop_max_period` this many frames
    (0: off); stop_reason `loop`. Before: `generation.loop_stop_frames`."""

    loop_max_period: int = 8
    """Longest repeat period the loop stop looks for. Before: `generation.loop_max_period`."""

    def __post_init__(self):
        try:
            super().__post_init__()
        except ValueError as e:  # the section's errors name it, as `fast_engine.KEY=value ...`
            raise ValueError(f"fast_engine.{e}") from None
        at_least = {"num_slots": 1, "max_positions": 16, "silence_stop_frames": 0, "loop_stop_frames": 0,
                    "loop_max_period": 2}
        for name, low in at_least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ValueError(f"fast_engine.{name}={value!r} must be >= {low}")

    def options(self) -> FastEngineOptions:
        """How the engine runs: the fields it shares with `FastEngineOptions`."""
        return FastEngineOptions(**{f.name: getattr(self, f.name) for f in fields(FastEngineOptions)})

    def recorded(self) -> dict:
        """The settings that change what the engine generates (a run's recorded settings, under
        `generation`, where they were named before this section held them)."""
        return {name: getattr(self, name) for name in RECORDED}

    @classmethod
    def from_dict(cls, section: dict | None) -> "FastEngineSettings":
        """The section read from plain YAML (no pydantic); an unknown key is a ValueError naming it."""
        section = section or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ValueError(f"fast_engine: unknown key {unknown[0]!r} (the section takes: {', '.join(sorted(known))})")
        return cls(**section)


# FastEngineSettings' fields that change outputs, hence part of a run's recorded settings.
RECORDED = ("max_positions", "silence_stop_frames", "loop_stop_frames", "loop_max_period")
