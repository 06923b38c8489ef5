"""A lean CSM (backbone + depth decoder) in plain torch, with static KV caches.

This module owns the model math of Sesame's CSM as transformers implements it
(`transformers.models.csm`), rewritten gpt-fast style for batched, slot-based
decoding: every KV cache is a preallocated buffer of `[num_slots, kv_heads,
max_positions, head_dim]`, each slot (batch row) carries its own position, so rows
at different lengths share one decode step with static shapes. It also owns the
mapping from transformers' parameter names to its own (`lean_state_dict`), and which
fused attention kernels prefill and decode may use on CUDA (`*_SDPA_BACKENDS`). It knows
nothing about files (`synth.engine.checkpoint` reads them and loads this model),
tokenizers, the Mimi codec, scheduling or sampling.

Shapes: B = slots, T = prompt length, Db/Dd = backbone/depth widths,
K = num_codebooks, V = audio vocab per codebook.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# The fused attention kernels SDPA may pick on CUDA (CPU keeps PyTorch's own choice). Unmeasured
# on a GPU so far: a device run has to confirm them (README, "Engines").
# Prefill (causal, no mask, grouped-query): not cuDNN. PyTorch prefers cuDNN attention on
# H100-class GPUs, and cuDNN builds an execution plan on the host for every new shape (reported
# at 55-400 ms each), on the frame loop's thread while only two frames are queued. Flash needs no
# plan, supports causal grouped-query attention natively (bf16/fp16); math is the fallback for
# float32/float64, which flash does not take (and memory-efficient does not with enable_gqa).
PREFILL_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)
# Decode (one token per slot, GQA folded into query rows, a per-slot mask over the cache): the
# memory-efficient kernel, which takes an arbitrary mask and is what the fold was written to
# reach; flash takes no mask. cuDNN is left out until a device run shows it beats memory-efficient
# on these short-query, long-cache shapes. Math only where memory-efficient cannot run (float64).
DECODE_SDPA_BACKENDS = (SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def _sdpa_backends(x: torch.Tensor, backends: tuple[SDPBackend, ...]):
    """The SDPA backend choice as a context (traceable by torch.compile) on CUDA; none elsewhere."""
    return sdpa_kernel(list(backends)) if x.is_cuda else contextlib.nullcontext()


@dataclass(frozen=True)
class DecoderArgs:
    """One Llama-style decoder stack (the backbone or the depth decoder)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    max_positions: int
    rope: dict  # transformers' `rope_parameters`: rope_type, rope_theta, llama3 fields

    @classmethod
    def from_hf(cls, cfg) -> "DecoderArgs":
        rope = dict(getattr(cfg, "rope_parameters", None) or {})
        if "rope_theta" not in rope:  # pre-5.x configs keep theta and scaling apart
            rope = {**(getattr(cfg, "rope_scaling", None) or {}), "rope_theta": cfg.rope_theta}
        rope.setdefault("rope_type", rope.pop("type", "default"))
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act={cfg.hidden_act!r}: the lean CSM implements silu only")
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            raise ValueError("attention_bias/mlp_bias=True: the lean CSM implements bias-free layers only")
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_hidden_layers,
            num_heads=cfg.num_attention_heads,
            num_kv_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
            head_dim=head_dim,
            intermediate_size=cfg.intermediate_size,
            rms_norm_eps=cfg.rms_norm_eps,
            max_positions=cfg.max_position_embeddings,
            rope=rope,
        )


@dataclass(frozen=True)
class CsmArgs:
    backbone: DecoderArgs
    depth: DecoderArgs
    num_codebooks: int
    audio_vocab_size: int  # V: codes + specials per codebook (2051 for csm-1b)
    text_vocab_size: int
    codebook_eos_token_id: int
    codebook_pad_token_id: int
    audio_token_id: int
    audio_eos_token_id: int

    @classmethod
    def from_hf(cls, config) -> "CsmArgs":
        """From a transformers `CsmConfig`."""
        return cls(
            backbone=DecoderArgs.from_hf(config),
            depth=DecoderArgs.from_hf(config.depth_decoder_config),
            num_codebooks=config.num_codebooks,
            audio_vocab_size=config.vocab_size,
            text_vocab_size=config.text_vocab_size,
            codebook_eos_token_id=config.codebook_eos_token_id,
            codebook_pad_token_id=config.codebook_pad_token_id,
            audio_token_id=config.audio_token_id,
            audio_eos_token_id=config.audio_eos_token_id,
        )


