"""The shard worker without Ray: real checkpoint, real files, the reference engine."""

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from helpers import dataset_store, load_errors, transformers_codes, write_mixed_manifest

from synth.engine.interface import GenerationRequest, Segment
from synth.pipeline.config import load_config
from synth.pipeline.manifest import Script, open_manifest, read_scripts
from synth.pipeline.output import accept_part, data_file, errors_file, part_name
from synth.pipeline.plan import plan_shards
from synth.pipeline.worker import ShardWorker, load_engine
from synth.store import storage
from synth.store.layout import PROGRESS_DIR, marker_file
from synth.store.recovery import recover


@pytest.fixture(scope="module")
def greedy_config(tiny_checkpoint):
    return load_config(None, [
        f"model.id={tiny_checkpoint}", "model.engine=transformers", "model.dtype=float32", "model.device=cpu",
        "sampling.do_sample=false", "transformers_engine.batch_size=4", "fast_engine.num_slots=4",
        "generation.max_audio_seconds=1.6",
        "output.commit_every_scripts=3", "output.scripts_per_shard=100",
    ])


@pytest.fixture(scope="module")
def engine(greedy_config):
    return load_engine(greedy_config)


@pytest.fixture(scope="module")
def shard_output(tmp_path_factory, speech_clip, greedy_config, engine):
    """Run the one shard of the mixed manifest; return (out dir, good ids, bad ids, commits)."""
    work = tmp_path_factory.mktemp("worker")
    path, good, bad = write_mixed_manifest(str(work / "in"), speech_clip)
    manifest = open_manifest(path)
    (shard,) = plan_shards(manifest, 100).shards
    worker = ShardWorker(greedy_config, engine, manifest, dataset_store(work / "out"), log=lambda m: None)
    commits = worker.run_shard(shard)
    return work / "out", good, bad, commits, worker, shard


def _rows(out):
    tables = [pq.read_table(os.path.join(out, "data", f)) for f in sorted(os.listdir(os.path.join(out, "data")))]
    return [r for t in tables for r in t.to_pylist()]


def test_good_rows_present_bad_rows_recorded(shard_output):
    out, good, bad, commits, _, _ = shard_output
    rows = _rows(out)
    assert {r["id"] for r in rows} == good
    assert len(rows) == len(good)
    errors = load_errors(out)
    assert {e["id"]: e for e in errors}.keys() == bad.keys()
    for e in errors:
        assert bad[e["id"]] in e["reason"], e
        assert e["row"] is not None and e["stage"] in {"validate", "audio"}
    assert sum(c.rows for c in commits) == len(good)
    assert sum(c.scripts for c in commits) == 7
    assert [c.part for c in commits] == [0, 1, 2]


def test_a_corrupt_clip_error_row_names_the_clip_not_a_python_object(shard_output):
    out, *_ = shard_output
    (error,) = [e for e in load_errors(out) if e["id"] == "bad-corrupt-audio"]
    assert error["stage"] == "audio" and error["turn"] == 0
    assert os.path.join("clips", "corrupt.wav") in error["reason"], error
    assert "object at 0x" not in error["reason"], error


def test_audio_is_24k_mono_and_matches_frames_and_codes(shard_output):
    out, *_ = shard_output
    for row in _rows(out):
        samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == 24000 and row["sampling_rate"] == 24000 and samples.ndim == 1
        assert len(samples) == row["num_frames"] * 1920
        codes = np.array(row["codes"])
        assert codes.shape == (row["num_frames"], 32)
        assert row["duration_s"] == pytest.approx(row["num_frames"] * 0.08)
        with open(out / row["audio"]["path"], "rb") as f:
            assert f.read() == row["audio"]["bytes"]
        assert row["num_frames"] <= 20  # 1.6 s cap at 12.5 frames/s


def test_every_generated_turn_is_conditioned_on_the_turns_before(shard_output):
    out, *_ = shard_output
    by_id = {r["id"]: r for r in _rows(out)}
    assert by_id["dialogue-a:1"]["context_turns"] == [0]
    assert by_id["dialogue-a:2"]["context_turns"] == [0, 1]  # the recorded turn, then generated turn 1
    assert by_id["dialogue-a:2"]["context_ids"] == ["dialogue-a:0", "dialogue-a:1"]
    assert by_id["single-b:0"]["context_turns"] == [] and by_id["single-b:0"]["context_ids"] == []
    assert by_id["dialogue-a:1"]["seed"] == 12 and by_id["dialogue-a:2"]["seed"] == 13
    # the prompt grew by turn 1's text and its generated frames
    assert by_id["dialogue-a:2"]["num_prompt_tokens"] > (
        by_id["dialogue-a:1"]["num_prompt_tokens"] + by_id["dialogue-a:1"]["num_frames"])


