"""The one-call device check (`scripts/gpu_check.sh`, `synth.bench.gpu_check`) on CPU.

A GPU session runs the check once and reads only what comes back from OUT, so CI runs it
here at its small CPU sizes, in processes where Ray and pydantic cannot be imported (as on
the GPU box), and checks that the files, sections and numbers it promises are there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from helpers import REPO

from synth.bench import gpu_check

# What the device tool hands back from OUT: at most 8 files of at most 16 MiB, plain names.
MAX_FILES, MAX_BYTES, NAME = 8, 16 * 2**20, re.compile(r"^[A-Za-z0-9._-]+$")
LOGS = ["1_attention.txt", "2_bench.txt", "3_graph_vs_eager.txt", "4_result_thread.txt", "5_memory.txt",
        "6_cudnn_off.txt"]
# Every process of the check runs with Ray and pydantic unimportable, as on the GPU box. yaml
# stays: this box's huggingface_hub imports it (the GPU box's does not); synth's own modules are
# checked without yaml in tests/test_architecture.py.
BLOCKER = "import sys\nfor name in ('ray', 'pydantic'):\n    sys.modules[name] = None\n"


def _check(tmp_path, *args: str, out=None, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run scripts/gpu_check.sh --cpu where Ray and pydantic cannot be imported."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(site)}
    env.pop("OUT", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", "scripts/gpu_check.sh", "--cpu", *args], cwd=REPO, env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory, tiny_checkpoint):
    """The whole check on CPU (OUT given through the environment, as the device tool does)."""
    tmp = tmp_path_factory.mktemp("gpu-check")
    out = tmp / "out"
    result = _check(tmp, "--checkpoint", tiny_checkpoint, out=out)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out, result.stdout


def test_the_check_writes_files_the_device_tool_hands_back(cpu_run):
    out, stdout = cpu_run
    names = sorted(os.listdir(out))
    assert names == sorted(LOGS + ["gpu_check.txt", "summary.json"])
    assert len(names) <= MAX_FILES
    for name in names:
        assert NAME.match(name) and os.path.isfile(out / name) and os.path.getsize(out / name) < MAX_BYTES, name
    assert f"results in {out}" in stdout


def test_the_summary_holds_every_step_and_its_numbers(cpu_run):
    out, _ = cpu_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "cpu" and summary["problems"] == [] and summary["elapsed_s"] > 0
    assert summary["environment"]["torch"] and summary["environment"]["device"] == "cpu"
    steps = summary["steps"]
    assert list(steps) == [s.name for s in gpu_check.STEPS]
    assert {n: s["status"] for n, s in steps.items()} == {
        "attention": "ok", "bench": "ok", "graph_vs_eager": "ok", "result_thread": "ok", "memory": "ok",
        "cudnn_off": "skipped"}
    assert "needs CUDA" in steps["cudnn_off"]["reason"]
    for name, step in steps.items():
        assert step["log"] in LOGS and step["timeout_s"] > 0, name

    calls = steps["attention"]["result"]["calls"]
    kinds = {c["call"].split(",")[0] for c in calls}
    assert kinds == {"backbone decode", "depth decode", "depth two-token pass", "backbone prefill"}
    for c in calls:  # CPU SDPA: flash (the engine's choice) and math run, the CUDA backends refuse
        assert c["backend"] == "FLASH_ATTENTION" and c["layer_us"] > 0 and c["attention_us"] > 0, c
        assert "refused" in c["forced"]["EFFICIENT_ATTENTION"] and c["forced"]["MATH"]["max_err"] < 1e-4, c
    decode = next(c for c in calls if c["call"].startswith("backbone decode"))
    assert decode["q"] == "1x8x4x64" and not decode["enable_gqa"]  # 32 query heads folded onto 8 kv heads

    rows = steps["bench"]["result"]["rows"]
    assert [r["setting"] for r in rows] == ["4 slots", "1 slots"]
    assert all(r["frames_per_s"] > 0 and r["frame_ms"] > 0 and 0 < r["useful_fraction"] <= 1 for r in rows)
    assert "frames/s" in steps["bench"]["result"]["headline"]

    graph = steps["graph_vs_eager"]["result"]
    assert graph["pass"] and graph["graphs"] is False  # no CUDA graphs on CPU: the script's path only
    assert graph["greedy"]["rows_equal"] == 1.0 and graph["sampled"]["rows_equal"] == 1.0
    assert graph["frame_attention"]["sdpa_ops"] == {"FLASH_ATTENTION": 64}  # 2 backbone + 31 x 2 depth layers

    thread = steps["result_thread"]["result"]
    assert thread["pass"] and thread["codes_equal"] and thread["audio_max_diff"] == 0.0

    memory = steps["memory"]["result"]
    assert memory["largest_prefill_tokens"] == memory["prefill_lengths"][-1] == 254
    assert [p["phase"].split(" (")[0] for p in memory["phases"]][-1] == "prefill 4 x 254 tokens"
    assert all(p["peak_rss_gib"] > 0 for p in memory["phases"])


def test_each_log_holds_its_step(cpu_run):
    out, _ = cpu_run
    text = {name: (out / name).read_text() for name in LOGS + ["gpu_check.txt"]}
    for number, name in enumerate(LOGS, 1):
        assert text[name].startswith(f"# step {number} "), name
    assert "backbone prefill, 4 rows x 64 tokens: FLASH_ATTENTION" in text["1_attention.txt"]
    assert "| fast | 4 slots |" in text["2_bench.txt"] and "| fast | 1 slots |" in text["2_bench.txt"]
    assert "no CUDA: no graphs" in text["3_graph_vs_eager.txt"]
    assert "codes equal True" in text["4_result_thread.txt"]
    assert "prefill 4 x 254 tokens" in text["5_memory.txt"]
    assert "needs CUDA" in text["6_cudnn_off.txt"]
    main = text["gpu_check.txt"]
    assert "CUDA graphs, cuDNN and GPU memory are not checked" in main
    assert all(f"step {s.number} {s.name}: " in main for s in gpu_check.STEPS)


def test_the_cudnn_step_runs_its_two_arms_where_it_is_forced_onto_cpu(tmp_path, tiny_checkpoint):
    """The check skips step 6 on CPU; run alone, as the orchestrator starts it, its code still works
    (the cuDNN switch changes nothing on CPU: this keeps the script working, it measures nothing)."""
    result = subprocess.run([sys.executable, "-m", "synth.bench.gpu_check", "--step", "cudnn_off", "--device", "cpu",
                             "--checkpoint", tiny_checkpoint, "--result", str(tmp_path / "ab.json")],
                            cwd=REPO, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ab = json.loads((tmp_path / "ab.json").read_text())
    assert [r["setting"] for r in ab["rows"]] == ["4 slots, cuDNN attention on", "4 slots, cuDNN attention off"]
    assert ab["off_over_on_throughput"] > 0 and "cuDNN off / on" in ab["headline"]


def test_a_step_past_its_timeout_is_stopped_and_recorded(tmp_path, tiny_checkpoint):
    result = _check(tmp_path, "--checkpoint", tiny_checkpoint, "--only", "bench", "--timeouts", "bench=2",
                    "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert list(summary["steps"]) == ["bench"] and summary["problems"] == ["bench"]
    assert summary["steps"]["bench"]["status"] == "timeout" and summary["steps"]["bench"]["seconds"] < 10
    assert "killed at the step's timeout, 2 s" in (tmp_path / "out" / "2_bench.txt").read_text()


def test_steps_are_not_started_once_the_budget_is_spent(tmp_path):
    result = _check(tmp_path, "--budget-s", "0.5", "--out", str(tmp_path / "out"), timeout=60)
    assert result.returncode == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reasons = {name: step["reason"] for name, step in summary["steps"].items()}
    assert all(r.startswith("not enough time left") for n, r in reasons.items() if n != "cudnn_off"), reasons
    assert sorted(os.listdir(tmp_path / "out")) == sorted(LOGS + ["gpu_check.txt", "summary.json"])


def test_unknown_step_names_are_refused():
    with pytest.raises(SystemExit) as exit:
        gpu_check.main(["--only", "attention,nope"])
    assert exit.value.code == 2


def test_the_production_sizes_are_configs_csm_1b_yaml():
    """The GPU box has no yaml, so the check carries the production engine's settings itself."""
    with open(os.path.join(REPO, "configs", "csm-1b.yaml")) as f:
        config = yaml.safe_load(f)
    assert gpu_check.PRODUCTION_SLOTS == config["generation"]["batch_size"]
    assert gpu_check.PRODUCTION_POSITIONS == config["generation"]["max_positions"]
    options = gpu_check.PRODUCTION_OPTIONS
    assert {k: getattr(options, k) for k in config["fast_engine"]} == config["fast_engine"]
    assert gpu_check.GPU_SIZES.dtype == config["model"]["dtype"]
