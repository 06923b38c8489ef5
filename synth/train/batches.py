"""Train-ready CSM batches built from stored Mimi codes, never from audio.

This module owns the step from examples (a target turn and the turns that conditioned it,
each with its codes [T, K]) to exactly the tensors transformers' `CsmProcessor` builds with
`output_labels=True` and `CsmForConditionalGeneration._merge_input_ids_with_input_values`
turns them into: the chat template's token ids with each clip's `<|AUDIO|>` expanded to
one position per frame, the backbone's input embeddings (text embeddings at text
positions, the sum of the frame's 32 codebook embeddings at audio positions, the all-EOS
frame at `<|audio_eos|>`), and labels [B, L, K]: the frame's codes at every audio position
and `<|audio_eos|>` (so the backbone learns codebook 0 and the depth decoder codebooks
1..K-1 of every frame), -100 everywhere else. Batches are padded at the end (right), with
the attention mask zero on padding. The loss is then `model(inputs_embeds=..., labels=...)`
as transformers computes it. Tested: equal to the processor-and-audio path's loss on the
same clips (tests/train/test_batches.py). It knows nothing of files, Ray or optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from synth.engine.prompt import prompt_positions

IGNORE = -100  # transformers' ignore_index: a position no loss is computed on


@dataclass(frozen=True)
class CodedTurn:
    """One turn with its audio as codes: codes [num_frames, K] (int16 or int64)."""

    speaker: int
    text: str
    codes: np.ndarray


@dataclass(frozen=True)
class Example:
    """A turn to train on and the turns that conditioned it, in prompt order."""

    id: str
    context: tuple[CodedTurn, ...]
    target: CodedTurn

    @property
    def num_frames(self) -> int:
        """Audio frames of the whole sequence (context and target): its length, bar the text."""
        return sum(len(t.codes) for t in self.context) + len(self.target.codes)


@dataclass
class Batch:
    """Padded (right) training inputs, B rows of L positions, K codebooks."""

    input_ids: torch.Tensor  # [B, L] long: text ids; audio positions hold <|AUDIO|> / <|audio_eos|>
    audio_codes: torch.Tensor  # [B, L, K] long: the frame at audio positions, 0 elsewhere
    is_audio: torch.Tensor  # [B, L] bool
    attention_mask: torch.Tensor  # [B, L] long: 1 on the sequence, 0 on padding
    labels: torch.Tensor  # [B, L, K] long: the frame at trained audio positions, -100 elsewhere

    def to(self, device) -> "Batch":
        return Batch(*(t.to(device) for t in (self.input_ids, self.audio_codes, self.is_audio,
                                               self.attention_mask, self.labels)))

    @property
    def num_positions(self) -> int:
        return int(self.attention_mask.sum())


def conversation(example: Example) -> list[dict]:
    """The chat-template conversation of an example: every turn with its audio (placeholders)."""
    turns = [*example.context, example.target]
    return [{"role": str(t.speaker), "content": [{"type": "text", "text": t.text}, {"type": "audio"}]}
            for t in turns]


def render_ids(processor, example: Example) -> list[int]:
    """Token ids of the example's conversation, one `<|AUDIO|>` per turn (not yet expanded)."""
    text = processor.apply_chat_template(conversation(example), tokenize=False)
    return processor.tokenizer(text, add_special_tokens=False).input_ids


def example_positions(processor, config, example: Example, *, train_context: bool = True,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One example as (input_ids [L], audio_codes [L, K], is_audio [L], labels [L, K]).

    train_context=True labels every audio frame, the context's too, as the processor does;
    False labels only the target turn's frames and its `<|audio_eos|>` (the context then only
    conditions, as at generation time)."""
    K = config.num_codebooks
    clips = [torch.as_tensor(np.asarray(t.codes, dtype=np.int64)).reshape(-1, K)
             for t in (*example.context, example.target)]
    ids, frames, is_audio = prompt_positions(render_ids(processor, example), clips, config)  # [L], [A, K], [L]
    codes = torch.zeros(len(ids), K, dtype=torch.long)
    codes[is_audio] = frames
    labels = torch.full((len(ids), K), IGNORE, dtype=torch.long)
    labels[is_audio] = frames
    if not train_context:
        target_frames = len(clips[-1]) + 1  # its frames and its <|audio_eos|>: the sequence's last audio
        audio_at = is_audio.nonzero().squeeze(1)
        labels[audio_at[: len(audio_at) - target_frames]] = IGNORE
    return ids, codes, is_audio, labels


def collate(processor, config, examples: Sequence[Example], *, train_context: bool = True) -> Batch:
    """Examples -> one Batch, padded at the end with the tokenizer's pad id (mask 0, labels -100)."""
    rows = [example_positions(processor, config, e, train_context=train_context) for e in examples]
    B, L, K = len(rows), max(len(r[0]) for r in rows), config.num_codebooks
    pad_id = processor.tokenizer.pad_token_id if processor.tokenizer.pad_token_id is not None else 0
    batch = Batch(torch.full((B, L), pad_id, dtype=torch.long), torch.zeros(B, L, K, dtype=torch.long),
                  torch.zeros(B, L, dtype=torch.bool), torch.zeros(B, L, dtype=torch.long),
                  torch.full((B, L, K), IGNORE, dtype=torch.long))
    for b, (ids, codes, is_audio, labels) in enumerate(rows):
        n = len(ids)
        batch.input_ids[b, :n], batch.audio_codes[b, :n], batch.is_audio[b, :n] = ids, codes, is_audio
        batch.attention_mask[b, :n], batch.labels[b, :n] = 1, labels
    return batch


def inputs_embeds(model, batch: Batch) -> torch.Tensor:
    """[B, L, H]: text embeddings, and at audio positions the sum of the frame's codebook
    embeddings, as `_merge_input_ids_with_input_values` places them. model: CsmForConditionalGeneration."""
    embeds = model.embed_text_tokens(batch.input_ids)  # [B, L, H]
    frames = batch.audio_codes[batch.is_audio]  # [A, K]
    audio = model.backbone_model.embed_tokens(frames[None])[0]  # [A, H]
    return embeds.masked_scatter(batch.is_audio[..., None], audio.to(embeds.dtype))


class CodesLoss(nn.Module):
    """CSM's training loss on a Batch: backbone (codebook 0) + depth decoder (codebooks 1..K-1).

    A module around the model so that data-parallel wrappers (DDP) see one forward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> torch.Tensor:
        out = self.model(inputs_embeds=inputs_embeds(self.model, batch), attention_mask=batch.attention_mask,
                         labels=batch.labels)
        return out.loss
