"""A dataset store without a model or Ray: ownership, verified commits, recovery, the lease, identity, verify.

Parts are committed through the real writer (`DatasetWriter` -> `synth.pipeline.output.commit_part`)
with rows that carry real WAV bytes, so markers, sizes, checksums and Parquet are what a run writes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from synth.pipeline.audio_io import encode_audio
from synth.pipeline.config import SynthConfig
from synth.pipeline.output import (
    FIXED,
    RUN,
    accept_part,
    audio_file,
    data_file,
    errors_file,
    part_name,
    run_identity,
)
from synth.pipeline.plan import InputFile, Plan, Shard
from synth.pipeline.verify import verify_dataset
from synth.pipeline.writer import DatasetWriter
from synth.store import storage
from synth.store.errors import LeaseLost, OutputWriteError, StopRun, StoreError
from synth.store.layout import LEASE_FILE, OWNER_RECORD, QUARANTINE_DIR, marker_file
from synth.store.lease import Lease
from synth.store.recovery import recover
from synth.store.store import Store

SR = 24000
CONFIG = SynthConfig.model_validate({"output": {"scripts_per_shard": 2, "commit_every_scripts": 1}})


def _row(script: str, turn: int, shard: int) -> dict:
    samples = np.sin(np.arange(1920 * 2) * 0.05 * (turn + 1)).astype(np.float32) * 0.3
    return {"id": f"{script}:{turn}", "script_id": script, "turn": turn, "speaker": 0, "text": "Hi.",
            "audio": {"bytes": encode_audio(samples, SR, "wav"), "path": audio_file(shard, script, turn, "wav")},
            "sampling_rate": SR, "duration_s": 0.16, "num_frames": 2, "codes": [[1] * 32, [2] * 32],
            "stop_reason": "max_length", "seed": 1, "voice": None, "context_turns": [], "context_ids": [],
            "num_prompt_tokens": 9, "model": "m", "model_weights": "w", "engine": "fast", "generation": "{}"}


PLAN = Plan((Shard(0, 0, 0, 2), Shard(1, 0, 2, 4)), 2, (InputFile("", 4, 10, "a" * 64),), 1)  # 2 shards x 2 parts


def _store(path, run_id: str | None = None) -> Store:
    return Store(storage.resolve(str(path)), RUN, run_id=run_id)


def _committed_output(path) -> Store:
    """A finished run's output: plan.json, 2 shards of 2 one-script parts, committed under a lease."""
    store = _store(path)
    store.claim()
    with Lease.acquire(store, stale_after_s=60, log=lambda m: None) as lease:
        store.run_id = lease.run_id
        store.settings = store.record_identity(run_identity(CONFIG, PLAN), fixed=FIXED)
        writer = DatasetWriter(store, sample_rate_hz=SR, audio_format="wav", write_audio_files=True)
        for shard in PLAN.shards:
            for part in range(2):
                writer.commit_part(shard.index, part, [_row(f"s{shard.index}{part}", 0, shard.index)], [], 1)
    store.run_id = None
    return store


def _files(path) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


def _parts(found) -> list[str]:
    return sorted(unit for unit in found.units if unit.startswith("shard-"))


# -- ownership -------------------------------------------------------------------------


