"""Exports loaded by their own libraries: Lhotse Shar, NeMo JSON lines, WebDataset tar shards.

One real run (conftest's `synth_output`) and the same run with QC on are exported in every format
on the package's Ray; each export is read back with its format's own library and checked
row by row against the output's data parts: every kept row exactly once, audio and codes
equal, durations matching the files, and the filters dropping exactly the rows they should.
"""

from __future__ import annotations

import glob
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from helpers import assert_exactly_once, dataset_store, recommit

import synth
from synth.export.job import run_export
from synth.export.options import ExportOptions
from synth.export.rows import ExportError
from synth.pipeline.output import PLAN_RECORD
from synth.store.errors import StoreError

pytestmark = pytest.mark.slow  # the package fixture runs synthesis (and QC) on Ray


def source_rows(out: str) -> dict[str, dict]:
    """id -> row of every data part of the output."""
    directory = os.path.join(out, "data")
    return {r["id"]: r for f in sorted(os.listdir(directory)) for r in pq.read_table(os.path.join(directory, f)).to_pylist()}


def samples_of(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="int16")[0]


def export(out: str, dest: str, log=None, **options) -> dict:
    return run_export(out, dest, ExportOptions(num_workers=2, **options), log=log or (lambda m: None))


def read_shar(dest: str, directory: str = "shar") -> dict:
    from lhotse import CutSet

    found = {}
    for cut in CutSet.from_shar(in_dir=os.path.join(dest, directory)):
        assert cut.id not in found, f"{cut.id} twice"
        found[cut.id] = cut
    return found


def check_shar(dest: str, rows: dict[str, dict], kept: set[str], directory: str = "shar") -> None:
    cuts = read_shar(dest, directory)
    assert_exactly_once(list(cuts), sorted(kept))
    for row_id, cut in cuts.items():
        row = rows[row_id]
        audio = cut.load_audio()  # [1, samples] float32
        assert audio.shape == (1, row["num_frames"] * 1920)
        assert np.array_equal(np.round(audio[0] * 32768).astype(np.int16), samples_of(row["audio"]["bytes"]))
        codes = cut.load_custom("codes")  # [num_frames, K]
        assert np.array_equal(codes, np.array(row["codes"], dtype=np.int16)), row_id
        assert cut.codes.frame_shift == 0.08 and cut.codes.temporal_dim == 0
        assert cut.duration == pytest.approx(row["duration_s"])
        (sup,) = cut.supervisions
        assert (sup.text, sup.speaker, sup.language) == (row["text"], str(row["speaker"]), "en")
        assert sup.custom == {"text_form": "written", "spoken_text": row["spoken_text"]}  # which text, and the other
        for key in ("seed", "voice", "context_ids", "model_weights"):
            assert cut.custom[key] == row[key], key
        if row["qc_pass"] is not None:  # a run with QC on: its verdict and measured scores come along
            for key in ("qc_pass", "qc_reasons", "take", "num_takes", "trailing_silence_s", "loop_score"):
                assert cut.custom[key] == row[key], key


def check_nemo(dest: str, rows: dict[str, dict], kept: set[str], manifest: str = "manifest.jsonl") -> None:
    manifest = os.path.join(dest, "nemo", manifest)
    lines = [json.loads(line) for line in open(manifest)]
    assert_exactly_once([entry["id"] for entry in lines], sorted(kept))
    for entry in lines:
        row = rows[entry["id"]]
        path = os.path.join(os.path.dirname(manifest), entry["audio_filepath"])
        info = sf.info(path)
        assert entry["duration"] == pytest.approx(info.frames / info.samplerate) == pytest.approx(row["duration_s"])
        assert open(path, "rb").read() == row["audio"]["bytes"]
        assert (entry["text"], entry["speaker"]) == (row["text"], row["speaker"])
        assert entry["normalized_text"] == row["spoken_text"]  # NeMo TTS reads the normalised form here
        if row["qc_pass"] is not None:
            for key in ("qc_pass", "qc_reasons", "take", "num_takes", "trailing_silence_s", "loop_score"):
                assert entry[key] == row[key], key


