"""Reading a CSM checkpoint: the one place that decides dtype, device, files and the tied table.

This module owns what both engines need before any generation: dtype names to torch
dtypes (`parse_dtype`), the device (`resolve_device`), where a checkpoint's files are
(`resolve_checkpoint`: a local directory, or a hub id through the HF cache), reading
its safetensors, a cheap fingerprint of its weights (recorded with every output row),
the audio embedding table CSM ties between its two decoders (the names it is stored
under, which copy wins, tying it in a built model, and the check after loading), and
loading the lean model (`load_lean_csm`) from those files. It knows nothing about
prompts, sampling, scheduling or the codec; the model math and its parameter names
live in `synth.engine.lean_csm`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import torch

from synth.engine.interface import DTYPE_NAMES
from synth.engine.lean_csm import CsmArgs, LeanCsm, lean_state_dict, rope_inv_freq

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}

# CSM's audio embedding table, stored under either decoder's name or both. The two are one
# table (`_tied_weights_keys`), with the depth decoder's as the source.
BACKBONE_AUDIO_TABLE = "backbone_model.embed_tokens.embed_audio_tokens.weight"
DEPTH_AUDIO_TABLE = "depth_decoder.model.embed_tokens.weight"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cuda" without one is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device is 'cuda' but torch sees no CUDA device")
    return device


def resolve_checkpoint(model_path: str) -> Path:
    """A local checkpoint directory, or a hub id resolved through the local HF cache/download."""
    p = Path(model_path)
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_path, allow_patterns=["*.json", "*.safetensors", "*.jinja"]))


def read_safetensors(path: Path, keep: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors whose names `keep` accepts (one file, or the shards of an index)."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():
                if keep(key):
                    out[key] = f.get_tensor(key)
    return out


def checkpoint_fingerprint(model_id: str) -> str:
    """A short hash of the weight files when the checkpoint is local, else of the id.

    Hashing size + first/last MiB keeps this cheap for multi-GB checkpoints."""
    if not os.path.isdir(model_id):
        return "id:" + hashlib.sha256(model_id.encode()).hexdigest()[:16]
    digest = hashlib.sha256()
    for name in sorted(os.listdir(model_id)):
        if not name.endswith((".safetensors", ".json")):
            continue
        path = os.path.join(model_id, name)
        size = os.path.getsize(path)
        digest.update(f"{name}:{size}".encode())
        with open(path, "rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- the tied audio table


def tied_audio_table(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The audio table a checkpoint's tensors tie both decoders to: the depth decoder's when
    stored (as in transformers' `from_pretrained`), else the backbone's. A reported
    transformers bug saves or loads them untied, so either or both may be stored."""
    for key in (DEPTH_AUDIO_TABLE, BACKBONE_AUDIO_TABLE):
        if key in tensors:
            return tensors[key]
    raise ValueError(f"checkpoint holds neither {BACKBONE_AUDIO_TABLE} nor {DEPTH_AUDIO_TABLE}")


def tie_audio_embeddings(model) -> None:
    """Give a freshly built `CsmForConditionalGeneration` one audio table: some transformers
    releases (5.17) construct CSM untied; copy the depth decoder's into the backbone's."""
    backbone, depth = model.get_parameter(BACKBONE_AUDIO_TABLE), model.get_parameter(DEPTH_AUDIO_TABLE)
    if backbone.data_ptr() != depth.data_ptr():
        with torch.no_grad():
            backbone.copy_(depth)


def check_tied_audio_embeddings(model) -> None:
    """Fail loudly if the backbone's audio embeddings are not the depth decoder's
    (a reported transformers 5.x loading bug leaves them randomly initialised)."""
    backbone, depth = model.get_parameter(BACKBONE_AUDIO_TABLE), model.get_parameter(DEPTH_AUDIO_TABLE)
    if backbone.shape != depth.shape or not torch.equal(backbone, depth):
        raise RuntimeError(
            "backbone audio embeddings differ from the depth decoder's after loading; "
            "the checkpoint or transformers version is affected by the untied-embedding bug"
        )


# ----------------------------------------------------------------------------- the lean model


def load_lean_csm(model_path: str, *, device="cpu", dtype=torch.float32) -> tuple[LeanCsm, object]:
    """Load a LeanCsm from a transformers CSM checkpoint; returns (model, CsmConfig)."""
    from transformers import CsmConfig

    path = resolve_checkpoint(model_path)
    config = CsmConfig.from_pretrained(str(path))
    raw = read_safetensors(path, lambda k: not k.startswith("codec_model."))
    raw[DEPTH_AUDIO_TABLE] = tied_audio_table(raw)  # lean_state_dict reads the table under this name
    with torch.device("meta"):
        model = LeanCsm(CsmArgs.from_hf(config))
    model.load_state_dict(lean_state_dict(raw), strict=True, assign=True)
    # Non-persistent buffers were made on meta; the RoPE frequencies stay float32 whatever `dtype`.
    model.audio_offsets = torch.arange(config.num_codebooks) * config.vocab_size
    for dec in (model.backbone, model.depth):
        dec.inv_freq = rope_inv_freq(dec.a.rope, dec.a.head_dim)
    model = model.to(device=device, dtype=dtype)
    for dec in (model.backbone, model.depth):
        dec.inv_freq = rope_inv_freq(dec.a.rope, dec.a.head_dim).to(device)
    return model.eval().requires_grad_(False), config
