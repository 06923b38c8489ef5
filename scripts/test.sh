#!/usr/bin/env bash
# Install (scripts/setup.sh), lint (ruff: pyflakes and import order), and run the test suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"` for the quick lane.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m ruff check synth tests jobs scripts  # lint and import order first: a finding fails before the tests run
exec python -m pytest -q -p no:cacheprovider --durations=10 "$@"