@pytest.mark.slow
def test_greedy_codes_equal_direct_transformers_generate(shard_output, engine, speech_clip):
    """Each row's codes are what CsmForConditionalGeneration.generate gives for its context:
    the recorded clips, and the earlier generated turns' audio (their codes, Mimi-decoded)."""
    out, _, _, _, worker, shard = shard_output
    items = read_scripts(worker.manifest, shard.file_index, shard.start, shard.stop)
    scripts = {s.id: s for s in items if isinstance(s, Script)}
    rows = {r["id"]: r for r in _rows(out)}
    for row in rows.values():
        script = scripts[row["script_id"]]
        context = []
        for j in row["context_turns"]:
            turn = script.turns[j]
            if turn.audio is not None:
                audio = worker._clip(turn.audio)
            else:
                audio = engine.decode(torch.tensor(rows[f"{script.id}:{j}"]["codes"]))
            context.append(Segment(turn.speaker, turn.text, audio))
        me = script.turns[row["turn"]]
        max_frames = json.loads(row["generation"])["max_frames"]
        request = GenerationRequest("check", me.text, me.speaker, max_frames, tuple(context))
        codes = transformers_codes(engine.model, engine.processor, request, stop_at_eos=True)
        assert codes.tolist() == row["codes"], row["id"]


def test_reference_engine_returns_remembered_codes(engine):
    """`remember_codes` (as the voice library calls it) replaces encoding that clip, by content."""
    clip = np.random.default_rng(0).normal(0, 0.1, 12000).astype(np.float32)
    (encoded,) = engine.encode_clips([clip])
    assert encoded.dtype == np.int16 and encoded.shape == (7, 32)  # ceil(12000 / 1920) frames
    given = (encoded + 1).astype(np.int16)
    engine.remember_codes(clip.copy(), given)
    again, other = engine.encode_clips([clip, 0.5 * clip])
    np.testing.assert_array_equal(again, given)
    assert other.shape == encoded.shape and not np.array_equal(other, given)


def test_committed_parts_are_not_redone(shard_output):
    out, _, _, commits, worker, shard = shard_output
    before = {f: os.path.getmtime(out / "data" / f) for f in os.listdir(out / "data")}
    again = worker.run_shard(shard)
    assert again == commits
    assert {f: os.path.getmtime(out / "data" / f) for f in os.listdir(out / "data")} == before


def test_fast_engine_writes_the_same_rows_as_the_reference(shard_output, greedy_config, tmp_path):
    """engine: fast (the default for real runs) gives the same schema and, greedy, the same codes,
    when its chains take context as the reference's do: generated turns' audio, encoded again."""
    out, good, bad, _, worker, shard = shard_output
    fast_config = greedy_config.model_copy(update={
        "model": greedy_config.model.model_copy(update={"engine": "fast"}),
        "generation": greedy_config.generation.model_copy(update={"context_from": "audio"}),
    })
    fast_engine = load_engine(fast_config)
    assert fast_engine.name == "fast"
    ShardWorker(fast_config, fast_engine, worker.manifest, dataset_store(tmp_path / "fast"),
                log=lambda m: None).run_shard(shard)
    reference = {r["id"]: r for r in _rows(out)}
    fast = {r["id"]: r for r in _rows(tmp_path / "fast")}
    assert fast.keys() == reference.keys() == good
    for key, row in fast.items():
        assert row["engine"] == "fast" and reference[key]["engine"] == "transformers"
        assert row["codes"] == reference[key]["codes"], key
        assert row["num_frames"] == reference[key]["num_frames"]
        assert row["stop_reason"] == reference[key]["stop_reason"]
        assert row["num_prompt_tokens"] == reference[key]["num_prompt_tokens"]
    assert pq.read_schema(next((tmp_path / "fast" / "data").iterdir())) == pq.read_schema(
        next((out / "data").iterdir()))


