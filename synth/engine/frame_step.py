"""One CSM audio frame for every slot at once: a static-shape step with no host sync.

This module owns the per-slot decoding state (`SlotState`: positions, caps, seeds,
sampling settings, stop codes, a device-side history of generated frames) and the
frame function that advances all slots by one 80 ms frame: codebook 0 from the
backbone's last hidden state, then the depth decoder for codebooks 1..K-1 (positions
0 and 1, the backbone state and codebook 0, in one two-token pass, so K-1 passes in
all), per-row sampling, the stop rules (`synth.engine.stop`), and the backbone step
that consumes the new frame. The function only reads and writes fixed buffers, so on
CUDA it is captured once as a CUDA graph (optionally over `torch.compile`d steps) and
each frame is one replay.
It knows nothing about requests, prompts, queues or audio; of the engine's records it
reads only `SamplingParams`, when a row is admitted.

Sampling needs no generator state: the Gumbel noise for (seed, frame, codebook,
token) comes from an integer hash, so a row's samples depend only on its own seed
and logits, never on its slot or on the other rows. Greedy or sampled, only codes the
codec can decode are ever chosen (`num_codes`: Mimi's 2048 of CSM's 2051 audio ids).
"""

from __future__ import annotations

import types
from contextlib import contextmanager, nullcontext
from typing import Sequence

import torch

from synth.engine.interface import SamplingParams
from synth.engine.lean_csm import LeanCsm
from synth.engine.stop import (
    RUNNING,
    STOP_EOS,
    STOP_LOOP,
    STOP_MAX_LENGTH,
    STOP_SILENCE,
    StopRules,
    is_eos_frame,
)

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors in [0, 2^32); multipliers < 2^31 never overflow."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _M32
    return x ^ (x >> 16)


