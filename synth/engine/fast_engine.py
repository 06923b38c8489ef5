"""The fast engine: lean static-cache CSM, one graph per frame, continuous batching.

This module owns `FastEngine`, the default `Engine` (see `synth.engine.interface`): it turns
`GenerationRequest`s into prompts (`synth.engine.prompt`, exactly as CSM's processor and
chat template do), encodes context clips through the batched, cached Mimi codec, runs
them through the `Scheduler`, and decodes finished rows in batches on their way to
results (`_ResultPipeline`, one per `run` call, on the engine's one result thread when it
has one). It knows nothing about manifests, Ray or output files; the model math lives in
`synth.engine.lean_csm`, checkpoint loading in
`synth.engine.checkpoint`, the frame step in `synth.engine.frame_step`, the batching in
`synth.engine.scheduler`, its tuning options in `synth.engine.options`.

    engine = FastEngine.load("sesame/csm-1b", device="cuda", dtype="bfloat16", num_slots=64)
    results = engine.generate(requests, SamplingParams())
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Sequence

import numpy as np
import torch

from synth.engine.checkpoint import (
    decodable_codes,
    load_lean_csm,
    parse_dtype,
    resolve_checkpoint,
)
from synth.engine.codec import MimiCodec, PendingAudio, load_mimi
from synth.engine.frame_step import FrameStep, on_device
from synth.engine.interface import (
    EngineInfo,
    GenerationRequest,
    GenerationResult,
    OnResult,
    ResultInfo,
    SamplingParams,
    prepare_results,
)
from synth.engine.options import FastEngineOptions
from synth.engine.prompt import context_clips, prompt_positions, render_ids
from synth.engine.scheduler import Finished, Job, Scheduler
from synth.engine.stop import StopRules


class FastEngine:
    """Continuous-batching CSM engine implementing the `Engine` protocol."""

    name = "fast"

    def __init__(self, model, config, processor, codec: MimiCodec, *, num_slots: int, max_positions: int,
                 compile: bool = False, stop_rules: StopRules = StopRules(), top_k_max: int | None = 64,
                 options: FastEngineOptions = FastEngineOptions()):
        """top_k_max: largest top-k a sampling call may ask for (the sampler's static width);
        None serves any top-k, including 0 (no filter), at the cost of a full-vocabulary sort.
        compile: torch.compile the frame's steps (mode: `options.compile_mode`). options: how
        the engine runs (CUDA graphs, attention buckets, result thread, ...; see `FastEngineOptions`)."""
        if num_slots < 1:
            raise ValueError(f"num_slots={num_slots} must be >= 1")
        self.model, self.config, self.processor, self.codec = model, config, processor, codec
        self.options = options
        self.num_codebooks = config.num_codebooks
        self.sample_rate_hz = codec.sample_rate_hz
        self.samples_per_frame = codec.samples_per_frame
        self.max_positions = max_positions
        self.num_slots = num_slots
        self.step = FrameStep(model, num_slots, max_positions, stop_rules=stop_rules, top_k_max=top_k_max,
                              num_kv_buckets=options.num_kv_buckets, num_codes=decodable_codes(config))
        self.compile_s = 0.0
        self.compiled = compile
        if compile:
            self.step.compile_steps(options.compile_mode)
        self.scheduler = Scheduler(model, self.step, use_cuda_graph=options.cuda_graph, status_lag=options.status_lag,
                                   min_admit=options.min_admit, max_prefill_rows=options.max_prefill_rows,
                                   prefill_tokens=options.prefill_tokens, kv_continuation=options.kv_continuation,
                                   hold_frames=options.hold_frames, park_rows=options.park_rows)
        self.result_thread = self.scheduler.is_cuda if options.result_thread is None else options.result_thread
        self._pool: ThreadPoolExecutor | None = None  # the result thread, from the first run on
        self._closed = False
        self.loop_result_s = 0.0  # seconds the frame loop spent on finished rows (launch, wait, callbacks)

    def close(self) -> None:
        """Stop the result thread, after the work it has; the engine runs nothing after this.
        Garbage collection and interpreter exit stop it too (without waiting)."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _result_pool(self) -> ThreadPoolExecutor | None:
        """The engine's one result thread (`result_thread`), started by the first run and kept for
        the engine's life, so its per-thread state (CUDA stream, caches) stays warm across runs.
        None when rows are finished on the frame loop's thread (`result_thread` off, now)."""
        if not self.result_thread:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="synth-results")
            # holds the pool, not the engine: stops the thread once the engine is collected, or at exit
            weakref.finalize(self, self._pool.shutdown, wait=False)
        return self._pool

    @classmethod
    def load(cls, model_path: str, *, device: str = "cuda", dtype: str | torch.dtype = "bfloat16",
             num_slots: int = 32, max_positions: int | None = None, compile: bool | None = None,
             stop_rules: StopRules = StopRules(), top_k_max: int | None = 64, warmup: bool = True,
             options: FastEngineOptions = FastEngineOptions()) -> "FastEngine":
        """Load from a checkpoint dir or hub id. compile=None: compile the steps on CUDA only.

        The codec runs in float32 (float64 for float64 models) unless `options.codec_dtype` says otherwise.
        """
        from transformers import AutoProcessor

        dtype = parse_dtype(dtype)
        path = resolve_checkpoint(model_path)
        model, config = load_lean_csm(str(path), device=device, dtype=dtype)
        max_positions = max_positions or config.max_position_embeddings
        codec_dtype = options.codec_dtype
        if codec_dtype is None:  # bf16 Mimi decoding was the slower one in the H100 runs (BENCHMARKS.md)
            codec_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        mimi = load_mimi(path, config, device=device, dtype=parse_dtype(codec_dtype))
        # Small decode batches suit CPU caches (2 rows decoded fastest on 2 cores); GPUs want width.
        codec = MimiCodec(mimi, num_codebooks=config.num_codebooks, max_batch=16 if mimi.device.type == "cuda" else 2)
        processor = AutoProcessor.from_pretrained(str(path))
        compile = (torch.device(device).type == "cuda") if compile is None else compile
        engine = cls(model, config, processor, codec, num_slots=num_slots, max_positions=max_positions,
                     compile=compile, stop_rules=stop_rules, top_k_max=top_k_max, options=options)
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
            torch.cuda.synchronize(self.model.lm_head.weight.device)
        self.compile_s = time.perf_counter() - t0
        return self.compile_s

    # ------------------------------------------------------------------ prompts

    def _job(self, request: GenerationRequest, sampling: SamplingParams, clip_codes: list[torch.Tensor]) -> Job:
        input_ids, audio_frames, is_audio = prompt_positions(render_ids(self.processor, request), clip_codes,
                                                             self.config)
        return Job(key=request.request_id, input_ids=input_ids, audio_frames=audio_frames, is_audio=is_audio,
                   max_frames=request.max_frames, seed=request.seed, sampling=sampling,
                   continues=request.continues, followed=request.followed)

    def _jobs(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list[Job]:
        clips = [context_clips(r) for r in requests]
        all_clips = [c for cs in clips for c in cs]
        codes = self.codec.encode(all_clips) if all_clips else []
        jobs, i = [], 0
        for r, cs in zip(requests, clips):
            jobs.append(self._job(r, sampling, codes[i : i + len(cs)]))
            i += len(cs)
        return jobs

    def encode_clips(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mimi codes [T_i, K] int16 of 24 kHz float32 clips (batched, cached by content)."""
        return [c.numpy().astype(np.int16) for c in self.codec.encode(list(clips))]

    def remember_codes(self, clip: np.ndarray, codes: np.ndarray) -> None:
        """Use `codes` [T, K] whenever `clip` is context, instead of encoding it."""
        self.codec.remember(clip, codes)

    def forget_codes(self, clip: np.ndarray) -> None:
        """Undo `remember_codes` for `clip` (a chain's turn no later turn can reach)."""
        self.codec.forget(clip)

    def count_prompt_tokens(self, request: GenerationRequest) -> int:
        clips = context_clips(request)
        frames = sum(-(-len(c) // self.samples_per_frame) for c in clips)  # Mimi: ceil(samples / frame)
        return len(render_ids(self.processor, request)) - len(clips) + frames

    # ------------------------------------------------------------------ generation

    def _check_sampling(self, sampling: SamplingParams) -> None:
        if not sampling.do_sample or self.step.top_k_max >= self.step.num_codes:
            return
        for name in ("top_k", "depth_top_k"):
            k = getattr(sampling, name)
            if k <= 0 or k > self.step.top_k_max:
                raise ValueError(f"SamplingParams.{name}={k}: this engine samples among at most "
                                 f"top_k_max={self.step.top_k_max} tokens (build it with top_k_max=None for any)")

    def describe(self) -> EngineInfo:
        w = self.model.lm_head.weight
        return EngineInfo(engine=self.name, dtype=str(w.dtype).removeprefix("torch."), device=str(w.device),
                          compiled=self.compiled, num_slots=self.num_slots, max_positions=self.max_positions,
                          warmup_s=round(self.compile_s, 3), result_thread=self.result_thread,
                          status_lag=self.scheduler.status_lag)

    def run(self, requests: Sequence[GenerationRequest], sampling: SamplingParams,
            on_result: OnResult | None = None, decode: bool = True) -> list[GenerationResult]:
        """Generate `requests`; `on_result` sees each result as it is ready and may return follow-up
        requests (e.g. the next turn of a conversation), which join the queue. Results come in
        completion order. With `result_thread`, `on_result` runs on the engine's worker thread
        (one call at a time, in completion order); when a call raises, the call already under
        way for the next batch may still finish before the error reaches the caller."""
        if self._closed:
            raise RuntimeError("FastEngine.run() after close()")
        self._check_sampling(sampling)
        self.scheduler.prepare(sampling.do_sample)  # before any work goes to the result thread (graph capture)
        pipeline = _ResultPipeline(self, sampling, on_result, decode)
        try:
            jobs = self._jobs(requests, sampling)
            if self.options.longest_first:
                jobs.sort(key=lambda j: -j.max_frames)
            for job in jobs:
                self.scheduler.submit(job)
            while True:
                self.scheduler.run(pipeline.on_finished, pipeline.on_frame)
                if pipeline.to_decode:
                    pipeline.flush()
                if not pipeline.finishing:
                    break
                pipeline.deliver(wait=True)  # may submit follow-ups: run again until nothing is left
        except BaseException:
            self.scheduler.abort()  # the next call starts clean
            raise
        finally:
            pipeline.close()
        return pipeline.results

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams,
                 decode: bool = True) -> list[GenerationResult]:
        """Generate every request; results in the order of `requests`."""
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request_id values must be unique within one generate() call")
        by_id = {r.request_id: r for r in self.run(requests, sampling, decode=decode)}
        return [by_id[i] for i in ids]


class _DecodingBatch:
    """Finished rows decoding on the frame loop's thread (on CUDA, on the codec's side stream):
    polled with `done()`, taken with `result()`, as the result thread's futures are."""

    def __init__(self, pipeline: "_ResultPipeline", batch: list[Finished], pending: PendingAudio | None):
        self.pipeline, self.batch, self.pending = pipeline, batch, pending

    def done(self) -> bool:
        return self.pending is None or self.pending.ready()

    def result(self) -> tuple[list[GenerationResult], list[Job]]:
        audio = self.pending.result() if self.pending is not None else None
        return self.pipeline.finish_rows(self.batch, audio)


class _ResultPipeline:
    """One `FastEngine.run` call's finished rows on their way to results.

    The scheduler hands over rows as they finish (`on_finished`); they wait in `to_decode`
    until a batch is full, the oldest has waited `decode_interval_frames`, or a follow-up
    is all that can refill a slot (`on_frame`), then go to Mimi together (`flush`): on the
    result thread when the engine has one, else decoding asynchronously beside the frame
    loop. `deliver` takes the batches that are done, in order, into `results`, and submits
    the follow-up requests `on_result` returned for them. Everything but `finish_rows` runs
    on the frame loop's thread; `finish_rows` runs on the result thread when there is one.
    """

    def __init__(self, engine: FastEngine, sampling: SamplingParams, on_result: OnResult | None, decode: bool):
        self.engine, self.sampling, self.on_result, self.decode = engine, sampling, on_result, decode
        self.t0 = time.perf_counter()
        self.results: list[GenerationResult] = []
        self.to_decode: list[Finished] = []
        self.finishing: deque[Future | _DecodingBatch] = deque()  # in the order the rows finished
        self.oldest_frame = 0  # scheduler frame count when the oldest row in `to_decode` finished
        self.pool = engine._result_pool()

    def close(self) -> None:
        """Leave nothing of this call on the result thread: after an error, batches not yet
        started are cancelled and the one under way finishes."""
        futures = [f for f in self.finishing if isinstance(f, Future)]
        for f in futures:
            f.cancel()
        wait(futures)

    # ------------------------------------------------------------------ the frame loop's side

    def on_finished(self, f: Finished) -> None:
        if not self.to_decode:
            self.oldest_frame = self.engine.scheduler.stats.frames
        self.to_decode.append(f)
        if len(self.to_decode) >= self.engine.options.decode_batch:
            self.flush()

    def on_frame(self) -> None:
        scheduler = self.engine.scheduler
        # With nothing queued, a finished row's follow-up is all that can refill its slot, and a held
        # slot waits for its follow-up: decode now.
        waiting_for_follow_up = self.on_result is not None and (
            not scheduler.queue or scheduler.held.any_reserved(scheduler.stats.frames))
        waited = scheduler.stats.frames - self.oldest_frame >= self.engine.options.decode_interval_frames
        if self.to_decode and (waiting_for_follow_up or waited):
            self.flush()
        self.deliver(wait=False)

    def flush(self) -> None:
        """Send the rows waiting in `to_decode` to Mimi as one batch."""
        t = time.perf_counter()
        batch, self.to_decode = self.to_decode, []
        if self.pool is not None:
            self.finishing.append(self.pool.submit(self._finish_rows_in_thread, batch))
        else:
            codec = self.engine.codec
            pending = codec.decode_async([f.codes for f in batch]) if self.decode else None
            self.finishing.append(_DecodingBatch(self, batch, pending))
        self.engine.loop_result_s += time.perf_counter() - t

    def deliver(self, wait: bool) -> None:
        """Take the batches that are done (wait: all of them) into `results`; submit their follow-ups."""
        t = time.perf_counter()
        while self.finishing and (wait or self.finishing[0].done()):
            done, jobs = self.finishing.popleft().result()
            self.results.extend(done)
            for job in jobs:
                self.engine.scheduler.submit(job)
        self.engine.loop_result_s += time.perf_counter() - t

    # ------------------------------------------------------------------ finishing rows

    def finish_rows(self, batch: list[Finished], audio: list[np.ndarray] | None,
                    ) -> tuple[list[GenerationResult], list[Job]]:
        """Results of decoded rows, in order, and the jobs of the follow-ups `on_result` returns
        for them (their context clips encoded in one batch). audio=None: silence (no decode)."""
        engine = self.engine
        if audio is None:
            audio = [np.zeros(len(f.codes) * engine.samples_per_frame, np.float32) for f in batch]
        now = time.perf_counter()
        results, follow_ups = [], []
        for f, a in zip(batch, audio):
            res = GenerationResult(
                request_id=f.key, codes=f.codes, audio=a, stop_reason=f.stop_reason,
                num_prompt_tokens=f.num_prompt_tokens,
                info=ResultInfo(slot=f.slot, queued_s=f.started_s - f.submitted_s,
                                generate_s=f.finished_s - f.started_s, ready_s=now - self.t0),
            )
            results.append(res)
        prepare_results(self.on_result, results)
        for res in results:
            follow_ups += list((self.on_result(res) if self.on_result is not None else None) or ())
        return results, engine._jobs(follow_ups, self.sampling)

    @torch.inference_mode()
    def _finish_rows_in_thread(self, batch: list[Finished]) -> tuple[list[GenerationResult], list[Job]]:
        # Grad mode, the current CUDA device and stream are per thread: set them here.
        codec = self.engine.codec
        with on_device(codec.device), codec.side_stream():
            audio = codec.decode([f.codes for f in batch]) if self.decode else None
            return self.finish_rows(batch, audio)
