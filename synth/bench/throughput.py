"""Benchmark: the fast engine against the transformers reference on one fixed workload.

Runs in one process, without Ray or pydantic (importable on a bare GPU box):

    synth bench --config tiny-cpu            # tiny checkpoint, 32 codebooks, CPU
    synth bench --config csm1b-cuda          # random weights at CSM-1B dims, bf16, CUDA
    synth bench --config tiny-cpu --workload dialogue --turns 4   # chained turns vs flat

(`python jobs/benchmark.py ...` is the same; `python -m synth bench ...` from the repository
root where synth is not installed, e.g. a bare GPU box.)

The workload is many scripts with a spread of text lengths and per-row frame caps
derived from the text (a random model never emits EOS, so caps decide lengths).
Prints a table (frames/s, x real time, useful / computed slot-frames, time to first
audio, peak memory) and the fast / reference ratios; `--json PATH` saves the rows.

`--qc ASR_MODEL` (a Whisper hub id or directory; `tiny` builds the offline tiny Whisper)
also runs every fast-engine slot count with the QC scorer on the result path (every metric
of every turn, scored in the batches the engine finishes together; no retakes), inline (as a
QC run scores its takes) and beside generation (`--qc-modes`), and prints issue 22's table:
throughput with QC on against off, the QC stage's CPU- and GPU-seconds per audio second and
the seconds the engine waited on it (`synth.bench.qc_stage`). It also runs the same turns as
4-turn chains with QC deciding every take as a run does (retakes up to `--qc-max-takes`; the
QC stage beside generation), with speculative next turns off and on: their frames/s count every
take judged (retakes included; speculative takes thrown away are the discarded column).

`--workload dialogue` groups the same turns into dialogues of `--turns` turns, each
turn conditioned on the generated audio of the turns before it (the context planner
keeps the newest that fit), and runs them as chains: the fast engine with every
dialogue in flight at once, the reference in rounds (`run`); the flat rows are the
same turns with no context. The fast engine runs the dialogues once per mode
(`--modes`): context from codes or re-encoded audio (`Chain`'s `context_from`), each with
KV continuation (`+kv`) or a full prefill of every turn, with the context window sliding by
blocks (`--context-low-water`, as `generation.context_low_water`) or rolling (`none`). The table then also shows
dialogues in flight (mean busy slots), prompt positions prefilled per turn, and each
mode's dialogue / flat throughput ratio.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from synth.bench.checkpoints import add_checkpoint_args, bench_checkpoint, build_dir_of
from synth.engine.interface import GenerationRequest, SamplingParams
from synth.engine.options import COMPILE_MODES, FastEngineOptions
from synth.pipeline.chain import CONTEXT_FROM, Chain, ChainTurn, ContextFrom
from synth.pipeline.context_plan import LOW_WATER, SegmentCost
from synth.pipeline.record import row_id

WORDS = (
    "it was the best of times worst age wisdom call me ishmael some years ago never mind how long precisely "
    "having little money quick brown fox jumps over lazy dog pack my box with five dozen liquor jugs hello "
    "there how are you doing today fine thanks what about doctor smith numbers like appear in text as do "
    "quotes yes she said beginning universe was created this has made lot people very angry"
).split()


# How every benchmark samples: both decoders, temperature 0.9, top-k 50 (as configs/csm-1b.yaml).
SAMPLING = SamplingParams(do_sample=True, temperature=0.9, top_k=50, depth_temperature=0.9, depth_top_k=50)


def workload(n: int, *, seed: int = 0, max_cap: int, frames_per_word: float = 4.0) -> list[GenerationRequest]:
    """n scripts: 2..60 words (log-uniform), cap = ~0.3 s of speech per word + slack, <= max_cap."""
    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        words = int(np.exp(rng.uniform(np.log(2), np.log(60))))
        text = " ".join(rng.choice(WORDS, size=words)).capitalize() + "."
        cap = int(min(max_cap, max(8, round(words * frames_per_word + rng.randint(0, 10)))))
        out.append(GenerationRequest(f"r{i:04d}", text, int(rng.randint(0, 4)), cap, seed=i))
    return out


@dataclass
class Row:
    engine: str
    setting: str
    requests: int
    frames: int
    wall_s: float
    slot_frames: int
    ttfa_s: float
    peak_mem_gib: float
    warmup_s: float = 0.0  # fast engine: compile + graph capture + a throwaway row, apart from wall_s
    compile_s: float = 0.0  # of warmup_s, compiling the frame's steps (or loading them from the compile cache)
    capture_s: float = 0.0  # of warmup_s, capturing the CUDA graphs
    compile_cache: str = ""  # compiled steps: "cold" (compiled into the compile cache), "loaded" from it, "" neither
    frame_ms: float = 0.0  # one frame step alone (fast engine), all slots
    decode_s: float = 0.0  # Mimi decoding inside wall_s (fast engine; on its worker thread when threaded)
    loop_result_s: float = 0.0  # of wall_s, the frame loop's own time on finished rows (fast engine)
    attended: float = float("nan")  # fast engine: mean backbone attention length per frame (its bucket)
    cpu_s: float = 0.0  # process CPU time inside wall_s: a fairer basis on a shared CPU box
    in_flight: float = float("nan")  # dialogue workload: mean rows decoding per frame
    prefill_per_turn: float = float("nan")  # fast engine: prompt positions computed per row (kept ones excluded)
    kept_per_turn: float = float("nan")  # fast engine: prompt positions per row kept from a slot's cache
    # fast engine: where the slot-frames not delivered went (`SchedulerStats`): busy beyond the delivered
    # frames (EOS frames, lagged stop flags, cancelled rows), idle while a job was queued, idle while a
    # chain's next turn was being prepared, idle with nothing to come (the tail)
    busy_extra: int = 0
    idle_queued: int = 0
    idle_between_turns: int = 0
    idle_drain: int = 0
    prefill_s: float = 0.0  # fast engine: of wall_s, the frame loop's cache moves and prefills
    qc: dict | None = None  # QC on: what scoring cost (`synth.bench.qc_stage.QcCost`)

    @property
    def fps(self):
        return self.frames / self.wall_s

    def as_dict(self, frame_rate_hz: float):
        return {**self.__dict__, "frames_per_s": self.fps, "x_real_time": self.fps / frame_rate_hz,
                "frames_per_cpu_s": self.frames / max(self.cpu_s, 1e-9),
                "useful_fraction": self.frames / max(self.slot_frames, 1)}


def sync(device):
    """Wait for the device's queued work (CUDA); nothing on CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device):
    """Peak memory from here on starts at what is allocated now (on CUDA; a process's peak RSS cannot be reset)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device):
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process-wide max RSS


def run_reference(path, requests, sampling, *, device, dtype, batch_size) -> Row:
    from synth.engine.reference_engine import TransformersEngine

    engine = TransformersEngine.load(path, device=device, dtype=dtype, compile=False, batch_size=batch_size)
    batches = engine.batches(requests)  # the reference's own batching, timed batch by batch below
    reset_peak(device)
    frames = slot_frames = 0
    ttfa = None
    c0, t0 = time.process_time(), time.perf_counter()
    for batch in batches:
        results = engine.generate_batch(batch, sampling)
        sync(device)
        ttfa = ttfa if ttfa is not None else time.perf_counter() - t0
        frames += sum(r.num_frames for r in results)
        slot_frames += results[0].info.batch_frames * len(results)
    wall = time.perf_counter() - t0
    row = Row("transformers", f"batch {batch_size}", len(requests), frames, wall, slot_frames, ttfa, _peak_gib(device),
              cpu_s=time.process_time() - c0)
    del engine
    return row


def _mode(options: FastEngineOptions) -> str:
    tuning = [options.compile_mode] if options.compile_mode else []
    if torch._inductor.config.coordinate_descent_tuning:
        tuning.append("coordinate descent")
    return f" ({', '.join(tuning)})" if tuning else ""


def _loop_setting(engine) -> str:
    """How the frame loop handles finished rows, when it is not the CPU's synchronous default."""
    lag, threaded, buckets = engine.scheduler.status_lag, engine.result_thread, len(engine.step.kv_buckets)
    return ((", results thread" if threaded else "") + (f", flags {lag} late" if lag else "")
            + (", attention over all positions" if buckets == 1 else ""))


