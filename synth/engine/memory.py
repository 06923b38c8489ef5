"""What the fast engine's memory goes to at its configured sizes, and whether that fits the device.

This module owns the fast engine's memory plan (`MemoryPlan`, built by `plan_memory` from
shapes alone): the weights, the slots' KV caches, the parked caches that chained turns may
add (allocated on demand, up to a bound that memory may lower: `park_rows_that_fit`), the
slot state, the frame step's transients (on CUDA, the captured graphs' memory pool), one
prefill at its token budget, and Mimi decoding the largest decode batch; what the device
has free (`available_bytes`); and the refusal of a plan that does not fit
(`EngineMemoryError`, naming every number) before any cache is allocated. The figures are
estimates from shapes, each formula saying where its constant comes from; the device check
(`synth.bench.gpu_check`, its memory step) measures the same items on a GPU. It knows
nothing about requests, scheduling or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from synth.engine.lean_csm import CsmArgs
from synth.errors import SynthError

GIB = 2**30

# Mimi decoding holds about this many tensors of its last upsampling stage's size at once
# (num_filters channels x 1920 samples per frame): measured on CPU in float32 at Mimi's
# default config (64 filters), peak RSS 2.2-2.4 MiB per decoded frame and row for 1 to 3 rows
# of 100 to 1000 frames, i.e. 4.6-5.0 x (64 x 1920 x 4 bytes). Linear in frames and rows.
MIMI_LIVE_TENSORS = 5

# Kept free beyond the plan: the CUDA context's own allocations, cuBLAS/cuDNN workspaces and the
# caching allocator's rounding (a share of the device), and at least this much.
HEADROOM_SHARE, HEADROOM_MIN_BYTES = 0.05, 1 * GIB


class EngineMemoryError(SynthError, ValueError):
    """The configured sizes cannot fit the device; the message names each item and what is free."""


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes of each part of a fast engine at its sizes (estimates; see the module docstring).
    `parked_row_bytes` x `park_rows` is the parked caches' bound, allocated only as chained
    turns need them (none in a run without chains)."""

    device: str
    dtype: str
    num_slots: int
    max_positions: int
    weights: int  # model and Mimi parameters, resident before the plan is made
    kv_caches: int  # backbone [slots, Hkv, P, Dh] k and v per layer, and the depth decoder's
    parked_row_bytes: int  # one parked backbone cache (max_positions positions, every layer)
    park_rows: int  # the bound on parked rows (after `park_rows_that_fit`)
    slot_state: int  # per-slot buffers, the generated frames' history [slots, P, K] above all
    frame: int  # one frame step's transients (on CUDA: the graphs' pool)
    prefill: int  # one prefill's activations at the token budget
    prefill_tokens: int
    decode: int  # Mimi decoding the largest batch of finished rows
    decode_rows: int
    decode_frames: int  # frames of each of those rows
    host_pinned: int  # host memory: the pinned buffers finished rows' frames come back through

    @property
    def parked_bound(self) -> int:
        return self.park_rows * self.parked_row_bytes

    @property
    def up_front(self) -> int:
        """Bytes the engine allocates at start or may hold at once in a run without chains."""
        return self.kv_caches + self.slot_state + self.frame + self.prefill + self.decode

    @property
    def total(self) -> int:
        """Everything at once: weights, the up-front items and every parked row."""
        return self.weights + self.up_front + self.parked_bound

    def describe(self) -> str:
        """One line for the startup log."""
        g = lambda n: f"{n / GIB:.2f} GiB"
        return (f"fast engine memory on {self.device} ({self.dtype}; estimates): weights {g(self.weights)}, "
                f"KV caches {g(self.kv_caches)} ({self.num_slots} slots x {self.max_positions} positions), "
                f"parked caches up to {g(self.parked_bound)} ({self.park_rows} rows of {g(self.parked_row_bytes)}, "
                f"allocated only for chained turns: none in a flat run), slot state {g(self.slot_state)}, "
                f"{'graphs' if self.device.startswith('cuda') else 'frame step'} {g(self.frame)}, "
                f"prefill {g(self.prefill)} ({self.prefill_tokens} positions), decode {g(self.decode)} "
                f"({self.decode_rows} rows x {self.decode_frames} frames); total {g(self.total)}; "
                f"host pinned {g(self.host_pinned)}")


def _kv_bytes_per_position(args, itemsize: int) -> int:
    """k and v of every layer of one decoder, one row, one position."""
    return args.num_layers * 2 * args.num_kv_heads * args.head_dim * itemsize


