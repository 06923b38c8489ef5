"""The fast engine: lean static-cache CSM, one graph per frame, continuous batching.

This module owns `FastEngine`, the default `Engine` (see `synth.engine.interface`): it turns
`GenerationRequest`s into prompts (`synth.engine.prompt`, exactly as CSM's processor and
chat template do), encodes context clips through the batched, cached Mimi codec, runs
them through the `Scheduler`, and decodes finished rows in batches on their way to
results (`_ResultPipeline`, one per `run` call, on the engine's one result thread when it
has one). It knows nothing about manifests, Ray or output files; the model math lives in
`synth.engine.lean_csm`, checkpoint loading in
`synth.engine.checkpoint`, the frame step in `synth.engine.frame_step`, the batching in
`synth.engine.scheduler` (which carries out `synth.engine.policy`'s decisions), requests and
cancellations handed over from other threads in `synth.engine.inbox`, its tuning options in `synth.engine.options`, its memory plan (made
and checked before any cache is allocated) in `synth.engine.memory`, and where its compiled
steps are kept between starts in `synth.engine.compile_cache`.

    engine = FastEngine.load("sesame/csm-1b", device="cuda", dtype="bfloat16", num_slots=64)
    results = engine.generate(requests, SamplingParams())

Work may also come from outside `on_result` while `run` goes (a QC stage's verdicts, on its own
thread): `submit(requests)` and `cancel(request_id)` are thread-safe, and between
`open_submissions()` and `close_submissions()` the run does not end when it runs out of work,
but waits for more.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from synth.engine.checkpoint import (
    decodable_codes,
    load_lean_csm,
    parse_dtype,
    resolve_checkpoint,
)
from synth.engine.codec import MimiCodec, PendingAudio, load_mimi
from synth.engine.compile_cache import CompileCache, compile_key
from synth.engine.frame_step import FrameStep, on_device
from synth.engine.inbox import Inbox
from synth.engine.interface import (
    EngineInfo,
    GenerationRequest,
    GenerationResult,
    OnCancelled,
    OnResult,
    ResultInfo,
    SamplingParams,
    prepare_results,
)
from synth.engine.memory import (
    MemoryPlan,
    available_bytes,
    check_fits,
    park_rows_that_fit,
    plan_memory,
)
from synth.engine.options import FastEngineOptions
from synth.engine.prompt import context_clips, prompt_positions, render_ids
from synth.engine.scheduler import Finished, Job, PrefillBuckets, Scheduler
from synth.engine.stop import StopRules


class FastEngine:
    """Continuous-batching CSM engine implementing the `Engine` protocol."""

    name = "fast"

    def __init__(self, model, config, processor, codec: MimiCodec, *, num_slots: int, max_positions: int,
                 compile: bool = False, stop_rules: StopRules = StopRules(), top_k_max: int | None = 64,
                 options: FastEngineOptions = FastEngineOptions(), max_row_frames: int | None = None,
                 log: Callable[[str], None] | None = None):
        """top_k_max: largest top-k a sampling call may ask for (the sampler's static width);
        None serves any top-k, including 0 (no filter), at the cost of a full-vocabulary sort.
        compile: torch.compile the frame's steps (mode: `options.compile_mode`). options: how
        the engine runs (CUDA graphs, attention buckets, result thread, ...; see `FastEngineOptions`).
        max_row_frames: the longest row it will be asked for, which sizes the Mimi decode in its
        memory plan (None: max_positions). log: where the memory plan and the warm-up go (None: nowhere).

        The memory plan (`synth.engine.memory`) is made and checked before any cache is allocated:
        sizes that cannot fit the device raise `EngineMemoryError` with the numbers."""
        if num_slots < 1:
            raise ValueError(f"num_slots={num_slots} must be >= 1")
        self.model, self.config, self.processor, self.codec = model, config, processor, codec
        self.options = options
        self.log = log or (lambda line: None)
        self.num_codebooks = config.num_codebooks
        self.sample_rate_hz = codec.sample_rate_hz
        self.samples_per_frame = codec.samples_per_frame
        self.max_positions = max_positions
        self.num_slots = num_slots
        self.memory = self._plan_memory(max_row_frames)
        self.log(self.memory.describe())
        self.step = FrameStep(model, num_slots, max_positions, stop_rules=stop_rules, top_k_max=top_k_max,
                              num_kv_buckets=options.num_kv_buckets, num_codes=decodable_codes(config))
        self.warmup_s = self.compile_s = self.capture_s = 0.0  # warm-up, and its compile and graph capture
        self.compiled = compile
        self.compile_cache: CompileCache | None = None
        self.compile_cache_was_warm = False
        if compile:
            self.step.compile_steps(options.compile_mode)
            if options.compile_cache:
                self.compile_cache = CompileCache(options.compile_cache, compile_key(
                    model_args=model.args, device=self.device, dtype=model.lm_head.weight.dtype, num_slots=num_slots,
                    max_positions=max_positions, kv_buckets=self.step.kv_buckets, top_k_max=self.step.top_k_max,
                    num_codes=self.step.num_codes, stop_rules=stop_rules, compile_mode=options.compile_mode))
                self.compile_cache_was_warm = self.compile_cache.is_warm()
        self.scheduler = Scheduler(model, self.step, use_cuda_graph=options.cuda_graph, status_lag=options.status_lag,
                                   min_admit=options.min_admit, max_prefill_rows=options.max_prefill_rows,
                                   prefill_tokens=options.prefill_tokens, kv_continuation=options.kv_continuation,
                                   hold_frames=options.hold_frames, park_rows=self.memory.park_rows,
                                   by_priority=options.longest_first)
        self._prepared: set[bool] = set()  # sampling modes whose frames are compiled (and captured)
        self.result_thread = self.scheduler.is_cuda if options.result_thread is None else options.result_thread
        self._pool: ThreadPoolExecutor | None = None  # the result thread, from the first run on
        self._closed = False
        self.loop_result_s = 0.0  # seconds the frame loop spent on finished rows (launch, wait, callbacks)
        self._inbox = Inbox()  # requests and cancellations from other threads (`submit`, `cancel`)

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def _plan_memory(self, max_row_frames: int | None) -> MemoryPlan:
        """The memory plan at this engine's sizes; the parked rows' bound lowered to what fits when
        `park_rows` is left to the engine, and sizes that cannot fit refused."""
        options, model, codec = self.options, self.model, self.codec
        bound = 0 if not options.kv_continuation else self.num_slots if options.park_rows is None else options.park_rows
        weights = sum(t.numel() * t.element_size() for m in (model, codec.mimi) for t in m.parameters())
        prefill_tokens = PrefillBuckets(self.max_positions, min(options.max_prefill_rows or self.num_slots,
                                                                self.num_slots), options.prefill_tokens).tokens
        plan = plan_memory(model.args, device=self.device, dtype=model.lm_head.weight.dtype, num_slots=self.num_slots,
                           max_positions=self.max_positions, park_rows=bound, prefill_tokens=prefill_tokens,
                           weights=weights, decode_rows=min(options.decode_batch, codec.max_batch),
                           decode_frames=min(max_row_frames or self.max_positions, self.max_positions),
                           decode_frames_per_call=codec.max_decode_frames,
                           mimi_filters=int(getattr(codec.mimi.config, "num_filters", 64)),
                           samples_per_frame=codec.samples_per_frame, codec_dtype=codec.dtype)
        free = available_bytes(self.device)
        if free is None:
            return plan
        if options.park_rows is None:
            plan = replace(plan, park_rows=park_rows_that_fit(plan, *free))
        check_fits(plan, *free)
        return plan

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
             options: FastEngineOptions = FastEngineOptions(), max_audio_seconds: float | None = None,
             log: Callable[[str], None] | None = None) -> "FastEngine":
        """Load from a checkpoint dir or hub id. compile=None: compile the steps on CUDA only.
        max_audio_seconds: the longest row it will be asked for (sizes its memory plan; None: as
        long as max_positions allows); log: where the memory plan and the warm-up are reported.

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
        max_row_frames = None if max_audio_seconds is None else math.ceil(
            max_audio_seconds * codec.sample_rate_hz / codec.samples_per_frame)
        engine = cls(model, config, processor, codec, num_slots=num_slots, max_positions=max_positions,
                     compile=compile, stop_rules=stop_rules, top_k_max=top_k_max, options=options,
                     max_row_frames=max_row_frames, log=log)
        if warmup:
            engine.warmup()
        return engine

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def prepare_frames(self, sample: bool) -> None:
        """Compile (through the compile cache) and capture this sampling mode's frames, once."""
        if sample in self._prepared:
            return
        with self.compile_cache.active() if self.compile_cache is not None else nullcontext():
            self.scheduler.prepare(sample)
        self._prepared.add(sample)

    def warmup(self) -> float:
        """Compile, then capture, the frame step of both sampling modes, then run a throwaway row;
        records the seconds of each (`compile_s`, `capture_s`, `warmup_s`: all three) and returns
        `warmup_s`. A cold compile cache is marked warm afterwards."""
        t0 = time.perf_counter()
        with self.compile_cache.active() if self.compile_cache is not None else nullcontext(), \
                torch.inference_mode(), on_device(self.device):
            for sample in (False, True):
                self.step.warm(sample)  # every compiled piece compiles here (or loads from the cache)
        self._sync()
        t1 = time.perf_counter()
        for sample in (False, True):
            self.prepare_frames(sample)  # CUDA graphs are captured here; nothing is left to do on CPU
        self._sync()
        t2 = time.perf_counter()
        req = GenerationRequest(request_id="warmup", text="warm up", speaker=0, max_frames=3)
        for do_sample in (False, True):
            self.generate([req], SamplingParams(do_sample=do_sample), decode=False)
        self._sync()
        self.compile_s, self.capture_s, self.warmup_s = t1 - t0, t2 - t1, time.perf_counter() - t0
        cache = self.compile_cache
        if cache is not None and not self.compile_cache_was_warm:
            cache.mark_warm(compile_s=round(self.compile_s, 2), capture_s=round(self.capture_s, 2))
        compiled = (f"compile {self.compile_s:.1f} s" if self.compiled else
                    f"first frames {self.compile_s:.1f} s (steps not compiled)")
        self.log(f"fast engine warm-up {self.warmup_s:.1f} s: {compiled}"
                 + (f" ({'loaded from' if self.compile_cache_was_warm else 'cold, saved to'} {cache.directory})"
                    if cache is not None else "") + f", graph capture {self.capture_s:.1f} s")
        return self.warmup_s

    # ------------------------------------------------------------------ prompts

    def _job(self, request: GenerationRequest, sampling: SamplingParams, clip_codes: list[torch.Tensor]) -> Job:
        input_ids, audio_frames, is_audio = prompt_positions(render_ids(self.processor, request), clip_codes,
                                                             self.config)
        return Job(key=request.request_id, input_ids=input_ids, audio_frames=audio_frames, is_audio=is_audio,
                   max_frames=request.max_frames, seed=request.seed, sampling=sampling,
                   continues=request.continues, followed=request.followed, chain_frames=request.chain_frames,
                   speculative=request.speculative)

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
                          warmup_s=round(self.warmup_s, 3), compile_s=round(self.compile_s, 3),
                          capture_s=round(self.capture_s, 3), result_thread=self.result_thread,
                          status_lag=self.scheduler.status_lag,
                          compile_cache=None if self.compile_cache is None else
                          ("loaded" if self.compile_cache_was_warm else "cold"))

    def run(self, requests: Sequence[GenerationRequest], sampling: SamplingParams,
            on_result: OnResult | None = None, decode: bool = True) -> list[GenerationResult]:
        """Generate `requests`; `on_result` sees each result as it is ready and may return follow-up
        requests (e.g. the next turn of a conversation), which join the queue. Results come in
        completion order. With `result_thread`, `on_result` runs on the engine's worker thread
        (one call at a time, in completion order); when a call raises, the call already under
        way for the next batch may still finish before the error reaches the caller.

        Requests handed over with `submit` (from any thread, before or during the call) are
        generated as if `on_result` had returned them, with this call's sampling; `cancel` drops
        one. The call returns once nothing is queued, decoding or on its way to a result, and no
        `open_submissions` is left open."""
        if self._closed:
            raise RuntimeError("FastEngine.run() after close()")
        self._check_sampling(sampling)
        self.prepare_frames(sampling.do_sample)  # before any work goes to the result thread (graph capture)
        pipeline = _ResultPipeline(self, sampling, on_result, decode)
        try:
            pipeline.take_inbox()  # work handed over before the call, first
            for job in self._jobs(requests, sampling):  # queued by the work they have left (`longest_first`)
                self.scheduler.submit(job)
            while True:
                self.scheduler.run(pipeline.on_finished, pipeline.on_frame)
                if pipeline.to_decode:
                    pipeline.flush()
                if pipeline.finishing:
                    pipeline.deliver(wait=True)  # may submit follow-ups: run again until nothing is left
                elif not pipeline.take_inbox():
                    if not self._inbox.is_open:
                        break
                    self._inbox.wait(timeout_s=1.0)  # nothing to do until a submission, a cancel or the close
        except BaseException:
            self.scheduler.abort()  # the next call starts clean
            self._inbox.clear()
            raise
        finally:
            pipeline.close()
        return pipeline.results

    def submit(self, requests: Sequence[GenerationRequest]) -> None:
        """Hand requests to the engine from any thread: the `run` call under way (else the next one)
        generates them as if its `on_result` had returned them, and delivers their results there."""
        self._inbox.put("submit", list(requests))

    def cancel(self, request_id: str, on_cancelled: OnCancelled | None = None) -> None:
        """Drop a request from any thread, wherever it is: queued, decoding (its slot is free for the
        next frame's admission) or finished but not yet handed to `on_result`. Nothing of it is
        delivered; the frames it had generated are counted as discarded (`scheduler.stats`) and
        handed to `on_cancelled` (on the frame loop's thread; 0 for a request whose result has
        been handed over already, which is not affected). Takes effect between two frames of the
        `run` under way, in order with `submit`."""
        self._inbox.put("cancel", (request_id, on_cancelled))

    def open_submissions(self) -> None:
        """Say that more work will be handed over (`submit`) from another thread: `run` does not end
        when it runs out of work, it waits, until the matching `close_submissions`. Calls nest: one
        per pending source (e.g. per take awaiting its QC verdict), or one for the whole run."""
        self._inbox.open()

    def close_submissions(self) -> None:
        """The end of an `open_submissions`: once none is open, `run` ends when its work is done."""
        self._inbox.close()

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
    until a batch is full, the oldest has waited `decode_interval_frames`, a chain's next
    turn waits on one of them, or a follow-up is all that can refill a slot (`on_frame`),
    then go to Mimi together (`flush`): on the result thread when the engine has one, else
    decoding asynchronously beside the frame loop. `deliver` takes the batches that are done,
    in order, into `results`, and submits the follow-up requests `on_result` returned for
    them. Between frames it also takes what other threads handed over (`take_inbox`: requests
    to schedule, cancellations), and drops a cancelled row that has left the scheduler but
    not yet reached `on_result` (`cancel`). Everything but `finish_rows` runs on the frame
    loop's thread; `finish_rows` runs on the result thread when there is one.
    """

    def __init__(self, engine: FastEngine, sampling: SamplingParams, on_result: OnResult | None, decode: bool):
        self.engine, self.sampling, self.on_result, self.decode = engine, sampling, on_result, decode
        self.t0 = time.perf_counter()
        self.results: list[GenerationResult] = []
        self.to_decode: list[Finished] = []
        self.finishing: deque[Future | _DecodingBatch] = deque()  # in the order the rows finished
        self.oldest_frame = 0  # scheduler frame count when the oldest row in `to_decode` finished
        self.follow_up_due = False  # a row in `to_decode` is followed: its chain's next turn waits on it
        self.pool = engine._result_pool()
        # Rows sent to be finished (`flush`) and not yet handed to `on_result`, key -> frames, and those
        # of them cancelled meanwhile: `finish_rows` (maybe on the result thread) drops these.
        self.lock = threading.Lock()
        self.in_finishing: dict = {}
        self.cancelled: set = set()

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
        self.follow_up_due |= f.followed
        if len(self.to_decode) >= self.engine.options.decode_batch:
            self.flush()

    def on_frame(self) -> None:
        self.take_inbox()
        scheduler = self.engine.scheduler
        # A chain's next turn waits on its predecessor's result: decode now. So does a slot when
        # nothing is queued (a follow-up is all that can refill it) or when it is held for one.
        waiting_for_follow_up = self.on_result is not None and (
            self.follow_up_due or not scheduler.policy.waiting or scheduler.policy.any_reserved())
        waited = scheduler.stats.frames - self.oldest_frame >= self.engine.options.decode_interval_frames
        if self.to_decode and (waiting_for_follow_up or waited):
            self.flush()
        self.deliver(wait=False)

    def take_inbox(self) -> bool:
        """Schedule the requests and apply the cancellations handed over from other threads, in
        order (on the frame loop's thread); whether there were any."""
        items = self.engine._inbox.take()
        for kind, value in items:
            if kind == "submit":
                for job in self.engine._jobs(value, self.sampling):
                    self.engine.scheduler.submit(job)
            else:
                key, on_cancelled = value
                cancelled = self.engine.scheduler.cancel(key)
                frames = cancelled.frames if cancelled is not None else self.cancel(key)
                if on_cancelled is not None:
                    on_cancelled(frames)
        return bool(items)

    def cancel(self, key) -> int:
        """Drop a finished row not yet handed to `on_result`: waiting to be decoded, or being finished
        (then `finish_rows` drops it); its frames (0 when there is none: delivered, or never here)."""
        policy = self.engine.scheduler.policy
        index = next((i for i, f in enumerate(self.to_decode) if f.key == key), None)
        if index is not None:
            frames = len(self.to_decode.pop(index).codes)
            policy.discard(frames)
            return frames
        with self.lock:
            frames = self.in_finishing.pop(key, None)
            if frames is None:
                return 0
            self.cancelled.add(key)
        policy.discard(frames)
        return frames

    def flush(self) -> None:
        """Send the rows waiting in `to_decode` to Mimi as one batch."""
        t = time.perf_counter()
        batch, self.to_decode = self.to_decode, []
        self.follow_up_due = False
        with self.lock:
            self.in_finishing.update((f.key, len(f.codes)) for f in batch)
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
        batch, audio = self._claim(batch, audio)
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

    def _claim(self, batch: list[Finished], audio: list[np.ndarray]) -> tuple[list[Finished], list[np.ndarray]]:
        """The rows of the batch to deliver, with their audio: those not cancelled since `flush`.
        A row claimed here can no longer be cancelled."""
        kept = []
        with self.lock:
            for f, a in zip(batch, audio):
                if f.key in self.cancelled:
                    self.cancelled.discard(f.key)
                else:
                    self.in_finishing.pop(f.key, None)
                    kept.append((f, a))
        return [f for f, _ in kept], [a for _, a in kept]

    @torch.inference_mode()
    def _finish_rows_in_thread(self, batch: list[Finished]) -> tuple[list[GenerationResult], list[Job]]:
        # Grad mode, the current CUDA device and stream are per thread: set them here.
        codec = self.engine.codec
        with on_device(codec.device), codec.side_stream():
            audio = codec.decode([f.codes for f in batch]) if self.decode else None
            return self.finish_rows(batch, audio)
