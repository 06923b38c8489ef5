"""Synthesize a speech dataset from a Parquet manifest with CSM on Ray (`synth run`).

    python jobs/synthesize.py --config configs/demo.yaml --input examples/dialogues.parquet --output out/demo
    ray job submit --working-dir . -- python jobs/synthesize.py --config ... --input ... --output ...

Options: `python jobs/synthesize.py --help`, or `synth run --help` (`synth.cli`).
"""

import sys

from synth.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
