"""Batches from stored codes give exactly the loss of transformers' processor-and-audio path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synth.engine.codec import MimiCodec, load_mimi
from synth.pipeline.audio_io import decode_clip
from synth.train.batches import IGNORE, CodedTurn, CodesLoss, Example, collate


@pytest.fixture(scope="module")
def tiny64(tiny_checkpoint):
    """The tiny CSM and its processor in float64, and synth's batched Mimi codec on its weights."""
    from transformers import AutoProcessor, CsmForConditionalGeneration

    model = CsmForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype=torch.float64).eval()
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    mimi = load_mimi(tiny_checkpoint, model.config, device="cpu", dtype=torch.float64)
    return model, processor, MimiCodec(mimi, num_codebooks=model.config.num_codebooks)


@pytest.fixture(scope="module")
def clips(speech_clip):
    """Four real speech clips at 24 kHz of different lengths, two not a whole number of frames."""
    with open(speech_clip, "rb") as f:
        speech = decode_clip(f.read(), 24000)
    return [speech[:24000], speech[5000:5000 + 1920 * 7], speech[9000:9000 + 15001], speech[-10000:]]


def _processor_loss(model, processor, conversations) -> torch.Tensor:
    inputs = processor.apply_chat_template(conversations, tokenize=True, return_dict=True, output_labels=True)
    inputs["input_values"] = inputs["input_values"].to(torch.float64)
    with torch.no_grad():
        return model(**inputs).loss


def _conversation(turns):
    return [{"role": str(s), "content": [{"type": "text", "text": t}, {"type": "audio", "path": a}]} for s, t, a in turns]


@pytest.mark.parametrize("with_context", [False, True])
def test_loss_from_codes_equals_the_processor_path(tiny64, clips, with_context):
    model, processor, codec = tiny64
    turns = [(0, "Hello there, this is a recorded voice prompt.", clips[0]),
             (1, "Nice to meet you.", clips[2]), (0, "Likewise.", clips[1])]
    turns = turns if with_context else turns[-1:]
    codes = codec.encode([a for _, _, a in turns])  # [T_i, K] each: what a synth output stores
    coded = [CodedTurn(s, t, c.numpy().astype(np.int16)) for (s, t, _), c in zip(turns, codes)]
    example = Example("x", tuple(coded[:-1]), coded[-1])
    batch = collate(processor, model.config, [example])
    with torch.no_grad():
        ours = CodesLoss(model)(batch)
    theirs = _processor_loss(model, processor, _conversation(turns))
    assert torch.isfinite(ours) and ours.item() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_a_padded_batch_equals_the_processor_batch_and_context_can_go_unlabelled(tiny64, clips):
    """Two rows of different lengths (one with context, one without) padded into one batch."""
    model, processor, codec = tiny64
    rows = [[(0, "Hello there.", clips[0]), (1, "And you?", clips[3])], [(2, "Just me, alone.", clips[2])]]
    codes = iter(codec.encode([a for row in rows for _, _, a in row]))
    examples = []
    for i, row in enumerate(rows):
        coded = [CodedTurn(s, t, next(codes).numpy()) for s, t, _ in row]
        examples.append(Example(str(i), tuple(coded[:-1]), coded[-1]))
    batch = collate(processor, model.config, examples)
    assert batch.attention_mask[1].sum() < batch.attention_mask[0].sum()  # row 1 is padded
    assert (batch.labels[batch.attention_mask == 0] == IGNORE).all()
    with torch.no_grad():
        ours = CodesLoss(model)(batch)
    assert processor.tokenizer.padding_side == "right"
    torch.testing.assert_close(ours, _processor_loss(model, processor, [_conversation(r) for r in rows]),
                               rtol=1e-10, atol=1e-10)

    target_only = collate(processor, model.config, examples, train_context=False)
    labelled = (target_only.labels != IGNORE).any(-1)  # [B, L]
    num_target = [len(e.target.codes) + 1 for e in examples]  # its frames and <|audio_eos|>
    assert labelled.sum(1).tolist() == num_target
    assert (batch.labels[labelled] == target_only.labels[labelled]).all()  # same targets, context dropped
    assert torch.equal(target_only.input_ids, batch.input_ids)
    with torch.no_grad():
        assert CodesLoss(model)(target_only).item() != ours.item()