def gumbel_noise(row_keys: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """row_keys: [B] hashed (seed, frame, codebook); token_ids: [B, N] -> Gumbel noise [B, N] float32,
    always finite.

    u = (m + 0.5) / 2^23 from the hash's top 23 bits m: float32 holds every such value exactly, so
    2^-24 <= u <= 1 - 2^-24. (With 24 bits, the top value 2^24 - 0.5 rounds to 2^24 in float32: u = 1.0
    and the noise +inf.) -log(u) is then at least 2^-24; the clamp keeps it off 0 even where a log
    rounds differently, so the noise lies within about [-2.8, 17.3]."""
    h = _mix32((row_keys[:, None] ^ token_ids) & _M32)
    u = ((h >> 9).float() + 0.5) * (1.0 / (1 << 23))
    return -torch.log((-torch.log(u)).clamp_min(2.0**-25))


def on_device(device: torch.device):
    """A block in which `device` is the current CUDA device (nothing on CPU). Streams, events,
    `synchronize()`, graph capture and pinned allocations that name no device use the current
    one, which is cuda:0 in any thread that set none, wherever the model is: with the model on
    cuda:1 they would wait on, record and capture the wrong GPU's work. The engine runs its frame
    loop, captures and result thread inside this, and names the device where a call takes one."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _own_code(method):
    """`method` (bound) as a function with a code object of its own. Dynamo keeps compiled graphs,
    their guards and the recompile limit (8) on the code object, which every FrameStep shares:
    each engine's steps (other slot counts: other shapes) and each attention bucket (a Python int)
    would add entries there until the limit raised `FailOnRecompileLimitHit` (fullgraph=True), on
    the third engine of a process. A copy compiles into its own cache, freed with it."""
    f = method.__func__
    copy = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    copy.__kwdefaults__, copy.__qualname__ = f.__kwdefaults__, f.__qualname__
    return types.MethodType(copy, method.__self__)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> device without a sync: a pageable copy would wait for the queued frames."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class SlotState(torch.nn.Module):
    """Per-slot decoding state as fixed device buffers (B = slots, P = positions, K = codebooks)."""

    def __init__(self, num_slots: int, max_positions: int, num_codebooks: int, hidden_size: int, dtype, device):
        super().__init__()
        B, P, K = num_slots, max_positions, num_codebooks
        long = dict(dtype=torch.long, device=device)
        f32 = dict(dtype=torch.float32, device=device)
        self.register_buffer("hidden", torch.zeros(B, hidden_size, dtype=dtype, device=device))  # [B, Db]
        self.register_buffer("pos", torch.zeros(B, **long))  # backbone position the next frame is fed at
        self.register_buffer("frame", torch.zeros(B, **long))  # index of the frame being generated
        self.register_buffer("cap", torch.zeros(B, **long))  # max frames for the row
        self.register_buffer("active", torch.zeros(B, dtype=torch.bool, device=device))
        self.register_buffer("seed", torch.zeros(B, **long))
        self.register_buffer("do_sample", torch.zeros(B, dtype=torch.bool, device=device))
        self.register_buffer("temperature", torch.ones(B, **f32))
        self.register_buffer("top_k", torch.zeros(B, **long))
        self.register_buffer("depth_temperature", torch.ones(B, **f32))
        self.register_buffer("depth_top_k", torch.zeros(B, **long))
        self.register_buffer("stop_code", torch.zeros(B, **long))
        self.register_buffer("result_len", torch.zeros(B, **long))
        self.register_buffer("c0_run", torch.zeros(B, **long))  # frames codebook 0 has held its value
        self.register_buffer("history", torch.zeros(B, P, K, dtype=torch.int32, device=device))  # [B, P, K]
        self.register_buffer("status", torch.zeros(2, B, **long))  # [stop_code; result_len] snapshot
        self.register_buffer("rows", torch.arange(B, device=device))


class FrameStep:
    """Builds and runs the per-frame function over a LeanCsm with caches set up."""

    def __init__(self, model: LeanCsm, num_slots: int, max_positions: int, *, stop_rules: StopRules = StopRules(),
                 top_k_max: int | None = None, num_kv_buckets: int = 4, num_codes: int | None = None):
        """num_kv_buckets: the backbone attends over the smallest of this many equal prefixes of
        the cache (multiples of 64 positions) that covers every slot, so short rows do not read
        all `max_positions`; each bucket is its own compiled graph (and CUDA graph). 1: always all.
        num_codes: only audio ids below this are ever chosen, greedy or sampled, on both decoders:
        the codes the codec decodes (Mimi's codebook size); None: all of the model's audio vocab."""
        args = model.args
        self.model = model
        self.num_slots, self.max_positions = num_slots, max_positions
        if num_kv_buckets < 1:
            raise ValueError(f"num_kv_buckets={num_kv_buckets} must be >= 1")
        step = -(-max_positions // num_kv_buckets)
        step = -(-step // 64) * 64  # whole blocks of 64 positions
        self.kv_buckets = sorted({min(max_positions, step * i) for i in range(1, num_kv_buckets + 1)})
        self.K, self.V = args.num_codebooks, args.audio_vocab_size
        self.eos = args.codebook_eos_token_id
        self.stop_rules = stop_rules
        self.num_codes = min(num_codes or self.V, self.V)
        self.top_k_max = min(top_k_max or self.num_codes, self.num_codes)
        device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
        model.setup_caches(num_slots, max_positions)
        self.state = SlotState(num_slots, max_positions, self.K, args.backbone.hidden_size, dtype, device)
        # Depth positions as ready-made [B] tensors: no allocation inside the frame.
        if self.K < 2:
            raise ValueError(f"num_codebooks={self.K}: CSM's depth decoder needs at least 2")
        self.depth_pos = [torch.full((num_slots,), p, dtype=torch.long, device=device) for p in range(self.K)]
        loop_periods = max(stop_rules.loop_max_period - 1, 1)
        self.loop_run = torch.zeros(num_slots, loop_periods, dtype=torch.long, device=device)
        self._warm: set[bool] = set()  # sampling modes whose frames have run in every bucket
        # compile_steps: each piece of the frame per variant (sampling mode, or bucket) -> its compiled copy
        self._compiled: dict[tuple[str, bool | int], object] | None = None

    def compile_steps(self, mode: str | None = None) -> None:
        """torch.compile the three per-frame pieces: codebooks 0 and 1, one further depth
        codebook (reused for all 30, its position a tensor), and the rest of the frame
        (history, stop rules, the backbone step). mode: a
        `torch.compile` mode without CUDA graphs of its own (the whole frame is graphed
        here), e.g. "max-autotune-no-cudagraphs" to autotune the matmuls and fuse their
        epilogues; None is inductor's default.

        Each piece is compiled once per variant it is called with (the first two per sampling
        mode, the last per attention bucket), each from its own copy of the code (`_own_code`),
        so every compiled function holds one graph, whatever the number of buckets or of
        engines in the process."""
        opts = dict(fullgraph=True, dynamic=False, mode=mode)

        def compiled(method):
            return torch.compile(_own_code(method), **opts)

        self._compiled = {
            **{("first", sample): compiled(self._first_codebooks) for sample in (False, True)},
            **{("next", sample): compiled(self._next_codebook) for sample in (False, True)},
            **{("advance", kv_len): compiled(self._advance) for kv_len in self.kv_buckets},
        }

    # ------------------------------------------------------------------ the frame

    def _choose(self, logits, temperature, top_k, keys, sample: bool):
        """logits: [B, V] float32 -> codes [B] below `num_codes`; greedy rows take the argmax."""
        logits = logits[:, : self.num_codes]  # ids the codec cannot decode are never chosen
        if not sample:
            return logits.argmax(dim=-1)
        vals, idx = logits.topk(self.top_k_max, dim=-1)  # [B, k], sorted
        greedy = idx[:, 0]  # the argmax, for rows that do not sample
        rank = torch.arange(self.top_k_max, device=logits.device)
        keep = (rank[None] < top_k[:, None]) | (top_k[:, None] <= 0)
        score = vals / temperature[:, None] + gumbel_noise(keys, idx)
        score = score.masked_fill(~keep, float("-inf"))
        sampled = idx.gather(1, score.argmax(dim=-1, keepdim=True))[:, 0]
        return torch.where(self.state.do_sample, sampled, greedy)

    def _keys(self, base, codebook):
        """Per-row hash of (seed, frame, codebook); codebook: int or [B] tensor."""
        return _mix32((base + codebook * 0x9E3779B1) & _M32) if base is not None else None

    def _first_codebooks(self, h, base, sample: bool):
        """h: [B, Db] backbone hidden -> codebooks 0 and 1 [B] each, and the depth input for position 2.

        Depth position 0 (the backbone state) only fills the depth cache, and position 1's input
        (codebook 0) does not depend on it: both run as one causal two-token pass."""
        s, m = self.state, self.model
        c0 = self._choose(m.lm_head(h).float(), s.temperature, s.top_k, self._keys(base, 0), sample)
        x = torch.stack([h, m.embed_audio_tokens(c0)], dim=1)  # [B, 2, Db]
        d = m.depth.prefill(m.inputs_embeds_projector(x), m.depth.rows)[:, 1]  # [B, Dd] at position 1
        logits = (d @ m.codebooks_head[0]).float()  # [B, V] of codebook 1
        c1 = self._choose(logits, s.depth_temperature, s.depth_top_k, self._keys(base, 1), sample)
        return c0, c1, m.embed_audio_tokens(c1 + self.V)

    def _next_codebook(self, x, pos, base, sample: bool):
        """x: [B, Db] embedding of codebook pos-1, at depth position pos ([B], all equal)
        -> codebook pos [B] and the depth input for position pos+1."""
        s, m = self.state, self.model
        d = m.depth_step(x, pos)  # [B, Dd]
        head = m.codebooks_head.index_select(0, pos[:1] - 1)[0]  # [Dd, V] of codebook pos
        logits = (d @ head).float()  # [B, V]
        c = self._choose(logits, s.depth_temperature, s.depth_top_k, self._keys(base, pos), sample)
        return c, m.embed_audio_tokens(c + pos * self.V)

    @contextmanager
    def state_kept(self):
        """Frames run inside this block (warm-up, compilation, capture) leave no trace in the
        slot state. KV-cache writes land at each slot's current position, which the next real
        frame writes again before anything reads it."""
        snapshot = {k: v.clone() for k, v in self.state.state_dict().items()}
        loop_run = self.loop_run.clone()
        try:
            yield
        finally:
            self.state.load_state_dict(snapshot)
            self.loop_run.copy_(loop_run)

    def warm(self, sample: bool) -> None:
        """Run the frame once per attention bucket, so compiled steps compile now, not mid-run."""
        if sample in self._warm:
            return
        with self.state_kept():
            for kv_len in self.kv_buckets:
                self.frame(sample, kv_len)
        self._warm.add(sample)

    def kv_bucket(self, positions_needed: int) -> int:
        """The smallest attention length (a bucket) that covers `positions_needed` positions;
        all `max_positions` when none does (positions are clamped there)."""
        return next((b for b in self.kv_buckets if b >= positions_needed), self.max_positions)

    def frame(self, sample: bool, kv_len: int | None = None) -> None:
        """Advance every slot by one frame, in place. Static shapes, no host sync. kv_len: the
        backbone attends over the cache's first kv_len positions (a bucket; default all), which
        must exceed every live slot's position."""
        s = self.state
        kv_len = kv_len or self.max_positions
        first, next_codebook, advance = self._first_codebooks, self._next_codebook, self._advance
        if self._compiled is not None:
            first, next_codebook = self._compiled["first", sample], self._compiled["next", sample]
            advance = self._compiled["advance", kv_len]
        base = _mix32(_mix32(s.seed & _M32) ^ (s.frame & _M32)) if sample else None
        c0, c, x = first(s.hidden, base, sample)
        codes = [c0, c]
        for k in range(2, self.K):
            c, x = next_codebook(x, self.depth_pos[k], base, sample)
            codes.append(c)
        advance(torch.stack(codes, dim=1), kv_len)

    def _advance(self, frame: torch.Tensor, kv_len: int) -> None:
        """frame: [B, K] codes just generated -> history, stop rules, and the backbone step
        that consumes the frame; frozen rows stay put."""
        s, m = self.state, self.model
        live = s.active & (s.stop_code == RUNNING)
        at = s.frame.clamp(max=self.max_positions - 1)
        s.history[s.rows, at] = frame.to(torch.int32)

        # Stop rules, in priority order: EOS, silence/loop, length cap.
        stop = torch.zeros_like(s.stop_code)
        length = s.frame + 1
        reached_cap = s.frame + 1 >= s.cap
        stop = torch.where(reached_cap, STOP_MAX_LENGTH, stop)
        rules = self.stop_rules
        if rules.silence_frames or rules.loop_frames:
            prev = s.history[s.rows, (at - 1).clamp(min=0), 0]
            same = (frame[:, 0] == prev.long()) & (s.frame > 0)
            s.c0_run.copy_(torch.where(same, s.c0_run + 1, torch.zeros_like(s.c0_run)))
        if rules.loop_frames:
            periods = torch.arange(2, rules.loop_max_period + 1, device=frame.device)  # [Q]
            back = (at[:, None] - periods[None]).clamp(min=0)  # [B, Q]
            past = s.history[s.rows[:, None], back, 0].long()
            match = (frame[:, :1] == past) & (s.frame[:, None] >= periods[None])
            self.loop_run.copy_(torch.where(match, self.loop_run + 1, torch.zeros_like(self.loop_run)))
            run = self.loop_run.max(dim=1).values
            looping = run >= rules.loop_frames
            stop = torch.where(looping, STOP_LOOP, stop)
            length = torch.where(looping, s.frame + 1 - run, length)
        if rules.silence_frames:
            silent = s.c0_run + 1 >= rules.silence_frames
            stop = torch.where(silent, STOP_SILENCE, stop)
            length = torch.where(silent, s.frame - s.c0_run + 1, length)
        is_eos = is_eos_frame(frame, self.eos)
        stop = torch.where(is_eos, STOP_EOS, stop)
        length = torch.where(is_eos, s.frame, length)

        ends = live & (stop != RUNNING)
        s.stop_code.copy_(torch.where(ends, stop, s.stop_code))
        s.result_len.copy_(torch.where(ends, length, s.result_len))
        s.status[0].copy_(s.stop_code)
        s.status[1].copy_(s.result_len)

        # Feed the frame to the backbone for the next one; frozen rows stay put.
        s.hidden.copy_(m.backbone_step(m.embed_frames(frame), s.pos.clamp(max=self.max_positions - 1), kv_len))
        s.pos.copy_(torch.where(live, s.pos + 1, s.pos).clamp(max=self.max_positions - 1))
        s.frame.copy_(torch.where(live, s.frame + 1, s.frame))

    # ------------------------------------------------------------------ admission

    def admit(self, slots: torch.Tensor, hidden: torch.Tensor, prompt_lens: torch.Tensor, caps: torch.Tensor,
              seeds: torch.Tensor, sampling: Sequence[SamplingParams]) -> None:
        """Start rows in `slots` [N] after their prefill. hidden: [N, Db]; prompt_lens, caps,
        seeds: [N] on the device; sampling: each row's settings."""
        s = self.state

        def per_row(values: list, dtype: torch.dtype) -> torch.Tensor:  # [N] on the device
            return to_device(torch.tensor(values, dtype=dtype), s.rows.device)

        s.hidden[slots] = hidden.to(s.hidden.dtype)
        s.pos[slots] = prompt_lens
        s.frame[slots] = 0
        s.cap[slots] = caps
        s.seed[slots] = seeds
        s.do_sample[slots] = per_row([p.do_sample for p in sampling], torch.bool)
        s.temperature[slots] = per_row([p.temperature for p in sampling], torch.float32)
        s.top_k[slots] = per_row([p.top_k for p in sampling], torch.long)
        s.depth_temperature[slots] = per_row([p.depth_temperature for p in sampling], torch.float32)
        s.depth_top_k[slots] = per_row([p.depth_top_k for p in sampling], torch.long)
        s.stop_code[slots] = RUNNING
        s.result_len[slots] = 0
        s.c0_run[slots] = 0
        self.loop_run[slots] = 0
        s.active[slots] = True

    def release(self, slots: torch.Tensor) -> None:
        self.state.active[slots] = False


class GraphedFrame:
    """The frame function captured as one CUDA graph per sampling mode (greedy / sampled) and
    attention bucket."""

    def __init__(self, step: FrameStep):
        self.step = step
        self.device = step.state.hidden.device
        self.graphs: dict[tuple[bool, int], torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.stream = None  # the side stream of warm-ups and captures, on the model's device

    def _capture(self, sample: bool, kv_len: int) -> torch.cuda.CUDAGraph:
        # Warm up on a side stream (lazy init, compilation, autotuning), then capture; neither
        # may advance live rows. Every stream here is the model's device's (see `on_device`):
        # `torch.cuda.graph`'s default capture stream is made once per process, on whichever
        # device was current then, so the capture names its own.
        device = self.device
        with on_device(device), self.step.state_kept():
            if self.stream is None:
                self.stream = torch.cuda.Stream(device)
            self.stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(self.stream):
                for _ in range(2):
                    self.step.frame(sample, kv_len)
            torch.cuda.current_stream(device).wait_stream(self.stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                self.step.frame(sample, kv_len)
            self.pool = graph.pool()
            torch.cuda.synchronize(device)
        return graph

    def capture(self, sample: bool) -> None:
        """Capture the graphs of this sampling mode (every bucket) now, if not yet done. Capture
        forbids CUDA calls from other threads, so the engine does this before it hands any
        work to its result thread (which sits idle between runs)."""
        for kv_len in self.step.kv_buckets:
            if (sample, kv_len) not in self.graphs:
                self.graphs[sample, kv_len] = self._capture(sample, kv_len)

    def __call__(self, sample: bool, kv_len: int | None = None) -> None:
        """Replay on the current stream of the model's device (the scheduler's loop runs `on_device`)."""
        key = (sample, kv_len or self.step.max_positions)
        if key not in self.graphs:
            self.capture(sample)
        self.graphs[key].replay()