def _load_fast(path, *, device, dtype, num_slots, max_positions, compile, options: FastEngineOptions):
    from synth.engine.fast_engine import FastEngine

    reset_peak(device)
    return FastEngine.load(path, device=device, dtype=dtype, num_slots=num_slots, max_positions=max_positions,
                           compile=compile, warmup=True, options=options)


def _timed_fast(engine, setting: str, device: str, work) -> tuple[Row, list]:
    """Run `work(engine)` -> results and measure it: the Row of what happened since warm-up."""
    stats = engine.scheduler.stats
    slot_frames, frames, attended, loop_s = (stats.slot_frames, stats.frames, stats.attended_positions,
                                             engine.loop_result_s)
    prefilled, kept = stats.prefill_tokens, stats.kept_positions
    before = replace(stats)
    prefill_s = engine.scheduler.prefill_s
    c0, t0 = time.process_time(), time.perf_counter()
    results = work(engine)
    sync(device)
    wall = time.perf_counter() - t0
    row = Row("fast", setting, len(results), sum(r.num_frames for r in results), wall,
              stats.slot_frames - slot_frames, min(r.info.ready_s for r in results), _peak_gib(device),
              engine.warmup_s, compile_s=engine.compile_s, capture_s=engine.capture_s,
              compile_cache=engine.describe().compile_cache or "",
              decode_s=engine.codec.decode_s, cpu_s=time.process_time() - c0,
              loop_result_s=engine.loop_result_s - loop_s,
              attended=(stats.attended_positions - attended) / max(1, stats.frames - frames),
              prefill_per_turn=(stats.prefill_tokens - prefilled) / max(1, len(results)),
              kept_per_turn=(stats.kept_positions - kept) / max(1, len(results)),
              busy_extra=stats.busy_slot_frames - before.busy_slot_frames - (stats.useful_frames - before.useful_frames),
              idle_queued=stats.idle_queued - before.idle_queued,
              idle_between_turns=stats.idle_between_turns - before.idle_between_turns,
              idle_drain=stats.idle_drain - before.idle_drain, prefill_s=engine.scheduler.prefill_s - prefill_s)
    return row, results