def check_webdataset(dest: str, rows: dict[str, dict], kept: set[str], directory: str = "wds") -> None:
    import webdataset as wds

    shards = sorted(os.path.join(dest, directory, name) for name in os.listdir(os.path.join(dest, directory)))
    samples = list(wds.WebDataset(shards, shardshuffle=False))
    meta = [json.loads(s["json"]) for s in samples]
    assert_exactly_once([m["id"] for m in meta], sorted(kept))
    for sample, m in zip(samples, meta):
        row = rows[m["id"]]
        assert sample["wav"] == row["audio"]["bytes"]
        assert sample["txt"].decode() == row["text"] and m["spoken_text"] == row["spoken_text"]
        codes = np.load(io.BytesIO(sample["codes.npy"]))
        assert np.array_equal(codes, np.array(row["codes"], dtype=np.int16))
        assert m["text"] == row["text"] and m.get("qc_pass") == row["qc_pass"]
        if row["qc_pass"] is not None:
            assert (m["trailing_silence_s"], m["qc_reasons"]) == (row["trailing_silence_s"], row["qc_reasons"])


CHECKS = {"lhotse_shar": check_shar, "nemo": check_nemo, "webdataset": check_webdataset}


@pytest.mark.parametrize("fmt", sorted(CHECKS))
def test_every_format_loads_with_its_library_without_and_with_qc(fmt, synth_output, qc_output, tmp_path):
    for out, ids in (synth_output, qc_output):
        rows = source_rows(out)
        assert sorted(rows) == sorted(ids)
        dest = str(tmp_path / f"{fmt}-{os.path.basename(os.path.dirname(out))}")
        record = export(out, dest, format=fmt, shard_max_mb=0.05)
        assert record["finished"] and record["rows"] == len(ids) and record["dropped"] == {}
        CHECKS[fmt](dest, rows, set(ids))
    # the shard size bounds each tar: many small shards, none far past 0.05 MB
    if fmt == "webdataset":
        sizes = [os.path.getsize(os.path.join(dest, "wds", n)) for n in os.listdir(os.path.join(dest, "wds"))]
        assert len(sizes) > 4 and max(sizes) < 0.05 * 2**20 + 200_000


def test_the_qc_runs_verdicts_are_its_thresholds_on_measured_values(qc_output):
    """The mix of passes and failures the filter tests rely on, explained (see conftest's `QC`)."""
    out, _ = qc_output
    rows = source_rows(out)
    bounds = json.load(open(os.path.join(out, PLAN_RECORD)))["qc"]["thresholds"]  # as the run recorded them
    for row_id, row in rows.items():
        assert (row["take"], row["num_takes"]) == (1, 1)  # qc.max_takes 1: takes are numbered from 1
        assert row["trailing_silence_s"] == pytest.approx(row["duration_s"], abs=1e-3), row_id  # no speech in noise
        assert row["loop_score"] is not None and row["wer"] is None  # measured; ASR off
        too_long = row["trailing_silence_s"] > bounds["max_trailing_silence_s"]
        assert row["qc_pass"] is (not too_long and row["loop_score"] <= bounds["max_loop_score"]), row_id
        assert [r.split(":")[0] for r in row["qc_reasons"]] == (["trailing_silence_s"] if too_long else []), row_id
    passed = sum(r["qc_pass"] for r in rows.values())
    assert 0 < passed < len(rows), passed


def test_filters_drop_exactly_the_rows_they_should(qc_output, tmp_path):
    out, ids = qc_output
    rows = source_rows(out)
    shortest, longest = min(r["duration_s"] for r in rows.values()), max(r["duration_s"] for r in rows.values())
    cases = [
        ({"qc_pass_only": True}, lambda r: r["qc_pass"], "qc"),
        ({"min_duration_s": shortest + 0.01}, lambda r: r["duration_s"] >= shortest + 0.01, "duration"),
        ({"min_duration_s": 0.5, "max_duration_s": longest - 0.01}, lambda r: r["duration_s"] <= longest - 0.01,
         "duration"),
        ({"speakers": (0, 2)}, lambda r: r["speaker"] in (0, 2), "speaker"),
        ({"voices": ("narrator",)}, lambda r: r["voice"] == "narrator", "voice"),
    ]
    for i, (options, keep, reason) in enumerate(cases):
        kept = {row_id for row_id, r in rows.items() if keep(r)}
        assert 0 < len(kept) < len(rows), (options, kept)  # the filter has something to drop and to keep
        record = export(out, str(tmp_path / f"nemo-{i}"), format="nemo", **options)
        check_nemo(str(tmp_path / f"nemo-{i}"), rows, kept)
        assert record["rows"] == len(kept) and record["dropped"] == {reason: len(rows) - len(kept)}, options
    # filters combine: each row is dropped by the first filter it fails
    both = {row_id for row_id, r in rows.items() if r["qc_pass"] and r["speaker"] in (0, 2)}
    export(out, str(tmp_path / "wds-both"), format="webdataset", qc_pass_only=True, speakers=(0, 2))
    check_webdataset(str(tmp_path / "wds-both"), rows, both)


