"""Engine throughput: the fast engine against the transformers reference (`synth bench`).

    python jobs/benchmark.py --config tiny-cpu
    python -m synth bench --config csm1b-cuda      # the same, where synth is not installed

Options and what it measures: `synth.bench.throughput`, BENCHMARKS.md.
"""

import sys

from synth.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
