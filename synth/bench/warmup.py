"""Benchmark: a compiled fast engine's warm-up, cold against loaded from the compile cache.

    synth bench-warmup --config tiny-cpu          # tiny checkpoint, CPU
    synth bench-warmup --config csm1b-cuda        # random weights at CSM-1B's size, CUDA

Each start is a fresh process with an empty inductor cache of its own (as a new machine, or an
actor restarted on another node, would have), loading the engine with `compile=True` and the
compile cache (`fast_engine.compile_cache`) at a directory of this run: the first start finds it
empty and compiles into it, the next ones load from it. `--no-cache` adds a start without the
compile cache, which is what every start paid before it. Prints a table of each start's
compiled graphs found in the cache and compiled, its warm-up (compile, graph capture and a
throwaway row) and the whole process, and the ratio of the cold warm-up to each loaded one. Runs without Ray or pydantic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from synth.bench.checkpoints import add_checkpoint_args, bench_checkpoint, build_dir_of


def start(args: argparse.Namespace) -> None:
    """One start in this process: load, warm up, print the numbers as one JSON line."""
    t0 = time.perf_counter()
    import torch

    from synth.engine.fast_engine import FastEngine
    from synth.engine.options import FastEngineOptions

    if args.threads:
        torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    engine = FastEngine.load(args.checkpoint, device=args.device, dtype=args.dtype, num_slots=args.slots,
                             max_positions=args.max_positions, compile=True, warmup=True,
                             options=FastEngineOptions(compile_cache=args.cache or None))
    from torch._dynamo.utils import counters

    info = engine.describe()
    print(json.dumps({"warmup_s": engine.warmup_s, "compile_s": engine.compile_s, "capture_s": engine.capture_s,
                      "cache": info.compile_cache or "off", "load_s": time.perf_counter() - t1 - engine.warmup_s,
                      "imports_s": t1 - t0, "process_s": time.perf_counter() - t0,
                      "graphs_hit": counters["inductor"]["fxgraph_cache_hit"],
                      "graphs_compiled": counters["inductor"]["fxgraph_cache_miss"]}), flush=True)


def _run_start(args: argparse.Namespace, checkpoint: str, cache: str | None, label: str) -> dict:
    cmd = [sys.executable, "-m", "synth.bench.warmup", "--start", "--checkpoint", checkpoint, "--device", args.device,
           "--dtype", args.dtype, "--slots", str(args.slots), "--max-positions", str(args.max_positions),
           "--cache", cache or ""] + (["--threads", str(args.threads)] if args.threads else [])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="synth-bench-inductor-") as inductor:  # empty: nothing from earlier starts
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": inductor, "PYTHONUNBUFFERED": "1",
               "TRANSFORMERS_VERBOSITY": "error"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(start=label, wall_s=time.perf_counter() - t0)
    print("done:", row, flush=True)
    return row


CONFIGS = {  # name: device, dtype, slots, positions (as `synth bench`'s configs)
    "tiny-cpu": dict(device="cpu", dtype="float32", slots=16, max_positions=256),
    "csm1b-cuda": dict(device="cuda", dtype="bfloat16", slots=256, max_positions=512),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synth bench-warmup", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny-cpu")
    add_checkpoint_args(parser)
    parser.add_argument("--slots", type=int, help="as fast_engine.num_slots")
    parser.add_argument("--max-positions", type=int, help="as fast_engine.max_positions")
    parser.add_argument("--starts", type=int, default=2, help="starts with the compile cache: the first cold, "
                        "the others loading (default %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="also a start without the compile cache")
    parser.add_argument("--cache-dir", help="the compile cache's directory (default: a new, empty temp dir)")
    parser.add_argument("--threads", type=int, help="torch CPU threads in each start (default on CPU: 1; the "
                        "compiled CPU kernels' threads spin against other work on a busy box, and the warm-up runs frames)")
    parser.add_argument("--start", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.start:
        start(args)
        return 0
    cfg = CONFIGS[args.config]
    args.device, args.dtype = cfg["device"], cfg["dtype"]
    args.slots = args.slots or cfg["slots"]
    args.max_positions = args.max_positions or cfg["max_positions"]
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    checkpoint = bench_checkpoint(args.checkpoint, args.device, build_dir_of(args))
    cache = args.cache_dir or tempfile.mkdtemp(prefix="synth-compile-cache-")
    print(f"# bench-warmup {args.config}: {args.slots} slots x {args.max_positions} positions, {args.dtype} on "
          f"{args.device}, compile cache {cache}; each start a fresh process with an empty inductor cache"
          + (f", {args.threads} torch threads" if args.threads else ""),
          flush=True)
    rows = [_run_start(args, checkpoint, None, "no compile cache")] if args.no_cache else []
    for i in range(args.starts):
        rows.append(_run_start(args, checkpoint, cache, "first (cold)" if i == 0 else f"start {i + 1}"))
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    print()
    print("| start | compile cache | graphs loaded / compiled | warm-up s | compile s | capture s | process s | "
          "cold / this warm-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    cold = next((r for r in rows if r["cache"] == "cold"), None)
    for r in rows:
        ratio = f"x{cold['warmup_s'] / r['warmup_s']:.1f}" if cold else "-"
        print(f"| {r['start']} | {r['cache']} | {r['graphs_hit']} / {r['graphs_compiled']} | {r['warmup_s']:.1f} | {r['compile_s']:.1f} | {r['capture_s']:.1f} | "
              f"{r['process_s']:.1f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