def test_qc_filter_without_qc_columns_and_misplaced_destinations_are_refused(synth_output, tmp_path):
    out, _ = synth_output
    with pytest.raises(ExportError, match="has no `qc_pass` column"):
        export(out, str(tmp_path / "qc"), format="nemo", qc_pass_only=True)
    assert not (tmp_path / "qc").exists()  # refused before anything was written
    with pytest.raises(ExportError, match="overlap"):
        export(out, os.path.join(out, "export"), format="nemo")
    (tmp_path / "a-run").mkdir()
    (tmp_path / "a-run" / "plan.json").write_text("{}")  # what marks another run's output
    with pytest.raises(StoreError, match="not a synth export store \\(it holds plan.json\\)"):
        export(out, str(tmp_path / "a-run"), format="nemo")
    dataset_store(tmp_path / "run-store").claim()
    with pytest.raises(StoreError, match="is a synth run store, and `synth export` writes only its own kind"):
        export(out, str(tmp_path / "run-store"), format="nemo")
    # a finished export is continued only with the same options
    export(out, str(tmp_path / "once"), format="nemo", speakers=(0,))
    with pytest.raises(StoreError, match="it holds an export with another `speakers` \\(speakers: was \\[0\\], now \\[1\\]\\)"):
        export(out, str(tmp_path / "once"), format="nemo", speakers=(1,))
    # a user's directory is refused as a run's OUT is
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a synth export store \\(it holds notes.txt\\)\\. .*: use a new or empty"):
        export(out, str(tmp_path / "mine"), format="nemo")
    assert os.listdir(tmp_path / "mine") == ["notes.txt"]


def test_the_export_job_script_is_the_command_and_bad_options_exit_2(synth_output, tmp_path):
    from helpers import run_job

    out, _ = synth_output
    helped = run_job(["jobs/export.py", "--help"])
    assert helped.returncode == 0 and "usage: synth export" in helped.stdout, helped.stderr
    bad = run_job(["jobs/export.py", out, "--format", "nemo", "--to", str(tmp_path / "x"), "--min-duration", "3",
                   "--max-duration", "1"])
    assert bad.returncode == 2 and "min_duration_s (3.0) is above max_duration_s (1.0)" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "x").exists()
    unknown = run_job(["jobs/export.py", out, "--format", "hdf5", "--to", str(tmp_path / "x")])
    assert unknown.returncode == 2 and "invalid choice: 'hdf5'" in unknown.stderr


def test_a_partly_finished_output_exports_what_it_committed(synth_output, tmp_path):
    import shutil

    out, ids = synth_output
    partial = str(tmp_path / "partial")
    shutil.copytree(out, partial)
    # as a run killed before the last part's marker leaves it: the part's data is there, its marker is not
    markers = sorted(n for n in os.listdir(os.path.join(partial, "_progress")) if "-part-" in n)
    last = json.load(open(os.path.join(partial, "_progress", markers[-1])))
    while not last["rows"]:  # the last part that holds rows
        markers.pop()
        last = json.load(open(os.path.join(partial, "_progress", markers[-1])))
    os.remove(os.path.join(partial, "_progress", markers[-1]))
    uncommitted = {r["id"] for r in pq.read_table(os.path.join(partial, "data", markers[-1].replace(".json", ".parquet")))
                   .to_pylist()}
    record = export(partial, str(tmp_path / "wds"), format="webdataset")
    check_webdataset(str(tmp_path / "wds"), source_rows(out), set(ids) - uncommitted)
    assert record["rows"] == len(ids) - len(uncommitted) and uncommitted


