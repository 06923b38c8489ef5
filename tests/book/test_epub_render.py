"""An EPUB made from a public-domain text (Alice) rendered end to end through a real local Ray
(one render for the module): chapters mastered and passing the ACX check, an M4B whose title,
author, cover and chapter marks FFmpeg reads back, spoken-form text with a lexicon beside the
written text, subtitles showing the written text; then the same chapters stitched without
mastering fail the check, with reasons, and `synth acx --strict` tells the two apart. The render
runs with quality control on (`QC_ON`): each chunk's scores and takes land in its chapter's JSON."""

import json
import os
import shutil

import av
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from epub_book import AUTHOR, CHAPTER_TITLES, COVER, TITLE, make_epub
from helpers import private_ray, run_job

from synth.book.acx import acx_check
from synth.book.render import QC_COLUMNS, SAMPLE_RATE_HZ, assemble_chapters, open_book
from synth.book.stitch import StitchSettings
from synth.cli import main
from synth.pipeline.output import BOOK
from synth.store.store import Store

# QC at its cheapest (Silero's VAD and the codes' loop score, no model download), set so that every
# take fails for a reason the test can state: the VAD hears no speech in the tiny model's noise, so
# a chunk's trailing silence is its whole clip, and every chunk runs to the 0.4 s cap
# (max_audio_seconds), over max_trailing_silence_s 0.35. So every chunk is retaken once (max_takes 2).
# The timing checks that noise fails outright (leading silence, speech ratio) are off.
MAX_TRAILING_SILENCE_S = 0.35
QC_ON = [f"qc.{setting}" for setting in (
    "enabled=true", "metrics=[timing,repetition]", "max_takes=2", "thresholds.max_leading_silence_s=null",
    "thresholds.min_speech_ratio=null", f"thresholds.max_trailing_silence_s={MAX_TRAILING_SILENCE_S}")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("epub")
    book = make_epub(root / "alice.epub")
    lexicon = root / "names.txt"
    lexicon.write_text("# how the narrator says them\nAlice = AL-iss\n")
    out = root / "out"
    args = ["jobs/render_book.py", "--config", "configs/demo.yaml", "--book", str(book), "--voice", "narrator",
            "--output", str(out), "--formats", "wav,m4b", "--lexicon", str(lexicon), "--strict",
            "--set", f"model.id={tiny_checkpoint}", "--set", "generation.max_audio_seconds=0.4",
            "--set", "generation.min_audio_seconds=0.2", "--set", "actors.num_cpus=0.5",
            *[arg for setting in QC_ON for arg in ("--set", setting)]]
    with private_ray() as env:
        result = run_job(args, env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return book, out, result.stdout


def timings(out):
    return [json.loads((out / "chapters" / f"chapter-{i + 1:03d}.json").read_text()) for i in range(2)]


@pytest.mark.slow  # an EPUB rendered on a local Ray with QC on
def test_the_m4b_carries_title_author_cover_and_chapter_marks(rendered):
    _, out, _ = rendered
    with av.open(str(out / "book.m4b")) as f:
        assert f.metadata["title"] == TITLE and f.metadata["artist"] == AUTHOR  # from the EPUB's metadata
        assert f.metadata["album"] == TITLE and f.metadata["genre"] == "Audiobook"
        (picture,) = [s for s in f.streams if s.disposition & av.stream.Disposition.attached_pic]
        cover = bytes(next(f.demux(picture)))
        marks = f.chapters()
    assert cover == COVER
    assert [c["metadata"]["title"] for c in marks] == CHAPTER_TITLES
    start = 0.0
    for mark, timing in zip(marks, timings(out)):
        assert float(mark["start"] * mark["time_base"]) == pytest.approx(start, abs=1e-3)
        start += timing["duration_s"]


@pytest.mark.slow  # an EPUB rendered on a local Ray with QC on
def test_chapters_are_mastered_and_pass_the_acx_check(rendered):
    _, out, log = rendered
    assert "book: skipped as front/back matter: Cover, Contents, Copyright" in log
    assert log.count(": ACX pass (") == 2 and "book: ACX check: 2 of 2 chapters pass" in log
    for timing in timings(out):
        samples, rate = sf.read(str(out / "chapters" / f"chapter-{timing['chapter']:03d}.wav"), dtype="float32")
        report = acx_check(samples, rate)  # the file as written (16-bit), measured again
        assert report.passes, report.line()
        assert timing["mastered"] and timing["acx"]["passes"] and timing["acx"]["reasons"] == []
        assert -23 <= timing["acx"]["rms_db"] <= -18 and timing["acx"]["peak_dbfs"] <= -3
        assert timing["book"] == {"title": TITLE, "author": AUTHOR, "language": "en"}


@pytest.mark.slow  # an EPUB rendered on a local Ray with QC on
def test_spoken_text_beside_the_written_and_subtitles_show_the_written(rendered):
    _, out, _ = rendered
    first, second = timings(out)
    title = first["chunks"][0]
    assert title["text"] == "CHAPTER I. Down the Rabbit-Hole"
    assert title["spoken_text"] == "CHAPTER one. Down the Rabbit-Hole"  # normalised: on by default for books
    assert second["chunks"][0]["spoken_text"] == "CHAPTER two. The Pool of Tears"
    body = first["chunks"][1]
    assert body["text"].startswith("Alice was beginning") and body["spoken_text"].startswith("AL-iss was beginning")
    srt = (out / "chapters" / "chapter-001.srt").read_text()
    assert "CHAPTER I. Down the Rabbit-Hole" in srt and "Alice was beginning" in srt
    assert "CHAPTER one" not in srt and "AL-iss" not in srt
    vtt = (out / "chapters" / "chapter-002.vtt").read_text()
    assert "CHAPTER II. The Pool of Tears" in vtt and "two" not in vtt.split("\n\n")[1]
    rows = [r for f in sorted(os.listdir(out / "data"))
            for r in pq.read_table(out / "data" / f, columns=["id", "text", "spoken_text"]).to_pylist()]
    assert {r["id"]: r["spoken_text"] for r in rows}["chapter-001:0"] == "CHAPTER one. Down the Rabbit-Hole"
    assert all(r["text"] != r["spoken_text"] for r in rows if "Alice" in r["text"])


@pytest.mark.slow  # an EPUB rendered on a local Ray with QC on
def test_with_qc_on_each_chunks_scores_are_in_its_chapter_json_and_failing_chunks_were_retaken(rendered):
    _, out, log = rendered
    rows = {r["id"]: r for f in sorted(os.listdir(out / "data")) for r in pq.read_table(out / "data" / f).to_pylist()}
    rejected = pq.read_table(out / "takes").to_pylist()  # every take QC turned down, on record
    chunks = [(t["chapter"], entry) for t in timings(out) for entry in t["chunks"]]
    assert len(chunks) == len(rows) == 13 and len(rejected) == 13
    for chapter, entry in chunks:
        row = rows[f"chapter-{chapter:03d}:{entry['index']}"]  # one passage per chapter: turn = chunk
        # the row's QC columns, those QC measured; none it did not (ASR, speaker, DNSMOS, level are off)
        assert {c: entry[c] for c in QC_COLUMNS if c in entry} == {c: row[c] for c in QC_COLUMNS if row[c] is not None}
        assert "wer" not in entry and "dnsmos" not in entry and entry["loop_score"] is not None
        assert entry["end_s"] - entry["start_s"] == pytest.approx(row["duration_s"], abs=1e-3)  # the kept take's clip
        # failed: trailing silence is the whole clip, at the cap; so it was retaken, and both takes are on record
        assert entry["trailing_silence_s"] == pytest.approx(row["duration_s"], abs=1e-3)
        assert entry["trailing_silence_s"] > MAX_TRAILING_SILENCE_S and row["stop_reason"] == "max_length"
        assert entry["qc_pass"] is False and [r.split(":")[0] for r in entry["qc_reasons"]] == ["trailing_silence_s"]
        assert entry["num_takes"] == 2 and entry["take"] in (1, 2)
        (other,) = [t for t in rejected if t["id"] == row["id"]]
        assert other["take"] == 3 - entry["take"] and other["kept_take"] == entry["take"] and not other["qc_pass"]
    assert "QC passed 0/13 turns in 26 takes" in log


@pytest.mark.slow  # an EPUB rendered on a local Ray with QC on
def test_unmastered_chapters_fail_the_acx_check_with_reasons(rendered, tmp_path, capsys):
    book, out, _ = rendered
    raw = tmp_path / "raw"
    shutil.copytree(out, raw, ignore=shutil.ignore_patterns("chapters", "book.m4b"))
    written = assemble_chapters(open_book(str(book)), Store.at_uri(str(raw), BOOK), sample_rate_hz=SAMPLE_RATE_HZ,
                                formats=["wav"], settings=StitchSettings(), mastering=None, title=TITLE, log=print)
    log = capsys.readouterr().out
    assert log.count(": ACX FAIL: ") == 2 and "room tone at the head 0.20 s is under 0.5 s" in log
    assert all(not c.acx.passes for c in written)
    assert not json.loads((raw / "chapters" / "chapter-001.json").read_text())["mastered"]
    # the same numbers from the command line: --strict fails on the raw chapters, not the mastered ones
    raw_files = sorted(str(p) for p in (raw / "chapters").glob("*.wav"))
    assert main(["acx", *raw_files]) == 0 and main(["acx", "--strict", *raw_files]) == 1
    assert "ACX FAIL: " in capsys.readouterr().out
    assert main(["acx", "--strict", *sorted(str(p) for p in (out / "chapters").glob("*.wav"))]) == 0
    assert "acx: 2 of 2 files pass" in capsys.readouterr().out


def test_a_chunks_qc_scores_and_its_passing_take_are_used_when_the_rows_have_them(tmp_path):
    """With issue 12's columns in data/ (several takes of a turn), the chapter uses the take that
    passed and its timing entry carries that take's scores (none where QC was off: the columns are
    null); written without a model."""
    import io

    import numpy as np
    import pyarrow as pa

    from synth.book.render import _chunk_audio

    def clip(value: float) -> dict:
        buf = io.BytesIO()
        sf.write(buf, np.full(240, value, np.float32), SAMPLE_RATE_HZ, format="WAV", subtype="FLOAT")
        return {"bytes": buf.getvalue(), "path": None}

    rows = [  # turn 0: take 1 failed, take 2 passed; turn 1: one take; another script's row
        {"script_id": "chapter-001", "turn": 0, "audio": clip(0.1), "spoken_text": "one", "qc_pass": False,
         "take": 1, "wer": 0.8},
        {"script_id": "chapter-001", "turn": 0, "audio": clip(0.2), "spoken_text": "one", "qc_pass": True,
         "take": 2, "wer": 0.0},
        {"script_id": "chapter-001", "turn": 1, "audio": clip(0.3), "spoken_text": "two", "qc_pass": True,
         "take": 1, "wer": 0.1},
        {"script_id": "chapter-002", "turn": 0, "audio": clip(0.4), "spoken_text": "x", "qc_pass": True,
         "take": 1, "wer": 0.0},
        # a run with QC off writes the columns all null: no scores to record
        {"script_id": "chapter-003", "turn": 0, "audio": clip(0.5), "spoken_text": "y", "qc_pass": None,
         "take": None, "wer": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part.parquet")
    found = _chunk_audio(Store.at_uri(str(tmp_path), BOOK), [str(tmp_path / "part.parquet")], "chapter-001")
    assert sorted(found) == [0, 1]
    assert found[0][0][0] == pytest.approx(0.2) and found[0][1] == {"spoken_text": "one", "qc_pass": True,
                                                                   "take": 2, "wer": 0.0}
    assert found[1][1]["wer"] == 0.1
    (plain,) = _chunk_audio(Store.at_uri(str(tmp_path), BOOK), [str(tmp_path / "part.parquet")], "chapter-003").values()
    assert plain[1] == {"spoken_text": "y"}