def rope_inv_freq(rope: dict, head_dim: int) -> torch.Tensor:
    """Inverse frequencies [head_dim // 2] in float32, as transformers computes them."""
    base = rope["rope_theta"]
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        return inv_freq
    if rope_type != "llama3":
        raise ValueError(f"rope_type={rope_type!r}: the lean CSM implements 'default' and 'llama3'")
    factor = rope["factor"]
    low, high = rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Upcast like transformers' CsmRMSNorm, so bf16 rows match the reference closely.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, H, S, Dh]; cos, sin: [B, 1, S, Dh] (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVCache(nn.Module):
    """Static per-slot cache: k, v: [B, Hkv, P, Dh]. Plain buffers, never reallocated."""

    def __init__(self, num_slots: int, num_kv_heads: int, max_positions: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (num_slots, num_kv_heads, max_positions, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)


class Attention(nn.Module):
    def __init__(self, a: DecoderArgs):
        super().__init__()
        self.a = a
        # q, k and v projections as one matmul (fewer kernels per step): [D] -> [(H + 2 Hkv) Dh]
        self.qkv_proj = nn.Linear(a.hidden_size, (a.num_heads + 2 * a.num_kv_heads) * a.head_dim, bias=False)
        self.o_proj = nn.Linear(a.num_heads * a.head_dim, a.hidden_size, bias=False)
        self.cache: KVCache | None = None

    def _qkv(self, x, cos, sin):
        B, S, _ = x.shape
        a = self.a
        qkv = self.qkv_proj(x).view(B, S, a.num_heads + 2 * a.num_kv_heads, a.head_dim).transpose(1, 2)
        q, k, v = qkv.split([a.num_heads, a.num_kv_heads, a.num_kv_heads], dim=1)  # [B, H|Hkv, S, Dh]
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def prefill(self, x, cos, sin, slots):
        """x: [R, T, D] right-padded prompts; the first N rows are written into cache rows `slots`
        [N] at 0..T-1, rows N.. are padding (a prefill's bucketed shape) and write nothing."""
        q, k, v = self._qkv(x, cos, sin)
        T, n = x.shape[1], slots.shape[0]
        self.cache.k[slots, :, :T] = k[:n]
        self.cache.v[slots, :, :T] = v[:n]
        # Causal attention over the prompt only: padding sits after every valid position. Grouped
        # query attention without copying k/v: [R, Hkv, T, Dh] serves [R, H, T, Dh].
        gqa = self.a.num_heads != self.a.num_kv_heads
        with _sdpa_backends(q, PREFILL_SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)  # [R, H, T, Dh]
        R, H, _, Dh = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(R, T, H * Dh))

    def extend(self, x, cos, sin, read_slots, write, mask):
        """New positions after a kept cache prefix. x: [R, S, D]; row r reads cache row
        read_slots[r] over the first L positions; mask: [R, 1, S, L] (True = attend); write:
        (flat indices [M] into R * S of the valid positions, their cache rows [M], positions [M]),
        written before anything reads them. Grouped-query heads are folded into query rows as in `step`."""
        q, k, v = self._qkv(x, cos, sin)  # [R, H|Hkv, S, Dh]
        R, _, S, Dh = q.shape
        at, slots, pos = write
        a = self.a
        self.cache.k[slots, :, pos] = k.transpose(1, 2).reshape(R * S, a.num_kv_heads, Dh)[at]  # [M, Hkv, Dh]
        self.cache.v[slots, :, pos] = v.transpose(1, 2).reshape(R * S, a.num_kv_heads, Dh)[at]
        L = mask.shape[-1]
        G = a.num_heads // a.num_kv_heads
        with _sdpa_backends(q, DECODE_SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q.reshape(R, a.num_kv_heads, G * S, Dh),
                                                 self.cache.k[read_slots, :, :L], self.cache.v[read_slots, :, :L],
                                                 attn_mask=mask.repeat(1, 1, G, 1))  # [R, Hkv, G*S, Dh]
        return self.o_proj(out.reshape(R, a.num_heads, S, Dh).transpose(1, 2).reshape(R, S, a.num_heads * Dh))

    def step(self, x, cos, sin, rows, pos, mask):
        """One token per slot. x: [B, 1, D]; pos: [B]; mask: [B, 1, 1, L] (True = attend): attends
        over the cache's first L positions, which must cover every slot's pos."""
        q, k, v = self._qkv(x, cos, sin)
        self.cache.k[rows, :, pos] = k[:, :, 0]
        self.cache.v[rows, :, pos] = v[:, :, 0]
        L = mask.shape[-1]
        # Grouped-query decoding as plain attention: the G query heads that share a kv head
        # become G query rows of that head, [B, H, 1, Dh] -> [B, Hkv, G, Dh] (head h = j*G + g).
        # Same dot products, but no fused kernel has to support GQA *and* a mask: on CUDA that
        # pair falls back to the math path, which copies the cache G times per layer.
        a = self.a
        B = q.shape[0]
        G = a.num_heads // a.num_kv_heads
        with _sdpa_backends(q, DECODE_SDPA_BACKENDS):
            out = F.scaled_dot_product_attention(q.reshape(B, a.num_kv_heads, G, a.head_dim),
                                                 self.cache.k[:, :, :L], self.cache.v[:, :, :L],
                                                 attn_mask=mask)  # [B, Hkv, G, Dh]
        return self.o_proj(out.reshape(B, 1, a.num_heads * a.head_dim))


