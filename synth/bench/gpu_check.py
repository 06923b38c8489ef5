"""The device check: everything a GPU session must record, most important first, in one call.

This module owns `scripts/gpu_check.sh` (`python -m synth.bench.gpu_check`): seven steps, each
in its own process under its own timeout, in priority order. The timeouts add up to the
budget (570 s on a GPU, so one 600 s device call holds the whole check cold), and each step
ends by the time the plan gives it (the sum of its own and the earlier steps' timeouts): a step
that finishes early leaves its time to the next ones, a step that runs long never takes theirs.

  1 attention       which SDPA kernel each decode and prefill call of the engine gets (the
                    profiler's aten op and CUDA kernels), its time and first-call cost, and each
                    backend forced in turn (time, error against fp32, or why it refuses)
  2 memory          `configs/csm-1b.yaml` as the check reads it (slots, positions, dtype,
                    fast_engine options, the longest row): the engine's memory plan against
                    what it takes, after loading, graph capture, a flat run (no parked cache),
                    full-width prefills up to the longest prompt, and Mimi decoding the largest
                    decode batch of the longest rows (16 rows x 30 s)
  3 bench           the headline benchmark (`synth.bench.throughput`) at 256 slots and batch 1,
                    each engine's compile and graph-capture time apart, and one frame of the
                    256-slot engine profiled (`synth.bench.frame_profile`): kernels per frame, and
                    their time split between backbone, depth decoder, sampling and copies
  4 qc              the QC stage with every metric that is installed, batched, Whisper at
                    whisper-large-v3-turbo's shapes (random weights, half precision, transcripts
                    capped at 3 tokens per second of speech): alone (audio s per s, CPU- and
                    GPU-seconds per audio second), then beside the engine generating: how many
                    GPUs' worth of generation one GPU's QC keeps up with (skipped groups named)
  5 graph_vs_eager  codes of CUDA-graph replays against eager launches of the same steps, and
                    the attention ops and kernels of one real compiled frame
  6 result_thread   finished rows on the worker thread against inline: same codes, same audio
  7 cudnn_off       the 256-slot run with cuDNN attention on, then off

Results go to OUT (`--out`, else `$OUT`, else a new temp dir), three files (a device call
hands back at most eight): `gpu_check.txt` (the environment and one line per step),
`steps.txt` (every step's own output, in order, each under a `# ===== step N` header) and
`summary.json` (each step's status, seconds, timeout and numbers, and the key figures),
rewritten every few seconds while a step runs, so a call cut off mid-step still has what
that step saved. Compiled engines share a compile cache under the build dir
(`fast_engine.compile_cache`): the bench step compiles, the later steps load. Exit status 0
when every step that could run finished and its checks held, 1 otherwise.

On CPU (`--cpu`, or where torch sees no CUDA) it runs the same steps at small sizes on the tiny
checkpoint, says which parts need CUDA and skips them, so CI keeps it working
(`tests/bench/test_gpu_check.py`). It imports neither Ray nor pydantic, and reads the config
without yaml where yaml is missing (`synth.bench.config_reader`; a bare GPU box has none of
them); it knows nothing about manifests or outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from synth.bench.config_reader import read_config
from synth.bench.throughput import SAMPLING as SAMPLED
from synth.engine.interface import SamplingParams
from synth.engine.options import FastEngineOptions, FastEngineSettings

REPO = Path(__file__).resolve().parents[2]
PRODUCTION_CONFIG = REPO / "configs" / "csm-1b.yaml"

GREEDY = SamplingParams(do_sample=False)


@dataclass(frozen=True)
class Production:
    """What the check takes from the production config (`configs/csm-1b.yaml`)."""

    slots: int  # fast_engine.num_slots
    positions: int  # fast_engine.max_positions
    dtype: str  # model.dtype
    options: FastEngineOptions  # fast_engine's options (how it runs)
    max_audio_seconds: float  # generation.max_audio_seconds: the longest row
    reader: str  # which reader read it (yaml, or synth's own where yaml is missing)


def production(path: Path = PRODUCTION_CONFIG) -> Production:
    """The production engine's settings, read from the config file itself."""
    config, reader = read_config(path)
    engine = FastEngineSettings.from_dict(config.get("fast_engine"))
    if engine.max_positions is None:
        raise ValueError(f"{path}: the check needs fast_engine.max_positions (the memory step sizes the KV caches)")
    return Production(slots=engine.num_slots, positions=engine.max_positions, dtype=config["model"]["dtype"],
                      options=engine.options(), max_audio_seconds=float(config["generation"]["max_audio_seconds"]),
                      reader=reader)


@dataclass(frozen=True)
class Sizes:
    """How large each step runs: CSM-1B sizes on a GPU, small ones on CPU."""

    dtype: str | None  # None: the production config's
    bench_config: str  # the `synth bench` config whose workload and checkpoint the steps use
    bench_requests: int
    max_frames: int  # the longest row of the bench workload
    bench_slots: tuple[int, ...]  # the first is the slot count of steps 5, 6 and 7
    positions: int  # max_positions of the bench-sized engines
    check_rows: int  # rows of steps 5 and 6 (step 6 runs twice as many)
    check_frames: int  # the longest row of steps 5, 6 and 7
    ab_requests: int
    prod_slots: int | None  # None: the production config's (CPU: small stand-ins)
    prod_positions: int | None
    attention_slots: tuple[int, ...]
    prefills: tuple[tuple[int, int], ...]  # (rows, tokens) of the attention step's prefill calls
    timing_calls: int  # calls averaged per attention timing
    qc_whisper: str  # the QC step's Whisper: "turbo" (whisper-large-v3-turbo's shapes) or "tiny"
    qc_clips: int  # clips the QC stage scores alone, in one batch
    qc_clip_s: float  # their length
    qc_rows: int  # rows the engine generates for the QC stage beside it


# The GPU's bench sizes are `synth bench --config csm1b-cuda --requests 1024 --slots 256,1`'s.
GPU_SIZES = Sizes(dtype=None, bench_config="csm1b-cuda", bench_requests=1024, max_frames=250,
                  bench_slots=(256, 1), positions=512, check_rows=128, check_frames=100, ab_requests=256,
                  prod_slots=None, prod_positions=None, attention_slots=(1, 256),
                  prefills=((1, 100), (8, 301), (16, 517), (256, 64), (256, 400)), timing_calls=20,
                  qc_whisper="turbo", qc_clips=64, qc_clip_s=8.0, qc_rows=128)
CPU_SIZES = Sizes(dtype="float32", bench_config="tiny-cpu", bench_requests=8, max_frames=12, bench_slots=(4, 1),
                  positions=256, check_rows=4, check_frames=12, ab_requests=8, prod_slots=4, prod_positions=256,
                  attention_slots=(1, 4), prefills=((1, 40), (4, 64)), timing_calls=3,
                  qc_whisper="tiny", qc_clips=6, qc_clip_s=2.0, qc_rows=6)


