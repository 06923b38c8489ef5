"""The fast engine: lean static-cache CSM, one graph per frame, continuous batching.

This module owns `FastEngine`, the default `Engine` (see `synth.engine.interface`): it turns
`GenerationRequest`s into prompts exactly as CSM's processor and chat template do
(context turns, then the target turn as a text-only message), encodes context clips
through the batched, cached Mimi codec, runs them through the `Scheduler`, and
decodes finished rows in batches. It knows nothing about manifests, Ray or output
files; the model math lives in `synth.engine.lean_csm`, the frame step in
`synth.engine.frame_step`, the batching in `synth.engine.scheduler`.

    engine = FastEngine.load("sesame/csm-1b", device="cuda", dtype="bfloat16", num_slots=64)
    results = engine.generate(requests, SamplingParams())
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from synth.engine.codec import MimiCodec, load_mimi
from synth.engine.frame_step import FrameStep, StopRules
from synth.engine.interface import GenerationRequest, GenerationResult, SamplingParams
from synth.engine.lean_csm import load_lean_csm, resolve_checkpoint
from synth.engine.scheduler import Finished, Job, Scheduler

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


class FastEngine:
    """Continuous-batching CSM engine implementing the `Engine` protocol."""

    name = "fast"

    def __init__(self, model, config, processor, codec: MimiCodec, *, num_slots: int, max_positions: int,
                 compile: bool = False, cuda_graph: bool | None = None, stop_rules: StopRules = StopRules(),
                 top_k_max: int | None = 64, decode_batch: int = 16,
                 decode_interval_frames: int = 12, longest_first: bool = True,
                 result_thread: bool | None = None, status_lag: int | None = None,
                 compile_mode: str | None = None, num_kv_buckets: int = 4):
        """top_k_max: largest top-k a sampling call may ask for (the sampler's static width);
        None serves any top-k, including 0 (no filter), at the cost of a full-vocabulary sort.
        Finished rows are decoded in batches of `decode_batch`, or sooner once the oldest has
        waited `decode_interval_frames` frames. longest_first: queue each call's rows by
        descending `max_frames`, so short rows fill the tail and slots rarely sit idle
        (better packing, later first audio). result_thread: finish rows (Mimi decode, the
        `on_result` callback, follow-ups' prompts and context encodes) on a worker thread
        while the frame loop goes on; default on CUDA only (on a small CPU the two threads
        fight over the cores). status_lag: see `Scheduler`. compile_mode: see
        `FrameStep.compile_steps`; num_kv_buckets: see `FrameStep`."""
        if num_slots < 1:
            raise ValueError(f"num_slots={num_slots} must be >= 1")
        self.model, self.config, self.processor, self.codec = model, config, processor, codec
        self.tokenizer = processor.tokenizer
        self.num_codebooks = config.num_codebooks
        self.sample_rate_hz = codec.sample_rate_hz
        self.samples_per_frame = codec.samples_per_frame
        self.max_positions = max_positions
        self.num_slots = num_slots
        self.decode_batch = decode_batch
        self.decode_interval_frames = decode_interval_frames
        self.longest_first = longest_first
        self.step = FrameStep(model, num_slots, max_positions, stop_rules=stop_rules, top_k_max=top_k_max,
                              num_kv_buckets=num_kv_buckets)
        self.compile_s = 0.0
        self.compiled = compile
        if compile:
            self.step.compile_steps(compile_mode)
        self.scheduler = Scheduler(model, self.step, use_cuda_graph=cuda_graph, status_lag=status_lag)
        self.result_thread = self.scheduler.is_cuda if result_thread is None else result_thread
        self.loop_result_s = 0.0  # seconds the frame loop spent on finished rows (launch, wait, callbacks)
        self.audio_token_id = config.audio_token_id
        self.audio_eos_token_id = config.audio_eos_token_id

    @classmethod
    def load(cls, model_path: str, *, device: str = "cuda", dtype: str | torch.dtype = "bfloat16",
             num_slots: int = 32, max_positions: int | None = None, compile: bool | None = None,
             codec_dtype: str | torch.dtype | None = None, stop_rules: StopRules = StopRules(),
             top_k_max: int | None = 64, warmup: bool = True, **options) -> "FastEngine":
        """Load from a checkpoint dir or hub id. compile=None: compile the steps on CUDA only.

        The codec runs in float32 (float64 for float64 models) unless codec_dtype says otherwise.
        `options` go to the constructor (result_thread, status_lag, compile_mode, decode_batch, ...).
        """
        from transformers import AutoProcessor

        dtype = parse_dtype(dtype)
        path = resolve_checkpoint(model_path)
        model, config = load_lean_csm(str(path), device=device, dtype=dtype)
        max_positions = max_positions or config.max_position_embeddings
        if codec_dtype is None:  # bf16 Mimi decoding was the slower one in the H100 runs (BENCHMARKS.md)
            codec_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        mimi = load_mimi(path, config, device=device, dtype=parse_dtype(codec_dtype))
        # Small decode batches suit CPU caches (2 rows decoded fastest on 2 cores); GPUs want width.
        codec = MimiCodec(mimi, num_codebooks=config.num_codebooks, max_batch=16 if mimi.device.type == "cuda" else 2)
        processor = AutoProcessor.from_pretrained(str(path))
        compile = (torch.device(device).type == "cuda") if compile is None else compile
        engine = cls(model, config, processor, codec, num_slots=num_slots, max_positions=max_positions,
                     compile=compile, stop_rules=stop_rules, top_k_max=top_k_max, **options)
        if warmup:
            engine.warmup()
        return engine

    def warmup(self) -> float:
        """Compile/capture the frame step on a throwaway row; returns (and records) the seconds spent."""
        t0 = time.perf_counter()
        req = GenerationRequest(request_id="warmup", text="warm up", speaker=0, max_frames=3)
        for do_sample in (False, True):
            self.generate([req], SamplingParams(do_sample=do_sample), decode=False)
        if self.model.lm_head.weight.is_cuda:
            torch.cuda.synchronize()
        self.compile_s = time.perf_counter() - t0
        return self.compile_s

    # ------------------------------------------------------------------ prompts

    def _render_ids(self, request: GenerationRequest) -> tuple[list[int], list[np.ndarray]]:
        """Token ids with one `<|AUDIO|>` per context clip (not yet expanded), and those clips."""
        conversation, clips = [], []
        for seg in request.context:
            content = [{"type": "text", "text": seg.text}]
            if seg.audio is not None:
                content.append({"type": "audio"})
                clips.append(np.asarray(seg.audio, dtype=np.float32))
            conversation.append({"role": str(seg.speaker), "content": content})
        conversation.append({"role": str(request.speaker), "content": [{"type": "text", "text": request.text}]})
        text = self.processor.apply_chat_template(conversation, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False).input_ids, clips

    def _job(self, request: GenerationRequest, sampling: SamplingParams, clip_codes: list[torch.Tensor]) -> Job:
        ids, _ = self._render_ids(request)
        K = self.num_codebooks
        out_ids, out_codes, out_audio = [], [], []
        clip_iter = iter(clip_codes)
        eos_frame = torch.full((1, K), self.config.codebook_eos_token_id, dtype=torch.long)
        for tok in ids:
            if tok == self.audio_token_id:
                codes = next(clip_iter)  # [T_clip, K]
                out_ids += [tok] * len(codes)
                out_codes.append(codes)
                out_audio += [True] * len(codes)
            elif tok == self.audio_eos_token_id:
                out_ids.append(tok)
                out_codes.append(eos_frame)
                out_audio.append(True)
            else:
                out_ids.append(tok)
                out_codes.append(torch.zeros(1, K, dtype=torch.long))
                out_audio.append(False)
        s = sampling
        return Job(
            key=request.request_id,
            input_ids=torch.tensor(out_ids, dtype=torch.long),
            audio_codes=torch.cat(out_codes),
            is_audio=torch.tensor(out_audio),
            max_frames=request.max_frames,
            seed=request.seed,
            sampling=(float(s.do_sample), s.temperature, float(s.top_k), s.depth_temperature, float(s.depth_top_k)),
        )

    def _jobs(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list[Job]:
        rendered = [self._render_ids(r) for r in requests]
        all_clips = [c for _, clips in rendered for c in clips]
        codes = self.codec.encode(all_clips) if all_clips else []
        jobs, i = [], 0
        for r, (_, clips) in zip(requests, rendered):
            jobs.append(self._job(r, sampling, codes[i : i + len(clips)]))
            i += len(clips)
        return jobs

    def encode_clips(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mimi codes [T_i, K] int16 of 24 kHz float32 clips (batched, cached by content)."""
        return [c.numpy().astype(np.int16) for c in self.codec.encode(list(clips))]

    def remember_codes(self, clip: np.ndarray, codes: np.ndarray) -> None:
        """Use `codes` [T, K] whenever `clip` is context, instead of encoding it."""
        self.codec.remember(clip, codes)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        ids, clips = self._render_ids(request)
        frames = sum(-(-len(c) // self.samples_per_frame) for c in clips)  # Mimi: ceil(samples / frame)
        return len(ids) - len(clips) + frames

    # ------------------------------------------------------------------ generation

    def _check_sampling(self, sampling: SamplingParams) -> None:
        if not sampling.do_sample or self.step.top_k_max >= self.step.V:
            return
        for name in ("top_k", "depth_top_k"):
            k = getattr(sampling, name)
            if k <= 0 or k > self.step.top_k_max:
                raise ValueError(f"SamplingParams.{name}={k}: this engine samples among at most "
                                 f"top_k_max={self.step.top_k_max} tokens (build it with top_k_max=None for any)")

    def describe(self) -> dict:
        w = self.model.lm_head.weight
        return {"engine": self.name, "dtype": str(w.dtype).removeprefix("torch."), "device": str(w.device),
                "num_slots": self.num_slots, "max_positions": self.max_positions,
                "compiled": self.compiled, "warmup_s": round(self.compile_s, 3),
                "result_thread": self.result_thread, "status_lag": self.scheduler.status_lag}

    def _finish_rows(self, batch: list[Finished], audio: list[np.ndarray] | None, sampling: SamplingParams,
                     on_result, t0: float) -> tuple[list[GenerationResult], list[Job]]:
        """Results of decoded rows, in order, and the jobs of the follow-ups `on_result` returns
        for them (their context clips encoded in one batch). audio=None: silence (no decode)."""
        if audio is None:
            audio = [np.zeros(len(f.codes) * self.samples_per_frame, np.float32) for f in batch]
        now = time.perf_counter()
        results, follow_ups = [], []
        for f, a in zip(batch, audio):
            res = GenerationResult(
                request_id=f.key, codes=f.codes, audio=a, stop_reason=f.stop_reason,
                num_prompt_tokens=f.num_prompt_tokens,
                info={"engine": self.name, "slot": f.slot, "queued_s": f.started_s - f.submitted_s,
                      "generate_s": f.finished_s - f.started_s, "ready_s": now - t0},
            )
            results.append(res)
            follow_ups += list((on_result(res) if on_result is not None else None) or ())
        return results, self._jobs(follow_ups, sampling)

    @torch.inference_mode()
    def _finish_rows_in_thread(self, batch: list[Finished], decode: bool, sampling: SamplingParams,
                               on_result, t0: float) -> tuple[list[GenerationResult], list[Job]]:
        # Grad mode and the current CUDA stream are per thread: set both here.
        with self.codec.side_stream():
            audio = self.codec.decode([f.codes for f in batch]) if decode else None
            return self._finish_rows(batch, audio, sampling, on_result, t0)

    def run(self, requests: Sequence[GenerationRequest], sampling: SamplingParams,
            on_result: Callable[[GenerationResult], Iterable[GenerationRequest] | None] | None = None,
            decode: bool = True) -> list[GenerationResult]:
        """Generate `requests`; `on_result` sees each result as it is ready and may return follow-up
        requests (e.g. the next turn of a conversation), which join the queue. Results come in
        completion order. With `result_thread`, `on_result` runs on the engine's worker thread
        (one call at a time, in completion order); when a call raises, the call already under
        way for the next batch may still finish before the error reaches the caller."""
        self._check_sampling(sampling)
        self.scheduler.prepare(sampling.do_sample)  # before the result thread exists (graph capture)
        t0 = time.perf_counter()
        results: list[GenerationResult] = []
        to_decode: list[Finished] = []
        # Batches of finished rows on their way to results: (is it ready?, take its results and jobs).
        finishing: deque[tuple[Callable[[], bool], Callable[[], tuple[list[GenerationResult], list[Job]]]]] = deque()
        pool = ThreadPoolExecutor(1, thread_name_prefix="synth-results") if self.result_thread else None

        def deliver(wait: bool) -> None:
            t = time.perf_counter()
            while finishing and (wait or finishing[0][0]()):
                _, take = finishing.popleft()
                done, jobs = take()
                results.extend(done)
                for job in jobs:
                    self.scheduler.submit(job)
            self.loop_result_s += time.perf_counter() - t

        oldest = [0]  # scheduler frame count when the oldest undecoded row finished

        def flush() -> None:
            t = time.perf_counter()
            batch = to_decode[:]
            to_decode.clear()
            if pool is not None:
                future = pool.submit(self._finish_rows_in_thread, batch, decode, sampling, on_result, t0)
                finishing.append((future.done, future.result))
            else:
                pending = self.codec.decode_async([f.codes for f in batch]) if decode else None
                finishing.append((pending.ready if pending is not None else (lambda: True),
                                  lambda: self._finish_rows(batch, pending.result() if pending is not None else None,
                                                            sampling, on_result, t0)))
            self.loop_result_s += time.perf_counter() - t

        def on_finished(f: Finished) -> None:
            if not to_decode:
                oldest[0] = self.scheduler.stats.frames
            to_decode.append(f)
            if len(to_decode) >= self.decode_batch:
                flush()

        def on_frame() -> None:
            # With nothing queued, a finished row's follow-up is all that can refill its slot: decode now.
            waiting_for_follow_up = on_result is not None and not self.scheduler.queue
            if to_decode and (waiting_for_follow_up
                              or self.scheduler.stats.frames - oldest[0] >= self.decode_interval_frames):
                flush()
            deliver(wait=False)

        jobs = self._jobs(requests, sampling)
        if self.longest_first:
            jobs.sort(key=lambda j: -j.max_frames)
        try:
            for job in jobs:
                self.scheduler.submit(job)
            while True:
                self.scheduler.run(on_finished, on_frame)
                if to_decode:
                    flush()
                if not finishing:
                    break
                deliver(wait=True)  # may submit follow-ups: run again until nothing is left
        except BaseException:
            self.scheduler.abort()  # the next call starts clean
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return results

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams,
                 decode: bool = True) -> list[GenerationResult]:
        """Generate every request; results in the order of `requests`."""
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request_id values must be unique within one generate() call")
        by_id = {r.request_id: r for r in self.run(requests, sampling, decode=decode)}
        return [by_id[i] for i in ids]
