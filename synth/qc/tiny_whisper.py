"""Build a tiny, randomly initialised Whisper on local disk, for tests and offline runs.

This module owns the offline stand-in for the QC's speech recogniser (`qc.asr.model`,
e.g. `openai/whisper-large-v3-turbo` on a cluster): a complete checkpoint directory
(config, safetensors weights, a byte-level tokenizer with Whisper's special tokens,
feature extractor, generation config) written with `save_pretrained`, so the same
`from_pretrained(path)` that loads a real Whisper loads it. Its transcripts are noise:
it exists to exercise the ASR path (loading, batching, rates) offline. `random_whisper`
also builds one at `whisper-large-v3-turbo`'s shapes in memory, for the device check's
timing of the QC stage at real sizes. It knows nothing about synth's outputs, configs or Ray.

    python -m synth.qc.tiny_whisper OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                  "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
NUM_MEL_BINS = 80  # WhisperFeatureExtractor(feature_size=80) needs no files
MAX_TARGET_POSITIONS = 64  # most tokens one transcript may hold
# The tiny stand-in's sizes, and openai/whisper-large-v3-turbo's (its config.json), for timing at real sizes.
TINY_SHAPES = dict(num_mel_bins=NUM_MEL_BINS, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                   decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                   max_target_positions=MAX_TARGET_POSITIONS)
TURBO_SHAPES = dict(num_mel_bins=128, d_model=1280, encoder_layers=32, decoder_layers=4, encoder_attention_heads=20,
                    decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120, max_target_positions=448,
                    vocab_size=51866)


def random_whisper(shapes: dict = TINY_SHAPES, *, seed: int = 0, device: str = "cpu", dtype=None):
    """(model, processor): a Whisper of `shapes` with random weights, built on `device` in `dtype`, with
    a byte-level tokenizer and Whisper's special tokens (a larger `vocab_size` than the tokenizer's
    is allowed: ids it does not know decode to nothing), ready for transformers' ASR pipeline."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    # A byte-level vocabulary (every byte one token), then Whisper's special tokens after it.
    byte_vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # a set: sorted, or the
    # vocabulary (and every transcript) would follow the process's hash seed
    tokenizer = WhisperTokenizer(vocab=byte_vocab, merges=[], pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(seed)
    config = WhisperConfig(
        **{"vocab_size": len(tokenizer), **shapes}, max_source_positions=1500,
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )
    with torch.device(device):
        model = WhisperForConditionalGeneration(config)
    model = model.to(dtype or torch.float32).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"],
        lang_to_id={"<|en|>": ids["<|en|>"]}, task_to_id={"transcribe": ids["<|transcribe|>"],
                                                          "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=True,
        suppress_tokens=[], begin_suppress_tokens=[],
    )
    features = WhisperFeatureExtractor(feature_size=shapes["num_mel_bins"])
    return model, WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def build_tiny_whisper(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write a tiny random Whisper to `path` (overwriting its files); returns the path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, processor = random_whisper(TINY_SHAPES, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / "synth_tiny_whisper.json").write_text(json.dumps({"seed": seed}))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_whisper(args.path, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