def run_fast(path, requests, sampling, *, device, dtype, num_slots, max_positions, compile,
             options: FastEngineOptions = FastEngineOptions(), scorer=None, qc_mode: str = "inline",
             on_stage=None, probe=None) -> Row:
    """scorer: also score every finished turn (QC on; `synth.bench.qc_stage`, `qc_mode` inline or
    beside; on_stage(stage) is handed the stage after the run). probe(engine): called once the row
    is measured, before the engine is closed (e.g. to profile its frame)."""
    from synth.bench.qc_stage import QcStage

    engine = _load_fast(path, device=device, dtype=dtype, num_slots=num_slots, max_positions=max_positions,
                        compile=compile, options=options)
    setting = (f"{num_slots} slots" + (f", compiled{_mode(options)}" if compile else "") + _loop_setting(engine)
               + (f", QC on, {qc_mode}" if scorer is not None else ""))
    costs = []
    if scorer is not None:
        def work(e):
            stage = QcStage(scorer, requests, qc_mode)
            results = e.run(requests, sampling, on_result=stage)
            costs.append(stage.finish())  # the run ends when its last turn is scored
            if on_stage is not None:
                on_stage(stage)
            return results
    else:
        def work(e):
            return e.generate(requests, sampling)
    row, results = _timed_fast(engine, setting, device, work)
    row.qc = asdict(costs[0]) if costs else None
    # The frame step alone: what one graph replay (or eager frame) costs at this slot count.
    with torch.inference_mode():
        sample = sampling.do_sample
        engine.scheduler.run_frame(sample)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(20):
            engine.scheduler.run_frame(sample)
        sync(device)
        row.frame_ms = (time.perf_counter() - t0) / 20 * 1000
    if probe is not None:
        probe(engine)
    engine.close()
    del engine, results
    gc.collect()
    return row


