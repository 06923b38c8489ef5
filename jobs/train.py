"""Fine-tune CSM on a synth dataset with Ray Train (`synth train`).

    python jobs/train.py --config configs/train-demo.yaml --data out/demo --output out/demo-ft
    ray job submit --working-dir . -- python jobs/train.py --config configs/train-csm-1b.yaml --data ... --output ...

Options: `python jobs/train.py --help`, or `synth train --help` (`synth.cli`).
"""

import sys

from synth.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
