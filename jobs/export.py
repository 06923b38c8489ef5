"""Export a synth output as Lhotse Shar, NeMo JSON lines or WebDataset shards (`synth export`).

    python jobs/export.py out/demo --format lhotse_shar --to out/demo-shar
    ray job submit --working-dir . -- python jobs/export.py out/demo --format webdataset --to s3://bucket/demo-wds

Options: `python jobs/export.py --help`, or `synth export --help` (`synth.cli`).
"""

import sys

from synth.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
