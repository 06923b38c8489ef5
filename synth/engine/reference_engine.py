"""The transformers reference engine: CSM's own processor and padded batched `generate`.

This module owns the reference path that every faster engine is checked against:
`CsmProcessor.apply_chat_template` for the prompt (the conversation from
`synth.engine.prompt`), `CsmForConditionalGeneration.generate` on a left-padded batch,
then a per-row cut at the EOS frame (`synth.engine.stop`, the rule `generate` stops on)
or at the row's own cap, and Mimi decoding of exactly the kept frames. Both decoders are kept
off the audio ids Mimi cannot decode (`suppress_undecodable`), as the fast engine's sampler
is, so greedy codes stay identical. It knows nothing about manifests or Ray; loading goes
through `synth.engine.checkpoint`.

Limits it inherits from transformers: finished rows keep generating until the longest
row of the batch stops, and one seed is set per batch (rows of a batch share a random
stream), so sampled output depends on batch composition.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from synth.engine import interface
from synth.engine.checkpoint import (
    check_tied_audio_embeddings,
    decodable_codes,
    parse_dtype,
    resolve_device,
)
from synth.engine.codec import clip_key
from synth.engine.inbox import Inbox
from synth.engine.interface import GenerationRequest, GenerationResult, SamplingParams
from synth.engine.prompt import conversation
from synth.engine.stop import frames_before_eos


def suppress_undecodable(config) -> dict:
    """`generate` kwargs that keep the backbone and the depth decoder off the audio ids Mimi
    cannot decode (`synth.engine.checkpoint.decodable_codes`): their logits become -inf before
    any sampling or argmax. Pass them on every call: `depth_decoder_*` kwargs persist in the
    depth decoder's generation config."""
    ids = list(range(decodable_codes(config), config.vocab_size)) or None
    return {"suppress_tokens": ids, "depth_decoder_suppress_tokens": ids}


