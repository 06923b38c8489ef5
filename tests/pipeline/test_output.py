"""The output directory without a model or Ray: ownership, verified commits, recovery, the lease, verify.

Parts are committed through the real writer (`DatasetWriter` -> `OutputDir.commit_part`) with
rows that carry real WAV bytes, so markers, sizes, checksums and Parquet are what a run writes.
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

from synth.store import storage
from synth.pipeline.audio_io import encode_audio
from synth.pipeline.config import SynthConfig
from synth.store.lease import Lease
from synth.pipeline.output import (
    LEASE_FILE,
    OWNER_RECORD,
    QUARANTINE_DIR,
    LeaseLost,
    OutputDir,
    OutputError,
    ShardSummary,
    audio_file,
    data_file,
    errors_file,
    is_synth_name,
    part_marker_file,
    shard_marker_file,
)
from synth.pipeline.plan import Plan, Shard
from synth.pipeline.verify import recover, verify
from synth.pipeline.writer import DatasetWriter

SR = 24000


def _row(script: str, turn: int, shard: int) -> dict:
    samples = np.sin(np.arange(1920 * 2) * 0.05 * (turn + 1)).astype(np.float32) * 0.3
    return {"id": f"{script}:{turn}", "script_id": script, "turn": turn, "speaker": 0, "text": "Hi.",
            "audio": {"bytes": encode_audio(samples, SR, "wav"), "path": audio_file(shard, script, turn, "wav")},
            "sampling_rate": SR, "duration_s": 0.16, "num_frames": 2, "codes": [[1] * 32, [2] * 32],
            "stop_reason": "max_length", "seed": 1, "voice": None, "context_turns": [], "context_ids": [],
            "num_prompt_tokens": 9, "model": "m", "model_weights": "w", "engine": "fast", "generation": "{}"}


PLAN = Plan((Shard(0, 0, 0, 2), Shard(1, 0, 2, 4)), 2, (("manifest.parquet", 4),))  # 2 shards x 2 parts


def _committed_output(path, run_id: str | None = None) -> OutputDir:
    """A finished run's output: plan.json, 2 shards of 2 one-script parts, done markers."""
    output = OutputDir(storage.resolve(str(path)), run_id)
    output.claim()
    output.prepare(SynthConfig.model_validate({"output": {"scripts_per_shard": 2, "commit_every_scripts": 1}}),
                   PLAN, allow_changes=False)
    writer = DatasetWriter(output, sample_rate_hz=SR, audio_format="wav", write_audio_files=True)
    for shard in PLAN.shards:
        commits = [writer.commit_part(shard.index, part, [_row(f"s{shard.index}{part}", 0, shard.index)], [], 1)
                   for part in range(2)]
        output.commit_shard(ShardSummary.of(shard.index, commits))
    return output


def _files(path) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


# -- ownership -------------------------------------------------------------------------


def test_a_new_or_empty_directory_becomes_synth_s_and_then_stays_so(tmp_path):
    for target in (tmp_path / "new", tmp_path / "empty"):
        if target.name == "empty":
            target.mkdir()
        output = OutputDir(storage.resolve(str(target)))
        output.claim()
        assert json.loads((target / OWNER_RECORD).read_text())["adopted"] is False
        (target / "data").mkdir()
        output.claim()  # non-empty now, but synth's


