"""Recorded clips (a directory with transcripts, an HF audio dataset) into synth's schema with codes."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import load_errors, load_output

from synth.pipeline.audio_io import decode_clip
from synth.pipeline.verify import verify_dataset_at
from synth.store.errors import StoreError
from synth.train.importer import (
    CorpusError,
    clips_in_directory,
    clips_in_hf_dataset,
    import_clips,
    load_codec,
)


@pytest.fixture(scope="module")
def codec(tiny_checkpoint):
    return load_codec(tiny_checkpoint)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, speech_clip):
    """clips/: a.wav + a.txt, sub/b.wav (22.05 kHz espeak) named in metadata.csv, a corrupt clip, one untranscribed."""
    root = tmp_path_factory.mktemp("corpus") / "clips"
    (root / "sub").mkdir(parents=True)
    shutil.copy(speech_clip, root / "a.wav")
    (root / "a.txt").write_text("Hello there, this is a recorded voice prompt.\n")
    subprocess.run(["espeak-ng", "-w", str(root / "sub" / "b.wav"), "A second clip."], check=True)
    (root / "metadata.csv").write_text("b|A second clip.\n")
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (root / "broken.txt").write_text("never heard")
    shutil.copy(speech_clip, root / "untranscribed.flac.wav")
    return str(root)


def test_a_clip_directory_becomes_a_verified_synth_output_that_resumes(corpus, codec, tmp_path, tiny_checkpoint):
    from transformers import AutoConfig, AutoProcessor

    from synth.train.dataset import prepare_train_set

    clips = clips_in_directory(corpus, speaker=2)
    assert [c.id for c in clips] == ["a", "broken", "sub/b", "untranscribed.flac"]
    out = str(tmp_path / "out")
    totals = import_clips(clips, out, source=corpus, codec=codec, model_id=tiny_checkpoint, rows_per_part=2)
    assert totals == {"rows": 2, "errors": 2, "parts": 2, "skipped_parts": 0}
    ds = load_output(out)
    rows = {r["id"]: r for r in ds}
    assert set(rows) == {"a:0", "sub/b:0"}
    for name, row in (("a.wav", rows["a:0"]), ("sub/b.wav", rows["sub/b:0"])):
        samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
        assert rate == 24000 and len(samples) == row["num_frames"] * 1920 and row["speaker"] == 2
        with open(os.path.join(corpus, name), "rb") as f:
            clip = decode_clip(f.read(), 24000)
        padded = np.pad(clip, (0, row["num_frames"] * 1920 - len(clip)))
        (expected,) = codec.encode([padded])
        assert np.array_equal(np.array(row["codes"]), expected.numpy())  # synth's codec, exactly
        assert row["stop_reason"] == "recorded" and row["context_ids"] == []
    assert rows["sub/b:0"]["text"] == "A second clip."
    reasons = sorted(e["reason"] for e in load_errors(out))
    assert "broken.wav: cannot decode audio (" in reasons[0]
    assert reasons[1].endswith("untranscribed.flac.wav: no transcript")
    report = verify_dataset_at(out)
    assert report.ok and report.rows == 2, report.render()

    before = {p: os.path.getmtime(os.path.join(out, "data", p)) for p in os.listdir(os.path.join(out, "data"))}
    again = import_clips(clips, out, source=corpus, codec=codec, model_id=tiny_checkpoint, rows_per_part=2)
    assert again["skipped_parts"] == 2 and again["parts"] == 0
    assert before == {p: os.path.getmtime(os.path.join(out, "data", p)) for p in os.listdir(os.path.join(out, "data"))}
    with pytest.raises(StoreError, match="was imported with --rows-per-part 2"):
        import_clips(clips, out, source=corpus, codec=codec, model_id=tiny_checkpoint, rows_per_part=3)
    with pytest.raises(StoreError, match="holds an import of another corpus or of another size"):
        import_clips(clips[:3], out, source=corpus, codec=codec, model_id=tiny_checkpoint, rows_per_part=2)
    edited = shutil.copytree(corpus, tmp_path / "edited")  # a clip re-transcribed: named
    (edited / "metadata.csv").write_text("b|A second clip, edited.\n")
    edited = clips_in_directory(str(edited), speaker=2)
    with pytest.raises(StoreError, match="the corpus changed since it was imported \(clips sub/b .. untranscribed"):
        import_clips(edited, out, source=corpus, codec=codec, model_id=tiny_checkpoint, rows_per_part=2)

    # real and synthetic data train through one path
    train_set, skipped = prepare_train_set(
        out, processor=AutoProcessor.from_pretrained(tiny_checkpoint),
        model_config=AutoConfig.from_pretrained(tiny_checkpoint), qc_filter=False, max_positions=2048,
        encode=lambda clips: pytest.fail("nothing to encode"))
    assert not skipped and {t for t, _, _ in train_set.targets} == {"a:0", "sub/b:0"}
    assert all(context == () for _, context, _ in train_set.targets)


def test_an_hf_audio_dataset_with_speakers(corpus, codec, tmp_path, tiny_checkpoint):
    import datasets

    with open(os.path.join(corpus, "a.wav"), "rb") as f:
        data = f.read()
    ds = datasets.Dataset.from_dict({"audio": [{"bytes": data, "path": None}, {"bytes": None, "path": os.path.join(
        corpus, "sub", "b.wav")}], "sentence": ["Hello there.", "A second clip."], "spk": [3, 5]})
    ds.cast_column("audio", datasets.Audio(decode=False)).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(CorpusError, match="no column 'text'"):
        clips_in_hf_dataset(str(tmp_path / "hf"), split="train", audio_column="audio", text_column="text",
                            speaker_column=None, speaker=0)
    clips = clips_in_hf_dataset(str(tmp_path / "hf"), split="train", audio_column="audio", text_column="sentence",
                                speaker_column="spk", speaker=0)
    out = str(tmp_path / "out")
    assert import_clips(clips, out, source="hf", codec=codec, model_id=tiny_checkpoint)["rows"] == 2
    rows = sorted(load_output(out), key=lambda r: r["id"])
    assert [(r["id"], r["speaker"], r["text"]) for r in rows] == [("00000000:0", 3, "Hello there."),
                                                                 ("00000001:0", 5, "A second clip.")]
    assert torch.tensor(rows[1]["codes"]).shape == (rows[1]["num_frames"], 32)


@pytest.mark.slow
def test_an_import_killed_mid_commit_resumes_exactly_once_into_an_adopted_directory(corpus, tiny_checkpoint,
                                                                                    tmp_path):
    """`synth import` killed between a part's data and its marker (as `kill -9` leaves it), then run
    again: each clip once, the user's file untouched, the store verified, the dataset loading."""
    from helpers import assert_exactly_once, run_job

    from synth.store import faults

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    args = ["-m", "synth", "import", "--clips", corpus, "--model", tiny_checkpoint, "--output", str(out),
            "--rows-per-part", "1", "--adopt-output"]
    token = str(tmp_path / "crashed")
    first = run_job(args, {faults.ENV_VAR: f"commit-data:3:{token}"})
    assert first.returncode == faults.CRASH_EXIT_STATUS and os.path.exists(token), first.stdout + first.stderr
    again = run_job(args)
    assert again.returncode == 1, again.stdout + again.stderr  # two clips cannot be imported: error rows, exit 1
    assert "Traceback" not in again.stderr and "2 committed before" in again.stdout, again.stdout
    assert_exactly_once(load_output(str(out))["id"], ["a:0", "sub/b:0"])
    assert sorted(e["id"] for e in load_errors(str(out))) == ["broken", "untranscribed.flac"]
    assert (out / "notes.txt").read_text() == "the user's"
    report = verify_dataset_at(str(out))
    assert report.ok and not report.missing, report.render()