def run_fast_qc_chains(path, dialogues, sampling, scorer, *, speculate: bool, max_takes: int, device, dtype,
                       num_slots, max_positions, compile, options: FastEngineOptions = FastEngineOptions()) -> Row:
    """The dialogues as chains with QC on (`synth.bench.qc_stage.QcChains`): a Row whose frames are
    those of every take judged, and whose `qc` holds the stage's cost and the discarded work."""
    from synth.bench.qc_stage import QcChains, QcCost

    engine = _load_fast(path, device=device, dtype=dtype, num_slots=num_slots, max_positions=max_positions,
                        compile=compile, options=options)
    setting = (f"{num_slots} slots, {len(dialogues)} chains x {len(dialogues[0])} turns, QC max_takes {max_takes}, "
               f"speculation {'on' if speculate else 'off'}")
    chains = QcChains(engine, scorer, speculate=speculate, max_takes=max_takes)
    start = asdict(scorer.stats)
    row, results = _timed_fast(engine, setting, device,
                               lambda e: chains.run(dialogues, sampling, "codes", LOW_WATER))
    now, counts = asdict(scorer.stats), chains.counts
    row.frames = chains.judged_frames
    row.qc = asdict(QcCost(**{k: now[k] - start[k] for k in start}, waited_s=chains.stage.waited_s,
                           batches=len(chains.stage.batches), speculative_turns=counts.speculative_turns,
                           speculative_discarded=counts.speculative_discarded,
                           discarded_frames=counts.speculative_frames_discarded))
    engine.close()
    del engine, results
    gc.collect()
    return row


def as_dialogues(requests: list[GenerationRequest], turns: int) -> list[list[GenerationRequest]]:
    """Consecutive requests as dialogues of `turns` turns, speakers alternating 0/1."""
    return [[replace(r, request_id=row_id(f"d{i // turns:04d}", i % turns), speaker=(i % turns) % 2)
             for i, r in list(enumerate(requests))[start : start + turns]]
            for start in range(0, len(requests) - turns + 1, turns)]


def _workload_does_not_fit(turn: int, reason: str) -> None:
    raise ValueError(f"a dialogue's turn {turn} cannot be generated ({reason}): raise --max-positions")


def run_dialogues(engine, dialogues, sampling, context_from: ContextFrom = "codes",
                  low_water: float | None = LOW_WATER) -> list:
    """Each dialogue as a chain (`synth.pipeline.chain`, as the shard worker runs scripts): a turn
    is submitted when the one before it is done, with the newest earlier turns that fit as
    context (`context_from`: their codes, or their audio encoded again). Returns the results in
    completion order. low_water: the context window (`Chain`'s `context_low_water`)."""
    cost = SegmentCost(engine)
    chains = [Chain([ChainTurn(r.request_id, r.speaker, r.text, max_frames=r.max_frames, seed=r.seed) for r in turns],
                    engine, cost, context_from=context_from, context_low_water=low_water) for turns in dialogues]
    by_request = {}

    def next_of(chain: Chain) -> list[GenerationRequest]:
        request = chain.next_request(skip=_workload_does_not_fit)
        if request is None:
            return []
        by_request[request.request_id] = chain
        return [request]

    def on_result(result):
        chain = by_request.pop(result.request_id)
        chain.add_result(result)
        return next_of(chain)

    return engine.run([r for chain in chains for r in next_of(chain)], sampling, on_result=on_result)


