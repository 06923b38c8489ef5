#!/usr/bin/env bash
# Install (scripts/setup.sh) and run the demo job: the example manifest through a
# local Ray and the tiny offline CSM, into out/demo. Extra arguments go to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python jobs/synthesize.py --config configs/demo.yaml --input examples/dialogues.parquet --output out/demo "$@"
