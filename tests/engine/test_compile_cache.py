"""The compile cache: a second start loads the compiled frame steps instead of compiling them.

The first engine compiles (one attention bucket: five compiled pieces) into a fresh cache
directory; a second start in a new process, with an empty inductor cache of its own as on
another machine, finds every compiled graph there (inductor's FX-graph cache hits, no miss)
and generates the same codes. `synth bench-warmup` measures the time this saves.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO

from synth.engine.compile_cache import KEY_FILE, CompileCache
from synth.engine.fast_engine import FastEngine
from synth.engine.interface import GenerationRequest, SamplingParams
from synth.engine.options import FastEngineOptions

REQUESTS = [GenerationRequest("a", "Hello there, how are you?", 0, 6), GenerationRequest("b", "Fine thanks.", 1, 4)]
GREEDY = SamplingParams(do_sample=False)

SECOND_START = """
import json, sys
import torch
from torch._dynamo.utils import counters
from synth.engine.fast_engine import FastEngine
from synth.engine.interface import GenerationRequest, SamplingParams
from synth.engine.options import FastEngineOptions
torch.set_num_threads(int(sys.argv[3]))  # as the first start: inductor's CPU code depends on it
engine = FastEngine.load(sys.argv[1], device="cpu", dtype="float64", num_slots=2, max_positions=128, compile=True,
                         options=FastEngineOptions(num_kv_buckets=1, compile_cache=sys.argv[2]))
requests = [GenerationRequest("a", "Hello there, how are you?", 0, 6), GenerationRequest("b", "Fine thanks.", 1, 4)]
codes = [r.codes.tolist() for r in engine.generate(requests, SamplingParams(do_sample=False))]
print(json.dumps({"cache": engine.describe().compile_cache, "hits": counters["inductor"]["fxgraph_cache_hit"],
                  "misses": counters["inductor"]["fxgraph_cache_miss"], "codes": codes}))
"""


@pytest.mark.slow
def test_a_second_start_loads_every_compiled_step_from_the_cache(tiny_checkpoint, tmp_path):
    cache = str(tmp_path / "compile-cache")
    options = FastEngineOptions(num_kv_buckets=1, compile_cache=cache)
    engine = FastEngine.load(tiny_checkpoint, device="cpu", dtype="float64", num_slots=2, max_positions=128,
                             compile=True, options=options)
    assert engine.describe().compile_cache == "cold" and engine.compile_s > 0
    directory = engine.compile_cache.directory
    key = json.loads((directory / KEY_FILE).read_text())
    assert key["key"]["num_slots"] == 2 and key["key"]["max_positions"] == 128 and key["key"]["dtype"] == "float64"
    assert key["key"]["device"].startswith("cpu ") and key["key"]["torch"] and key["compile_s"] > 0
    assert any((directory / "inductor").rglob("*.so"))  # the compiled kernels' binaries are in it
    cold = [r.codes for r in engine.generate(REQUESTS, GREEDY)]

    other = CompileCache(cache, {**engine.compile_cache.key, "num_slots": 3})  # other shapes: another directory
    assert other.directory != directory and not other.is_warm()

    env = {"PYTHONPATH": REPO, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "empty-inductor"), "PATH": "/usr/bin:/bin"}
    threads = str(torch.get_num_threads())
    result = subprocess.run([sys.executable, "-c", SECOND_START, tiny_checkpoint, cache, threads], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    second = json.loads(result.stdout.strip().splitlines()[-1])
    assert second["cache"] == "loaded"
    assert second["hits"] >= 5 and second["misses"] == 0, second  # first and next per sampling mode, one advance
    for want, got in zip(cold, second["codes"]):
        np.testing.assert_array_equal(np.asarray(got), want)