class TransformersEngine:
    """CSM through transformers' processor and `generate` (the reference)."""

    name = "transformers"

    def __init__(
        self, model, processor, *, device: str, dtype: str, model_id: str,
        compile: bool | None = None, batch_size: int = 8,
    ):
        self.model = model
        self.batch_size = batch_size
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.model_id = model_id
        self._inbox = Inbox()  # requests and cancellations from other threads (`submit`, `cancel`)
        cfg = model.config
        self.num_codebooks = cfg.num_codebooks
        self.max_positions = cfg.max_position_embeddings
        self.eos_code = cfg.codebook_eos_token_id
        codec = cfg.codec_config
        self.sample_rate_hz = codec.sampling_rate
        self.samples_per_frame = round(codec.sampling_rate / codec.frame_rate)  # 1920 for Mimi at 12.5 Hz
        tok = processor.tokenizer
        if tok.pad_token_id == cfg.audio_token_id:
            # Left padding with the audio token would be taken for audio frames.
            tok.pad_token = tok.eos_token
        use_compile = (device == "cuda") if compile is None else compile
        if use_compile:
            # Documented recipe: static caches on both decoders, auto-compiled on CUDA.
            model.generation_config.cache_implementation = "static"
            model.depth_decoder.generation_config.cache_implementation = "static"
        self.compiled = use_compile
        self.remembered: dict[str, np.ndarray] = {}  # clip content hash -> codes [T, K] int16 (remember_codes)

    @classmethod
    def load(
        cls, model_id: str, *, device: str = "auto", dtype: str = "float32",
        compile: bool | None = None, batch_size: int = 8,
    ):
        from transformers import AutoProcessor, CsmForConditionalGeneration

        device = resolve_device(device)
        processor = AutoProcessor.from_pretrained(model_id)
        model = CsmForConditionalGeneration.from_pretrained(model_id, dtype=parse_dtype(dtype)).to(device).eval()
        check_tied_audio_embeddings(model)
        return cls(
            model, processor, device=device, dtype=dtype, model_id=model_id, compile=compile, batch_size=batch_size
        )

    def _inputs(self, requests: Sequence[GenerationRequest]):
        return self.processor.apply_chat_template(
            [conversation(r) for r in requests], tokenize=True, return_dict=True
        ).to(self.device)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        return int(self._inputs([request])["input_ids"].shape[1])

    @torch.inference_mode()
    def encode_clips(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mimi codes [T_i, K] int16 of 24 kHz float32 clips, one at a time; a clip given to
        `remember_codes` gets the codes it was given."""
        codec = self.model.codec_model
        out = []
        for clip in clips:
            known = self.remembered.get(clip_key(clip))
            if known is not None:
                out.append(known)
                continue
            x = torch.as_tensor(np.asarray(clip, np.float32))[None, None].to(self.device, codec.dtype)  # [1, 1, S]
            codes = codec.encode(x, num_quantizers=self.num_codebooks).audio_codes  # [1, K, T]
            out.append(codes[0].T.to(torch.int16).cpu().numpy())
        return out

    def remember_codes(self, clip: np.ndarray, codes: np.ndarray) -> None:
        """Return `codes` [T, K] from `encode_clips` whenever `clip` (by content) comes again.
        Generation itself still hands each context clip to the processor, which encodes it
        again, as a user of transformers would: the reference takes no shortcut there."""
        self.remembered[clip_key(clip)] = np.asarray(codes, dtype=np.int16)

    def forget_codes(self, clip: np.ndarray) -> None:
        """Undo `remember_codes` for `clip`."""
        self.remembered.pop(clip_key(clip), None)

    def _sampling_kwargs(self, sampling: SamplingParams) -> dict:
        kw = {"do_sample": sampling.do_sample, "depth_decoder_do_sample": sampling.do_sample,
              **suppress_undecodable(self.model.config)}
        if sampling.do_sample:
            kw.update(
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                depth_decoder_temperature=sampling.depth_temperature,
                depth_decoder_top_k=sampling.depth_top_k,
            )
        return kw

    @torch.inference_mode()
    def generate_codes(self, inputs, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> torch.Tensor:
        """Raw `generate` output for one padded batch: [B, max_new_frames, num_codebooks]."""
        torch.manual_seed(requests[0].seed)
        max_new = max(r.max_frames for r in requests)
        # Depth-decoder kwargs persist in its generation config; every call passes them all.
        return self.model.generate(**inputs, max_new_tokens=max_new, **self._sampling_kwargs(sampling))

    def cut(self, codes: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, str]:
        """Frames before the EOS frame or the row's cap. codes: [T, K] -> [T', K]."""
        codes, found = frames_before_eos(codes[:max_frames], self.eos_code)
        return codes, "eos" if found else "max_length"

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Mimi-decode [T, K] codes to [T * samples_per_frame] float32 samples."""
        if codes.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        audio = self.model.codec_model.decode(codes.T.unsqueeze(0)).audio_values  # [1, 1, samples]
        return audio[0, 0].float().cpu().numpy()

    def batches(self, requests: Sequence[GenerationRequest]) -> list[list[GenerationRequest]]:
        """Batches of `batch_size` rows of similar prompt and target length, so padding
        (in the prompt) and finished rows riding along (in the frames) waste little."""
        lengths = {r.request_id: self.count_prompt_tokens(r) for r in requests}
        order = sorted(requests, key=lambda r: (lengths[r.request_id], r.max_frames))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def run(self, requests: Sequence[GenerationRequest], sampling: SamplingParams,
            on_result: interface.OnResult | None = None) -> list[GenerationResult]:
        """Generate `requests` in rounds: each round is `generate` over what is waiting, and the
        follow-ups that `on_result` returns (e.g. a conversation's next turn) form the next round,
        with the requests handed over by `submit` meanwhile; a `cancel` drops a waiting request,
        or a result of the round not yet handed to `on_result`. While `open_submissions` is open
        the call waits for more instead of ending."""
        results: list[GenerationResult] = []
        waiting: list[GenerationRequest] = []
        self._take_inbox(waiting, [])  # work handed over before the call, first
        waiting += requests
        while True:
            batch = self.generate(waiting, sampling) if waiting else []
            waiting = []
            took = self._take_inbox(waiting, batch)
            interface.prepare_results(on_result, batch)
            for result in batch:
                results.append(result)
                waiting += list((on_result(result) if on_result is not None else None) or ())
            if waiting or took:
                continue
            if not self._inbox.is_open:
                return results
            self._inbox.wait(timeout_s=1.0)

    def _take_inbox(self, waiting: list[GenerationRequest], done: list[GenerationResult]) -> bool:
        """Requests handed over join `waiting`; a cancel drops its request from `waiting` or its
        result from `done` (both in place). Whether anything was taken."""
        items = self._inbox.take()
        for kind, value in items:
            if kind == "submit":
                waiting += value
                continue
            key, on_cancelled = value
            frames = sum(x.num_frames for x in done if x.request_id == key)  # generated this round
            for queue in (waiting, done):
                queue[:] = [x for x in queue if x.request_id != key]
            if on_cancelled is not None:
                on_cancelled(frames)
        return bool(items)

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Hand requests over from any thread: the `run` under way (else the next) generates them
        in its next round, as if `on_result` had returned them."""
        self._inbox.put("submit", list(requests))

    def cancel(self, request_id: str, on_cancelled: interface.OnCancelled | None = None) -> None:
        """Drop a request from any thread: waiting for its round, or generated and not yet handed to
        `on_result` (a round under way still computes it, padded batches being what they are);
        `on_cancelled(frames)` once applied (see `Engine.cancel`)."""
        self._inbox.put("cancel", (request_id, on_cancelled))

    def open_submissions(self) -> None:
        """More work will be handed over: `run` waits for it (see `FastEngine.open_submissions`)."""
        self._inbox.open()

    def close_submissions(self) -> None:
        self._inbox.close()

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list[GenerationResult]:
        by_id = {
            res.request_id: res for batch in self.batches(requests) for res in self.generate_batch(batch, sampling)
        }
        return [by_id[r.request_id] for r in requests]

    def generate_batch(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationResult]:
        """One padded `generate` call over `requests`."""
        if not requests:
            return []
        inputs = self._inputs(requests)
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()  # [B]: left padding is masked out
        batch_codes = self.generate_codes(inputs, requests, sampling)
        results = []
        for request, row_codes, num_prompt_tokens in zip(requests, batch_codes, prompt_tokens):
            codes, stop = self.cut(row_codes, request.max_frames)
            results.append(
                GenerationResult(
                    request_id=request.request_id,
                    codes=codes.to(torch.int16).cpu().numpy(),
                    audio=self.decode(codes),
                    stop_reason=stop,
                    num_prompt_tokens=int(num_prompt_tokens),
                    info=interface.ResultInfo(batch_frames=int(batch_codes.shape[1]), batch_size=len(requests)),
                )
            )
        return results

    def describe(self) -> interface.EngineInfo:
        return interface.EngineInfo(engine=self.name, dtype=self.dtype, device=self.device, compiled=self.compiled,
                          model=self.model_id)
