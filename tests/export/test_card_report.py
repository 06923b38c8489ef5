"""The dataset card and the run report every run writes.

The card: `datasets.load_dataset(OUT)` loads the directory through it, its numbers equal
run.json's, it marks the data machine-generated with the model and weights fingerprint,
QC pass rates appear, equal to run.json's, when the run had QC on, and a README.md synth did not write is
never replaced. The report: Chromium, headless and offline, opens it and every plot's image
decodes (a probe script appended to a copy of the page reads each <img>'s natural size).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from collections import Counter

import pytest
import yaml

from synth.cli import main
from synth.export.stats import QC_METRICS
from synth.pipeline.output import CARD_FILE, CARD_FILE_ASIDE, REPORT_FILE, RUN_RECORD

from .test_exports import source_rows

PROBE = """<script>window.addEventListener("load", () => document.body.setAttribute("data-probe", JSON.stringify(
  [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]))));</script>"""


def card_header(out: str, name: str = CARD_FILE) -> dict:
    text = open(os.path.join(out, name)).read()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("\n---\n", 1)[0][4:])


def load_through_card(out: str, cache_dir):
    """The directory itself through `load_dataset`, its own cache (an earlier session's OUT of the
    same name and file sizes can hit datasets' shared cache)."""
    from datasets import Audio, load_dataset

    return load_dataset(out, split="train", cache_dir=str(cache_dir)).cast_column("audio", Audio(decode=False))


def test_card_loads_with_datasets_and_its_numbers_are_run_jsons(synth_output, tmp_path):
    out, ids = synth_output
    ds = load_through_card(out, tmp_path / "cache")  # the directory itself: its README's configs point at data/
    assert sorted(ds["id"]) == sorted(ids)
    run = json.load(open(os.path.join(out, RUN_RECORD)))
    header = card_header(out)
    numbers = header["synth"]["statistics"]
    assert numbers["turns_generated"] == run["turns_generated"] == len(ids)
    assert numbers["error_rows"] == run["error_rows"] == 1
    assert numbers["audio_seconds"] == pytest.approx(run["audio_seconds"], abs=1e-3)
    assert numbers["audio_hours"] == pytest.approx(run["audio_hours"], abs=1e-6)
    assert numbers["speakers"] == len(set(ds["speaker"])) and numbers["voices"] == 2
    assert "machine-generated" in header["tags"] and header["synth"]["machine_generated"] is True
    assert header["synth"]["models"] == [{"model": ds[0]["model"], "model_weights": ds[0]["model_weights"],
                                          "engine": "fast"}]
    assert header["size_categories"] == ["n<1K"] and "qc_pass_rate" not in numbers
    assert header["synth"]["settings"]["sampling"]["do_sample"] is False
    body = open(os.path.join(out, CARD_FILE)).read()
    assert "Synthetic speech" in body and "Intended use" in body and "QC | not measured" in body


def test_card_with_qc_columns_and_a_users_readme(qc_output, tmp_path):
    out, ids = qc_output
    assert main(["card", out]) == 0  # rewrites the card the run wrote: it is synth's
    rows = source_rows(out)
    numbers = card_header(out)["synth"]["statistics"]
    passed = sum(r["qc_pass"] for r in rows.values())
    qc = json.load(open(os.path.join(out, RUN_RECORD)))["qc"]  # what the run itself counted
    assert 0 < passed < len(rows) and numbers["qc_passed"] == passed == qc["passed"]
    assert numbers["qc_rows"] == len(rows) == qc["turns"]
    assert numbers["qc_pass_rate"] == pytest.approx(passed / len(rows), abs=1e-6) == pytest.approx(qc["pass_rate"], abs=1e-6)
    assert numbers["qc_failure_reasons"] == Counter(reason for r in rows.values() for reason in r["qc_reasons"])
    assert sum(numbers["qc_failure_reasons"].values()) == qc["failed_by_metric"]["trailing_silence_s"]
    assert f"| QC pass rate | {passed / len(rows):.1%} ({passed} of {len(rows)}) |" in open(os.path.join(out, CARD_FILE)).read()
    ds = load_through_card(out, tmp_path / "cache")
    assert "qc_pass" in ds.features and sorted(ds["id"]) == sorted(ids)
    # a README.md synth did not write (an adopted directory's, or one whose mark was removed) stays as it is
    mine = str(tmp_path / "mine")
    shutil.copytree(out, mine)
    with open(os.path.join(mine, CARD_FILE), "w") as f:
        f.write("# My corpus\n\nMy own notes.\n")
    assert main(["card", mine]) == 0
    assert open(os.path.join(mine, CARD_FILE)).read() == "# My corpus\n\nMy own notes.\n"
    assert card_header(mine, CARD_FILE_ASIDE)["synth"]["statistics"] == numbers


def render(page: str, tmp_path) -> list:
    """[alt, complete, naturalWidth, naturalHeight] of every <img> once Chromium has loaded `page`."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is required to render the report: run scripts/setup.sh")
    probe = tmp_path / "probe.html"
    probe.write_text(open(page).read() + PROBE)
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_report_renders_offline_with_every_plot(synth_output, qc_output, tmp_path):
    out, _ = synth_output
    page = open(os.path.join(out, REPORT_FILE)).read()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert page.count("<audio controls") == 4
    images = render(os.path.join(out, REPORT_FILE), tmp_path)
    assert [alt for alt, *_ in images] == ["Throughput over time", "Durations", "Characters per second",
                                           "Hours per speaker", "Hours per voice", "Stop reasons",
                                           "Error rows by reason"]
    assert all(complete and width > 100 and height > 100 for _, complete, width, height in images), images
    # with QC on: a plot per measured QC metric and the failure reasons, written again by `synth report`
    qc_out, _ = qc_output
    assert main(["report", qc_out]) == 0
    images = render(os.path.join(qc_out, REPORT_FILE), tmp_path)
    alts = [alt for alt, *_ in images]
    rows = source_rows(qc_out).values()
    measured = sorted(m for m in QC_METRICS if any(r[m] is not None for r in rows))  # a plot per measured metric
    assert "trailing_silence_s" in measured and "wer" not in measured  # ASR off
    assert alts[6:] == [f"QC: {m}" for m in measured] + ["QC failure reasons", "Error rows by reason"]
    assert all(complete and width > 100 for _, complete, width, _ in images), images
