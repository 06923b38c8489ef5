"""Rendering a real public-domain book (Alice, chapters I-III) through a real local Ray:
chapter files whose timing matches their audio, killed mid-render and resumed."""

import json
import os
import re

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from helpers import REPO, JobProcess, private_ray, run_job
from synth.book import load_book

BOOK = os.path.join(REPO, "examples/books/alice-ch1-3.md")
PART_MARKER = re.compile(r"shard-\d{5}-part-\d{4}\.json$")


def render_args(out, checkpoint, *extra):
    return ["jobs/render_book.py", "--config", "configs/demo.yaml", "--book", BOOK, "--voice", "narrator",
            "--output", str(out), "--formats", "wav,flac,mp3", "--set", f"model.id={checkpoint}",
            "--set", "generation.max_audio_seconds=0.4", "--set", "generation.min_audio_seconds=0.2",
            "--set", "actors.num_actors=2", "--set", "actors.num_cpus=0.5", *extra]


def committed_parts(out):
    progress = os.path.join(out, "_progress")
    return sorted(f for f in os.listdir(progress) if PART_MARKER.search(f)) if os.path.isdir(progress) else []


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tiny_checkpoint):
    """A render on two actors killed (SIGKILL, driver and its local Ray) after its first chapter
    committed, then resumed on one actor."""
    out = tmp_path_factory.mktemp("book") / "out"
    with private_ray() as env:
        job = JobProcess(render_args(out, tiny_checkpoint), env, str(out) + ".log")
        job.wait_until(lambda: committed_parts(out), 240, "the first chapter committed")
        job.kill()
        before_kill = {f: os.path.getmtime(os.path.join(out, "data", f.replace(".json", ".parquet")))
                       for f in committed_parts(out)}
        first_log = job.output()
        # resumed on one actor: the render keeps the shard plan it started with
        resumed = run_job(render_args(out, tiny_checkpoint, "--set", "actors.num_actors=1"),
                          {**env, "RAY_ADDRESS": None}, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return out, before_kill, first_log, resumed.stdout


def test_every_chunk_is_rendered_exactly_once_after_the_kill(rendered):
    out, before_kill, _, log = rendered
    chapters = load_book(BOOK)
    rows = [r for f in sorted(os.listdir(out / "data"))
            for r in pq.read_table(out / "data" / f, columns=["id", "script_id", "turn", "context_ids"]).to_pylist()]
    expected = {f"chapter-{c.index + 1:03d}:{i}" for c in chapters for i in range(len(c.chunks))}
    assert sorted(r["id"] for r in rows) == sorted(expected)
    # what was committed before the kill was not redone
    for marker, mtime in before_kill.items():
        assert os.path.getmtime(out / "data" / marker.replace(".json", ".parquet")) == mtime
    assert 1 <= len(before_kill) < len(chapters)  # the kill came mid-render
    # each chapter is one chain in the narrator's voice with rolling context
    by_id = {r["id"]: r for r in rows}
    assert by_id["chapter-002:5"]["context_ids"][0] == "voice:narrator"
    assert by_id["chapter-002:5"]["context_ids"][-1] == "chapter-002:4"


def test_chapter_files_match_their_timing_files(rendered):
    out, *_ = rendered
    for chapter in load_book(BOOK):
        stem = out / "chapters" / f"chapter-{chapter.index + 1:03d}"
        timing = json.loads(stem.with_suffix(".json").read_text())
        assert timing["title"] == chapter.title and len(timing["chunks"]) == len(chapter.chunks)
        for fmt in ("wav", "flac"):
            info = sf.info(str(stem.with_suffix(f".{fmt}")))
            assert info.samplerate == 24000 and info.channels == 1
            assert info.frames == timing["num_samples"]
        assert timing["duration_s"] == pytest.approx(timing["num_samples"] / 24000)
        assert abs(sf.info(str(stem.with_suffix(".mp3"))).duration - timing["duration_s"]) < 0.1
        ends = [(c["start_s"], c["end_s"]) for c in timing["chunks"]]
        assert all(s < e for s, e in ends) and not any(c["missing"] for c in timing["chunks"])
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(ends, ends[1:]))  # in order, no overlap
        assert ends[-1][1] < timing["duration_s"]
        assert [c["text"] for c in timing["chunks"]] == [k.text for k in chapter.chunks]
        srt = stem.with_suffix(".srt").read_text()
        assert srt.count(" --> ") == len(chapter.chunks)
        assert stem.with_suffix(".vtt").read_text().startswith("WEBVTT")


def test_the_voice_is_encoded_once_per_run_and_not_again_on_resume(rendered):
    out, _, first_log, _ = rendered
    assert "voices: 2 ready (2 encoded now" in first_log  # narrator and guest, by the first actor ready
    summary = json.loads((out / "run.json").read_text())
    assert summary["voices"]["encoded"] == 0  # the resumed run read them from OUT/_voices
    assert summary["voices"]["encoded_by_workers"] == 0  # and no actor encoded one, in either run
    assert len(os.listdir(out / "_voices")) == 2


def test_an_unknown_narrator_is_refused_before_anything_runs(tmp_path, tiny_checkpoint):
    result = run_job(render_args(tmp_path / "out", tiny_checkpoint, "--voice", "nobody"))
    assert result.returncode == 2
    assert "'nobody' is not in the config's voices (guest, narrator)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_different_book_on_the_same_output_is_refused(rendered, tiny_checkpoint, tmp_path):
    out = rendered[0]
    changed = tmp_path / "book.md"
    changed.write_text(open(BOOK).read().replace("Alice was beginning", "Bob was beginning"))
    args = render_args(out, tiny_checkpoint)
    args[args.index("--book") + 1] = str(changed)
    result = run_job(args)
    assert result.returncode == 2
    assert "different book text or voice (changed: chapter-001)" in result.stderr
