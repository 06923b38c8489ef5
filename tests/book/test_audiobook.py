"""Rendering a real public-domain book (Alice, chapters I-III) through a real local Ray:
chapter files whose timing matches their audio, killed mid-render and resumed, and the
cutting of chapters into passages that render in parallel."""

import json
import os

import av
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from helpers import REPO, JobProcess, private_ray, run_job

from synth.book.render import passages
from synth.book.text import Chapter, Chunk, load_book
from synth.pipeline.output import RUN_RECORD, VOICES_DIR, data_file, parsed_part
from synth.store.layout import PROGRESS_DIR

pytestmark = pytest.mark.slow  # a book rendered on a local Ray, killed and resumed

BOOK = os.path.join(REPO, "examples/books/alice-ch1-3.md")
PASSAGE_CHUNKS = 40  # Alice's chapters (74-82 chunks) become two passages each


def render_args(out, checkpoint, *extra):
    return ["jobs/render_book.py", "--config", "configs/demo.yaml", "--book", BOOK, "--voice", "narrator",
            "--output", str(out), "--formats", "wav,flac,mp3,m4b", "--set", f"model.id={checkpoint}",
            "--set", "generation.max_audio_seconds=0.4", "--set", "generation.min_audio_seconds=0.2",
            "--set", "actors.num_actors=2", "--set", "actors.num_cpus=0.5",
            "--passage-chunks", str(PASSAGE_CHUNKS), *extra]


def committed_parts(out):
    """The data files (paths under OUT) of the parts whose commit marker exists."""
    progress = os.path.join(out, PROGRESS_DIR)
    marked = [parsed_part(f.removesuffix(".json")) for f in sorted(os.listdir(progress))] if os.path.isdir(
        progress) else []
    return [data_file(*shard_part) for shard_part in marked if shard_part]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tiny_checkpoint):
    """A render on two actors killed (SIGKILL, driver and its local Ray) after its first passage
    committed, then resumed on one actor."""
    out = tmp_path_factory.mktemp("book") / "out"
    with private_ray() as env:
        job = JobProcess(render_args(out, tiny_checkpoint), env, str(out) + ".log")
        job.wait_until(lambda: committed_parts(out), 240, "the first passage committed")
        job.kill()
        before_kill = {f: os.path.getmtime(os.path.join(out, f)) for f in committed_parts(out)}
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
    cut = [p for c in chapters for p in passages(c, PASSAGE_CHUNKS)]
    assert len(cut) == 2 * len(chapters)
    expected = {f"{p.script_id}:{i}" for p in cut for i in range(p.stop - p.start)}
    assert sorted(r["id"] for r in rows) == sorted(expected)
    # what was committed before the kill was not redone
    for part, mtime in before_kill.items():
        assert os.path.getmtime(out / part) == mtime
    assert 1 <= len(before_kill) < len(cut)  # the kill came mid-render
    # each passage is one chain in the narrator's voice with rolling context; a passage
    # starts from the voice prompt alone
    by_id = {r["id"]: r for r in rows}
    assert by_id["chapter-002-p01:5"]["context_ids"][0] == "voice:narrator"
    assert by_id["chapter-002-p01:5"]["context_ids"][-1] == "chapter-002-p01:4"
    assert by_id["chapter-002-p02:0"]["context_ids"] == ["voice:narrator"]
    assert by_id["chapter-002-p02:3"]["context_ids"][1:] == [f"chapter-002-p02:{i}" for i in range(3)]
    # the book's store: every part, its manifest, each chapter and the M4B committed and intact
    from synth.pipeline.verify import verify_dataset_at

    report = verify_dataset_at(str(out))
    assert report.ok and report.rows == len(expected), report.render()
    units = set(os.listdir(out / "_progress"))
    assert {"book-manifest.json", "book-m4b.json"} | {f"chapter-{i:03d}.json" for i in (1, 2, 3)} <= units


def test_chapter_files_match_their_timing_files(rendered):
    out, *_ = rendered
    for chapter in load_book(BOOK):
        stem = out / "chapters" / f"chapter-{chapter.index + 1:03d}"
        timing = json.loads(stem.with_suffix(".json").read_text())
        assert timing["title"] == chapter.title and len(timing["chunks"]) == len(chapter.chunks)
        assert timing["chapter"] == chapter.index + 1  # chapter-001.json is chapter 1
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


def test_the_book_m4b_marks_each_chapter_where_its_file_starts(rendered):
    out, *_ = rendered
    timings = [json.loads((out / "chapters" / f"chapter-{c.index + 1:03d}.json").read_text()) for c in load_book(BOOK)]
    with av.open(str(out / "book.m4b")) as f:
        assert f.metadata["title"] == "alice-ch1-3"  # the book file's name, without --title
        chapters = f.chapters()
        duration_s = f.duration / 1e6
    assert [c["metadata"]["title"] for c in chapters] == [t["title"] for t in timings]
    start = 0.0
    for c, timing in zip(chapters, timings):
        assert float(c["start"] * c["time_base"]) == pytest.approx(start, abs=1e-3)
        start += timing["duration_s"]
    assert duration_s == pytest.approx(start, abs=0.1)