@dataclass(frozen=True)
class DialogueMode:
    """How the fast engine runs the dialogues: context from codes or audio, KV continuation or not."""

    context_from: ContextFrom
    kv_continuation: bool

    @property
    def name(self) -> str:
        return self.context_from + ("+kv" if self.kv_continuation else "")

    @classmethod
    def parse(cls, name: str) -> "DialogueMode":
        context_from, _, kv = name.partition("+")
        if context_from not in CONTEXT_FROM or kv not in ("", "kv"):
            raise argparse.ArgumentTypeError(f"mode {name!r}: expected codes, audio, codes+kv or audio+kv")
        return cls(context_from, kv == "kv")  # type: ignore[arg-type]


DIALOGUE_MODES = tuple(DialogueMode.parse(m) for m in ("audio", "audio+kv", "codes", "codes+kv"))


def run_fast_dialogues(path, dialogues, sampling, *, device, dtype, num_slots, max_positions, compile,
                       options: FastEngineOptions = FastEngineOptions(),
                       mode: DialogueMode = DialogueMode("codes", True), low_water: float | None = LOW_WATER) -> Row:
    options = replace(options, kv_continuation=mode.kv_continuation)
    engine = _load_fast(path, device=device, dtype=dtype, num_slots=num_slots, max_positions=max_positions,
                        compile=compile, options=options)
    window = "rolling" if low_water is None else f"blocks to {low_water:g}"
    setting = f"{num_slots} slots, {len(dialogues)} dialogues x {len(dialogues[0])} turns, {window}, {mode.name}"
    row, results = _timed_fast(engine, setting, device,
                               lambda e: run_dialogues(e, dialogues, sampling, mode.context_from, low_water))
    row.in_flight = row.frames * num_slots / max(1, row.slot_frames)  # useful frames per frame step
    engine.close()
    del engine, results
    gc.collect()
    return row


def run_reference_dialogues(path, dialogues, sampling, *, device, dtype, batch_size,
                            low_water: float | None = LOW_WATER) -> Row:
    from synth.engine.reference_engine import TransformersEngine

    engine = TransformersEngine.load(path, device=device, dtype=dtype, compile=False, batch_size=batch_size)
    reset_peak(device)
    c0, t0 = time.process_time(), time.perf_counter()
    results = run_dialogues(engine, dialogues, sampling, "audio", low_water)  # its processor encodes every clip
    wall = time.perf_counter() - t0
    slot_frames = sum(r.info.batch_frames for r in results)  # each row rides its batch to the end
    row = Row("transformers", f"batch {batch_size}, {len(dialogues)} dialogues x {len(dialogues[0])} turns, rounds",
              len(results), sum(r.num_frames for r in results), wall, slot_frames, float("nan"), _peak_gib(device),
              cpu_s=time.process_time() - c0)
    del engine
    return row


