"""Writing a whole book as one M4B (synth.book.m4b), read back with FFmpeg through PyAV; no model."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest

from synth.book.m4b import M4bBook

SR = 24000


def _into(path):
    """A writer for `M4bBook.close_into`: the chunks into the file at `path`; returns its size."""
    def write(chunks) -> int:
        with open(path, "wb") as f:
            return sum(f.write(chunk) for chunk in chunks)
    return write


def _tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_chapters_are_marked_where_their_audio_starts(tmp_path):
    lengths = [1.5, 0.25, 2.75]  # the middle one shorter than one encoder block
    book = M4bBook(sample_rate_hz=SR, title="A Test Book")
    for i, seconds in enumerate(lengths):
        book.add_chapter(f"Chapter {i + 1}", _tone(seconds, 200 + 100 * i))
    assert book.close_into(_into(tmp_path / "book.m4b")) == os.path.getsize(tmp_path / "book.m4b")
    assert os.listdir(tmp_path) == ["book.m4b"] and not os.path.exists(book._tmp)  # no temp file left

    with av.open(str(tmp_path / "book.m4b")) as f:
        assert f.metadata["title"] == "A Test Book"
        stream = f.streams.audio[0]
        assert stream.codec_context.name == "aac" and stream.sample_rate == SR and stream.channels == 1
        chapters = f.chapters()
        decoded = np.concatenate([frame.to_ndarray()[0] for frame in f.decode(stream)])
    assert [c["metadata"]["title"] for c in chapters] == ["Chapter 1", "Chapter 2", "Chapter 3"]
    starts = np.cumsum([0] + lengths[:-1])
    for c, start, seconds in zip(chapters, starts, lengths):
        assert float(c["start"] * c["time_base"]) == pytest.approx(start, abs=1e-3)
        assert float(c["end"] * c["time_base"]) == pytest.approx(start + seconds, abs=1e-3)
    # AAC codes whole 1024-sample frames: the audio is all there, give or take a frame
    assert abs(len(decoded) - SR * sum(lengths)) <= 1024
    # and it is the audio that went in: the second chapter's tone sits where its marker says
    middle = decoded[int(SR * (starts[1] + 0.05)) : int(SR * (starts[1] + 0.2))]
    peak_hz = np.argmax(np.abs(np.fft.rfft(middle))) * SR / len(middle)
    assert peak_hz == pytest.approx(300, abs=15)


def test_a_book_that_fails_midway_leaves_nothing_behind(tmp_path):
    book = M4bBook(sample_rate_hz=SR, title="x")
    book.add_chapter("one", _tone(0.5, 200))
    book.discard()  # what assemble_chapters does when a chapter raises
    assert os.listdir(tmp_path) == [] and not os.path.exists(book._tmp)


def test_a_jpeg_cover_and_the_book_metadata_are_carried(tmp_path):
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt, encoder.time_base = 40, 24, "yuvj420p", Fraction(1, 25)
    image = av.VideoFrame.from_ndarray(np.full((24, 40, 3), 120, np.uint8), format="rgb24").reformat(format="yuvj420p")
    jpeg = b"".join(bytes(p) for p in encoder.encode(image) + encoder.encode(None))
    book = M4bBook(sample_rate_hz=SR, title="Emma", author="Jane Austen", language="en", cover=jpeg,
                   cover_type="image/jpeg")
    book.add_chapter("Volume one", _tone(0.5, 200))
    book.close_into(_into(tmp_path / "book.m4b"))
    with av.open(str(tmp_path / "book.m4b")) as f:
        assert {k: f.metadata.get(k) for k in ("title", "album", "artist", "album_artist", "genre")} == {
            "title": "Emma", "album": "Emma", "artist": "Jane Austen", "album_artist": "Jane Austen",
            "genre": "Audiobook"}
        (picture,) = [s for s in f.streams if s.disposition & av.stream.Disposition.attached_pic]
        assert picture.codec_context.name == "mjpeg" and (picture.width, picture.height) == (40, 24)
        assert bytes(next(f.demux(picture))) == jpeg
    gif = M4bBook(sample_rate_hz=SR, title="x", cover=b"GIF89a", cover_type="image/gif")
    assert gif.cover_skipped
    gif.discard()
