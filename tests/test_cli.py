"""The `synth` command: its entry points and the errors it gives before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import REPO, run_job


def test_the_installed_command_and_python_m_synth_are_the_same_command():
    installed = os.path.join(os.path.dirname(sys.executable), "synth")  # `pip install` put it beside python
    assert os.access(installed, os.X_OK), f"{installed} is missing: is synth installed (scripts/setup.sh)?"
    listed = subprocess.run([installed, "--help"], capture_output=True, text=True, timeout=60)
    by_module = subprocess.run([sys.executable, "-m", "synth", "--help"], cwd=REPO, capture_output=True, text=True,
                               timeout=60)
    assert listed.returncode == by_module.returncode == 0, listed.stderr + by_module.stderr
    assert listed.stdout == by_module.stdout
    for command in ("run", "book", "verify", "bench", "bench-driver"):
        assert f"    {command} " in listed.stdout, listed.stdout


def test_job_scripts_are_the_commands_options():
    for script, command in (("jobs/synthesize.py", "run"), ("jobs/render_book.py", "book")):
        result = run_job([script, "--help"])
        assert result.returncode == 0 and f"usage: synth {command}" in result.stdout, result.stdout + result.stderr


def test_bad_arguments_fail_with_a_message_and_exit_2(tmp_path):
    no_output = run_job(["jobs/synthesize.py", "--input", "examples/dialogues.parquet"])
    assert no_output.returncode == 2 and "--output is required unless --dry-run" in no_output.stderr
    bad_pause = run_job(["jobs/render_book.py", "--config", "configs/demo.yaml", "--book", "examples/books/alice-ch1-3.md",
                         "--voice", "narrator", "--output", str(tmp_path / "out"), "--sentence-pause", "-1"])
    assert bad_pause.returncode == 2, bad_pause.stderr
    assert "--sentence-pause/--paragraph-pause" in bad_pause.stderr and "Traceback" not in bad_pause.stderr
    assert not (tmp_path / "out").exists()



def test_an_override_whose_value_is_not_yaml_exits_2_naming_it_without_a_traceback(tmp_path):
    run = ["jobs/synthesize.py", "--input", "examples/dialogues.parquet"]
    book = ["jobs/render_book.py", "--book", "examples/books/alice-ch1-3.md", "--voice", "narrator"]
    for args in (run, book):
        result = run_job([*args, "--config", "configs/demo.yaml", "--output", str(tmp_path / "out"),
                          "--set", "generation.seed=[1"])
        assert result.returncode == 2, result.stdout + result.stderr
        assert "override 'generation.seed=[1'" in result.stderr and "not valid YAML" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "out").exists()