CONFIGS = {
    # name: device, dtype, requests, max frames, reference batch-1 requests, ref batch, slot counts, positions
    "tiny-cpu": dict(device="cpu", dtype="float32", requests=128, max_cap=80, batch1=6, ref_batch=8,
                     slots=[16, 32, 64], max_positions=256),
    "csm1b-cuda": dict(device="cuda", dtype="bfloat16", requests=512, max_cap=250, batch1=2, ref_batch=16,
                       slots=[1, 64, 128, 256], max_positions=512),
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="synth bench", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny-cpu")
    add_checkpoint_args(parser)
    parser.add_argument("--requests", type=int, help="workload size")
    parser.add_argument("--slots", type=lambda s: [int(x) for x in s.split(",")], help="fast-engine slot counts (as fast_engine.num_slots)")
    parser.add_argument("--ref-batch", type=int, help="the transformers engine's rows per generate call "
                        "(as transformers_engine.batch_size)")
    parser.add_argument("--batch1-requests", type=int, help="rows for the batch-1 reference run")
    parser.add_argument("--ref-requests", type=int, help="rows for the padded reference run (default: all)")
    parser.add_argument("--max-positions", type=int, help="KV-cache positions per slot (as fast_engine.max_positions)")
    parser.add_argument("--compile", choices=["auto", "yes", "no"], default="auto",
                        help="torch.compile the fast engine's steps (auto: CUDA only)")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--workload", choices=["flat", "dialogue"], default="flat",
                        help="dialogue: the same turns chained into dialogues (see the module docstring)")
    parser.add_argument("--turns", type=int, default=4, help="turns per dialogue (--workload dialogue)")
    parser.add_argument("--modes", type=lambda s: [DialogueMode.parse(m) for m in s.split(",")],
                        default=list(DIALOGUE_MODES),
                        help="--workload dialogue: the fast engine's runs, comma-separated: codes or audio context, "
                        "+kv for KV continuation (default: audio,audio+kv,codes,codes+kv)")
    parser.add_argument("--context-low-water", type=lambda s: None if s == "none" else float(s), default=LOW_WATER,
                        help="--workload dialogue: the context window, sliding by blocks down to this fraction of the "
                        f"room, or `none` for a rolling one (default {LOW_WATER}, as generation.context_low_water)")
    parser.add_argument("--result-thread", choices=["auto", "yes", "no"], default="auto",
                        help="finish rows (decode, callbacks) on a worker thread (auto: CUDA only)")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES,
                        help="torch.compile mode for the fast engine's steps, one without CUDA graphs of its own "
                        "(the engine graphs each frame itself; default: inductor's default)")
    parser.add_argument("--coordinate-descent", action="store_true",
                        help="inductor's coordinate-descent tuning of its generated kernels (longer compile)")
    parser.add_argument("--kv-buckets", type=int, default=4,
                        help="backbone attention buckets (1: always all max_positions)")
    parser.add_argument("--status-lag", type=int, help="frames the host reads stop flags late (default: 2 CUDA, 0 CPU)")
    parser.add_argument("--qc", metavar="ASR_MODEL", help="also run each slot count with every QC metric scored "
                        "on the result path, this Whisper transcribing (`tiny`: the offline tiny Whisper)")
    parser.add_argument("--qc-workers", type=int, default=2, help="--qc: the scorer's CPU worker threads "
                        "(qc.num_workers; default %(default)s)")
    parser.add_argument("--qc-metrics", type=lambda s: tuple(s.split(",")), help="--qc: the metric groups scored "
                        "(qc.metrics; default all: asr,speaker,dnsmos,level,timing,repetition)")
    parser.add_argument("--qc-modes", type=lambda s: s.split(","), default=["inline", "beside"],
                        help="--qc: how turns are scored, comma-separated: inline (the frame loop waits, as a QC run "
                        "does today) and/or beside (on a thread while generation goes on); default both")
    parser.add_argument("--qc-max-takes", type=int, default=2, help="--qc: takes per turn in the chained runs "
                        "(qc.max_takes; default %(default)s)")
    parser.add_argument("--qc-chains", choices=["yes", "no"], default="yes",
                        help="--qc: also run the turns as 4-turn chains with QC deciding, speculation off and on")
    parser.add_argument("--qc-process", choices=["yes", "no"], default="yes",
                        help="--qc: the scorer in its own process at a lower CPU priority, as a run's actor runs it "
                             "(qc.own_process), or on threads of this one")
    parser.add_argument("--park-rows", type=int, help="slot caches the fast engine may park for a chain's next turn "
                        "(KV continuation; default: as many as slots)")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    cfg = dict(CONFIGS[args.config])
    for key in ("requests", "slots", "ref_batch", "max_positions"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if args.batch1_requests is not None:
        cfg["batch1"] = args.batch1_requests
    device, dtype = cfg["device"], cfg["dtype"]
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("config needs CUDA, and torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.coordinate_descent:
        torch._inductor.config.coordinate_descent_tuning = True
    compile = {"auto": device == "cuda", "yes": True, "no": False}[args.compile]
    options = FastEngineOptions(result_thread={"auto": None, "yes": True, "no": False}[args.result_thread],
                                status_lag=args.status_lag, compile_mode=args.compile_mode,
                                num_kv_buckets=args.kv_buckets, park_rows=args.park_rows)

    build_dir = build_dir_of(args)
    path = bench_checkpoint(args.checkpoint, device, build_dir)

    from transformers import CsmConfig

    codec = CsmConfig.from_pretrained(path).codec_config
    frame_rate = float(codec.frame_rate)
    requests = workload(cfg["requests"], max_cap=cfg["max_cap"])
    sampling = SamplingParams(do_sample=False) if args.greedy else SAMPLING
    print(f"# {args.config}: {len(requests)} requests, caps {min(r.max_frames for r in requests)}.."
          f"{max(r.max_frames for r in requests)} frames (sum {sum(r.max_frames for r in requests)}), "
          f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {'greedy' if args.greedy else 'sampling'}", flush=True)

    scorer = None
    if args.qc:
        from synth.bench.qc_stage import build_scorer

        scorer = build_scorer(args.qc, build_dir, codec.sampling_rate, device, args.qc_workers, args.qc_metrics,
                              own_process=args.qc_process == "yes")
    rows: list[Row] = []
    stages: list = []  # the QC runs' stages (--qc)
    if args.workload == "dialogue":
        rows = dialogue_rows(args, cfg, path, requests, sampling, compile, options)
    elif not args.skip_reference:
        n1 = cfg["batch1"]
        if n1:
            rows.append(run_reference(path, requests[:n1], sampling, device=device, dtype=dtype, batch_size=1))
            print("done:", rows[-1].as_dict(frame_rate), flush=True)
        n_ref = args.ref_requests or len(requests)
        rows.append(run_reference(path, requests[:n_ref], sampling, device=device, dtype=dtype,
                                  batch_size=cfg["ref_batch"]))
        print("done:", rows[-1].as_dict(frame_rate), flush=True)
    for slots in cfg["slots"] if args.workload == "flat" else []:
        try:
            reqs = requests if slots > 1 else requests[: max(cfg["batch1"], 2)]
            for mode in [None] + (args.qc_modes if scorer is not None else []):
                rows.append(run_fast(path, reqs, sampling, device=device, dtype=dtype, num_slots=slots,
                                     max_positions=cfg["max_positions"], compile=compile, options=options,
                                     scorer=scorer if mode else None, qc_mode=mode or "inline",
                                     on_stage=stages.append))
                print("done:", rows[-1].as_dict(frame_rate), flush=True)
            for speculate in ((False, True) if scorer is not None and args.qc_chains == "yes" else ()):
                rows.append(run_fast_qc_chains(path, as_dialogues(reqs, 4), sampling, scorer, speculate=speculate,
                                               max_takes=args.qc_max_takes, device=device, dtype=dtype,
                                               num_slots=slots, max_positions=cfg["max_positions"],
                                               compile=compile, options=options))
                print("done:", rows[-1].as_dict(frame_rate), flush=True)
        except torch.OutOfMemoryError as err:
            print(f"fast {slots} slots: out of memory ({err})", flush=True)
            gc.collect()
            torch.cuda.empty_cache()

    print_table(rows, frame_rate)
    if scorer is not None:
        from synth.bench.qc_stage import print_qc, stage_alone

        print_qc(rows, scorer, stage_alone(scorer, stages[-1].takes) if stages else None)
        scorer.close()
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict(frame_rate) for r in rows], indent=1))


