"""Driver memory and time on a large manifest: planning, id checks, dry-run validation.

    synth bench-driver --rows 1000000       # writes /tmp/synth-bench/manifest.parquet once
    python jobs/bench_driver.py --rows 1000000   # the same

Prints a table of each driver phase with wall time and the driver's peak RSS after it.
The manifest is written by this script in a first process; the phases run in a fresh
one, so the peak RSS is the driver's alone.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def make_manifest(path: str, rows: int, batch: int = 100_000) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    import soundfile as sf

    from synth.pipeline.manifest import scripts_schema, scripts_table

    os.makedirs(os.path.join(os.path.dirname(path), "voices"), exist_ok=True)
    sf.write(os.path.join(os.path.dirname(path), "voices", "a.wav"), np.zeros(24000, dtype=np.float32), 24000)
    with pq.ParquetWriter(path, scripts_schema()) as writer:
        for start in range(0, rows, batch):
            n = min(batch, rows - start)
            writer.write_table(scripts_table([
                {"id": f"script-{i:09d}", "turns": [
                    {"speaker": 0, "text": "Hello there, this is the voice prompt.", "audio": "voices/a.wav"},
                    {"speaker": i % 4, "text": f"Line number {i} of a rather long synthetic manifest.",
                     "audio": None}]}
                for i in range(start, start + n)
            ]), row_group_size=10_000)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(path: str, scripts_per_shard: int) -> None:
    from synth.pipeline.config import load_config
    from synth.pipeline.dry_run import dry_run
    from synth.pipeline.manifest import check_unique_ids, open_manifest
    from synth.pipeline.plan import plan_shards

    config = load_config(None, [f"output.scripts_per_shard={scripts_per_shard}"])
    rows = []

    def phase(name, fn):
        t0 = time.perf_counter()
        result = fn()
        rows.append((name, time.perf_counter() - t0, peak_rss_mib()))
        return result

    phase("python + imports", lambda: None)
    manifest = phase("open manifest (footers)", lambda: open_manifest(path))
    phase("duplicate-id check", lambda: check_unique_ids(manifest))
    plan = phase("plan shards", lambda: plan_shards(manifest, scripts_per_shard))
    report = phase("dry-run: validate every row", lambda: dry_run(config, manifest, plan))
    print(f"manifest: {manifest.num_rows} rows, {len(plan.shards)} shards, "
          f"{report.turns_to_generate} turns to generate, {report.bad_rows} bad rows")
    print(f"{'phase':<32} {'wall s':>8} {'peak RSS MiB':>13}")
    for name, wall, rss in rows:
        print(f"{name:<32} {wall:>8.1f} {rss:>13.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="synth bench-driver", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--path", default="/tmp/synth-bench/manifest.parquet")
    parser.add_argument("--scripts-per-shard", type=int, default=32)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.path, args.scripts_per_shard)
        return
    if not os.path.exists(args.path):
        print(f"writing a {args.rows}-row manifest to {args.path} ...", flush=True)
        make_manifest(args.path, args.rows)
    subprocess.run([sys.executable, "-m", "synth.bench.driver_memory", "--measure", "--path", args.path,
                    "--scripts-per-shard", str(args.scripts_per_shard)], check=True)


if __name__ == "__main__":
    main()
