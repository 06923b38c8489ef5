"""A whole book as one M4B file: AAC audio in an MP4 ("ipod") container, one chapter marker
per chapter, so audiobook players show the chapters and remember the place.

Chapters are added one at a time, so a long book is never in memory whole: they are
encoded into a temporary local file, which lands at its destination in one step when
the book is closed (rename for a local path, a single upload for an object store). It
uses PyAV (FFmpeg's AAC encoder and MP4 muxer, shipped in its wheel) and knows nothing
about how the chapters were made.

    book = M4bBook(storage.resolve("out/book.m4b"), sample_rate_hz=24000, title="Alice")
    book.add_chapter("Chapter I", samples)   # float32 mono [num_samples]
    book.close()
"""

from __future__ import annotations

import os
import tempfile
from fractions import Fraction

import numpy as np

from synth.pipeline import storage

FORMAT = "m4b"  # a book format: one file for the whole book, not one per chapter
_BLOCK = 24000  # samples handed to the encoder at a time


class M4bBook:
    """An M4B being written; `add_chapter` in book order, then `close` (or `discard`)."""

    def __init__(self, destination: storage.Location, *, sample_rate_hz: int, title: str,
                 bit_rate: int = 64000):
        import av

        self.destination = destination
        self.sample_rate_hz = sample_rate_hz
        directory = os.path.dirname(destination.path) if destination.is_local else None
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(suffix=".m4b.tmp", dir=directory)  # same filesystem: rename is atomic
        os.close(fd)
        self._container = av.open(self._tmp, "w", format="ipod")
        self._container.metadata["title"] = title
        self._stream = self._container.add_stream("aac", rate=sample_rate_hz, layout="mono")
        self._stream.bit_rate = bit_rate
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

    def close(self) -> str:
        """Finish the file and move it to its destination; returns the destination's URI."""
        try:
            self._container.mux(self._stream.encode(None))  # flush the encoder
            self._container.set_chapters(self._chapters)
            self._close_container()
            if self.destination.is_local:
                os.replace(self._tmp, self.destination.path)
            else:
                with open(self._tmp, "rb") as f:
                    storage.write_bytes_atomic(self.destination, f.read())
        finally:
            self.discard()
        return self.destination.uri

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