def frame_values_per_slot(args: CsmArgs) -> int:
    """Values one slot's frame step holds at once at most: the frame's embedding before its sum
    over codebooks [K, Db], a backbone layer's q/k/v and MLP (gate, up, activation, product),
    a few residual-width tensors, and logits with their float32 copies and sampling scores."""
    b = args.backbone
    return (args.num_codebooks * b.hidden_size + 4 * b.intermediate_size
            + (b.num_heads + 2 * b.num_kv_heads) * b.head_dim + 4 * b.hidden_size + 4 * args.audio_vocab_size)


def plan_memory(args: CsmArgs, *, device: torch.device, dtype: torch.dtype, num_slots: int, max_positions: int,
                park_rows: int, prefill_tokens: int, weights: int, decode_rows: int, decode_frames: int,
                decode_frames_per_call: int, mimi_filters: int, samples_per_frame: int,
                codec_dtype: torch.dtype) -> MemoryPlan:
    """The plan of an engine of these sizes. prefill_tokens: the prefill budget as the scheduler
    raises it (`PrefillBuckets.tokens`); decode_rows x decode_frames: the largest batch of
    finished rows, of which Mimi decodes at most `decode_frames_per_call` frames (rows x padded
    length) in one call (`MimiCodec.max_decode_frames`)."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    b, d = args.backbone, args.depth
    K = args.num_codebooks
    backbone_position = _kv_bytes_per_position(b, itemsize)
    kv = num_slots * (max_positions * backbone_position + K * _kv_bytes_per_position(d, itemsize))
    history = num_slots * max_positions * K * 4  # int32
    per_slot = b.hidden_size * itemsize + 32 * 8  # the hidden state and about 30 scalar fields and counters
    # Bounded by the budget: about 4 x (FFN + hidden) values per position (tests/engine/test_prefill.py
    # measures under budget x (4 x FFN + 5 x hidden) at CSM-1B's widths), plus the prompt's embedding.
    prefill = prefill_tokens * (4 * b.intermediate_size + 6 * b.hidden_size) * itemsize
    rows_per_call = max(1, min(decode_rows, decode_frames_per_call // max(decode_frames, 1)))
    codec_itemsize = torch.empty(0, dtype=codec_dtype).element_size()
    decode = (rows_per_call * decode_frames * samples_per_frame * mimi_filters * codec_itemsize * MIMI_LIVE_TENSORS)
    return MemoryPlan(
        device=str(device), dtype=str(dtype).removeprefix("torch."), num_slots=num_slots,
        max_positions=max_positions, weights=weights, kv_caches=kv,
        parked_row_bytes=max_positions * backbone_position, park_rows=park_rows,
        slot_state=history + num_slots * per_slot, frame=num_slots * frame_values_per_slot(args) * itemsize,
        prefill=prefill, prefill_tokens=prefill_tokens, decode=decode, decode_rows=rows_per_call,
        decode_frames=decode_frames, host_pinned=history if device.type == "cuda" else 0,
    )


def available_bytes(device: torch.device) -> tuple[int, int] | None:
    """(free bytes, total bytes) of the device: on CUDA what the driver has free plus what this
    process's allocator holds unused; on CPU the kernel's MemAvailable. None where unknown."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return free + cached, total
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()}
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError, IndexError):
        return None


def headroom_bytes(total: int) -> int:
    return max(HEADROOM_MIN_BYTES, int(HEADROOM_SHARE * total))


def park_rows_that_fit(plan: MemoryPlan, free: int, total: int) -> int:
    """How many of the plan's parked rows fit beside its up-front items and the headroom."""
    room = free - plan.up_front - headroom_bytes(total)
    return max(0, min(plan.park_rows, room // max(plan.parked_row_bytes, 1)))


def check_fits(plan: MemoryPlan, free: int, total: int) -> None:
    """Refuse a plan whose items (beyond the weights, already resident) exceed what is free less
    the headroom, naming every number."""
    need = plan.up_front + plan.parked_bound + headroom_bytes(total)
    if need <= free:
        return
    g = lambda n: f"{n / GIB:.2f} GiB"
    raise EngineMemoryError(
        f"the fast engine's sizes do not fit {plan.device}: it has {g(free)} free of {g(total)} after the weights "
        f"({g(plan.weights)}), and would need {g(need)}: KV caches {g(plan.kv_caches)} ({plan.num_slots} slots x "
        f"{plan.max_positions} positions), parked caches {g(plan.parked_bound)} ({plan.park_rows} rows), slot state "
        f"{g(plan.slot_state)}, frame step {g(plan.frame)}, prefill {g(plan.prefill)} ({plan.prefill_tokens} "
        f"positions), decode {g(plan.decode)} ({plan.decode_rows} rows x {plan.decode_frames} frames) and "
        f"{g(headroom_bytes(total))} of headroom. Lower fast_engine.num_slots, fast_engine.max_positions, "
        f"fast_engine.park_rows or fast_engine.prefill_tokens")

