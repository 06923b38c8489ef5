"""Build randomly initialised CSM checkpoints on local disk: the tiny one, and one at CSM-1B size.

This module owns the offline stand-ins for `sesame/csm-1b`: complete checkpoint
directories (config, safetensors weights, a tokenizer trained locally with `tokenizers`
plus CSM's special tokens and chat template, processor config, generation config)
written with `save_pretrained`, so that the very same `from_pretrained(path)` code path
that loads the real model loads them. The tiny one (a tiny Mimi codec too) serves the
demo and the tests; `build_csm1b_random` has CSM-1B's dimensions and Mimi's, for the
benchmark on a GPU. It knows nothing about manifests, Ray or output datasets.

    python -m synth.engine.tiny_checkpoint OUT_DIR [--num-codebooks 32] [--seed 0]
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
from pathlib import Path

# CSM's chat template, rendered like sesame/csm-1b's: one `<bos>[speaker]text<eos>`
# per message, followed by `<|AUDIO|><|audio_eos|>` when the message carries audio.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- bos_token }}"
    "{{- '[' + message['role'] + ']' }}"
    "{{- message['content'][0]['text'] }}"
    "{{- eos_token }}"
    "{%- if message['content']|length > 1 %}"
    "{{- '<|AUDIO|><|audio_eos|>' }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# Special tokens with the ids the real Llama-3 tokenizer gives them, relative to the
# start of the special range: bos, eos, audio, audio_eos.
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>"]

_TRAINING_TEXT = """\
It was the best of times, it was the worst of times, it was the age of wisdom.
Call me Ishmael. Some years ago, never mind how long precisely, having little money.
The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs!
Hello there, how are you doing today? I'm fine, thanks. What about you, Dr. Smith?
Numbers like 1, 2, 3, 42 and 1999 appear in text, as do quotes: "yes," she said.
In the beginning the Universe was created. This has made a lot of people very angry.
"""

# csm-1b's RoPE (Llama 3.2's), for the random checkpoint at its size.
CSM1B_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "high_freq_factor": 4.0,
              "low_freq_factor": 1.0, "original_max_position_embeddings": 8192}

TEXT_VOCAB_SIZE = 512  # tokenizer vocabulary before the special tokens
BPE_VOCAB_SIZE = TEXT_VOCAB_SIZE - len(SPECIAL_TOKENS)


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(_TRAINING_TEXT.splitlines(), trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[1],  # never the audio token: padding must not look like audio
        additional_special_tokens=SPECIAL_TOKENS[2:],
        model_max_length=2048,
    )


def tiny_model_and_processor(
    *,
    num_codebooks: int = 32,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_positions: int = 1024,
    seed: int = 0,
):
    """A tiny random `CsmForConditionalGeneration` and its `CsmProcessor`, in memory."""
    import torch
    from transformers import (
        CsmConfig,
        CsmForConditionalGeneration,
        CsmProcessor,
        EncodecFeatureExtractor,
    )

    tokenizer = _build_tokenizer()
    bos_id, _eos_id, audio_id, audio_eos_id = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    audio_vocab_size = 2051  # 2048 codes + specials, as in csm-1b
    codec_config = dict(
        model_type="mimi",
        hidden_size=32,
        num_filters=8,
        codebook_dim=16,
        vector_quantization_hidden_dimension=16,
        codebook_size=2048,  # the real Mimi's: CSM's ids 2048..2050 fail to decode here too
        num_quantizers=num_codebooks,
        num_semantic_quantizers=1,
        upsample_groups=32,
        upsampling_ratios=[8, 6, 5, 4],  # with Mimi's 2x downsample: 1920 samples per frame at 24 kHz
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=250,
    )
    depth_config = dict(
        num_codebooks=num_codebooks,
        backbone_hidden_size=hidden_size,
        vocab_size=audio_vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=num_codebooks + 1,
    )
    config = CsmConfig(
        num_codebooks=num_codebooks,
        vocab_size=audio_vocab_size,
        text_vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=audio_id,
        bos_token_id=bos_id,
        audio_token_id=audio_id,
        audio_eos_token_id=audio_eos_id,
        depth_decoder_config=depth_config,
        codec_config=codec_config,
    )
    from synth.engine.checkpoint import tie_audio_embeddings

    torch.manual_seed(seed)
    model = CsmForConditionalGeneration(config).eval()
    tie_audio_embeddings(model)  # so that every loader sees a consistent checkpoint
    with torch.no_grad():
        # Mimi's codebooks start as zeros (learned by k-means in training): every code would
        # decode to the same audio and every clip encode to code 0. Random codebooks make
        # audio depend on codes and codes on audio, so context really conditions the output.
        for name, buffer in model.codec_model.named_buffers():
            if name.endswith("codebook.embed_sum"):
                buffer.copy_(0.02 * torch.randn_like(buffer))  # decodes to roughly +-1
    model.generation_config.do_sample = False
    model.depth_decoder.generation_config.do_sample = False
    feature_extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24000)
    processor = CsmProcessor(feature_extractor, tokenizer, chat_template=CHAT_TEMPLATE)
    return model, processor


def _save(model, processor, out: Path) -> Path:
    """Write model + processor to `out` through a temporary sibling directory renamed into
    place, so a concurrent or interrupted build never leaves a half-written checkpoint behind."""
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o755)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    try:
        os.rename(tmp, out)
    except OSError:  # another process won the race: keep theirs
        shutil.rmtree(tmp)
    return out


def build_tiny_checkpoint(out_dir: str | os.PathLike, **kwargs) -> Path:
    """Write a tiny random CSM checkpoint (model + processor) to `out_dir`.

    kwargs go to `tiny_model_and_processor`."""
    model, processor = tiny_model_and_processor(**kwargs)
    return _save(model, processor, Path(out_dir))


def ensure_tiny_checkpoint(path: str | os.PathLike, **kwargs) -> Path:
    """Build the tiny checkpoint at `path` unless a complete one is already there."""
    out = Path(path)
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    return build_tiny_checkpoint(out, **kwargs)


def build_csm1b_random(out_dir: str | os.PathLike, device: str) -> Path:
    """Random bf16 weights at csm-1b's dimensions (CsmConfig defaults; Mimi defaults) with the
    tiny tokenizer/processor, built on `device` and saved to `out_dir` (kept if already there),
    so that both engines load it from disk. Its heads favour no id: like the real model's, they
    may score CSM's specials 2048..2050 highest, which both engines keep off (Mimi has 2048 codes;
    `synth.engine.checkpoint.decodable_codes`)."""
    import torch
    from transformers import CsmConfig, CsmForConditionalGeneration

    from synth.engine.checkpoint import tie_audio_embeddings

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    _, processor = tiny_model_and_processor(num_codebooks=32, hidden_size=64, num_layers=1)
    bos, _, audio, audio_eos = processor.tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)
    config = CsmConfig(
        bos_token_id=bos, audio_token_id=audio, audio_eos_token_id=audio_eos, pad_token_id=audio,
        rope_parameters=dict(CSM1B_ROPE), depth_decoder_config={"rope_parameters": dict(CSM1B_ROPE)},
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = CsmForConditionalGeneration(config).to(torch.bfloat16).eval()
    tie_audio_embeddings(model)
    _save(model, processor, out)
    del model
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--num-codebooks", type=int, default=32)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_checkpoint(
        args.out_dir,
        num_codebooks=args.num_codebooks,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        seed=args.seed,
    )
    print(f"wrote tiny CSM checkpoint to {path}")


if __name__ == "__main__":
    main()
