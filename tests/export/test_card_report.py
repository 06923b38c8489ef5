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

import pyarrow.parquet as pq
import pytest
import yaml

from synth.cli import main
from synth.pipeline.output import CARD_FILE, CARD_FILE_ASIDE, REPORT_FILE, RUN_RECORD
from synth.pipeline.record import NUMERIC_METRICS as QC_METRICS

from .test_exports import source_rows

pytestmark = pytest.mark.slow  # the package fixture runs synthesis (and QC) on Ray

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
    assert header["synth"]["origin"] == "generated" and "recorded-speech" not in header["tags"]
    assert (header["synth"]["rows_generated"], header["synth"]["rows_recorded"]) == (len(ids), 0)
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
    # failures counted by metric, as run.json counts them (the values stay in the rows' qc_reasons)
    assert numbers["qc_failed_by_metric"] == qc["failed_by_metric"] == dict(
        Counter(reason.split(":")[0] for r in rows.values() for reason in r["qc_reasons"]))
    assert numbers["qc_rescored_rows"] == 0
    card = open(os.path.join(out, CARD_FILE)).read()
    assert f"| QC pass rate | {passed / len(rows):.1%} ({passed} of {len(rows)}) |" in card
    # where the run's QC models ran, from run.json (e.g. DNSMOS's path and precision)
    assert qc["models"] and all(f"{group}: {' or '.join(where)}" in card for group, where in qc["models"].items())
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
    assert alts[6:] == [f"QC: {m}" for m in measured] + ["QC failures by metric", "Error rows by reason"]
    assert all(complete and width > 100 for _, complete, width, _ in images), images


def _imported(tmp_path, speech_clip, checkpoint) -> str:
    """OUT of `synth import` (the command) over two espeak clips with transcripts."""
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(speech_clip, clips / "a.wav")
    (clips / "a.txt").write_text("Hello there, this is a recorded voice prompt.")
    subprocess.run(["espeak-ng", "-w", str(clips / "b.wav"), "A second clip."], check=True)
    (clips / "b.txt").write_text("A second clip.")
    out = str(tmp_path / "imported")
    assert main(["import", "--clips", str(clips), "--model", checkpoint, "--output", out, "--rows-per-part", "1"]) == 0
    return out


def test_an_imports_card_says_recorded_it_loads_and_its_clips_are_not_marked_generated(speech_clip, tiny_checkpoint,
                                                                                       synth_output, tmp_path):
    """`synth import` writes a card and a report as a run does; the card says the rows are recordings (none
    generated), `load_dataset(OUT)` loads through it (without a card it met `_progress/*.json`), and each clip
    is marked as an imported recording, never as AI-generated. A dataset holding both kinds says both, counted."""
    from synth.pipeline.provenance import (
        RECORDED_SPEECH,
        read_audio_marking,
        read_parquet_marking,
    )

    out = _imported(tmp_path, speech_clip, tiny_checkpoint)
    header = card_header(out)
    assert header["synth"]["origin"] == "recorded" and header["synth"]["machine_generated"] is False
    assert (header["synth"]["rows_generated"], header["synth"]["rows_recorded"]) == (0, 2)
    assert "synthetic" not in header["tags"] and "machine-generated" not in header["tags"]
    body = open(os.path.join(out, CARD_FILE)).read()
    assert "**Recorded speech.**" in body and "none of it is a recording" not in body and "No run.json" not in body
    assert "an import of recordings" in open(os.path.join(out, REPORT_FILE)).read()
    ds = load_through_card(out, tmp_path / "cache")
    assert sorted(ds["id"]) == ["a:0", "b:0"] and set(ds["stop_reason"]) == {"recorded"}
    for row in ds:
        record = read_audio_marking(row["audio"]["bytes"])
        assert record["ai_generated"] is False and record["statement"] == RECORDED_SPEECH
        assert record["digital_source_type"] is None and record["id"] == row["id"]
    for name in os.listdir(os.path.join(out, "data")):
        marking = read_parquet_marking(pq.read_schema(os.path.join(out, "data", name)).metadata)
        assert marking["ai_generated"] is False and marking["rows_recorded"] == 1

    # a mixed dataset: the import with a part of generated rows committed beside its own by the real writer
    from synth.pipeline.output import IMPORT
    from synth.pipeline.writer import DatasetWriter
    from synth.store.store import Store

    mixed = str(tmp_path / "mixed")
    shutil.copytree(out, mixed)
    generated = list(source_rows(synth_output[0]).values())[:3]
    writer = DatasetWriter(Store.at_uri(mixed, IMPORT), sample_rate_hz=24000, audio_format="wav",
                           write_audio_files=False)
    writer.commit_part(99, 0, generated, [], scripts=len({r["script_id"] for r in generated}))
    assert main(["card", mixed]) == 0
    header = card_header(mixed)
    assert header["synth"]["origin"] == "mixed" and header["synth"]["machine_generated"] is True
    assert (header["synth"]["rows_generated"], header["synth"]["rows_recorded"]) == (3, 2)
    assert {"synthetic", "recorded-speech"} <= set(header["tags"])
    assert "3 clips were machine-generated" in open(os.path.join(mixed, CARD_FILE)).read()
    part = read_parquet_marking(pq.read_schema(os.path.join(mixed, "data", "shard-00099-part-0000.parquet")).metadata)
    assert part["ai_generated"] is True and part["rows_generated"] == 3