def test_a_foreign_directory_is_refused_naming_what_is_there_and_left_untouched(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    before = _files(tmp_path)
    with pytest.raises(OutputError, match=r"not a synth output \(it holds data, notes.txt\).*--adopt-output"):
        OutputDir(storage.resolve(str(tmp_path))).claim()
    assert _files(tmp_path) == before
    OutputDir(storage.resolve(str(tmp_path))).claim(adopt=True)
    record = json.loads((tmp_path / OWNER_RECORD).read_text())
    assert record["adopted"] is True and record["found"] == ["data", "notes.txt"]
    assert {k: v for k, v in _files(tmp_path).items() if k != OWNER_RECORD} == before


def test_a_file_given_as_output_is_refused(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        OutputDir(storage.resolve(str(tmp_path / "out"))).claim()


def test_outputs_from_before_the_ownership_record_are_synth_s(tmp_path):
    (tmp_path / "plan.json").write_text("{}")
    (tmp_path / "data").mkdir()
    OutputDir(storage.resolve(str(tmp_path))).claim()
    assert (tmp_path / OWNER_RECORD).exists()


def test_synth_names_are_exactly_its_layout():
    ours = [data_file(3, 1), errors_file(3, 1), part_marker_file(3, 1), shard_marker_file(3),
            audio_file(3, "my script", 2, "wav"), audio_file(3, "x", 0, "flac"), "_voices/" + "a" * 64 + ".npy",
            "plan.json", "run.json", "_lease.json", "_synth.json", storage.temp_name(data_file(0, 0), "0badf00d")]
    theirs = ["data/train.parquet", "notes.txt", "data/shard-1-part-1.parquet", "wav/00003/readme.txt",
              "data/shard-00000-part-0000.parquet.tmp-notours", "errors/x.parquet", "chapters/chapter-001.wav"]
    assert all(is_synth_name(p) for p in ours), [p for p in ours if not is_synth_name(p)]
    assert not any(is_synth_name(p) for p in theirs), [p for p in theirs if is_synth_name(p)]


# -- verified commits and recovery -------------------------------------------------------


def test_markers_record_every_file_with_size_and_checksum(tmp_path):
    output = _committed_output(tmp_path)
    commit = output.read_commit(0, 1)
    assert {f.path for f in commit.files} == {data_file(0, 1), audio_file(0, "s01", 0, "wav")}
    for record in commit.files:
        assert os.path.getsize(tmp_path / record.path) == record.size and len(record.sha256) == 64
    assert [p.part for p in output.read_shard(0).parts] == [0, 1]
    found = recover(output, PLAN, 1, batch="b")
    assert sorted(found.done) == [0, 1] and not found.findings and not found.quarantined and not found.removed


def test_a_damaged_part_is_quarantined_and_its_shard_redone_user_files_untouched(tmp_path):
    output = _committed_output(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "data" / "train.parquet").write_bytes(b"theirs")
    (tmp_path / "data" / "x.parquet.tmp-zz").write_bytes(b"theirs too")
    damaged = tmp_path / data_file(1, 0)
    original = damaged.read_bytes()
    damaged.write_bytes(original[: len(original) // 2])  # truncated
    found = recover(output, PLAN, 1, batch="b")
    assert sorted(found.done) == [0] and [c.part for c in found.parts[1]] == [1]
    assert found.findings == [f"shard 1 was marked done, but part 0: {data_file(1, 0)} has {len(original) // 2} "
                              f"bytes, its marker says {len(original)}"]
    quarantined = {p.removeprefix(f"{QUARANTINE_DIR}/b/") for p in found.quarantined}
    assert quarantined == {data_file(1, 0), audio_file(1, "s10", 0, "wav"), part_marker_file(1, 0),
                           shard_marker_file(1)}
    assert (tmp_path / QUARANTINE_DIR / "b" / data_file(1, 0)).read_bytes() == original[: len(original) // 2]
    assert not damaged.exists() and not (tmp_path / part_marker_file(1, 0)).exists()
    assert (tmp_path / part_marker_file(1, 1)).exists()  # the shard's good part stays committed
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "data" / "train.parquet").read_bytes() == b"theirs"
    assert (tmp_path / "data" / "x.parquet.tmp-zz").read_bytes() == b"theirs too"


def test_a_done_shard_missing_a_part_marker_is_not_done_and_its_orphan_kept_aside(tmp_path):
    output = _committed_output(tmp_path)
    os.remove(tmp_path / part_marker_file(0, 1))
    found = recover(output, PLAN, 1, batch="b")
    assert sorted(found.done) == [1]
    assert found.findings == ["shard 0 was marked done, but part 1's marker is missing"]
    assert f"{QUARANTINE_DIR}/b/{data_file(0, 1)}" in found.quarantined
    assert [c.part for c in found.parts[0]] == [0]  # part 0 still counts; part 1 is generated again


def test_uncovered_parts_and_temp_files_of_synth_names_are_deleted_nothing_else(tmp_path):
    output = _committed_output(tmp_path)
    os.remove(tmp_path / shard_marker_file(1))  # shard 1 in progress: its part 1 was never committed
    os.remove(tmp_path / part_marker_file(1, 1))
    leftovers = [data_file(1, 1), storage.temp_name(errors_file(1, 0), "1a2b3c4d"),
                 storage.temp_name(part_marker_file(1, 1), "00000000"),
                 storage.temp_name(audio_file(1, "s11", 0, "wav"), "deadbeef")]
    (tmp_path / leftovers[1]).parent.mkdir(exist_ok=True)
    for path in leftovers[1:]:
        (tmp_path / path).write_bytes(b"half")
    found = recover(output, PLAN, 1, batch="b")
    assert sorted(found.removed) == sorted(leftovers) and not found.quarantined and not found.findings
    assert sorted(found.done) == [0] and [c.part for c in found.parts[1]] == [0]


def test_verify_reports_what_a_relaunch_would_not_see(tmp_path):
    output = _committed_output(tmp_path)
    assert verify(output).findings == [] and verify(output).rows == 4
    # same size, other bytes: only the checksum sees it
    path = tmp_path / data_file(0, 0)
    data = bytearray(path.read_bytes())
    row_group = pq.read_metadata(path).row_group(0)  # a byte of the audio's pages, not of Parquet's metadata
    audio = next(row_group.column(i) for i in range(row_group.num_columns)
                 if row_group.column(i).path_in_schema == "audio.bytes")
    start = audio.dictionary_page_offset if audio.has_dictionary_page else audio.data_page_offset
    data[start + audio.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert verify(output, checksums=False).findings == []
    assert verify(output).findings == [f"shard 0 part 0: {data_file(0, 0)}: its sha256 differs from its marker's"]
    # a part no marker covers
    os.remove(tmp_path / part_marker_file(0, 0))
    findings = verify(output, checksums=False).findings
    assert "shard 0 is marked done but parts [0] have no marker" in findings
    assert f"{data_file(0, 0)}: no marker covers it (a part that was never committed)" in findings
    # a row id in two committed parts
    writer = DatasetWriter(output, sample_rate_hz=SR, audio_format="wav", write_audio_files=False)
    writer.commit_part(1, 1, [_row("s01", 0, 1)], [], 1)
    assert "row id 's01:0' appears 2 times" in verify(output).findings


def test_synth_verify_command_exits_1_with_findings(tmp_path):
    output = _committed_output(tmp_path)
    command = [sys.executable, "-m", "synth", "verify", str(tmp_path)]
    clean = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0 and "checked 4 committed parts, 4 rows" in clean.stdout, clean.stdout + clean.stderr
    os.remove(tmp_path / audio_file(0, "s00", 0, "wav"))
    broken = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and f"{audio_file(0, 's00', 0, 'wav')} is missing" in broken.stdout
    assert output.read_commit(0, 0).rows == 1  # verify changed nothing


# -- the lease -----------------------------------------------------------------------------


def _lease_record(tmp_path) -> dict:
    return json.loads((tmp_path / LEASE_FILE).read_text())


def test_a_live_lease_refuses_a_second_run_saying_who_holds_it(tmp_path):
    output = OutputDir(storage.resolve(str(tmp_path)))
    with Lease.acquire(output, stale_after_s=60, log=lambda m: None) as lease:
        record = _lease_record(tmp_path)
        assert record["run_id"] == lease.run_id and record["pid"] == os.getpid()
        with pytest.raises(OutputError, match=rf"being written by another synth run \(run {lease.run_id} on host "
                                              rf"{socket.gethostname()}, pid {os.getpid()}"):
            Lease.acquire(output, stale_after_s=60, log=lambda m: None)
    assert not (tmp_path / LEASE_FILE).exists()  # given back


def test_the_heartbeat_renews_the_lease_and_notices_losing_it(tmp_path):
    output = OutputDir(storage.resolve(str(tmp_path)))
    with Lease.acquire(output, stale_after_s=0.6, log=lambda m: None) as lease:  # beats every 0.5 s
        first = _lease_record(tmp_path)["heartbeat_at"]
        time.sleep(1.2)
        assert _lease_record(tmp_path)["heartbeat_at"] > first and not lease.lost
        (tmp_path / LEASE_FILE).write_text(json.dumps({**_lease_record(tmp_path), "run_id": "another"}))
        time.sleep(1.2)
        assert lease.lost
    assert _lease_record(tmp_path)["run_id"] == "another"  # not ours to give back


def test_a_dead_holder_on_this_host_is_taken_over_at_once_a_stale_one_after_its_time(tmp_path):
    output = OutputDir(storage.resolve(str(tmp_path)))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    now = time.time()
    holder = {"run_id": "old", "host": socket.gethostname(), "pid": int(dead.stdout), "started_at": now,
              "heartbeat_at": now, "command": "synth run ..."}
    (tmp_path / LEASE_FILE).write_text(json.dumps(holder))
    said = []
    with Lease.acquire(output, stale_after_s=60, log=said.append) as lease:
        assert lease.run_id != "old" and "took over the output's lease from a dead run (run old" in said[0]
    elsewhere = {**holder, "host": "another-host", "pid": 1}
    (tmp_path / LEASE_FILE).write_text(json.dumps(elsewhere))
    with pytest.raises(OutputError, match="another synth run"):
        Lease.acquire(output, stale_after_s=60, log=said.append)
    (tmp_path / LEASE_FILE).write_text(json.dumps({**elsewhere, "heartbeat_at": now - 61}))
    with Lease.acquire(output, stale_after_s=60, log=said.append):
        assert "from a stale run" in said[-1]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(LEASE_FILE)]  # nothing left aside


def test_a_run_that_lost_the_lease_commits_no_marker(tmp_path):
    output = _committed_output(tmp_path / "out")
    with Lease.acquire(output, stale_after_s=60, log=lambda m: None) as lease:
        mine = OutputDir(output.location, lease.run_id)
        other = OutputDir(output.location, "someone-else")
        writer = DatasetWriter(other, sample_rate_hz=SR, audio_format="wav", write_audio_files=False)
        os.remove(tmp_path / "out" / part_marker_file(1, 1))
        with pytest.raises(LeaseLost, match=f"no longer holds the output's lease \\(run {lease.run_id}"):
            writer.commit_part(1, 1, [_row("s11", 0, 1)], [], 1)
        assert not (tmp_path / "out" / part_marker_file(1, 1)).exists()
        mine.check_lease()  # the holder may


# data/'s columns for each `DATA_SCHEMA` version: a column change without a new version fails here.
COLUMNS_OF_SCHEMA = {2: ["id", "script_id", "turn", "speaker", "text", "audio", "sampling_rate", "duration_s",
                         "num_frames", "codes", "stop_reason", "seed", "voice", "context_turns", "context_ids",
                         "num_prompt_tokens", "model", "model_weights", "engine", "generation", "warnings"]}
COLUMNS_OF_SCHEMA[3] = [*COLUMNS_OF_SCHEMA[2][:5], "spoken_text", *COLUMNS_OF_SCHEMA[2][5:]]
COLUMNS_OF_SCHEMA[4] = [*COLUMNS_OF_SCHEMA[3], "qc_pass", "qc_reasons", "take", "num_takes", "asr_text", "wer", "cer",
                        "speaker_sim", "dnsmos", "loudness_lufs", "peak_dbfs", "clipped_fraction", "leading_silence_s",
                        "trailing_silence_s", "speech_ratio", "chars_per_s", "loop_score", "trimmed_frames", "gain_db"]


def test_an_output_is_only_continued_with_its_own_data_columns(tmp_path):
    from synth.pipeline.output import DATA_SCHEMA, PLAN_RECORD
    from synth.pipeline.writer import output_features

    assert list(output_features(SR)) == COLUMNS_OF_SCHEMA[DATA_SCHEMA], "bump output.DATA_SCHEMA with the columns"
    output = _committed_output(tmp_path)
    config = SynthConfig.model_validate({"output": {"scripts_per_shard": 2, "commit_every_scripts": 1}})
    output.prepare(config, PLAN, allow_changes=False)  # the same run continues
    record = json.loads((tmp_path / PLAN_RECORD).read_text())
    del record["data_schema"]  # what synth wrote before it recorded the columns' version
    (tmp_path / PLAN_RECORD).write_text(json.dumps(record))
    with pytest.raises(OutputError, match=f"schema 1; this one writes schema {DATA_SCHEMA}.*not even with --allow"):
        output.prepare(config, PLAN, allow_changes=True)


def test_a_write_the_output_refuses_stops_the_run_a_shard_s_own_failure_does_not(tmp_path):
    from synth.pipeline.output import OutputWriteError, StopRun

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN) here")
    try:
        output = OutputDir(storage.resolve(str(disk / "out")))
        output.claim()
        (disk / "out" / data_file(0, 0)).mkdir(parents=True)  # a directory where the file goes: the shard's failure
        with pytest.raises(IsADirectoryError):
            output.write(data_file(0, 0), b"x")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(OutputWriteError, match="Read-only file system.*run the same command again") as raised:
            output.write(data_file(0, 1), b"x")
        assert isinstance(raised.value, StopRun)
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_relaunch_cannot_mix_context_from_codes_and_audio(tmp_path):
    """plan.json records generation.context_from (resolved); a relaunch with the other is refused,
    even with --allow-changes, and an output from before it was recorded counts as audio."""
    from synth.pipeline.config import ConfigError, load_config
    from synth.pipeline.output import PLAN_RECORD, OutputDir, OutputError
    from synth.pipeline.plan import Plan

    plan = Plan((), 1, ())
    codes = SynthConfig()
    audio = SynthConfig.model_validate({"generation": {"context_from": "audio"}})
    assert codes.context_from == "codes" and audio.context_from == "audio"
    assert SynthConfig.model_validate({"model": {"engine": "transformers"}}).context_from == "audio"
    with pytest.raises(ConfigError, match="context_from='codes' needs model.engine='fast'"):
        load_config(None, ["model.engine=transformers", "generation.context_from=codes"])
    output = OutputDir(storage.resolve(str(tmp_path)))
    output.prepare(codes, plan, allow_changes=False)
    assert json.loads((tmp_path / PLAN_RECORD).read_text())["context_from"] == "codes"
    output.prepare(codes, plan, allow_changes=False)  # the same again: fine
    with pytest.raises(OutputError, match="context from codes .* would use audio"):
        output.prepare(audio, plan, allow_changes=True)
    record = json.loads((tmp_path / PLAN_RECORD).read_text())
    del record["context_from"]  # written before synth recorded it: its chains re-encoded audio
    (tmp_path / PLAN_RECORD).write_text(json.dumps(record))
    output.prepare(audio, plan, allow_changes=False)
    with pytest.raises(OutputError, match="generation.context_from=audio"):
        output.prepare(codes, plan, allow_changes=True)