def _clean(value):
    """JSON-safe: NaN and infinities as null, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- one step's process


class Context:
    """What a step knows: the device, its sizes, where the model is, where its numbers go."""

    def __init__(self, device: str, checkpoint: str | None, build_dir: Path, result_path: Path):
        self.device, self.cuda = device, device == "cuda"
        self.sizes = GPU_SIZES if self.cuda else CPU_SIZES
        self.prod = production()
        self.dtype = self.sizes.dtype or self.prod.dtype
        self.prod_slots = self.sizes.prod_slots or self.prod.slots
        self.prod_positions = self.sizes.prod_positions or self.prod.positions
        self.compile = self.cuda  # as production: compiled steps on CUDA only
        self._checkpoint, self.build_dir, self.result_path = checkpoint, build_dir, result_path
        self.compile_cache = str(build_dir / "compile-cache")  # every step's compiled engines: compiled once
        self.result: dict = {}

    def save(self, **fields) -> None:
        """Record numbers now, so a step killed later still leaves them."""
        self.result.update(fields)
        _write_json(self.result_path, self.result)

    def checkpoint(self) -> str:
        """The model the engine steps load: `--checkpoint`, else the bench config's random one,
        built under the build dir once and reused by later steps and later runs."""
        if self._checkpoint:
            return self._checkpoint
        if self.cuda:
            from synth.engine.tiny_checkpoint import build_csm1b_random

            return str(build_csm1b_random(self.build_dir / "csm1b-random", "cuda"))
        from synth.engine.tiny_checkpoint import ensure_tiny_checkpoint

        return str(ensure_tiny_checkpoint(self.build_dir / "tiny-csm"))

    def sync(self) -> None:
        from synth.bench.throughput import sync

        sync(self.device)

    def options(self, options: FastEngineOptions = FastEngineOptions()) -> FastEngineOptions:
        """`options` with the check's compile cache."""
        return replace(options, compile_cache=self.compile_cache)

    def load(self, path: str, *, num_slots: int, max_positions: int, compile: bool | None = None,
             options: FastEngineOptions = FastEngineOptions(), warmup: bool = True, **kwargs):
        from synth.engine.fast_engine import FastEngine

        return FastEngine.load(path, device=self.device, dtype=self.dtype, num_slots=num_slots,
                               max_positions=max_positions, compile=self.compile if compile is None else compile,
                               options=self.options(options), warmup=warmup, log=print, **kwargs)


def _frame_rate(path: str) -> float:
    from transformers import CsmConfig

    return float(CsmConfig.from_pretrained(path).codec_config.frame_rate)


def _workload(ctx: Context, n: int, max_frames: int | None = None):
    """`synth bench`'s workload (rows of 2..60 words, caps from their length), rows cut to `max_frames`
    (default: the bench's)."""
    from synth.bench.throughput import workload

    return workload(n, max_cap=max_frames or ctx.sizes.max_frames)


# ----------------------------------------------------------------------------- 1 attention

SDPA_OPS = {  # aten op of each SDPA backend, as the profiler names them
    "_scaled_dot_product_cudnn_attention": "CUDNN_ATTENTION",
    "_scaled_dot_product_flash_attention": "FLASH_ATTENTION",
    "_scaled_dot_product_flash_attention_for_cpu": "FLASH_ATTENTION",
    "_scaled_dot_product_efficient_attention": "EFFICIENT_ATTENTION",
    "_scaled_dot_product_attention_math": "MATH",
    "_scaled_dot_product_fused_attention_overrideable": "OVERRIDEABLE",
}
ATTENTION_KERNEL = re.compile(r"attn|attention|fmha|flash|cudnn|sdpa|softmax", re.IGNORECASE)


def _profile(fn, cuda: bool) -> tuple[list[str], list[str]]:
    """Run fn once under the profiler: (the SDPA backends its aten ops name, the CUDA kernels
    whose names look like attention). Without CUDA tracing (no CUPTI) the kernels stay unknown."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            fn()
            if cuda:
                torch.cuda.synchronize()
    except RuntimeError as err:
        if not cuda:
            raise
        print(f"CUDA profiling failed ({err}); aten ops only", flush=True)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
            torch.cuda.synchronize()
    backends, kernels = [], []
    for event in prof.events():
        backend = SDPA_OPS.get(event.name.removeprefix("aten::"))
        if backend:
            backends.append(backend)
        if str(event.device_type).endswith("CUDA") and ATTENTION_KERNEL.search(event.name):  # a kernel
            kernels.append(event.name)
    return backends, kernels


def _counts(names: list[str], width: int = 160) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in names:
        out[name[:width]] = out.get(name[:width], 0) + 1
    return out


def _sdpa_capture():
    """A torch function mode that records the `scaled_dot_product_attention` calls made inside it."""
    from torch.overrides import TorchFunctionMode

    class CaptureSdpa(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", "") == "scaled_dot_product_attention":
                self.calls.append((func, args, kwargs))
            return func(*args, **kwargs)

    return CaptureSdpa()


def _time_us(ctx: Context, fn, n: int) -> float:
    fn()
    ctx.sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    ctx.sync()
    return (time.perf_counter() - t0) / n * 1e6


def _first_ms(ctx: Context, fn) -> float:
    ctx.sync()
    t0 = time.perf_counter()
    fn()
    ctx.sync()
    return (time.perf_counter() - t0) * 1e3


def _forced(ctx: Context, call, backend, reference) -> dict:
    """The captured SDPA call with only `backend` allowed: its time and error, or why it refuses."""
    import warnings

    from torch.nn.attention import sdpa_kernel

    func, args, kwargs = call
    run = lambda: func(*args, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with sdpa_kernel([backend]):
                first = _first_ms(ctx, run)
                out = run()
                us = _time_us(ctx, run, ctx.sizes.timing_calls)
        except (RuntimeError, NotImplementedError) as err:
            reasons = [str(w.message).strip() for w in caught if "not used because" not in str(w.message)]
            reason = " / ".join(reasons) or str(err).splitlines()[0]
            return {"refused": re.sub(r"\s+", " ", reason)[:300]}
    err = (out.float() - reference).abs().max().item()
    return {"us": round(us, 1), "first_ms": round(first, 2), "max_err": err,
            "rel_err": err / max(reference.abs().max().item(), 1e-12), "dtype": str(out.dtype).removeprefix("torch.")}


def _one_layer(args, device: str, dtype, **changes):
    """A one-layer lean decoder with random weights: the engine's own attention code at its shapes."""
    import torch

    from synth.engine.lean_csm import Decoder, rope_inv_freq

    a = replace(args, num_layers=1, **changes)
    with torch.device(device):
        decoder = Decoder(a)
    decoder = decoder.to(dtype)
    decoder.inv_freq = rope_inv_freq(a.rope, a.head_dim).to(device)  # float32, as load_lean_csm keeps it
    return decoder.eval().requires_grad_(False)


