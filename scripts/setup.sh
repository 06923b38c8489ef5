#!/usr/bin/env bash
# Install everything synth needs into ./.venv (idempotent; safe to re-run).
#   - Debian packages: espeak-ng (real speech for test fixtures), chromium (renders the run report in a test)
#   - torch==2.13.0 CPU build (pinned: an unpinned torch pulls a multi-GB CUDA build)
#   - synth itself (editable) with its test, book, export and quality-control (qc) extras
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v espeak-ng >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq espeak-ng >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
python -m pip install -q -e '.[test,book,export,train,qc]' 2>&1 | grep -v "^WARNING: Location\|BuildBackendWarning\|^ \|^$" || true
# the speaker encoder of quality control, without its pins (see pyproject.toml's `qc` extra)
python -m pip install -q --no-deps resemblyzer==0.1.4 2>&1 | grep -v "^WARNING: Location" || true
python -c "import torch, transformers, ray, synth; print(f'synth ready: torch {torch.__version__}, transformers {transformers.__version__}, ray {ray.__version__}')"
