"""CSM prompts: a request as its chat-template conversation, and as one backbone input per position.

This module owns how a `GenerationRequest` becomes CSM's prompt, exactly as CSM's
processor and chat template build it: the conversation (each context turn with its
clip, if it has one, then the target turn as a text-only message), its token ids as
the template renders them (one `<|AUDIO|>` per context clip, not yet expanded), and,
for the fast engine, their expansion with the clips' codes into per-position inputs:
a text token, or an audio frame (each clip frame at its `<|AUDIO|>`, the all-EOS frame
at `<|audio_eos|>`). It knows nothing about models, sampling, scheduling or the codec:
clip codes come in already encoded.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from synth.engine.interface import GenerationRequest


def conversation(request: GenerationRequest, *, with_audio: bool = True) -> list[dict]:
    """The chat-template conversation for a request: context turns, then the target turn.

    with_audio=False leaves each clip's place empty (`{"type": "audio"}`): enough to render
    the template's text, without handing the processor audio to load."""
    messages = []
    for seg in request.context:
        content = [{"type": "text", "text": seg.text}]
        if seg.audio is not None:
            content.append({"type": "audio", "path": seg.audio} if with_audio else {"type": "audio"})
        messages.append({"role": str(seg.speaker), "content": content})
    messages.append({"role": str(request.speaker), "content": [{"type": "text", "text": request.text}]})
    return messages


def context_clips(request: GenerationRequest) -> list[np.ndarray]:
    """The request's context clips in prompt order: [num_samples] float32 each."""
    return [np.asarray(seg.audio, dtype=np.float32) for seg in request.context if seg.audio is not None]


def render_ids(processor, request: GenerationRequest) -> list[int]:
    """Token ids of the request's prompt, with one `<|AUDIO|>` per context clip (not yet expanded)."""
    text = processor.apply_chat_template(conversation(request, with_audio=False), tokenize=False)
    return processor.tokenizer(text, add_special_tokens=False).input_ids


def prompt_positions(ids: Sequence[int], clip_codes: Sequence[torch.Tensor], config,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rendered ids and each context clip's codes [T_clip, K] -> one backbone input per position:
    (input_ids [T], audio_frames [A, K], is_audio [T]). Audio positions hold the `<|AUDIO|>` /
    `<|audio_eos|>` id in input_ids; audio_frames holds their frames, one per True of is_audio,
    in order (each clip's frames at its `<|AUDIO|>`, the all-EOS frame at `<|audio_eos|>`).

    config: a CsmConfig (num_codebooks, audio_token_id, audio_eos_token_id, codebook_eos_token_id).
    """
    K = config.num_codebooks
    out_ids, out_frames, out_audio = [], [], []
    clip_iter = iter(clip_codes)
    eos_frame = torch.full((1, K), config.codebook_eos_token_id, dtype=torch.long)
    for tok in ids:
        if tok == config.audio_token_id:
            codes = next(clip_iter)  # [T_clip, K]
            out_ids += [tok] * len(codes)
            out_frames.append(codes)
            out_audio += [True] * len(codes)
        elif tok == config.audio_eos_token_id:
            out_ids.append(tok)
            out_frames.append(eos_frame)
            out_audio.append(True)
        else:
            out_ids.append(tok)
            out_audio.append(False)
    frames = torch.cat(out_frames).long() if out_frames else torch.zeros(0, K, dtype=torch.long)
    return torch.tensor(out_ids, dtype=torch.long), frames, torch.tensor(out_audio, dtype=torch.bool)