def test_splits_keep_each_script_whole_in_every_format_and_load_as_splits(synth_output, tmp_path):
    """--split dev=..,test=..: each row goes to its script's split (a hash of the script id), each split has
    its own files in every format, `load_dataset(EXPORT)` gives the splits through the export's card, and
    the splits are part of what a rerun must repeat."""
    from datasets import load_dataset

    from synth.export.options import parse_splits

    out, ids = synth_output
    rows = source_rows(out)
    splits = parse_splits("test=0.3,dev=0.3")  # large fractions: ten scripts land in all three splits
    options = ExportOptions(format="nemo", splits=splits)
    expected = {name: {i for i, r in rows.items() if options.split_of(r["script_id"]) == name}
                for name in ("train", "dev", "test")}
    assert all(expected.values()), expected  # every split has rows to check
    by_script = {}
    for name, kept in expected.items():
        for row_id in kept:
            by_script.setdefault(rows[row_id]["script_id"], set()).add(name)
    assert all(len(names) == 1 for names in by_script.values())  # no conversation straddles two splits
    assert {i for r in ("s02:0", "s02:1") for i in [options.split_of(rows[r]["script_id"])]} == {
        options.split_of("s02")}  # a two-turn script: both turns in its split

    record = export(out, str(tmp_path / "nemo"), format="nemo", splits=splits)
    assert record["finished"] and record["splits"] == {k: len(v) for k, v in expected.items()}
    for name, kept in expected.items():
        check_nemo(str(tmp_path / "nemo"), rows, kept, manifest=f"manifest-{name}.jsonl")
    loaded = load_dataset(str(tmp_path / "nemo"), cache_dir=str(tmp_path / "cache"))  # through the export's card
    assert {name: sorted(loaded[name]["id"]) for name in loaded} == {k: sorted(v) for k, v in expected.items()}
    assert loaded["dev"][0]["normalized_text"] == rows[loaded["dev"][0]["id"]]["spoken_text"]

    export(out, str(tmp_path / "wds"), format="webdataset", splits=splits)
    for name, kept in expected.items():
        check_webdataset(str(tmp_path / "wds"), rows, kept, directory=f"wds/{name}")
    header = yaml.safe_load(open(tmp_path / "wds" / "README.md").read().split("\n---\n", 1)[0][4:])
    assert header["configs"][0]["data_files"] == [{"split": n, "path": f"wds/{n}/*.tar"} for n in ("train", "dev",
                                                                                                    "test")]
    export(out, str(tmp_path / "shar"), format="lhotse_shar", splits=splits)
    for name, kept in expected.items():
        check_shar(str(tmp_path / "shar"), rows, kept, directory=f"shar/{name}")
    with pytest.raises(StoreError, match="it holds an export with another `splits`"):
        export(out, str(tmp_path / "nemo"), format="nemo", splits={"dev": 0.1})
    with pytest.raises(ValueError, match="not 'train'"):
        ExportOptions(format="nemo", splits={"train": 0.1})
    with pytest.raises(ValueError, match="must sum to less than 1"):
        ExportOptions(format="nemo", splits={"dev": 0.5, "test": 0.5})


