"""The model a benchmark loads, and the two options that choose it.

This module owns `--checkpoint` and `--build-dir` as every benchmark script takes them
(`add_checkpoint_args`), where a benchmark builds what it loads (`build_dir_of`), and which
checkpoint that is (`bench_checkpoint`: the user's, else the tiny checkpoint on CPU or random
weights at CSM-1B's size on CUDA, built once per build directory). It imports neither torch nor
the engine until a checkpoint is built, so a script can parse its options before its timed
imports, and it knows nothing about workloads or tables.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """`--checkpoint` and `--build-dir`, as every benchmark takes them (see `bench_checkpoint`, `build_dir_of`)."""
    parser.add_argument("--checkpoint", help="a checkpoint dir or hub id to load instead of the config's own")
    parser.add_argument("--build-dir", help="build the config's own checkpoint here, or reuse the one built "
                        "here before (default: a fresh temp dir)")


def build_dir_of(args: argparse.Namespace) -> Path:
    """`--build-dir`, else a fresh temp dir: where a benchmark builds (or finds) what it loads."""
    return Path(args.build_dir) if args.build_dir else Path(tempfile.mkdtemp(prefix="synth-bench-"))


def bench_checkpoint(checkpoint: str | None, device: str, build_dir: Path) -> str:
    """The model a benchmark loads: `checkpoint` if given, else the tiny checkpoint (CPU) or random
    weights at CSM-1B's size (CUDA), built under `build_dir` once and reused there."""
    if checkpoint:
        return checkpoint
    if device == "cpu":
        from synth.engine.tiny_checkpoint import ensure_tiny_checkpoint

        return str(ensure_tiny_checkpoint(build_dir / "tiny-csm"))
    from synth.engine.tiny_checkpoint import build_csm1b_random

    return str(build_csm1b_random(build_dir / "csm1b-random", device))
