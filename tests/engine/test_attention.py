"""The decode attention real runs use, in float32 and bfloat16, on CPU and (marked `gpu`) CUDA.

A decoding step folds each kv head's query heads into query rows of that head
(`lean_csm.Attention.step`) so that a fused SDPA kernel can take grouped-query attention
with a per-slot mask. Here that folded call, on whichever kernel the device picks, is held
against the plain grouped-query call (`enable_gqa`, unfolded) and an exact float32 reference
with the kv heads repeated, for CSM-1B's backbone (32 query / 8 kv heads, head dim 64) and
depth decoder (8 / 2, 128) layouts, with slots at different positions and the attention
cut to a bucket of the cache.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synth.engine.lean_csm import Decoder, DecoderArgs

CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                        reason="needs CUDA")])
# Largest |error| allowed, relative to the output's scale: float32 rounding, or bfloat16's
# (2^-8 per rounding; the projections and the kernel's output each round once).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(32, 8, 64), (8, 2, 128)], ids=["backbone", "depth"])
def test_folded_decode_attention_matches_unfolded_and_float32(device, dtype, heads, kv_heads, head_dim):
    torch.manual_seed(0)
    args = DecoderArgs(hidden_size=256, num_layers=1, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                       intermediate_size=64, rms_norm_eps=1e-5, max_positions=256,
                       rope={"rope_type": "default", "rope_theta": 500000.0})
    with torch.device(device):
        decoder = Decoder(args).to(dtype).eval()
        B, P, L = 5, 256, 192  # slots, cache positions, the attention bucket
        decoder.setup_caches(B, P)
        attn = decoder.layers[0].self_attn
        attn.cache.k.normal_()
        attn.cache.v.normal_()  # earlier positions hold history; later ones garbage the mask must hide
        pos = torch.tensor([0, 17, 100, 150, L - 1])
        x = torch.randn(B, 1, args.hidden_size, dtype=dtype)
    cos, sin = decoder.cos[pos][:, None, None], decoder.sin[pos][:, None, None]  # as Decoder.step forms them
    mask = (decoder.positions[None, :L] <= pos[:, None])[:, None, None]  # [B, 1, 1, L]
    with torch.inference_mode():
        folded = attn.step(x, cos, sin, decoder.rows, pos, mask)  # writes this token's k, v at pos
        q, _, _ = attn._qkv(x, cos, sin)  # [B, H, 1, Dh]
        k, v = attn.cache.k[:, :, :L], attn.cache.v[:, :, :L]
        unfolded = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        unfolded = attn.o_proj(unfolded.transpose(1, 2).reshape(B, 1, heads * head_dim))
        group = heads // kv_heads
        scores = q.float() @ k.float().repeat_interleave(group, 1).transpose(-1, -2) / head_dim**0.5
        exact = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v.float().repeat_interleave(group, 1)
        exact = exact.transpose(1, 2).reshape(B, 1, heads * head_dim) @ attn.o_proj.weight.float().T
    assert folded.dtype == dtype and folded.shape == (B, 1, args.hidden_size)
    scale = exact.abs().max().item()
    error = (folded.float() - exact).abs().max().item() / scale
    unfolded_error = (unfolded.float() - exact).abs().max().item() / scale
    assert unfolded_error <= TOLERANCE[dtype], unfolded_error  # the reference itself is sound
    assert error <= TOLERANCE[dtype], f"folded {error:.2e}, unfolded {unfolded_error:.2e}"
    assert error <= 2 * unfolded_error + TOLERANCE[dtype] / 4, f"folded {error:.2e}, unfolded {unfolded_error:.2e}"
