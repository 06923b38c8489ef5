"""An export killed midway and run again gives each row exactly once.

`python -m synth export` runs in a subprocess on the package's Ray with two crash points
armed (`synth.store.faults`): an export task dies between a part's files and its marker
(Ray retries the part), then the driver dies after its second part, as `kill -9` would
leave it. The rerun finishes the export; WebDataset reads every row exactly once and every
file in the export is one a marker lists (or a record).
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import REPO, assert_exactly_once, run_job

from synth.export.job import verify_export_at
from synth.store import faults

from .test_exports import check_webdataset, source_rows

pytestmark = pytest.mark.slow  # the package fixture runs synthesis (and QC) on Ray


def test_an_export_killed_midway_and_rerun_gives_each_row_once(synth_output, ray_here, tmp_path):
    out, ids = synth_output
    dest = str(tmp_path / "wds")
    env = {"RAY_ADDRESS": ray_here.get_runtime_context().gcs_address, "PYTHONPATH": REPO}
    args = ["-m", "synth", "export", out, "--format", "webdataset", "--to", dest, "--workers", "1",
            "--shard-mb", "0.05"]
    tokens = [str(tmp_path / "task-crashed"), str(tmp_path / "driver-crashed")]
    crash = f"export-part-files:1:{tokens[0]},export-part-done:2:{tokens[1]}"
    first = run_job(args, {**env, faults.ENV_VAR: crash}, timeout=240)
    assert first.returncode == faults.CRASH_EXIT_STATUS, first.stdout + first.stderr
    assert all(os.path.exists(t) for t in tokens)  # both crash points fired
    markers = [json.load(open(os.path.join(out, "_progress", n))) for n in os.listdir(os.path.join(out, "_progress"))]
    parts = len([m for m in markers if "part" in m and m["rows"]])  # the parts that hold rows
    committed = [n for n in os.listdir(os.path.join(dest, "_progress"))]
    assert len(committed) == 2 < parts, committed  # killed midway: two parts exported, the rest not
    assert not json.load(open(os.path.join(dest, "export.json")))["finished"]

    again = run_job(args, env, timeout=240)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{parts - 2} to export" in again.stdout
    check_webdataset(dest, source_rows(out), set(ids))
    record = json.load(open(os.path.join(dest, "export.json")))
    assert record["finished"] and record["rows"] == len(ids) and record["parts_exported"] == parts
    # nothing but committed files and the records: no temp file, no part outside a marker
    listed = set()
    for name in os.listdir(os.path.join(dest, "_progress")):
        listed |= {f["path"] for f in json.load(open(os.path.join(dest, "_progress", name)))["files"]}
        listed.add(f"_progress/{name}")
    present = {os.path.relpath(os.path.join(d, f), dest) for d, _, fs in os.walk(dest) for f in fs}
    assert present - listed == {"_synth.json", "_identity.json", "export.json", "README.md"}, present - listed
    assert_exactly_once([p for p in present if p.endswith(".tar")], sorted(p for p in listed if p.endswith(".tar")))
    report = verify_export_at(dest)  # every unit against its marker, and every source part exported
    assert report.ok and report.units == parts, report.render()
    # a damaged unit of the export: verify finds it, the same command makes it again
    damaged = os.path.join(dest, "_progress", sorted(committed)[0])
    with open(damaged, "wb") as f:
        f.write(b'{"unit": "cut short')
    assert not verify_export_at(dest).ok
    repaired = run_job(args, env, timeout=240)
    assert repaired.returncode == 0 and "VERIFY FAILED" in repaired.stdout, repaired.stdout + repaired.stderr
    assert verify_export_at(dest).ok
    check_webdataset(dest, source_rows(out), set(ids))


@pytest.fixture(autouse=True)
def _no_crash_points(monkeypatch):
    monkeypatch.delenv(faults.ENV_VAR, raising=False)
