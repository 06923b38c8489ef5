"""Driver time and memory on a large manifest (`synth bench-driver`).

    python jobs/bench_driver.py --rows 1000000

Options and what it measures: `synth.bench.driver_memory`, BENCHMARKS.md.
"""

import sys

from synth.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench-driver", *sys.argv[1:]]))