class MLP(nn.Module):
    def __init__(self, a: DecoderArgs):
        super().__init__()
        self.gate_up_proj = nn.Linear(a.hidden_size, 2 * a.intermediate_size, bias=False)  # gate, then up
        self.down_proj = nn.Linear(a.intermediate_size, a.hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, a: DecoderArgs):
        super().__init__()
        self.self_attn = Attention(a)
        self.mlp = MLP(a)
        self.input_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(a.hidden_size, a.rms_norm_eps)

    def _finish(self, x, h):
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))

    def prefill(self, x, cos, sin, slots):
        return self._finish(x, self.self_attn.prefill(self.input_layernorm(x), cos, sin, slots))

    def extend(self, x, cos, sin, read_slots, write, mask):
        return self._finish(x, self.self_attn.extend(self.input_layernorm(x), cos, sin, read_slots, write, mask))

    def step(self, x, cos, sin, rows, pos, mask):
        return self._finish(x, self.self_attn.step(self.input_layernorm(x), cos, sin, rows, pos, mask))


class Decoder(nn.Module):
    """A Llama decoder stack with its RoPE tables and static caches; output is final-normed."""

    def __init__(self, a: DecoderArgs):
        super().__init__()
        self.a = a
        self.layers = nn.ModuleList(Block(a) for _ in range(a.num_layers))
        self.norm = RMSNorm(a.hidden_size, a.rms_norm_eps)
        self.register_buffer("inv_freq", rope_inv_freq(a.rope, a.head_dim), persistent=False)
        self.num_slots = 0
        self.cache_positions = 0

    def setup_caches(self, num_slots: int, max_positions: int) -> None:
        """Allocate caches and RoPE tables once; a repeated call with the same sizes is a no-op."""
        if (self.num_slots, self.cache_positions) == (num_slots, max_positions):
            return
        w = self.norm.weight
        for layer in self.layers:
            layer.self_attn.cache = KVCache(
                num_slots, self.a.num_kv_heads, max_positions, self.a.head_dim, w.dtype, w.device
            )
        # Same float32 product transformers forms, then cast: cos/sin: [P, Dh].
        freqs = torch.arange(max_positions, device=w.device).float()[:, None] * self.inv_freq.float()[None]
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos", emb.cos().to(w.dtype), persistent=False)
        self.register_buffer("sin", emb.sin().to(w.dtype), persistent=False)
        self.register_buffer("rows", torch.arange(num_slots, device=w.device), persistent=False)
        self.register_buffer("positions", torch.arange(max_positions, device=w.device), persistent=False)
        self.num_slots, self.cache_positions = num_slots, max_positions

    def prefill(self, x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """x: [R, T, D] -> normed hidden [R, T, D]; fills cache rows `slots` [N] at 0..T-1 from
        the first N rows (the rest are padding and write nothing)."""
        T = x.shape[1]
        cos, sin = self.cos[None, None, :T], self.sin[None, None, :T]
        for layer in self.layers:
            x = layer.prefill(x, cos, sin, slots)
        return self.norm(x)

    def extend(self, x: torch.Tensor, pos: torch.Tensor, read_slots: torch.Tensor, write, kv_len: int) -> torch.Tensor:
        """x: [R, S, D] at positions pos [R, S] (each row continues a cache row it reads, read_slots
        [R]) -> normed hidden [R, S, D]; `write` as in `Attention.extend`. Attention reads the first
        kv_len positions, which must cover every valid position."""
        at = pos.clamp(max=self.cache_positions - 1)
        cos, sin = self.cos[at][:, None], self.sin[at][:, None]  # [R, 1, S, Dh]
        mask = (self.positions[None, None, :kv_len] <= pos[:, :, None])[:, None]  # [R, 1, S, L]
        for layer in self.layers:
            x = layer.extend(x, cos, sin, read_slots, write, mask)
        return self.norm(x)

    def step(self, x: torch.Tensor, pos: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        """x: [B, D] one token per slot at positions pos [B] -> normed hidden [B, D]. Attention
        reads the cache's first `kv_len` positions (default all), which must exceed every pos."""
        cos = self.cos[pos][:, None, None]  # [B, 1, 1, Dh]
        sin = self.sin[pos][:, None, None]
        mask = (self.positions[None, :kv_len] <= pos[:, None])[:, None, None]  # [B, 1, 1, L]
        h = x[:, None]
        for layer in self.layers:
            h = layer.step(h, cos, sin, self.rows, pos, mask)
        return self.norm(h[:, 0])


class LeanCsm(nn.Module):
    """CSM's two decoders and their embeddings/heads, parameter names as in transformers."""

    def __init__(self, args: CsmArgs):
        super().__init__()
        self.args = args
        K, V = args.num_codebooks, args.audio_vocab_size
        Db, Dd = args.backbone.hidden_size, args.depth.hidden_size
        self.embed_text_tokens = nn.Embedding(args.text_vocab_size, Db)
        # One table for both decoders (CSM ties them): row k*V + code embeds codebook k.
        self.embed_audio_tokens = nn.Embedding(K * V, Db)
        self.backbone = Decoder(args.backbone)
        self.lm_head = nn.Linear(Db, V, bias=False)
        self.inputs_embeds_projector = nn.Linear(Db, Dd, bias=False)
        self.depth = Decoder(args.depth)
        self.codebooks_head = nn.Parameter(torch.empty(K - 1, Dd, V))  # [K-1, Dd, V]
        self.register_buffer("audio_offsets", torch.arange(K) * V, persistent=False)
        self.parked: list[torch.Tensor | None] = []  # parked backbone slot caches (`setup_parking`)

    def setup_caches(self, num_slots: int, max_positions: int) -> None:
        if max_positions > self.args.backbone.max_positions:
            raise ValueError(
                f"max_positions={max_positions} exceeds the model's {self.args.backbone.max_positions}"
            )
        self.backbone.setup_caches(num_slots, max_positions)
        self.depth.setup_caches(num_slots, self.args.num_codebooks)

    def setup_parking(self, rows: int) -> None:
        """Room to set aside up to `rows` slot caches of the backbone (KV continuation). A parked
        row, [layers, 2 (k, v), Hkv, max_positions, Dh], is allocated the first time it is used,
        so a run that parks nothing (no chained turns) allocates nothing; 0: none."""
        self.parked = [None] * rows

    def parked_bytes(self) -> int:
        """Bytes of the parked rows allocated so far."""
        return sum(t.numel() * t.element_size() for t in self.parked if t is not None)

    @torch.inference_mode()
    def park(self, slot: int, row: int, length: int, *, back: bool = False) -> None:
        """Copy the backbone cache's positions [0, length): slot -> parked row, or (back) parked row -> slot."""
        store = self.parked[row]
        if store is None:
            assert not back, f"parked row {row} was never filled"
            k = self.backbone.layers[0].self_attn.cache.k  # [B, Hkv, P, Dh]
            store = self.parked[row] = torch.empty(len(self.backbone.layers), 2, *k.shape[1:], dtype=k.dtype,
                                                   device=k.device)
        for i, layer in enumerate(self.backbone.layers):
            live = layer.self_attn.cache
            if back:
                live.k[slot, :, :length] = store[i, 0, :, :length]
                live.v[slot, :, :length] = store[i, 1, :, :length]
            else:
                store[i, 0, :, :length] = live.k[slot, :, :length]
                store[i, 1, :, :length] = live.v[slot, :, :length]

    def embed_frames(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [..., K] -> [..., Db], the sum over codebooks of their embeddings. Builds
        [..., K, Db] first: for the frame step's [B, K] only (prompts: `embed_prompt`)."""
        return self.embed_audio_tokens(codes + self.audio_offsets).sum(dim=-2)

    def embed_prompt(self, ids: torch.Tensor, audio_index: torch.Tensor, audio_frames: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings [R, T, Db]: text tokens `ids` [R, T], except at the audio positions
        `audio_index` [A] (flat indices into R * T), which take their frame `audio_frames` [A, K]
        embedded as the sum over codebooks (CSM's `_merge_input_ids_with_input_values`).

        Audio is embedded only where it is, one codebook at a time into an [A, Db] sum, so no
        [R, T, K, Db] tensor exists: that one was K times the prompt's own embeddings. The sum
        accumulates in float32 at least and rounds once, as `embed_frames`' sum does."""
        x = self.embed_text_tokens(ids)  # [R, T, Db]
        if audio_index.numel():
            table = self.embed_audio_tokens.weight  # [K * V, Db]
            frames = torch.zeros(audio_frames.shape[0], table.shape[1], device=table.device,
                                 dtype=torch.promote_types(table.dtype, torch.float32))  # [A, Db]
            for k in range(self.args.num_codebooks):
                frames += F.embedding(audio_frames[:, k] + k * self.args.audio_vocab_size, table)
            x.view(-1, x.shape[-1]).index_copy_(0, audio_index, frames.to(x.dtype))
        return x

    def embed_codebook(self, codes: torch.Tensor, codebook: int) -> torch.Tensor:
        """codes: [B] of codebook `codebook` -> [B, Db]."""
        return self.embed_audio_tokens(codes + codebook * self.args.audio_vocab_size)

    def prefill(self, embeds: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Backbone over right-padded prompts. embeds: [R, T, Db] whose first N rows are the
        prompts of lengths [N] for cache rows slots [N]; rows N.. are padding (write nothing).

        Returns the normed hidden state at each prompt's last position: [N, Db].
        """
        h = self.backbone.prefill(embeds, slots)
        return h[torch.arange(lengths.shape[0], device=h.device), lengths - 1]

    def extend(self, embeds: torch.Tensor, pos: torch.Tensor, read_slots: torch.Tensor, write, last: torch.Tensor,
               kv_len: int) -> torch.Tensor:
        """Backbone over the new positions of prompts whose cache rows already hold their start
        (KV continuation). embeds: [R, S, Db] right-padded, at positions pos [R, S]; read_slots [R]:
        the cache row each row continues; write: (flat indices [M] into R * S, cache rows [M],
        positions [M]) of the valid positions; last: [N] flat index of each prompt's last position.

        Returns the normed hidden state at each prompt's last position: [N, Db].
        """
        h = self.backbone.extend(embeds, pos, read_slots, write, kv_len)
        return h.reshape(-1, h.shape[-1])[last]

    def backbone_step(self, frame_embeds: torch.Tensor, pos: torch.Tensor, kv_len: int | None = None) -> torch.Tensor:
        """frame_embeds: [B, Db] at positions pos [B] -> normed hidden [B, Db]; attention over
        the first `kv_len` cache positions (default all), which must exceed every pos."""
        return self.backbone.step(frame_embeds, pos, kv_len)

    def depth_step(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Depth decoder at position pos ([B], all equal): x [B, Db] -> normed hidden [B, Dd].

        Position 0 takes the backbone hidden state, position p >= 1 codebook p-1's embedding.
        """
        return self.depth.step(self.inputs_embeds_projector(x), pos)

    def codebook_logits(self, depth_hidden: torch.Tensor, codebook: int) -> torch.Tensor:
        """Logits [B, V] of codebook `codebook` (>= 1) from the depth output at that position."""
        return depth_hidden @ self.codebooks_head[codebook - 1]


# ----------------------------------------------------------------------------- transformers names


def lean_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map transformers CSM parameter names to LeanCsm's, fusing q/k/v and gate/up.

    The one audio table both decoders share is read under the depth decoder's name (its
    tie source); `synth.engine.checkpoint.load_lean_csm` puts the tied table there.
    """
    out = {}
    renames = [
        ("depth_decoder.model.embed_tokens.", "embed_audio_tokens."),
        ("embed_text_tokens.", "embed_text_tokens."),
        ("lm_head.", "lm_head."),
        ("backbone_model.layers.", "backbone.layers."),
        ("backbone_model.norm.", "backbone.norm."),
        ("depth_decoder.model.layers.", "depth.layers."),
        ("depth_decoder.model.norm.", "depth.norm."),
        ("depth_decoder.model.inputs_embeds_projector.", "inputs_embeds_projector."),
        ("depth_decoder.codebooks_head.weight", "codebooks_head"),
    ]
    for key, value in raw.items():
        for src, dst in renames:
            if key.startswith(src):
                out[dst + key[len(src):]] = value
                break
    # Fuse q/k/v and gate/up weights (row blocks of one matrix, in this order).
    for key in [k for k in out if k.endswith("self_attn.q_proj.weight")]:
        stem = key[: -len("q_proj.weight")]
        out[stem + "qkv_proj.weight"] = torch.cat([out.pop(stem + f"{n}_proj.weight") for n in "qkv"])
    for key in [k for k in out if k.endswith("mlp.gate_proj.weight")]:
        stem = key[: -len("gate_proj.weight")]
        out[stem + "gate_up_proj.weight"] = torch.cat([out.pop(stem + "gate_proj.weight"),
                                                       out.pop(stem + "up_proj.weight")])
    return out
