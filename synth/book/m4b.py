"""A whole book as one M4B file: AAC audio in an MP4 container (brand `M4B `), one chapter
marker per chapter, so audiobook players show the chapters and remember the place, and
the book's metadata: title (also as album), author (artist and album artist), language,
genre `Audiobook`, the cover as an attached picture (JPEG or PNG), and what made the audio
(the `comment` and `description` a caller gives, e.g. that it is AI-generated speech).

Chapters are added one at a time, so a long book is never in memory whole: they are
encoded into a temporary local file, which is handed, a chunk at a time, to a writer
when the book is closed (`close_into`: a store's `write_stream`, which lands it whole
under its name). It
uses PyAV (FFmpeg's AAC encoder and MP4 muxer, shipped in its wheel) and knows nothing
about how the chapters were made.

    book = M4bBook(sample_rate_hz=24000, title="Alice", author="Lewis Carroll", cover=jpeg_bytes,
                   cover_type="image/jpeg")
    book.add_chapter("Chapter I", samples)   # float32 mono [num_samples]
    record = book.close_into(lambda chunks: store.write_stream("book.m4b", chunks))
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction
from typing import Callable, Iterable, TypeVar

import numpy as np

FORMAT = "m4b"  # a book format: one file for the whole book, not one per chapter
_BLOCK = 24000  # samples handed to the encoder at a time
_COVER_CODECS = {"image/jpeg": "mjpeg", "image/png": "png"}  # what MP4 can carry as an attached picture
_CHUNK = 1 << 20  # bytes handed to `close_into`'s writer at a time
T = TypeVar("T")


class M4bBook:
    """An M4B being written; `add_chapter` in book order, then `close_into` (or `discard`)."""

    def __init__(self, *, sample_rate_hz: int, title: str, author: str | None = None,
                 language: str | None = None, cover: bytes | None = None, cover_type: str | None = None,
                 bit_rate: int = 64000, marking: dict[str, str] | None = None):
        """A cover of another type than JPEG or PNG is left out (`self.cover_skipped` says so).
        marking: metadata that says what made the audio (FFmpeg's keys,
        `synth.pipeline.provenance.Provenance.container_tags`)."""
        import av

        self.sample_rate_hz = sample_rate_hz
        fd, self._tmp = tempfile.mkstemp(suffix=".m4b.tmp")  # in the system's temp directory, never the output
        os.close(fd)
        # "mp4", not "ipod": FFmpeg's ipod muxer refuses a picture stream; the brand makes it an M4B
        self._container = av.open(self._tmp, "w", format="mp4", options={"brand": "M4B "})
        tags = {"title": title, "album": title, "artist": author, "album_artist": author, "language": language,
                "genre": "Audiobook", **(marking or {})}
        self._container.metadata.update({k: v for k, v in tags.items() if v})
        self._stream = self._container.add_stream("aac", rate=sample_rate_hz, layout="mono")
        self._stream.bit_rate = bit_rate
        self._cover = None
        self.cover_skipped = cover is not None and cover_type not in _COVER_CODECS
        if cover is not None and not self.cover_skipped:
            self._cover = (self._container.add_stream(_COVER_CODECS[cover_type]), cover)
            picture, _ = self._cover
            picture.width, picture.height = _image_size(cover)
            picture.pix_fmt = "yuvj420p" if cover_type == "image/jpeg" else "rgb24"
            picture.disposition = av.stream.Disposition.attached_pic
        self._chapters: list[dict] = []
        self._samples = 0  # written so far: the next chapter's start

    def add_chapter(self, title: str, samples: np.ndarray) -> None:
        """Append one chapter's audio (float32 mono at `sample_rate_hz`) under a marker titled `title`."""
        import av

        samples = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
        start = self._samples
        for i in range(0, len(samples), _BLOCK):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i : i + _BLOCK]),
                                               format="flt", layout="mono")
            frame.sample_rate = self.sample_rate_hz
            frame.pts = self._samples
            self._samples += frame.samples
            self._container.mux(self._stream.encode(frame))
        self._chapters.append({"id": len(self._chapters) + 1, "start": start, "end": self._samples,
                               "time_base": Fraction(1, self.sample_rate_hz), "metadata": {"title": title}})

    def _finish(self) -> None:
        import av

        self._container.mux(self._stream.encode(None))  # flush the encoder
        if self._cover is not None:  # the picture: one packet, as it is (no re-encoding)
            stream, data = self._cover
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts = stream, 0, 0
            self._container.mux(packet)
        self._container.set_chapters(self._chapters)
        self._close_container()

    def close_into(self, write: Callable[[Iterable[bytes]], T]) -> T:
        """Finish the file and hand its bytes, a chunk at a time, to `write`; returns what it returns."""
        try:
            self._finish()
            with open(self._tmp, "rb") as f:
                return write(iter(lambda: f.read(_CHUNK), b""))
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the temporary file (after an error, or once it has been moved). Safe to call twice."""
        import av

        try:
            self._close_container()
        except av.FFmpegError:  # a half-written file may not close cleanly; it is removed either way
            pass
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def _close_container(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            container.close()


def _image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG or JPEG from its header; (1, 1) when it cannot be read (the
    muxer needs some size; players read the picture itself)."""
    import struct

    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    at = 2
    while data[:2] == b"\xff\xd8" and at + 9 < len(data):  # JPEG: walk the segments to a start-of-frame
        if data[at] != 0xFF:
            break
        marker, length = data[at + 1], struct.unpack(">H", data[at + 2 : at + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return 1, 1