def test_a_new_or_empty_directory_becomes_synth_s_and_then_stays_so(tmp_path):
    for target in (tmp_path / "new", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        _store(target).claim()
        record = json.loads((target / OWNER_RECORD).read_text())
        assert record["adopted"] is False and record["kind"] == "run"
        (target / "data").mkdir()
        _store(target).claim()  # non-empty now, but synth's


def test_a_foreign_directory_is_refused_naming_what_is_there_and_left_untouched(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    before = _files(tmp_path)
    with pytest.raises(StoreError, match=r"not a synth run store \(it holds data, notes.txt\).*--adopt-output"):
        _store(tmp_path).claim()
    assert _files(tmp_path) == before
    _store(tmp_path).claim(adopt=True)
    record = json.loads((tmp_path / OWNER_RECORD).read_text())
    assert record["adopted"] is True and record["found"] == ["data", "notes.txt"]
    assert {k: v for k, v in _files(tmp_path).items() if k != OWNER_RECORD} == before


def test_adopting_a_directory_whose_files_synth_would_overwrite_is_refused_naming_them(tmp_path):
    (tmp_path / "run.json").write_text("my own run record")
    (tmp_path / "report.html").write_text("<p>my report</p>")
    (tmp_path / "README.md").write_text("my readme: the card goes beside it")
    before = _files(tmp_path)
    with pytest.raises(StoreError, match=r"names synth would write \(report.html, run.json\).*never overwrites"):
        _store(tmp_path).claim(adopt=True)
    assert _files(tmp_path) == before and not (tmp_path / OWNER_RECORD).exists()
    os.remove(tmp_path / "run.json")
    os.remove(tmp_path / "report.html")
    _store(tmp_path).claim(adopt=True)  # README.md alone: the card is written aside (README.synth.md)


def test_a_file_given_as_output_or_above_it_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        _store(tmp_path / "out").claim()
    with pytest.raises(StoreError, match=f"{tmp_path / 'out'} is a file, so nothing can be written under it"):
        _store(tmp_path / "out" / "sub").claim()
    assert (tmp_path / "out").read_text() == "not a directory"


def test_a_store_of_another_kind_is_refused(tmp_path):
    from synth.export.destination import EXPORT

    Store(storage.resolve(str(tmp_path)), EXPORT).claim()
    with pytest.raises(StoreError, match="is a synth export store, and `synth run` writes only its own kind"):
        _store(tmp_path).claim()


def test_outputs_from_before_the_ownership_record_are_synth_s(tmp_path):
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "data").mkdir()
    _store(tmp_path).claim()
    assert json.loads((tmp_path / OWNER_RECORD).read_text())["kind"] == "run"


def test_of_two_claims_at_once_the_loser_is_told_by_the_lease_who_writes(tmp_path):
    first, second = _store(tmp_path), _store(tmp_path)
    first.claim()
    (tmp_path / storage.temp_name(OWNER_RECORD, "0badf00d")).write_text("{")  # another claim's write in flight
    second.claim()  # not "holds _synth.json.tmp-...": it is this kind's store
    with Lease.acquire(first, stale_after_s=60, log=lambda m: None):
        with pytest.raises(StoreError, match="being written by another synth command"):
            Lease.acquire(second, stale_after_s=60, log=lambda m: None)


def test_synth_names_are_exactly_its_layout():
    ours = [data_file(3, 1), errors_file(3, 1), marker_file(part_name(3, 1)), "_progress/voice-" + "a" * 64 + ".json",
            audio_file(3, "my script", 2, "wav"), audio_file(3, "x", 0, "flac"), "_voices/" + "a" * 64 + ".npy",
            "plan.json", "run.json", "_lease.json", "_synth.json", storage.temp_name(data_file(0, 0), "0badf00d"),
            "chapters/chapter-001.wav", "book/manifest.parquet", "qc/shard-00000-part-0000.parquet"]
    theirs = ["data/train.parquet", "notes.txt", "data/shard-1-part-1.parquet", "wav/00003/readme.txt",
              "data/shard-00000-part-0000.parquet.tmp-notours", "errors/x.parquet", "chapters/notes.txt"]
    assert all(RUN.owns(p) for p in ours), [p for p in ours if not RUN.owns(p)]
    assert not any(RUN.owns(p) for p in theirs), [p for p in theirs if RUN.owns(p)]


# -- verified commits and recovery -------------------------------------------------------


def test_markers_record_every_file_with_size_checksum_run_and_settings(tmp_path):
    store = _committed_output(tmp_path)
    marker = store.marker(part_name(0, 1))
    assert {f.path for f in marker.files} == {data_file(0, 1), audio_file(0, "s01", 0, "wav")}
    assert len(marker.run_id) == 12 and marker.settings == store.settings and marker.meta["rows"] == 1
    for record in marker.files:
        assert os.path.getsize(tmp_path / record.path) == record.size and len(record.sha256) == 64
    found = recover(store, batch="b", accept=accept_part)
    assert len(_parts(found)) == 4 and not found.findings and not found.quarantined and not found.removed


def test_a_damaged_part_is_quarantined_and_made_again_user_files_untouched(tmp_path):
    store = _committed_output(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data" / "train.parquet").write_bytes(b"theirs")
    (tmp_path / "data" / "x.parquet.tmp-zz").write_bytes(b"theirs too")
    damaged = tmp_path / data_file(1, 0)
    original = damaged.read_bytes()
    damaged.write_bytes(original[: len(original) // 2])  # truncated
    found = recover(store, batch="b", accept=accept_part)
    assert _parts(found) == [part_name(0, 0), part_name(0, 1), part_name(1, 1)]
    assert found.findings == [f"{part_name(1, 0)}: {data_file(1, 0)} has {len(original) // 2} bytes, its marker "
                              f"says {len(original)}"]
    quarantined = {p.removeprefix(f"{QUARANTINE_DIR}/b/") for p in found.quarantined}
    assert quarantined == {data_file(1, 0), audio_file(1, "s10", 0, "wav"), marker_file(part_name(1, 0))}
    assert (tmp_path / QUARANTINE_DIR / "b" / data_file(1, 0)).read_bytes() == original[: len(original) // 2]
    assert not damaged.exists() and (tmp_path / marker_file(part_name(1, 1))).exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "data" / "train.parquet").read_bytes() == b"theirs"
    assert (tmp_path / "data" / "x.parquet.tmp-zz").read_bytes() == b"theirs too"


@pytest.mark.parametrize("damage", [b"", b'{"shard": 0, "part"', b"\xff\xfe\x00garbled", b"[]",
                                    b'{"files": [{"path": "../../etc/passwd", "size": 1, "sha256": "00"}]}',
                                    b'{"shard": 1, "part": 0, "rows": 1, "errors": 0, "audio_seconds": 0.2, '
                                    b'"scripts": 1, "error_scripts": 0, "files": []}'])
def test_a_damaged_marker_is_quarantined_and_its_part_made_again_never_a_traceback(tmp_path, damage):
    store = _committed_output(tmp_path)
    (tmp_path / marker_file(part_name(0, 1))).write_bytes(damage)
    report = verify_dataset(store)
    assert not report.ok and any(f.startswith(f"{part_name(0, 1)}: its marker is damaged") for f in report.findings)
    found = recover(store, batch="b", accept=accept_part)
    assert part_name(0, 1) not in found.units and len(_parts(found)) == 3
    assert f"{QUARANTINE_DIR}/b/{marker_file(part_name(0, 1))}" in found.quarantined
    assert data_file(0, 1) in found.removed  # its files cannot be trusted: made again
    assert verify_dataset(store).missing == [part_name(0, 1)]


def test_unit_files_no_marker_lists_and_temp_files_of_synth_names_are_deleted_nothing_else(tmp_path):
    store = _committed_output(tmp_path)
    os.remove(tmp_path / marker_file(part_name(1, 1)))  # shard 1 in progress: its part 1 was never committed
    leftovers = [data_file(1, 1), audio_file(1, "s11", 0, "wav"), storage.temp_name(errors_file(1, 0), "1a2b3c4d"),
                 storage.temp_name(marker_file(part_name(1, 1)), "00000000"),
                 storage.temp_name(audio_file(1, "s12", 0, "wav"), "deadbeef")]
    (tmp_path / leftovers[2]).parent.mkdir(exist_ok=True)
    for path in leftovers[2:]:
        (tmp_path / path).write_bytes(b"half")
    (tmp_path / "wav" / "00001" / "mine.txt").write_bytes(b"the user's")
    found = recover(store, batch="b", accept=accept_part)
    assert sorted(found.removed) == sorted(leftovers) and not found.quarantined and not found.findings
    assert _parts(found) == [part_name(0, 0), part_name(0, 1), part_name(1, 0)]
    assert (tmp_path / "wav" / "00001" / "mine.txt").read_bytes() == b"the user's"


def test_verify_reports_what_a_relaunch_would_not_see_and_what_is_missing(tmp_path):
    store = _committed_output(tmp_path)
    report = verify_dataset(store)
    assert report.ok and report.rows == 4 and report.units == 4
    # same size, other bytes: only the checksum sees it
    path = tmp_path / data_file(0, 0)
    data = bytearray(path.read_bytes())
    row_group = pq.read_metadata(path).row_group(0)  # a byte of the audio's pages, not of Parquet's metadata
    audio = next(row_group.column(i) for i in range(row_group.num_columns)
                 if row_group.column(i).path_in_schema == "audio.bytes")
    start = audio.dictionary_page_offset if audio.has_dictionary_page else audio.data_page_offset
    data[start + audio.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify_dataset(store, checksums=False).ok
    assert verify_dataset(store).findings == [f"{part_name(0, 0)}: {data_file(0, 0)}: its sha256 differs from "
                                              "its marker's"]
    # a part no marker covers, and the part the plan expects
    os.remove(tmp_path / marker_file(part_name(0, 0)))
    checked = verify_dataset(store, checksums=False)
    assert f"{data_file(0, 0)}: no marker covers it (a write cut short; the next launch removes it)" in checked.findings
    assert checked.missing == [part_name(0, 0)]
    # a whole shard deleted, data and markers: the plan says it is missing
    for part in range(2):
        for path in (data_file(1, part), marker_file(part_name(1, part))):
            os.remove(tmp_path / path)
    assert verify_dataset(store, checksums=False).missing == [part_name(0, 0), part_name(1, 0), part_name(1, 1)]
    # a row id in two committed parts
    writer = DatasetWriter(store, sample_rate_hz=SR, audio_format="wav", write_audio_files=False)
    writer.commit_part(1, 1, [_row("s01", 0, 1)], [], 1)
    assert "row id 's01:0' appears 2 times" in verify_dataset(store).findings


def test_synth_verify_command_exits_1_with_findings_and_2_on_what_is_no_store(tmp_path):
    store = _committed_output(tmp_path / "out")
    command = [sys.executable, "-m", "synth", "verify", str(tmp_path / "out")]
    clean = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and "checked 4 committed units, 4 rows" in clean.stdout, clean.stdout + clean.stderr
    os.remove(tmp_path / "out" / audio_file(0, "s00", 0, "wav"))
    broken = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and f"{audio_file(0, 's00', 0, 'wav')} is missing" in broken.stdout
    assert store.marker(part_name(0, 0)).meta["rows"] == 1  # verify changed nothing
    (tmp_path / "mine").mkdir()
    for target in ("s3://", "foo://bar", str(tmp_path / "mine"), str(tmp_path / "nothing")):
        result = subprocess.run([sys.executable, "-m", "synth", "verify", target], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2 and result.stderr.startswith("error: "), (target, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr


# -- identity ------------------------------------------------------------------------------


def test_a_relaunch_with_other_settings_is_refused_or_recorded_and_each_part_says_which(tmp_path):
    store = _committed_output(tmp_path)
    first = store.settings
    hotter = SynthConfig.model_validate({**CONFIG.model_dump(), "sampling": {"temperature": 0.5}})
    with pytest.raises(StoreError, match="different settings \\(sampling.temperature: was 0.9, now 0.5\\).*--allow-changes"):
        store.record_identity(run_identity(hotter, PLAN), fixed=FIXED)
    second = store.record_identity(run_identity(hotter, PLAN), fixed=FIXED, allow_changes=True)
    assert second != first
    history = store.identity()["settings_history"]
    assert [h["settings"] for h in history] == [first, second]
    assert history[1]["values"]["sampling"]["temperature"] == 0.5
    assert store.record_identity(run_identity(hotter, PLAN), fixed=FIXED) == second  # now the recorded ones
    assert store.marker(part_name(0, 0)).settings == first  # what made each part stays on record


def test_a_damaged_identity_is_rebuilt_from_a_launch_that_matches_it_else_refused(tmp_path):
    store = _committed_output(tmp_path)
    identity = (tmp_path / "plan.json").read_bytes()
    (tmp_path / "plan.json").write_bytes(identity[:40])
    said = []
    store.record_identity(run_identity(CONFIG, PLAN), fixed=FIXED, log=said.append)
    assert "plan.json was damaged; rewrote it" in said[0]
    assert json.loads((tmp_path / "plan.json").read_text())["plan"] == PLAN.to_dict()
    (tmp_path / "plan.json").write_bytes(b"\x00" * 10)
    other = SynthConfig.model_validate({**CONFIG.model_dump(), "sampling": {"temperature": 0.5}})
    with pytest.raises(StoreError, match="plan.json is damaged and this launch's inputs and settings are not"):
        store.record_identity(run_identity(other, PLAN), fixed=FIXED, allow_changes=True)


# -- the lease -----------------------------------------------------------------------------


def _lease_record(tmp_path) -> dict:
    return json.loads((tmp_path / LEASE_FILE).read_text())


def test_a_live_lease_refuses_a_second_run_saying_who_holds_it(tmp_path):
    store = _store(tmp_path)
    with Lease.acquire(store, stale_after_s=60, log=lambda m: None) as lease:
        record = _lease_record(tmp_path)
        assert record["run_id"] == lease.run_id and record["pid"] == os.getpid()
        assert record["stale_after_s"] == 60 and record["heartbeat_s"] == 10
        with pytest.raises(StoreError, match=rf"being written by another synth command \(run {lease.run_id} on host "
                                             rf"{socket.gethostname()}, pid {os.getpid()}"):
            Lease.acquire(store, stale_after_s=60, log=lambda m: None)
        # a tiny stale window of the newcomer's own is no licence: on this host a live pid is never stale
        with pytest.raises(StoreError, match="being written by another synth command"):
            Lease.acquire(store, stale_after_s=0.01, log=lambda m: None)
    assert not (tmp_path / LEASE_FILE).exists()  # given back


def test_the_heartbeat_renews_the_lease_and_notices_losing_it(tmp_path):
    store = _store(tmp_path)
    with Lease.acquire(store, stale_after_s=0.6, log=lambda m: None) as lease:  # beats every 0.5 s
        first = _lease_record(tmp_path)["heartbeat_at"]
        time.sleep(1.2)
        assert _lease_record(tmp_path)["heartbeat_at"] > first and not lease.lost
        (tmp_path / LEASE_FILE).write_text(json.dumps({**_lease_record(tmp_path), "run_id": "another"}))
        time.sleep(1.2)
        assert lease.lost
    assert _lease_record(tmp_path)["run_id"] == "another"  # not ours to give back


def test_a_dead_holder_here_is_taken_over_at_once_one_elsewhere_after_its_own_window(tmp_path):
    store = _store(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    holder = {"run_id": "old", "host": socket.gethostname(), "pid": int(dead.stdout), "started_at": now,
              "heartbeat_at": now, "command": "synth run ...", "stale_after_s": 600}
    (tmp_path / LEASE_FILE).write_text(json.dumps(holder))
    said = []
    with Lease.acquire(store, stale_after_s=60, log=said.append) as lease:
        assert lease.run_id != "old" and "from a dead holder (run old" in said[0]
    elsewhere = {**holder, "host": "another-host", "pid": 1, "heartbeat_at": now - 100}
    (tmp_path / LEASE_FILE).write_text(json.dumps(elsewhere))
    with pytest.raises(StoreError, match="another synth command"):  # 100 s: stale by ours (60), not by its (600)
        Lease.acquire(store, stale_after_s=60, log=said.append)
    (tmp_path / LEASE_FILE).write_text(json.dumps({**elsewhere, "heartbeat_at": now - 601}))
    with Lease.acquire(store, stale_after_s=60, log=said.append):
        assert "from a stale holder" in said[-1]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(LEASE_FILE)]  # nothing left aside


@pytest.mark.parametrize("damage", [b"", b"\xff\xfe garbled", b"[]", b'{"run_id": "x", "pid": "not a pid", '
                                                                        b'"host": "' + socket.gethostname().encode()
                                    + b'"}'])
def test_a_damaged_lease_is_taken_over_and_a_directory_in_its_place_refused(tmp_path, damage):
    store = _store(tmp_path)
    (tmp_path / LEASE_FILE).write_bytes(damage)
    said = []
    with Lease.acquire(store, stale_after_s=60, log=said.append):
        assert "from a damaged holder" in said[0]
    (tmp_path / LEASE_FILE).mkdir()
    with pytest.raises(StoreError, match="_lease.json is a directory, not synth's lease file"):
        Lease.acquire(store, stale_after_s=60, log=said.append)


def test_a_run_that_lost_the_lease_commits_no_marker(tmp_path):
    store = _committed_output(tmp_path / "out")
    with Lease.acquire(store, stale_after_s=60, log=lambda m: None) as lease:
        mine = Store(store.location, RUN, run_id=lease.run_id)
        other = Store(store.location, RUN, run_id="someone-else")
        writer = DatasetWriter(other, sample_rate_hz=SR, audio_format="wav", write_audio_files=False)
        os.remove(tmp_path / "out" / marker_file(part_name(1, 1)))
        with pytest.raises(LeaseLost, match=f"no longer holds the output's lease \\(run {lease.run_id}"):
            writer.commit_part(1, 1, [_row("s11", 0, 1)], [], 1)
        assert not (tmp_path / "out" / marker_file(part_name(1, 1))).exists()
        mine.check_lease()  # the holder may


# data/'s columns for each `DATA_SCHEMA` version: a column change without a new version fails here.
COLUMNS_OF_SCHEMA = {2: ["id", "script_id", "turn", "speaker", "text", "audio", "sampling_rate", "duration_s",
                         "num_frames", "codes", "stop_reason", "seed", "voice", "context_turns", "context_ids",
                         "num_prompt_tokens", "model", "model_weights", "engine", "generation", "warnings"]}
COLUMNS_OF_SCHEMA[3] = [*COLUMNS_OF_SCHEMA[2][:5], "spoken_text", *COLUMNS_OF_SCHEMA[2][5:]]
COLUMNS_OF_SCHEMA[4] = [*COLUMNS_OF_SCHEMA[3], "qc_pass", "qc_reasons", "take", "num_takes", "asr_text", "wer", "cer",
                        "speaker_sim", "dnsmos", "loudness_lufs", "peak_dbfs", "clipped_fraction", "leading_silence_s",
                        "trailing_silence_s", "speech_ratio", "chars_per_s", "loop_score", "trimmed_frames", "gain_db"]
COLUMNS_OF_SCHEMA[5] = COLUMNS_OF_SCHEMA[4]  # the same data columns; takes/ adds gain_db, loud takes are scaled


def test_an_output_is_only_continued_with_its_own_data_columns(tmp_path):
    from synth.pipeline.output import DATA_SCHEMA, PLAN_RECORD
    from synth.pipeline.record import data_schema

    assert data_schema(SR).names == COLUMNS_OF_SCHEMA[DATA_SCHEMA], "bump record.DATA_SCHEMA with the columns"
    store = _committed_output(tmp_path)
    store.record_identity(run_identity(CONFIG, PLAN), fixed=FIXED)  # the same run continues
    record = json.loads((tmp_path / PLAN_RECORD).read_text())
    del record["data_schema"]  # what synth wrote before it recorded the columns' version
    (tmp_path / PLAN_RECORD).write_text(json.dumps(record))
    with pytest.raises(StoreError, match=f"data columns of another synth version.*not even with --allow.*was null, "
                                         f"now {DATA_SCHEMA}"):
        store.record_identity(run_identity(CONFIG, PLAN), fixed=FIXED, allow_changes=True)


def test_a_write_the_output_refuses_stops_the_run(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN) here")
    try:
        store = _store(disk / "out")
        store.claim()
        (disk / "out" / data_file(0, 0)).mkdir(parents=True)  # a directory where the file goes
        with pytest.raises(OutputWriteError, match=f"cannot write .*{data_file(0, 0)}"):
            store.write(data_file(0, 0), b"x")
        with pytest.raises(OutputWriteError, match="no space left on the device.*run the same command again"):
            store.write(data_file(0, 1), b"x" * 2**21)
        assert not [n for n in os.listdir(disk / "out" / "data") if storage.is_temp(n)]  # no half-written temp left
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OutputWriteError, match="read-only.*run the same command again") as raised:
            store.write(data_file(0, 1), b"x")
        assert isinstance(raised.value, StopRun)
        with pytest.raises(StoreError, match="cannot take the lease of .*read-only"):  # EROFS: a message, exit 2
            Lease.acquire(store, stale_after_s=60, log=lambda m: None)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_relaunch_cannot_mix_context_from_codes_and_audio(tmp_path):
    """plan.json records generation.context_from (resolved); a relaunch with the other is refused,
    even with --allow-changes."""
    from synth.pipeline.config import ConfigError, load_config
    from synth.pipeline.output import PLAN_RECORD

    codes = SynthConfig()
    audio = SynthConfig.model_validate({"generation": {"context_from": "audio"}})
    assert codes.context_from == "codes" and audio.context_from == "audio"
    assert SynthConfig.model_validate({"model": {"engine": "transformers"}}).context_from == "audio"
    with pytest.raises(ConfigError, match="context_from='codes' needs model.engine='fast'"):
        load_config(None, ["model.engine=transformers", "generation.context_from=codes"])
    store = _store(tmp_path)
    store.claim()
    store.record_identity(run_identity(codes, PLAN), fixed=FIXED)
    assert json.loads((tmp_path / PLAN_RECORD).read_text())["context_from"] == "codes"
    store.record_identity(run_identity(codes, PLAN), fixed=FIXED)  # the same again: fine
    with pytest.raises(StoreError, match="conditioned on context from another source .*was \"codes\", now \"audio\""):
        store.record_identity(run_identity(audio, PLAN), fixed=FIXED, allow_changes=True)


def test_the_card_says_which_rows_were_made_with_which_settings(tmp_path):
    """A run continued with --allow-changes: each part's marker keeps the settings that made it, and
    the dataset card lists the rows made with each set, not the newest settings for all."""
    from synth.export.card import card_text
    from synth.export.stats import collect

    store = _committed_output(tmp_path)  # 4 parts, temperature 0.9
    hotter = SynthConfig.model_validate({**CONFIG.model_dump(), "sampling": {"temperature": 0.5}})
    os.remove(tmp_path / marker_file(part_name(1, 1)))  # one part made again, with the new settings
    with Lease.acquire(store, stale_after_s=60, log=lambda m: None) as lease:
        store.run_id = lease.run_id
        store.settings = store.record_identity(run_identity(hotter, PLAN), fixed=FIXED, allow_changes=True)
        DatasetWriter(store, sample_rate_hz=SR, audio_format="wav", write_audio_files=True).commit_part(
            1, 1, [_row("s11", 0, 1)], [], 1)
    card = card_text(store, collect(store))
    assert '"temperature": 0.5' in card  # the newest settings, as plan.json holds them
    assert "were not all made with those settings" in card
    assert "- 3 rows, settings" in card and 'sampling: {"do_sample": true, "temperature": 0.9' in card
    assert "- 1 rows, settings" in card and ": the settings above" in card
