import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, CsmForConditionalGeneration

from synth.engine.checkpoint import check_tied_audio_embeddings
from synth.engine.tiny_checkpoint import (
    ensure_tiny_checkpoint,
    tiny_model_and_processor,
)


def _inputs(processor, clip):
    conversations = [
        [
            {"role": "0", "content": [{"type": "text", "text": "Hello there."}, {"type": "audio", "path": clip}]},
            {"role": "1", "content": [{"type": "text", "text": "How are you doing today?"}]},
        ],
        [{"role": "2", "content": [{"type": "text", "text": "Call me Ishmael."}]}],
    ]
    return processor.apply_chat_template(conversations, tokenize=True, return_dict=True)


def test_save_load_round_trip_gives_identical_generations(tmp_path):
    model, processor = tiny_model_and_processor(seed=1)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "processor_config.json", "chat_template.jinja"}
    assert expected <= set(os.listdir(tmp_path))

    loaded = CsmForConditionalGeneration.from_pretrained(tmp_path).eval()
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    check_tied_audio_embeddings(loaded)  # the reported 5.x bug would raise here

    clip = np.random.default_rng(0).normal(0, 0.1, 24000).astype(np.float32)
    inputs = _inputs(processor, clip)
    loaded_inputs = _inputs(loaded_processor, clip)
    assert torch.equal(inputs["input_ids"], loaded_inputs["input_ids"])
    greedy = dict(max_new_tokens=6, do_sample=False, depth_decoder_do_sample=False)
    with torch.inference_mode():
        a = model.generate(**inputs, **greedy)
        b = loaded.generate(**loaded_inputs, **greedy)
    assert a.shape == (2, 6, 32)
    assert torch.equal(a, b)

    sampled = dict(max_new_tokens=4, do_sample=True, depth_decoder_do_sample=True, top_k=50, depth_decoder_top_k=50)
    with torch.inference_mode():
        torch.manual_seed(3)
        a = model.generate(**inputs, **sampled)
        torch.manual_seed(3)
        b = loaded.generate(**loaded_inputs, **sampled)
    assert torch.equal(a, b)


def test_checkpoint_has_csm_special_tokens_and_template(tiny_checkpoint):
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    tok = processor.tokenizer
    config = json.load(open(os.path.join(tiny_checkpoint, "config.json")))
    assert tok.convert_tokens_to_ids("<|AUDIO|>") == config["audio_token_id"]
    assert tok.convert_tokens_to_ids("<|audio_eos|>") == config["audio_eos_token_id"]
    assert tok.pad_token_id != config["audio_token_id"]
    ids = processor.apply_chat_template(
        [{"role": "3", "content": [{"type": "text", "text": "Hi."}]}], tokenize=True, return_dict=True
    )["input_ids"][0].tolist()
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == "[3]Hi."


def test_ensure_builds_once(tmp_path):
    path = ensure_tiny_checkpoint(tmp_path / "ckpt")
    mtime = os.path.getmtime(path / "model.safetensors")
    assert ensure_tiny_checkpoint(tmp_path / "ckpt") == path
    assert os.path.getmtime(path / "model.safetensors") == mtime


def test_tiny_mimi_has_the_real_codebook_size_and_codes_shape_the_audio(tiny_checkpoint):
    """2048 codes, as the real Mimi: CSM's ids 2048..2050 do not decode (so an engine that
    emitted one fails a test); the random codebooks make each code decode to its own audio."""
    model = CsmForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    mimi = model.codec_model
    assert mimi.config.codebook_size == 2048 < model.config.vocab_size
    with torch.inference_mode():
        a, b = (mimi.decode(torch.full((1, 32, 3), code)).audio_values for code in (5, 700))
        assert not torch.allclose(a, b)
        with pytest.raises(IndexError):
            mimi.decode(torch.full((1, 32, 3), 2049))