def test_every_book_file_is_marked_and_the_card_and_report_tell_the_chapters(rendered):
    """Each chapter file (WAV INFO, FLAC Vorbis comment, MP3 ID3v2 TXXX) and the M4B (its comment) says it is
    AI-generated speech of the model the rows name, read back through PyAV's FFmpeg (and the WAV's through
    soundfile); `synth book` writes a card and a report whose chapters are the timing files'."""
    import yaml

    from synth.pipeline.provenance import GENERATED, read_audio_marking

    out, *_ = rendered
    rows = pq.read_table(out / "data", columns=["model", "model_weights"]).to_pylist()
    (model, weights), = {(r["model"], r["model_weights"]) for r in rows}
    timings = []
    for chapter in load_book(BOOK):
        stem = out / "chapters" / f"chapter-{chapter.index + 1:03d}"
        for fmt in ("wav", "flac", "mp3"):
            record = read_audio_marking(stem.with_suffix(f".{fmt}").read_bytes())
            assert record is not None, fmt
            assert (record["statement"], record["ai_generated"], record["model"], record["model_weights"],
                    record["id"]) == (GENERATED, True, model, weights, stem.name), fmt
        with sf.SoundFile(str(stem.with_suffix(".wav"))) as f:
            assert json.loads(f.comment)["ai_generated"] is True and f.title == stem.name
        timings.append(json.loads(stem.with_suffix(".json").read_text()))
    book = read_audio_marking((out / "book.m4b").read_bytes())
    assert book["ai_generated"] is True and book["model_weights"] == weights
    with av.open(str(out / "book.m4b")) as f:
        assert f.metadata["description"] == GENERATED

    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("\n---\n", 1)[0][4:])
    assert header["synth"]["origin"] == "generated"
    assert [(c["number"], c["title"], c["duration_s"], c["acx_passes"]) for c in header["synth"]["chapters"]] == [
        (i + 1, t["title"], t["duration_s"], t["acx"]["passes"]) for i, t in enumerate(timings)]
    assert "narrated in the voice `narrator`" in card and "`book.m4b`" in card
    for i, t in enumerate(timings):
        acx = "pass" if t["acx"]["passes"] else "FAIL: " + "; ".join(t["acx"]["reasons"])
        assert f"| {i + 1} | {t['title']} | {t['duration_s']:.1f} s | flac, mp3, wav | {acx} |" in card
    assert "<h2>Chapters</h2>" in (out / "report.html").read_text()


def test_the_voice_is_encoded_once_per_run_and_not_again_on_resume(rendered):
    out, _, first_log, _ = rendered
    assert "voices: 2 ready (2 encoded now" in first_log  # narrator and guest, by the first actor ready
    summary = json.loads((out / RUN_RECORD).read_text())
    assert summary["voices"]["encoded"] == 0  # the resumed run read them from OUT/_voices
    assert summary["voices"]["encoded_by_workers"] == 0  # and no actor encoded one, in either run
    assert len(os.listdir(out / VOICES_DIR)) == 2


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
    assert "different book text or voice (changed: chapter-001-p01)" in result.stderr
    # another passage size would renumber committed chunks: refused even with --allow-changes
    result = run_job(render_args(out, tiny_checkpoint, "--passage-chunks", "30", "--allow-changes"))
    assert result.returncode == 2
    assert "passages are laid out differently (first at chapter-001-p01: other chunks or --passage-chunks; " \
        "it has 6 passages of 33-42 chunks)" in result.stderr


def _chapter(paragraph_ends: str) -> Chapter:
    """A chapter whose chunk i ends a paragraph where paragraph_ends[i] == "|"."""
    return Chapter(4, "T", tuple(Chunk(f"c{i}", e == "|") for i, e in enumerate(paragraph_ends)))


def test_passages_cut_at_the_first_paragraph_end_after_n_chunks():
    chapter = _chapter("|..|...|.|..")  # 12 chunks; paragraphs end after chunks 0, 3, 7, 9
    cut = passages(chapter, 3)
    assert [(p.start, p.stop) for p in cut] == [(0, 4), (4, 8), (8, 12)]  # never mid-paragraph
    assert [p.script_id for p in cut] == ["chapter-005-p01", "chapter-005-p02", "chapter-005-p03"]
    assert [(p.start, p.stop) for p in passages(chapter, 5)] == [(0, 8), (8, 12)]
    # a chapter shorter than one passage, or passages off: the whole chapter, under its own id
    assert [(p.script_id, p.start, p.stop) for p in passages(chapter, 0)] == [("chapter-005", 0, 12)]
    assert [(p.script_id, p.start, p.stop) for p in passages(chapter, 50)] == [("chapter-005", 0, 12)]
    # the last paragraph end closes the chapter: no empty passage after it
    assert [(p.start, p.stop) for p in passages(_chapter("..|..|"), 2)] == [(0, 3), (3, 6)]
    with pytest.raises(ValueError, match="passage_chunks=-1"):
        passages(chapter, -1)