def dialogue_rows(args, cfg, path, requests, sampling, compile, options) -> list[Row]:
    """Flat (no context) and chained runs of the same turns, at the largest slot count."""
    device, dtype, slots = cfg["device"], cfg["dtype"], max(cfg["slots"])
    dialogues = as_dialogues(requests, args.turns)
    turns = [r for d in dialogues for r in d]
    kw = dict(device=device, dtype=dtype, num_slots=slots, max_positions=cfg["max_positions"], compile=compile,
              options=options)
    rows = []
    if not args.skip_reference:
        n = max(1, (args.ref_requests or len(turns)) // args.turns)
        rows.append(run_reference_dialogues(path, dialogues[:n], sampling, device=device, dtype=dtype,
                                            batch_size=cfg["ref_batch"], low_water=args.context_low_water))
        print("done:", rows[-1].__dict__, flush=True)
    rows.append(run_fast(path, turns, sampling, **kw))
    rows[-1].setting += f", flat {len(turns)} turns"
    print("done:", rows[-1].__dict__, flush=True)
    for mode in args.modes:
        rows.append(run_fast_dialogues(path, dialogues, sampling, mode=mode, low_water=args.context_low_water, **kw))
        print("done:", rows[-1].__dict__, flush=True)
    return rows


def print_table(rows: list[Row], frame_rate: float) -> None:
    print()
    header = "| engine | setting | rows | frames | wall s | frames/s | x real time | useful/computed | first audio s | peak mem GiB | warm-up s | compile / capture s | frame step ms | decode s | loop on results s | attended positions | frames per CPU s | prefilled / kept positions per row |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d = r.as_dict(frame_rate)
        print(f"| {r.engine} | {r.setting} | {r.requests} | {r.frames} | {r.wall_s:.1f} | {r.fps:.1f} | "
              f"{d['x_real_time']:.1f} | {d['useful_fraction']:.2f} | {r.ttfa_s:.2f} | {r.peak_mem_gib:.2f} | "
              f"{r.warmup_s:.1f} | {r.compile_s:.1f} / {r.capture_s:.1f}{f' ({r.compile_cache})' if r.compile_cache else ''} | {r.frame_ms:.1f} | {r.decode_s:.1f} | {r.loop_result_s:.1f} | "
              f"{'-' if math.isnan(r.attended) else f'{r.attended:.0f}'} | {d['frames_per_cpu_s']:.1f} | "
              f"{'-' if math.isnan(r.prefill_per_turn) else f'{r.prefill_per_turn:.1f} / {r.kept_per_turn:.1f}'} |")
    refs = [r for r in rows if r.engine == "transformers"]
    fast = [r for r in rows if r.engine == "fast"]
    chained = [r for r in fast if not math.isnan(r.in_flight)]  # a dialogue run
    flat = [r for r in fast if math.isnan(r.in_flight)]
    if refs and fast:
        best = chained[0] if chained else max(fast, key=lambda r: r.fps)  # like for like
        print()
        for ref in refs:
            print(f"best fast ({best.setting}) / transformers {ref.setting}: throughput x{best.fps / ref.fps:.1f}, "
                  f"per CPU second x{(best.frames / best.cpu_s) / (ref.frames / ref.cpu_s):.1f}"
                  + ("" if math.isnan(ref.ttfa_s) else f", first audio x{ref.ttfa_s / best.ttfa_s:.1f} sooner"))
    for row in chained if flat else []:
        print(f"dialogue / flat throughput (fast engine, same turns, {row.setting.rsplit(', ', 1)[-1]}): "
              f"x{row.fps / flat[0].fps:.2f} (per CPU second x{(row.frames / row.cpu_s) / (flat[0].frames / flat[0].cpu_s):.2f}); "
              f"dialogues in flight per frame: {row.in_flight:.1f} of {row.setting.split(' ')[0]} slots; "
              f"prompt positions prefilled per turn: {row.prefill_per_turn:.1f} (flat {flat[0].prefill_per_turn:.1f}), "
              f"kept from the slot's cache: {row.kept_per_turn:.1f}")
    for row in fast:
        print(f"slot-frames not delivered ({row.setting}): {where_slot_frames_went(row)}; "
              f"prefills {row.prefill_s:.1f} s of {row.wall_s:.1f} s")


def where_slot_frames_went(row: Row) -> str:
    """The computed slot-frames that delivered nothing, by cause, as fractions of all computed ones."""
    parts = [("busy beyond the delivered frames", row.busy_extra), ("idle, a job queued", row.idle_queued),
             ("idle, a chain's next turn being prepared", row.idle_between_turns),
             ("idle, nothing to come (the tail)", row.idle_drain)]
    total = max(row.slot_frames, 1)
    return ", ".join(f"{name} {n / total:.3f}" for name, n in parts)


if __name__ == "__main__":
    main()