def attention_step(ctx: Context) -> None:
    import torch
    from transformers import CsmConfig

    from synth.engine.lean_csm import CsmArgs

    torch.manual_seed(0)
    dev, dtype = ctx.device, getattr(torch, ctx.dtype)
    args = CsmArgs.from_hf(CsmConfig())  # CSM-1B's heads and widths; no checkpoint needed
    mlp = {} if ctx.cuda else {"intermediate_size": 256}  # a CPU does the layer's MLP slowly, and it is not measured
    backbone, depth = _one_layer(args.backbone, dev, dtype, **mlp), _one_layer(args.depth, dev, dtype, **mlp)
    P, K = ctx.prod_positions, args.num_codebooks
    Db, Dd = args.backbone.hidden_size, args.depth.hidden_size
    randn = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype)
    print(f"# attention: one {ctx.dtype} layer of CSM-1B's backbone ({args.backbone.num_heads} query / "
          f"{args.backbone.num_kv_heads} kv heads, head dim {args.backbone.head_dim}) and depth decoder "
          f"({args.depth.num_heads} / {args.depth.num_kv_heads}, {args.depth.head_dim}); backbone cache {P} "
          f"positions; the engine's own Decoder.step / Decoder.prefill, each SDPA call captured and re-run "
          f"with one backend allowed at a time (error: max |out - fp32 math|)", flush=True)

    def calls():  # (label, decoder, cache rows, cache positions, fn) in the engine's shapes
        for B in ctx.sizes.attention_slots:
            for L in (P // 4, P):
                x, pos = randn(B, Db), torch.randint(0, L, (B,), device=dev)
                yield f"backbone decode, {B} slots, {L} positions", backbone, B, P, \
                    lambda x=x, pos=pos, L=L: backbone.step(x, pos, L)
            x, pos = randn(B, Dd), torch.full((B,), 5, device=dev)
            yield f"depth decode, {B} slots, {K} positions", depth, B, K, lambda x=x, pos=pos: depth.step(x, pos)
            x = randn(B, 2, Dd)
            yield f"depth two-token pass, {B} slots", depth, B, K, lambda x=x: depth.prefill(x, depth.rows)
        for N, T in ctx.sizes.prefills:
            x, slots = randn(N, T, Db), torch.arange(N, device=dev)
            yield f"backbone prefill, {N} rows x {T} tokens", backbone, N, P, \
                lambda x=x, slots=slots: backbone.prefill(x, slots)

    results = []
    with torch.inference_mode():
        (randn(64, 64) @ randn(64, 64)).sum().item()  # CUDA and cuBLAS start-up, out of the first call's time
        for label, decoder, rows, positions, fn in calls():
            decoder.setup_caches(rows, positions)
            results.append(_probe_call(ctx, label, fn))
            _print_attention(results[-1])
            ctx.save(calls=results)
    decode = sorted({e["backend"] for e in results if "decode" in e["call"]})
    prefill = sorted({e["backend"] for e in results if "decode" not in e["call"]})
    ctx.save(headline=f"decode calls: {', '.join(decode)}; prefill calls: {', '.join(prefill)}")


def _probe_call(ctx: Context, label: str, fn) -> dict:
    """One engine call with one SDPA call in it: the backend and kernels it gets where the engine
    makes it, then the captured SDPA call with each backend forced in turn."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    entry = {"call": label, "first_call_ms": round(_first_ms(ctx, fn), 2)}  # a new shape: plans get built
    capture = _sdpa_capture()
    with capture:
        backends, kernels = _profile(fn, ctx.cuda)
    entry.update(backend="+".join(sorted(set(backends))) or "none (decomposed?)", kernels=_counts(kernels),
                 layer_us=round(_time_us(ctx, fn, ctx.sizes.timing_calls), 1))
    if not capture.calls:
        return {**entry, "sdp_choice": "no scaled_dot_product_attention call seen", "forced": {}}
    func, args, kwargs = call = capture.calls[0]
    shape = lambda t: "x".join(map(str, t.shape)) if t is not None else None
    entry.update(q=shape(args[0]), k=shape(args[1]), mask=shape(kwargs.get("attn_mask")),
                 is_causal=bool(kwargs.get("is_causal", False)), enable_gqa=bool(kwargs.get("enable_gqa", False)))
    names = {int(v): k for k, v in SDPBackend.__members__.items()}
    try:
        entry["sdp_choice"] = names.get(int(torch._fused_sdp_choice(*args, **kwargs)), "?")
    except Exception as err:  # a private function: record, do not fail
        entry["sdp_choice"] = f"n/a ({type(err).__name__})"
    up = lambda t: t.float() if torch.is_tensor(t) and t.is_floating_point() else t
    with sdpa_kernel([SDPBackend.MATH]):
        reference = func(*[up(t) for t in args], **{k: up(v) for k, v in kwargs.items()}).float()
    entry["forced"] = {b.name: _forced(ctx, call, b, reference) for b in
                       (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.MATH)}
    entry["attention_us"] = entry["forced"].get(entry["backend"], {}).get("us")
    if ctx.cuda:  # the backend the same call falls to with cuDNN attention off (step 6's second arm)
        torch.backends.cuda.enable_cudnn_sdp(False)
        try:
            entry["backend_cudnn_off"] = "+".join(sorted(set(_profile(lambda: func(*args, **kwargs), True)[0])))
        finally:
            torch.backends.cuda.enable_cudnn_sdp(True)
    return entry


def _print_attention(e: dict) -> None:
    forced = " | ".join(f"{name} refused" if "refused" in r else f"{name} {r['us']:.0f} us, err {r['max_err']:.1e}"
                        for name, r in e["forced"].items())
    if not e["forced"]:
        print(e, flush=True)
        return
    off = f", cuDNN off -> {e['backend_cudnn_off']}" if "backend_cudnn_off" in e else ""
    print(f"{e['call']}: {e['backend']} (sdp choice {e['sdp_choice']}{off}); first call {e['first_call_ms']:.1f} ms, "
          f"layer {e['layer_us']:.0f} us; q {e['q']} k {e['k']} mask {e['mask']} causal {e['is_causal']} "
          f"gqa {e['enable_gqa']}", flush=True)
    print(f"    forced: {forced}", flush=True)
    for name, r in e["forced"].items():
        if "refused" in r:
            print(f"    {name} refused: {r['refused']}", flush=True)
    for kernel, n in e["kernels"].items():
        print(f"    kernel x{n}: {kernel}", flush=True)


# ----------------------------------------------------------------------------- 2 memory


def _memory(ctx: Context, phase: str) -> dict:
    import resource

    import torch

    if not ctx.cuda:
        return {"phase": phase, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    free, total = torch.cuda.mem_get_info()
    return {"phase": phase, "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "allocated_gib": torch.cuda.memory_allocated() / 2**30,
            "device_used_gib": (total - free) / 2**30, "device_total_gib": total / 2**30}


def memory_step(ctx: Context) -> None:
    import numpy as np
    import torch

    from synth.bench.throughput import reset_peak
    from synth.engine.memory import GIB
    from synth.engine.scheduler import Job

    S, P, prod = ctx.prod_slots, ctx.prod_positions, ctx.prod
    where = (f"{PRODUCTION_CONFIG.name}'s" if ctx.cuda else
             f"small stand-ins for {PRODUCTION_CONFIG.name}'s {prod.slots} x {prod.positions}")
    print(f"# memory: {ctx.dtype}, {S} slots x {P} positions ({where}; read with {prod.reader}), its fast_engine "
          f"options {prod.options}, rows up to {prod.max_audio_seconds:g} s; "
          + ("CUDA graphs, steps not compiled (a cold compile at these sizes does not fit the budget); "
             if ctx.cuda else "no CUDA graphs; ")
          + ("each phase's peak allocated and reserved (torch's allocator; what was allocated before the phase "
             "counts), and what the device has in use (as nvidia-smi counts)" if ctx.cuda
             else "CPU: the process's peak RSS so far"), flush=True)
    phases = []

    def record(phase: str, **extra) -> None:
        phases.append({**_memory(ctx, phase), **extra})
        print(phases[-1], flush=True)
        ctx.save(phases=phases)

    engine = ctx.load(ctx.checkpoint(), num_slots=S, max_positions=P, compile=False, options=prod.options,
                      warmup=False, max_audio_seconds=prod.max_audio_seconds)
    plan = engine.memory
    ctx.save(plan_gib={k: getattr(plan, k) / GIB for k in ("weights", "kv_caches", "parked_bound", "slot_state",
                                                             "frame", "prefill", "decode", "total")},
             plan=plan.describe())
    record("loaded (weights, KV caches)", plan_gib=(plan.weights + plan.kv_caches + plan.slot_state) / GIB)
    reset_peak(ctx.device)
    engine.warmup()
    record("warmed up" + (" (graphs captured)" if ctx.cuda else ""), plan_frame_gib=plan.frame / GIB,
           capture_s=engine.capture_s)
    reset_peak(ctx.device)
    engine.generate([replace(r, max_frames=8) for r in _workload(ctx, S)], SAMPLED)
    record(f"{S} rows x 8 frames, sampled and decoded (a flat run)", parked_gib=engine.model.parked_bytes() / GIB)
    K, audio_id = engine.num_codebooks, engine.config.audio_token_id
    largest = None
    for T in (P // 5, P // 2, P - 2):  # full-width prefills of all-audio prompts, up to the longest a row allows
        reset_peak(ctx.device)
        for i in range(S):
            engine.scheduler.submit(Job(f"m{i}", torch.full((T,), audio_id), torch.randint(0, 2048, (T, K)),
                                        torch.ones(T, dtype=torch.bool), max_frames=2, sampling=GREEDY))
        t0 = time.perf_counter()
        try:
            engine.scheduler.run()
        except torch.OutOfMemoryError as err:
            engine.scheduler.abort()
            phases.append({"phase": f"prefill {S} x {T} tokens", "out_of_memory": str(err).splitlines()[0][:300]})
            print(phases[-1], flush=True)
            ctx.save(phases=phases)
            break
        ctx.sync()
        record(f"prefill {S} x {T} tokens ({time.perf_counter() - t0:.1f} s)", plan_prefill_gib=plan.prefill / GIB)
        largest = T
    # The worst decode: the largest batch of the longest rows, as the engine hands Mimi finished rows.
    rows, frames = plan.decode_rows, plan.decode_frames
    codes = [np.random.RandomState(i).randint(0, 2048, (frames, K)).astype(np.int16) for i in range(rows)]
    reset_peak(ctx.device)
    t0 = time.perf_counter()
    try:
        audio = engine.codec.decode(codes)
        record(f"decode {rows} rows x {frames} frames ({time.perf_counter() - t0:.1f} s)",
               plan_decode_gib=plan.decode / GIB, audio_s=sum(len(a) for a in audio) / engine.sample_rate_hz)
    except torch.OutOfMemoryError as err:
        phases.append({"phase": f"decode {rows} rows x {frames} frames", "out_of_memory": str(err)[:300]})
        ctx.save(phases=phases)
    peak = max(p.get("peak_allocated_gib", p.get("peak_rss_gib", 0.0)) for p in phases)
    ctx.save(largest_prefill_tokens=largest, prefill_lengths=[P // 5, P // 2, P - 2], peak_gib=peak,
             parked_gib_flat_run=engine.model.parked_bytes() / GIB, decode_rows=rows, decode_frames=frames,
             headline=f"{S} slots x {P} positions: peak {peak:.1f} GiB (plan {plan.total / GIB:.1f} GiB with "
                      f"{plan.park_rows} parked rows, none allocated in the flat run); largest full-width prefill "
                      f"that fit: {largest} of {P - 2} tokens; decode of {rows} x {frames} frames")


# ----------------------------------------------------------------------------- 3 bench, 7 cudnn_off


def _bench(ctx: Context, path: str, slots: int, requests, *, compile: bool, frame_rate: float, label: str = "",
           probe=None):
    from synth.bench.throughput import run_fast

    row = run_fast(path, requests, SAMPLED, device=ctx.device, dtype=ctx.dtype, num_slots=slots,
                   max_positions=ctx.sizes.positions, compile=compile, options=ctx.options(), probe=probe)
    row.setting += label
    print("done:", _clean(row.as_dict(frame_rate)), flush=True)
    return row


def _row_headline(row, frame_rate: float) -> str:
    return (f"{row.setting}: {row.fps:.0f} frames/s = {row.fps / frame_rate:.1f}x real time, frame step "
            f"{row.frame_ms:.1f} ms, useful {row.frames / max(row.slot_frames, 1):.2f}, warm-up "
            f"{row.warmup_s:.0f} s (compile {row.compile_s:.0f} s, {row.compile_cache or 'no cache'}; graph capture "
            f"{row.capture_s:.0f} s)")


def _frame_headline(frame: dict) -> str:
    split = ", ".join(f"{part} {p['share']:.0%}" for part, p in frame["eager_split"].items())
    return (f"one frame at {frame['slots']} slots ({frame['as_run']['mode']}): {frame['as_run']['count']} "
            f"{frame['unit'].split(',')[0]}, {frame['as_run']['us'] / 1e3:.2f} ms; eager split {split}")


def bench_step(ctx: Context) -> None:
    from synth.bench.frame_profile import profile_frame
    from synth.bench.throughput import print_table

    t0 = time.perf_counter()
    path = ctx.checkpoint()
    ctx.save(checkpoint=path, checkpoint_s=round(time.perf_counter() - t0, 1))
    frame_rate = _frame_rate(path)
    requests = _workload(ctx, ctx.sizes.bench_requests)
    print(f"# bench: the fast engine on `synth bench --config {ctx.sizes.bench_config}`'s workload "
          f"({len(requests)} rows, sampled), {ctx.sizes.positions} positions, compiled: {ctx.compile} (into the "
          f"check's compile cache); batch 1 runs the first 2 rows (checkpoint ready in "
          f"{ctx.result['checkpoint_s']} s); then one frame of the first engine profiled", flush=True)
    rows = []

    def probe(engine) -> None:  # the first engine, after its run: where a frame goes
        if rows:
            return
        frame = profile_frame(engine)
        print("frame:", json.dumps(_clean(frame)), flush=True)
        ctx.save(frame=frame)

    for slots in ctx.sizes.bench_slots:  # two engines: two cold compiles are what the time budget holds
        rows.append(_bench(ctx, path, slots, requests if slots > 1 else requests[:2], compile=ctx.compile,
                           frame_rate=frame_rate, probe=probe))
        headline = "; ".join(_row_headline(r, frame_rate) for r in rows)
        ctx.save(rows=[r.as_dict(frame_rate) for r in rows],
                 headline=headline + (f"; {_frame_headline(ctx.result['frame'])}" if "frame" in ctx.result else ""))
    print_table(rows, frame_rate)


def cudnn_off_step(ctx: Context) -> None:
    import torch

    from synth.bench.throughput import print_table

    path = ctx.checkpoint()
    frame_rate = _frame_rate(path)
    slots = ctx.sizes.bench_slots[0]
    requests = _workload(ctx, ctx.sizes.ab_requests, ctx.sizes.check_frames)
    print(f"# cudnn_off: {slots} slots, {len(requests)} rows, cuDNN attention on then off; both arms eager "
          f"steps in CUDA graphs (not compiled: inductor's caches could serve the cuDNN-on compile to the "
          f"cuDNN-off arm, and a cold compile of each arm does not fit the budget)", flush=True)
    rows = []
    for enabled in (True, False):
        torch.backends.cuda.enable_cudnn_sdp(enabled)
        rows.append(_bench(ctx, path, slots, requests, compile=False, frame_rate=frame_rate,
                           label=f", cuDNN attention {'on' if enabled else 'off'}"))
        ctx.save(rows=[r.as_dict(frame_rate) for r in rows])
    on, off = rows
    ctx.save(off_over_on_throughput=off.fps / on.fps, off_over_on_frame_step=off.frame_ms / on.frame_ms,
             headline=f"cuDNN off / on: throughput x{off.fps / on.fps:.3f}, frame step {off.frame_ms:.2f} vs "
                      f"{on.frame_ms:.2f} ms")
    print_table(rows, frame_rate)


# ----------------------------------------------------------------------------- 4 qc

# The QC metric groups that need more than torch and transformers, and the libraries each needs
# (a bare GPU box has none of them: the step measures what is installed and names the rest).
QC_LIBRARIES = {"speaker": ("resemblyzer", "librosa"), "dnsmos": ("speechmos", "onnxruntime", "librosa"),
                "timing": ("silero_vad",), "level": ("pyloudnorm",)}
WER_LIBRARIES = ("jiwer", "whisper_normalizer")
TOKENS_PER_S = 3  # a realistic transcript's length: a random decoder never ends one, so it is capped here
QC_RATE_HZ = 16000  # every QC model's rate: the step scores at it


def _qc_groups() -> tuple[tuple[str, ...], dict[str, str]]:
    """(the metric groups whose libraries are installed, {what is skipped: why})."""
    import importlib.util

    missing = lambda names: [n for n in names if importlib.util.find_spec(n) is None]
    skipped = {g: f"not installed: {', '.join(missing(libs))}" for g, libs in QC_LIBRARIES.items() if missing(libs)}
    if missing(WER_LIBRARIES):
        skipped["wer"] = f"transcribed, not rated (not installed: {', '.join(missing(WER_LIBRARIES))})"
    groups = tuple(g for g in ("asr", "speaker", "dnsmos", "level", "timing", "repetition") if g not in skipped)
    return groups, skipped


def _resampler(rate_hz: int):
    """clip [samples at rate_hz] -> [samples at 16 kHz]: soxr as the scorer resamples where it is
    installed, else torchaudio, else linear interpolation (a bare GPU box has no soxr; this only
    feeds a timing)."""
    import importlib.util

    import numpy as np

    if importlib.util.find_spec("soxr") is not None:
        import soxr

        return lambda clip: soxr.resample(clip, rate_hz, QC_RATE_HZ).astype(np.float32)
    if importlib.util.find_spec("torchaudio") is not None:
        import torch
        import torchaudio.functional as F

        return lambda clip: F.resample(torch.from_numpy(clip), rate_hz, QC_RATE_HZ).numpy()
    return lambda clip: np.interp(np.arange(len(clip) * QC_RATE_HZ // rate_hz) * rate_hz / QC_RATE_HZ,
                                  np.arange(len(clip)), clip).astype(np.float32)


class _At16k:
    """The scorer behind `QcStage` for an engine at another rate: takes resampled to 16 kHz first
    (references once each), then scored."""

    def __init__(self, scorer, rate_hz: int):
        self.scorer, self.stats, self.placement = scorer, scorer.stats, scorer.placement
        self._resample, self._references = _resampler(rate_hz), {}

    def score(self, takes):
        def ref(r):
            return None if r is None else self._references.setdefault(id(r), (r, self._resample(r)))[1]

        return self.scorer.score([replace(t, audio=self._resample(t.audio), reference=ref(t.reference)) for t in takes])


def _qc_scorer(ctx: Context, groups: tuple[str, ...]):
    """The scorer of the QC step: Whisper at the sizes' shapes with random weights (half precision on
    a GPU), built in memory, and every other group that is installed."""
    import torch

    from synth.qc.asr import Transcriber
    from synth.qc.policy import AsrSettings, QcSettings
    from synth.qc.scorer import TakeScorer
    from synth.qc.tiny_whisper import TINY_SHAPES, TURBO_SHAPES, random_whisper

    shapes = TURBO_SHAPES if ctx.sizes.qc_whisper == "turbo" else TINY_SHAPES
    model, processor = random_whisper(shapes, device=ctx.device, dtype=torch.float16 if ctx.cuda else None)
    cap = max(1, math.ceil(TOKENS_PER_S * ctx.sizes.qc_clip_s))
    asr = AsrSettings(model=f"random whisper ({ctx.sizes.qc_whisper})", batch_size=32 if ctx.cuda else 4,
                      max_new_tokens=cap)
    transcriber = Transcriber(model, processor=processor, device=ctx.device, batch_size=asr.batch_size,
                              max_new_tokens=asr.max_new_tokens)
    settings = QcSettings(enabled=True, metrics=groups, asr=asr, num_workers=2)
    return TakeScorer(settings, QC_RATE_HZ, device=ctx.device, transcriber=transcriber).load()


def _qc_alone(ctx: Context, scorer) -> dict:
    """The stage alone: sizes.qc_clips clips of sizes.qc_clip_s (noise bursts, two voices) in one batch."""
    import numpy as np

    from synth.qc.scorer import Take

    rng = np.random.default_rng(0)
    n = int(ctx.sizes.qc_clip_s * QC_RATE_HZ)
    clips = [(rng.standard_normal(n) * np.repeat(rng.random(n // 1600 + 1), 1600)[:n] * 0.2).astype(np.float32)
             for _ in range(ctx.sizes.qc_clips)]
    takes = [Take(c, "the quick brown fox jumps over the lazy dog", None, clips[i % 2]) for i, c in enumerate(clips)]
    scorer.score(takes[:2])  # first calls: CUDA kernels, cuDNN plans, onnxruntime's arena
    before = replace(scorer.stats)
    t0 = time.perf_counter()
    scorer.score(takes)
    wall, after = time.perf_counter() - t0, scorer.stats
    audio = after.audio_s - before.audio_s
    return {"clips": len(takes), "audio_s": audio, "wall_s": wall, "audio_s_per_s": audio / wall,
            "cpu_s_per_audio_s": (after.cpu_s - before.cpu_s) / audio,
            "gpu_s_per_audio_s": (after.device_s - before.device_s) / audio}


def _qc_beside(ctx: Context, scorer) -> dict:
    """The engine alone, then with every finished row scored beside it (`QcStage` beside: queued, batched)."""
    from synth.bench.qc_stage import QcStage

    slots = ctx.sizes.bench_slots[0]
    engine = ctx.load(ctx.checkpoint(), num_slots=slots, max_positions=ctx.sizes.positions, compile=False)
    requests = _workload(ctx, ctx.sizes.qc_rows, ctx.sizes.check_frames)
    rate_hz = engine.sample_rate_hz
    engine.generate([replace(r, max_frames=4) for r in requests], SAMPLED)  # first use of every width, briefly
    t0 = time.perf_counter()
    alone = engine.generate(requests, SAMPLED)
    gen_wall = time.perf_counter() - t0
    audio = sum(len(r.audio) for r in alone) / rate_hz
    stage = QcStage(_At16k(scorer, rate_hz), requests, "beside")
    t0 = time.perf_counter()
    engine.run(requests, SAMPLED, on_result=stage)
    generated = time.perf_counter() - t0
    cost = stage.finish()
    both = time.perf_counter() - t0
    return {"slots": slots, "rows": len(requests), "audio_s": audio, "generate_alone_s": gen_wall,
            "generate_audio_s_per_s": audio / gen_wall, "beside_generate_s": generated, "beside_total_s": both,
            "beside_generate_audio_s_per_s": audio / generated, "beside_qc_batches": cost.batches,
            "beside_qc_audio_s_per_s": cost.audio_s / max(cost.busy_s, 1e-9)}


def qc_step(ctx: Context) -> None:
    from synth.qc import scorer as scorer_module

    groups, skipped = _qc_groups()
    if "wer" in skipped:  # a bare GPU box: time the transcription, leave its rates undefined
        scorer_module.error_rates = lambda reference, hypothesis: (None, None)
    t0 = time.perf_counter()
    scorer = _qc_scorer(ctx, groups)
    ctx.save(groups=list(groups), skipped=skipped, placement=scorer.placement, load_s=time.perf_counter() - t0,
             whisper=ctx.sizes.qc_whisper, max_new_tokens=scorer.settings.asr.max_new_tokens)
    print(f"# qc: the QC stage with {', '.join(groups)} (Whisper at {ctx.sizes.qc_whisper} shapes, random weights, "
          f"greedy, {scorer.settings.asr.max_new_tokens} tokens at most: {TOKENS_PER_S} per second of speech); "
          f"skipped: {skipped or 'nothing'}; models: {scorer.placement}; loaded in {ctx.result['load_s']:.1f} s",
          flush=True)
    alone = _qc_alone(ctx, scorer)
    print("alone:", _clean(alone), flush=True)
    ctx.save(alone=alone)
    beside = _qc_beside(ctx, scorer)
    print("beside the engine:", _clean(beside), flush=True)
    scorer.close()
    keeps_up = alone["audio_s_per_s"] / beside["generate_audio_s_per_s"]
    ctx.save(beside=beside, gpus_of_generation_per_qc=keeps_up,
             headline=f"QC ({'+'.join(groups)}) alone {alone['audio_s_per_s']:.0f} audio s/s "
                      f"({alone['gpu_s_per_audio_s']:.4f} GPU-s, {alone['cpu_s_per_audio_s']:.4f} CPU-s per audio s); "
                      f"the engine at {beside['slots']} slots {beside['generate_audio_s_per_s']:.0f} audio s/s: one "
                      f"{ctx.device}'s QC keeps up with {keeps_up:.2f} of its generation; beside the engine: generation "
                      f"x{beside['beside_generate_audio_s_per_s'] / beside['generate_audio_s_per_s']:.2f}"
                      + (f"; skipped {', '.join(skipped)}" if skipped else ""))
    print(ctx.result["headline"], flush=True)


# ----------------------------------------------------------------------------- 5 graph_vs_eager


def _compare_codes(a, b) -> dict:
    import numpy as np

    same = [float(np.mean(x.codes == y.codes)) if x.codes.shape == y.codes.shape else 0.0 for x, y in zip(a, b)]
    return {"rows": len(same), "rows_equal": float(np.mean([s == 1.0 for s in same])),
            "mean_code_match": float(np.mean(same)),
            "stop_reasons_equal": [x.stop_reason for x in a] == [y.stop_reason for y in b]}


def graph_vs_eager_step(ctx: Context) -> None:
    import torch

    from synth.engine.frame_step import GraphedFrame

    slots = ctx.sizes.bench_slots[0]
    engine = ctx.load(ctx.checkpoint(), num_slots=slots, max_positions=ctx.sizes.positions)
    graphed = isinstance(engine.scheduler.run_frame, GraphedFrame)
    requests = _workload(ctx, ctx.sizes.check_rows, ctx.sizes.check_frames)
    print(f"# graph_vs_eager: {ctx.dtype}, {slots} slots, {len(requests)} rows, compiled: {ctx.compile}; "
          + ("each run's frames as CUDA-graph replays, then the same steps launched eagerly; equal codes expected "
             "bit for bit" if graphed else "no CUDA: no graphs, both runs eager (this checks the script, not graphs)"),
          flush=True)
    checks = {}
    for mode, sampling in (("greedy", GREEDY), ("sampled", SAMPLED)):
        replayed = engine.generate(requests, sampling, decode=False)
        run_frame, engine.scheduler.run_frame = engine.scheduler.run_frame, engine.step.frame
        try:
            eager = engine.generate(requests, sampling, decode=False)
        finally:
            engine.scheduler.run_frame = run_frame
        checks[mode] = _compare_codes(replayed, eager)
        print(f"{mode}: {checks[mode]}", flush=True)
        ctx.save(graphs=graphed, **checks)
    # The attention a real frame runs: the compiled steps of this engine, one eager frame, all positions.
    with torch.inference_mode(), engine.step.state_kept():
        backends, kernels = _profile(lambda: engine.step.frame(True, engine.step.max_positions), ctx.cuda)
    frame_attention = {"sdpa_ops": _counts(backends), "kernels": _counts(kernels)}
    print(f"attention in one frame ({'compiled' if ctx.compile else 'eager'} steps): {frame_attention}", flush=True)
    ok = all(c["rows_equal"] == 1.0 and c["stop_reasons_equal"] for c in checks.values())
    ctx.save(frame_attention=frame_attention, **{"pass": ok},
             headline=("graphed == eager" if ok else "graphed != eager") + ": " + ", ".join(
                 f"{m} rows equal {c['rows_equal']:.3f}" for m, c in checks.items())
             + f"; attention ops per frame {frame_attention['sdpa_ops']}")


# ----------------------------------------------------------------------------- 6 result_thread


def result_thread_step(ctx: Context) -> None:
    import numpy as np

    slots = ctx.sizes.bench_slots[0]
    engine = ctx.load(ctx.checkpoint(), num_slots=slots, max_positions=ctx.sizes.positions)
    requests = _workload(ctx, 2 * ctx.sizes.check_rows, ctx.sizes.check_frames)  # more rows than slots: decodes overlap frames
    print(f"# result_thread: {ctx.dtype}, {slots} slots, {len(requests)} rows, sampled, decoded; the "
          f"same run with finished rows on the worker thread (Mimi on its side stream), then inline. Equal codes "
          f"with different audio would be a race", flush=True)
    outs, walls = {}, {}
    for threaded in (True, False):
        engine.result_thread = threaded
        decode_s = engine.codec.decode_s
        t0 = time.perf_counter()
        outs[threaded] = engine.generate(requests, SAMPLED)
        walls[threaded] = time.perf_counter() - t0
        print(f"result_thread={threaded}: {walls[threaded]:.1f} s, decode {engine.codec.decode_s - decode_s:.1f} s",
              flush=True)
    pairs = list(zip(outs[True], outs[False]))
    codes_equal = all(np.array_equal(x.codes, y.codes) for x, y in pairs)
    lengths_equal = all(x.audio.shape == y.audio.shape for x, y in pairs)
    diff = max((float(np.abs(x.audio - y.audio).max()) for x, y in pairs if x.audio.shape == y.audio.shape and
                x.audio.size), default=0.0)
    undecodable = sum(int((r.codes >= 2048).sum()) for r in outs[True])
    ok = codes_equal and lengths_equal and diff <= 1e-3
    ctx.save(codes_equal=codes_equal, audio_lengths_equal=lengths_equal, audio_max_diff=diff,
             codes_at_least_2048=undecodable, threaded_s=walls[True], inline_s=walls[False], **{"pass": ok},
             headline=f"codes equal {codes_equal}, audio max |diff| {diff:.2e}, threaded {walls[True]:.1f} s "
                      f"vs inline {walls[False]:.1f} s, codes >= 2048: {undecodable}")
    print(ctx.result["headline"], flush=True)


# ----------------------------------------------------------------------------- the steps


@dataclass(frozen=True)
class Step:
    number: int
    name: str
    run: Callable[[Context], None] | None  # None: a slot reserved in the plan, not yet written
    timeout_s: int  # on a GPU; CPU_SCALE times this on CPU
    min_s: int  # not started with less time than this left
    needs_cuda: str = ""  # why it cannot run without CUDA ("": it runs on CPU too)
    reserved: str = ""  # what the reserved slot is for


# In priority order; the timeouts add up to the GPU budget (a test checks), each sized for a
# cold device. Step 2 builds the random CSM-1B checkpoint (later steps reuse it); step 3 cold-
# compiles two engines (256 slots, batch 1: 8 graphs each at 512 positions) into the compile
# cache that steps 5 and 6 then load from; step 7 compiles nothing.
STEPS = [
    Step(1, "attention", attention_step, 50, 20),
    Step(2, "memory", memory_step, 110, 40),
    Step(3, "bench", bench_step, 250, 60),
    Step(4, "qc", qc_step, 60, 30),
    Step(5, "graph_vs_eager", graph_vs_eager_step, 40, 20),
    Step(6, "result_thread", result_thread_step, 30, 20),
    Step(7, "cudnn_off", cudnn_off_step, 30, 20, needs_cuda="cuDNN attention is a CUDA backend"),
]
GPU_BUDGET_S = 570  # one 600 s device call: the check, and 30 s for the call's own start and nvidia-smi
CPU_SCALE = 2  # a small shared CPU box gets twice each step's time: its steps are small, but its cores are busy
CPU_BUDGET_S = CPU_SCALE * GPU_BUDGET_S
SUMMARY, MAIN_LOG, STEPS_LOG = "summary.json", "gpu_check.txt", "steps.txt"
POLL_S = 3.0  # how often summary.json takes in the running step's numbers


def run_step(name: str, device: str, checkpoint: str | None, build_dir: str, result: str) -> int:
    """One step in this process (the orchestrator starts one process per step)."""
    step = next(s for s in STEPS if s.name == name)
    ctx = Context(device, checkpoint, Path(build_dir), Path(result))
    import torch

    if not ctx.cuda:  # a small shared CI box: two threads on two busy cores run several times slower than one
        torch.set_num_threads(1)
    cuda = f", {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}" if ctx.cuda else ""
    print(f"# step {step.number} {name} on {device}: torch {torch.__version__}{cuda}, "
          f"{torch.get_num_threads()} CPU threads", flush=True)
    t0 = time.perf_counter()
    try:
        step.run(ctx)
    except BaseException as err:
        import traceback

        traceback.print_exc()
        ctx.save(error=f"{type(err).__name__}: {str(err)[:500]}")
        return 1
    print(f"# step {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


# ----------------------------------------------------------------------------- the orchestrator


def _environment(device: str) -> dict:
    import numpy
    import torch
    import transformers

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "transformers": transformers.__version__, "numpy": numpy.__version__, "device": device,
           "cuda_available": torch.cuda.is_available(), "cpu_count": os.cpu_count()}
    try:
        env["cudnn"] = torch.backends.cudnn.version()
    except Exception:
        env["cudnn"] = None
    try:  # nvidia-smi, not torch: the orchestrator holds no CUDA context while steps measure memory
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               check=False, capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        env["nvidia_smi"] = f"n/a ({type(err).__name__})"
    return env


def _tail(path: Path, start: int, lines: int = 15) -> str:
    """The last lines written to `path` from byte `start` on (a step's part of the steps log)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


_children: list[subprocess.Popen] = []  # the step running now, for the signal handler


def _stop(signum, frame) -> None:
    """The orchestrator is told to stop: end the running step's process group with it."""
    for child in _children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    raise SystemExit(128 + signum)


def _run_child(cmd: list[str], log: Path, timeout: float, poll: Callable[[], None]) -> tuple[int | None, float]:
    """Run `cmd` in its own process group with its output appended to `log`; call `poll` every
    POLL_S seconds while it runs; kill the group at `timeout`. Returns (exit status, None on
    timeout; seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    t0 = time.monotonic()
    rc = None
    with open(log, "a") as out:
        child = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _children.append(child)
        try:
            while (left := timeout - (time.monotonic() - t0)) > 0:
                try:
                    rc = child.wait(timeout=min(POLL_S, left))
                    break
                except subprocess.TimeoutExpired:
                    poll()
        finally:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
            _children.remove(child)
    return rc, time.monotonic() - t0


def key_figures(steps: dict) -> dict:
    """The numbers a reader wants first, lifted out of the steps' results (those that ran)."""
    result = {name: step.get("result", {}) for name, step in steps.items()}
    out = {}
    if "headline" in result.get("attention", {}):
        out["attention"] = result["attention"]["headline"]
    memory = result.get("memory", {})
    if "peak_gib" in memory:
        out["memory"] = {k: memory.get(k) for k in ("peak_gib", "plan_gib", "largest_prefill_tokens",
                                                    "parked_gib_flat_run", "decode_rows", "decode_frames")}
    bench = result.get("bench", {})
    for row in bench.get("rows", []):
        out.setdefault("throughput", {})[row["setting"]] = {
            k: row.get(k) for k in ("frames_per_s", "x_real_time", "frame_ms", "useful_fraction", "warmup_s",
                                    "compile_s", "capture_s", "compile_cache")}
    if "frame" in bench:
        frame = bench["frame"]
        out["frame"] = {"slots": frame["slots"], "unit": frame["unit"], "as_run": frame["as_run"],
                        "eager_split": frame["eager_split"]}
    if "headline" in result.get("qc", {}):
        out["qc"] = {k: result["qc"].get(k) for k in ("headline", "gpus_of_generation_per_qc", "skipped")}
    for name in ("graph_vs_eager", "result_thread", "cudnn_off"):
        if "headline" in result.get(name, {}):
            out[name] = result[name]["headline"]
    return out


class Orchestrator:
    def __init__(self, args: argparse.Namespace, t_start: float):
        self.args, self.t_start = args, t_start
        self.out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp(prefix="synth-gpu-check-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="synth-gpu-check-results-"))
        self.log = open(self.out / MAIN_LOG, "w")
        (self.out / STEPS_LOG).write_text("")
        self.summary: dict = {}

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def write_summary(self) -> None:
        steps = self.summary["steps"]
        _write_json(self.out / SUMMARY, {**self.summary, "elapsed_s": round(time.monotonic() - self.t_start, 1),
                                         "key_figures": key_figures(steps)})

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.log.close()
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _run(self) -> int:
        args = self.args
        import torch

        device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
        budget = args.budget_s or (GPU_BUDGET_S if device == "cuda" else CPU_BUDGET_S)
        deadline = self.t_start + budget
        env = _environment(device)
        steps = [s for s in STEPS if not args.only or s.name in args.only]
        prod = production()
        self.summary = {"check": "synth GPU check (synth/bench/gpu_check.py)", "mode": device,
                        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_s": budget,
                        "plan": {s.name: self._timeout(s, device) for s in steps},
                        "production_config": {"path": str(PRODUCTION_CONFIG.relative_to(REPO)), "read_with": prod.reader,
                                              "slots": prod.slots, "positions": prod.positions, "dtype": prod.dtype,
                                              "max_audio_seconds": prod.max_audio_seconds},
                        "out": str(self.out), "environment": env, "steps": {}}
        self.say(f"# synth GPU check on {device}, budget {budget:.0f} s, results in {self.out}")
        self.say("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
        self.say("# plan (step: timeout s): " + ", ".join(f"{n} {t}" for n, t in self.summary["plan"].items()))
        if device == "cpu":
            self.say("# CPU: small sizes on the tiny checkpoint; CUDA graphs, cuDNN and GPU memory are not checked")
        slot_end = time.monotonic()  # the set-up above comes out of the last step's time, not the first's
        for step in steps:
            slot_end += self._timeout(step, device)  # the step ends by here: later steps keep their time
            entry = self._step(step, device, min(slot_end, deadline), deadline)
            self.summary["steps"][step.name] = entry
            self.write_summary()
            headline = entry.get("result", {}).get("headline") or entry.get("reason", "")
            self.say(f"step {step.number} {step.name}: {entry['status']} in {entry['seconds']:.0f} s "
                     f"(timeout {entry['timeout_s']} s)" + (f": {headline}" if headline else ""))
            if entry["status"] in ("failed", "timeout") and entry.get("error_tail"):
                self.say("    " + entry["error_tail"].replace("\n", "\n    "))
        entries = self.summary["steps"]
        statuses = [e["status"] for e in entries.values()]
        bad = [n for n, e in entries.items()
               if e["status"] in ("failed", "timeout", "mismatch") or e.get("reason", "").startswith("not enough time")]
        self.summary["problems"] = bad
        self.write_summary()
        self.say(f"# done in {time.monotonic() - self.t_start:.0f} s: " + ", ".join(
            f"{statuses.count(s)} {s}" for s in ("ok", "mismatch", "failed", "timeout", "skipped") if s in statuses)
            + (f"; problems: {', '.join(bad)}" if bad else "") + f"; results in {self.out}")
        return 1 if bad else 0

    def _timeout(self, step: Step, device: str) -> int:
        timeout = step.timeout_s if device == "cuda" else CPU_SCALE * step.timeout_s
        return int(self.args.timeouts.get(step.name, timeout))

    def _step(self, step: Step, device: str, ends_by: float, deadline: float) -> dict:
        log = self.out / STEPS_LOG
        timeout = self._timeout(step, device)
        entry = {"number": step.number, "timeout_s": timeout, "seconds": 0.0}
        header = f"\n# ===== step {step.number} {step.name} =====\n"
        if step.run is None:
            with open(log, "a") as f:
                f.write(f"{header}# reserved for {step.reserved}: not yet written\n")
            return {**entry, "status": "skipped", "reason": f"reserved for {step.reserved}: not yet written"}
        if step.needs_cuda and device != "cuda":
            with open(log, "a") as f:
                f.write(f"{header}# skipped on {device}: needs CUDA ({step.needs_cuda})\n")
            return {**entry, "status": "skipped", "reason": f"needs CUDA ({step.needs_cuda})"}
        left = deadline - time.monotonic()
        if left < min(step.min_s, timeout):
            with open(log, "a") as f:
                f.write(f"{header}# not started, {left:.0f} s of the budget left\n")
            return {**entry, "status": "skipped", "reason": f"not enough time left ({left:.0f} s)"}
        timeout = max(1, round(ends_by - time.monotonic()))  # its own time and whatever earlier steps left
        entry["timeout_s"] = timeout
        result = self.scratch / f"{step.name}.json"
        with open(log, "a") as f:
            f.write(header)
        start = log.stat().st_size
        cmd = [sys.executable, "-m", "synth.bench.gpu_check", "--step", step.name, "--device", device,
               "--build-dir", self.args.build_dir, "--result", str(result)]
        if self.args.checkpoint:
            cmd += ["--checkpoint", self.args.checkpoint]

        def read_result() -> dict:
            try:
                return json.loads(result.read_text())
            except (OSError, ValueError):
                return {}

        def poll() -> None:  # what the running step has saved so far goes into summary.json now
            self.summary["steps"][step.name] = {**entry, "status": "running", "result": read_result(),
                                                "seconds": round(time.monotonic() - t0, 1)}
            self.write_summary()

        t0 = time.monotonic()
        rc, seconds = _run_child(cmd, log, timeout, poll)
        entry["seconds"] = round(seconds, 1)
        entry["result"] = read_result()
        if rc is None:
            with open(log, "a") as f:
                f.write(f"\n# killed at the step's timeout, {timeout} s\n")
            return {**entry, "status": "timeout", "error_tail": _tail(log, start)}
        if rc != 0:
            return {**entry, "status": "failed", "exit_status": rc, "error_tail": _tail(log, start)}
        return {**entry, "status": "mismatch" if entry["result"].get("pass") is False else "ok"}


def _timeouts(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, seconds = item.partition("=")
        out[name] = float(seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    t_start = time.monotonic()
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="steps: " + ", ".join(f"{s.number} {s.name} ({s.timeout_s} s on a GPU)"
                                                                  for s in STEPS))
    parser.add_argument("--cpu", action="store_true", help="small sizes on CPU even where CUDA is available")
    parser.add_argument("--out", help="results directory (default: $OUT, else a new temp dir)")
    parser.add_argument("--build-dir", default=str(Path(tempfile.gettempdir()) / "synth-gpu-check"),
                        help="where the random checkpoint and the compile cache are built once and reused "
                        "(default: %(default)s)")
    parser.add_argument("--checkpoint", help="a checkpoint to load instead of building the random one")
    parser.add_argument("--only", type=lambda text: text.split(","), metavar="NAME,...",
                        help="the steps to run (default: all, in order)")
    parser.add_argument("--budget-s", type=float, help=f"overall seconds (default {GPU_BUDGET_S} on a GPU, the sum "
                        f"of the steps' timeouts; {CPU_BUDGET_S} on CPU); a step starts only with its minimum left")
    parser.add_argument("--timeouts", type=_timeouts, default={}, metavar="NAME=S,...",
                        help="per-step timeouts instead of the defaults, e.g. bench=400")
    parser.add_argument("--step", choices=[s.name for s in STEPS], help=argparse.SUPPRESS)
    parser.add_argument("--device", choices=["cpu", "cuda"], help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return run_step(args.step, args.device, args.checkpoint, args.build_dir, args.result)
    names = {s.name for s in STEPS}
    for name in set(args.timeouts) | set(args.only or ()):
        if name not in names:
            parser.error(f"unknown step {name!r} (steps: {', '.join(s.name for s in STEPS)})")
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _stop)
    return Orchestrator(args, t_start).run()


if __name__ == "__main__":
    sys.exit(main())
