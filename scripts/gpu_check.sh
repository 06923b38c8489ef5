#!/usr/bin/env bash
# The one-call device check (synth/bench/gpu_check.py): attention kernels per call shape, the
# headline benchmark, the QC stage at real sizes beside the engine, graph vs eager codes, result thread
# vs inline, memory at configs/csm-1b.yaml's size, cuDNN attention on/off; each step under its own
# timeout, within nine minutes on a GPU.
# Results in $OUT (or --out DIR; default a new temp dir): gpu_check.txt, one log per step, summary.json.
# Needs torch and transformers only (no Ray, pydantic or yaml; synth need not be installed).
#   scripts/gpu_check.sh            # CUDA when torch sees it, else small sizes on CPU
#   scripts/gpu_check.sh --cpu      # small sizes on CPU (what CI runs)
#   scripts/gpu_check.sh --help     # every option (--only, --timeouts, --budget-s, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-$(command -v python || command -v python3)}" -m synth.bench.gpu_check "$@"