def test_uncommitted_and_temp_files_are_removed_committed_ones_kept(shard_output, tmp_path):
    import shutil

    out, _, _, _, worker, shard = shard_output
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    committed = sorted(os.listdir(copy / "data")) + sorted(os.listdir(copy / "errors"))
    # what a crash leaves: a part whose marker never came, and a half-written temp file
    shutil.copy(copy / data_file(0, 0), copy / data_file(0, 7))
    (copy / storage.temp_name(errors_file(0, 1), "1a2b3c4d")).write_bytes(b"half")
    (copy / storage.temp_name(marker_file(part_name(0, 9)), "00000000")).write_bytes(b"{")
    found = recover(dataset_store(copy), batch="test", accept=accept_part)
    assert len(found.removed) == 3 and not found.quarantined and not found.findings
    assert sorted(os.listdir(copy / "data")) + sorted(os.listdir(copy / "errors")) == committed
    assert not any(storage.is_temp(f) for f in os.listdir(copy / PROGRESS_DIR))


@pytest.mark.parametrize("ref, reason", [
    ("nosuchscheme://bucket/clip.wav", "cannot read audio"),
    ("/definitely/not/here.wav", "audio file not found"),
])
def test_unreadable_clip_references_become_audio_errors(shard_output, ref, reason):
    from synth.pipeline.audio_io import AudioError

    worker = shard_output[4]
    with pytest.raises(AudioError, match=reason):
        worker._clip(ref)


def test_the_clip_cache_is_bounded_by_bytes_least_recently_used_out(shard_output, tmp_path):
    from synth.pipeline.worker import CLIP_CACHE_BYTES

    assert CLIP_CACHE_BYTES == 256 * 2**20  # the default README states
    worker = shard_output[4]
    fresh = ShardWorker(worker.config, worker.engine, worker.manifest, dataset_store(tmp_path / "out"),
                        log=lambda m: None)
    paths = {}
    for name, seconds in (("a", 1), ("b", 1), ("c", 1), ("long", 3)):
        paths[name] = str(tmp_path / f"{name}.wav")
        sf.write(paths[name], np.full(24000 * seconds, 0.1, dtype=np.float32), 24000)  # 96000 bytes per second
    fresh.clip_cache_bytes = 2 * 96000  # room for two one-second clips
    a = fresh._clip(paths["a"])
    fresh._clip(paths["b"])
    assert fresh._clip(paths["a"]) is a  # cached, and now the most recently used
    fresh._clip(paths["c"])  # evicts b, the least recently used
    assert list(fresh._clips) == [paths["a"], paths["c"]]
    assert fresh._clip(paths["a"]) is a
    long = fresh._clip(paths["long"])  # larger than the whole cache: decoded, not kept, evicts nothing
    assert len(long) == 3 * 24000 and list(fresh._clips) == [paths["c"], paths["a"]]
    assert sum(clip.nbytes for clip in fresh._clips.values()) <= fresh.clip_cache_bytes


def test_nan_audio_is_refused(shard_output, tmp_path):
    from synth.pipeline.audio_io import AudioError

    worker = shard_output[4]
    path = tmp_path / "nan.wav"
    sf.write(path, np.full(2400, np.nan, dtype=np.float32), 24000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        worker._clip(str(path))


def test_without_qc_a_take_louder_than_full_scale_is_stored_scaled_with_its_gain(shard_output, engine):
    """QC off: no take is clipped silently either. The tiny CSM's audio peaks past full scale: each row
    is stored at -1 dBFS, its `gain_db` says by how much it was scaled, and its codes are untouched."""
    from synth.pipeline.audio_io import FIT_PEAK_DBFS

    out, *_ = shard_output
    rows = [r for r in _rows(out) if r["num_frames"]]
    loud = 0
    for row in rows:
        samples, _ = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        generated = engine.decode(torch.tensor(row["codes"]))
        peak = float(np.abs(generated).max())
        if row["gain_db"] is None:  # it fitted: stored as generated, in 16-bit steps
            assert peak * 32768 < 32767.5 and np.allclose(samples, generated, atol=0.5 / 32768 + 1e-6)
            continue
        loud += 1
        assert row["gain_db"] == pytest.approx(FIT_PEAK_DBFS - 20 * np.log10(peak), abs=1e-3)
        assert 20 * np.log10(float(np.abs(samples).max())) == pytest.approx(FIT_PEAK_DBFS, abs=1e-3)
        assert np.allclose(samples, generated * 10 ** (row["gain_db"] / 20), atol=0.5 / 32768 + 1e-5)
    assert loud and rows[0]["qc_pass"] is None  # the tiny CSM's takes are loud, and QC was off