def test_every_file_of_a_run_is_marked_ai_generated_and_exports_and_verify_keep_it(synth_output, tmp_path):
    """EU AI Act Art. 50(2): each clip (WAV INFO chunk), data part (Parquet metadata) says it is AI-generated
    speech, by which synth, model and weights, for which row; read back with soundfile and PyAV's FFmpeg;
    `synth verify` passes and changes nothing; each export's clips are the same marked bytes."""
    import tarfile

    from synth.cli import main
    from synth.pipeline.provenance import (
        GENERATED,
        read_audio_marking,
        read_parquet_marking,
    )

    out, ids = synth_output
    rows = source_rows(out)
    for name in sorted(os.listdir(os.path.join(out, "data"))):
        marking = read_parquet_marking(pq.read_schema(os.path.join(out, "data", name)).metadata)
        part_rows = pq.read_table(os.path.join(out, "data", name), columns=["model", "model_weights"]).to_pylist()
        assert marking["ai_generated"] is True and marking["statement"] == GENERATED
        assert marking["rows_generated"] == len(part_rows) and marking["rows_recorded"] == 0
        assert marking["models"] == [{"model": r["model"], "model_weights": r["model_weights"]} for r in part_rows[:1]]
    for row_id, row in rows.items():
        record = read_audio_marking(row["audio"]["bytes"])  # the bytes in data/ (PyAV: the INFO chunk's ICMT)
        assert record == {"statement": GENERATED, "ai_generated": True,
                          "digital_source_type": "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia",
                          "generator": f"synth {synth.__version__}", "model": row["model"],
                          "model_weights": row["model_weights"], "id": row_id}, row_id
        with sf.SoundFile(os.path.join(out, row["audio"]["path"])) as f:  # the file under wav/, via libsndfile
            assert json.loads(f.comment) == record and f.title == row_id and f.software.startswith("synth ")
    assert main(["verify", out]) == 0
    assert source_rows(out) == rows
    export(out, str(tmp_path / "wds"), format="webdataset")
    export(out, str(tmp_path / "shar"), format="lhotse_shar")
    for tar_path in glob.glob(str(tmp_path / "*" / "*" / "*.tar")):
        with tarfile.open(tar_path) as tar:
            clips = [m for m in tar.getmembers() if m.name.endswith(".wav")]
            for member in clips:
                record = read_audio_marking(tar.extractfile(member).read())
                assert record["ai_generated"] is True and record["id"] in rows, (tar_path, member.name)
    assert main(["verify", str(tmp_path / "shar")]) == 0  # an export verifies too


def test_rescored_verdicts_serve_qc_pass_only_and_the_card_and_stale_ones_are_ignored(synth_output, tmp_path):
    """`synth rescore OUT` writes qc/; `--qc-pass-only` and the card then use it where data/ has no verdict
    (the newest scores of a part win), but never scores of a part whose data changed since."""
    import shutil

    from synth.cli import main

    out, ids = synth_output
    copy = str(tmp_path / "out")
    shutil.copytree(out, copy)
    # the VAD's timing checks, as conftest's QC run: a clip cut at the cap is all trailing silence
    rescore = ["rescore", copy, "--set", "qc.metrics=[timing]", "--set", "qc.thresholds.max_leading_silence_s=null",
               "--set", "qc.thresholds.min_speech_ratio=null"]
    assert main([*rescore, "--set", "qc.thresholds.max_trailing_silence_s=null"]) == 0  # every row passes
    assert all(r["qc_pass"] for r in pq.read_table(os.path.join(copy, "qc")).to_pylist())
    assert main([*rescore, "--set", "qc.thresholds.max_trailing_silence_s=1.1"]) == 0  # newer settings: some fail
    scores = {r["id"]: r for r in pq.read_table(os.path.join(copy, "qc")).to_pylist()}
    passing = {i for i, r in scores.items() if r["trailing_silence_s"] <= 1.1}
    assert 0 < len(passing) < len(ids) and passing == {i for i, r in scores.items() if r["qc_pass"]}
    record = export(copy, str(tmp_path / "nemo"), format="nemo", qc_pass_only=True)
    check_nemo(str(tmp_path / "nemo"), source_rows(copy), passing)
    assert record["dropped"] == {"qc": len(ids) - len(passing)}
    assert main(["card", copy]) == 0
    text = open(os.path.join(copy, "README.md")).read()
    numbers = yaml.safe_load(text.split("\n---\n", 1)[0][4:])["synth"]["statistics"]
    assert numbers["qc_rows"] == numbers["qc_rescored_rows"] == len(ids) and numbers["qc_passed"] == len(passing)
    assert numbers["qc_failed_by_metric"] == {"trailing_silence_s": len(ids) - len(passing)}
    assert "`synth rescore` (qc/, used where data/ has none" in text
    # a part made again since it was scored (its bytes differ from what its scores were made from): ignored
    part = sorted(os.listdir(os.path.join(copy, "data")))[0]
    table = pq.read_table(os.path.join(copy, "data", part))
    pq.write_table(table, os.path.join(copy, "data", part), compression="gzip")  # the same rows, other bytes
    recommit(copy, f"data/{part}")
    stale = set(table.column("id").to_pylist())
    record = export(copy, str(tmp_path / "nemo-stale"), format="nemo", qc_pass_only=True)
    check_nemo(str(tmp_path / "nemo-stale"), source_rows(copy), passing - stale)
