"""Benchmark: the frame loop's host time per frame, against held caches and queued rows.

    synth bench-loop --config tiny-cpu                            # 64 slots, CPU, eager steps
    synth bench-loop --config tiny-cpu --held 0,16384 --queued 0,16384

A frame step costs the same whatever waits outside it; the host's work between two steps
(reading stop flags, collecting finished rows, admitting queued ones, the checks for caches
held for a chain's next turn) must not grow with how many rows are queued or how many caches
are held either. For each pair (held caches, queued rows) this runs the fast engine's real
loop (`FastEngine.run` with a result callback, finished rows not Mimi-decoded) on rows of 4 to
12 frames in random order, so that every frame or two rows finish and queued rows are admitted, with the
queue kept at least that long throughout and that many entries in the held-cache table
(bookkeeping of parked caches no queued row continues: no cache memory). It times each frame
step alone and the loop from one step to the next over the same frames, after the first
admission, and prints both per frame and their difference, the host's time. Runs without Ray
or pydantic.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from synth.bench.checkpoints import add_checkpoint_args, bench_checkpoint, build_dir_of
from synth.bench.throughput import SAMPLING
from synth.engine.interface import GenerationRequest

SKIP_FRAMES = 4  # the first frames follow the first admission of every slot: not timed
ROW_FRAMES = (4, 12)  # rows' frame caps, uniform: some rows finish every frame or two


class _Enough(Exception):
    """Raised out of the frame loop once the frames to time have run."""


class _TimedFrames:
    """The scheduler's frame function, timed: when each step starts and how long it takes."""

    def __init__(self, scheduler, frames: int):
        self.scheduler, self.run_frame, self.frames = scheduler, scheduler.run_frame, frames
        self.starts: list[float] = []
        self.steps: list[float] = []
        self.shortest_queue = None  # the queue's length at its shortest over the timed frames

    def __call__(self, sample: bool, kv_len: int | None = None) -> None:
        if len(self.starts) == self.frames:
            raise _Enough
        t = time.perf_counter()
        if len(self.starts) >= SKIP_FRAMES:
            queue = len(self.scheduler.queue)
            self.shortest_queue = queue if self.shortest_queue is None else min(self.shortest_queue, queue)
        self.starts.append(t)
        self.run_frame(sample, kv_len)
        self.steps.append(time.perf_counter() - t)


def _hold(engine, held: int) -> None:
    """`held` entries in the held-cache table beyond the slots: rows that ended, their caches parked
    for a follow-up that is not queued (bookkeeping only: no parked cache is allocated, and the
    benchmark's rows are followed by nothing, so none is parked)."""
    scheduler = engine.scheduler
    scheduler.policy.reset_parking(held)
    engine.model.setup_parking(held)
    keys = np.full((8, 1 + engine.num_codebooks), -1, dtype=np.int64)
    for index in range(engine.num_slots, engine.num_slots + held):
        epoch = scheduler.held.ended(index, ("held", index), -1, True)
        scheduler.held.record(index, epoch, keys)


def measure(engine, held: int, queued: int, frames: int) -> dict:
    """Time `frames` frames of the loop with `held` held caches and at least `queued` rows queued."""
    _hold(engine, held)
    consumed = engine.num_slots * (1 + (frames + SKIP_FRAMES) // ROW_FRAMES[0])  # at most, rows finishing every 4
    rng = np.random.RandomState(0)
    requests = [GenerationRequest(f"r{i}", "Hello there.", i % 4, int(rng.randint(ROW_FRAMES[0], ROW_FRAMES[1] + 1)),
                                  seed=i) for i in range(queued + consumed)]
    timer = _TimedFrames(engine.scheduler, frames + SKIP_FRAMES)
    engine.scheduler.run_frame = timer
    try:
        engine.run(requests, SAMPLING, on_result=lambda result: None, decode=False)
    except _Enough:
        pass
    finally:
        engine.scheduler.run_frame = timer.run_frame
    starts, steps = timer.starts[SKIP_FRAMES:], timer.steps[SKIP_FRAMES:-1]
    loop_ms = (starts[-1] - starts[0]) / (len(starts) - 1) * 1e3
    step_ms = float(np.mean(steps)) * 1e3
    return {"held": held, "queued": queued, "frames": len(starts) - 1, "loop_ms": loop_ms, "step_ms": step_ms,
            "host_ms": loop_ms - step_ms, "shortest_queue": timer.shortest_queue}


CONFIGS = {"tiny-cpu": dict(device="cpu", dtype="float32", slots=64, max_positions=256),
           "csm1b-cuda": dict(device="cuda", dtype="bfloat16", slots=256, max_positions=512)}


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="synth bench-loop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny-cpu")
    add_checkpoint_args(parser)
    parser.add_argument("--slots", type=int, help="as fast_engine.num_slots")
    parser.add_argument("--held", type=_ints, default=[0, 1024, 16384], help="held caches (default %(default)s)")
    parser.add_argument("--queued", type=_ints, default=[0, 1024, 16384], help="queued rows (default %(default)s)")
    parser.add_argument("--frames", type=int, default=40, help="frames timed per pair (default %(default)s)")
    parser.add_argument("--compile", action="store_true", help="compiled steps (default: eager on CPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    cfg = CONFIGS[args.config]
    if args.threads:
        torch.set_num_threads(args.threads)
    from synth.engine.fast_engine import FastEngine
    from synth.engine.options import FastEngineOptions

    checkpoint = bench_checkpoint(args.checkpoint, cfg["device"], build_dir_of(args))
    slots = args.slots or cfg["slots"]
    # Rows in their given order (not longest first), so their caps are mixed and a few end every frame.
    engine = FastEngine.load(checkpoint, device=cfg["device"], dtype=cfg["dtype"], num_slots=slots,
                             max_positions=cfg["max_positions"], compile=args.compile or cfg["device"] == "cuda",
                             options=FastEngineOptions(longest_first=False))
    print(f"# bench-loop {args.config}: {slots} slots, {cfg['dtype']} on {cfg['device']}, "
          f"{'compiled' if engine.compiled else 'eager'} steps, rows of {ROW_FRAMES[0]}-{ROW_FRAMES[1]} frames, "
          f"{args.frames} frames timed per pair, torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    for held in args.held:
        for queued in args.queued:
            rows.append(measure(engine, held, queued, args.frames))
            print("done:", rows[-1], flush=True)
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    print()
    print("| held caches | queued rows (at least) | frames | loop ms per frame | frame step ms | host ms per frame |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['held']} | {r['shortest_queue']} | {r['frames']} | {r['loop_ms']:.2f} | {r['step_ms']:.2f} | "
              f"{r['host_ms']:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
