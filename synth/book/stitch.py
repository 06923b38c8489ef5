"""One chapter's audio from its chunks' audio, and the files that say where each chunk is.

This module owns the layout of a chapter recording: lead-in silence, each chunk's audio
with short linear fades at its edges, a pause after it (longer at a paragraph's end), and
tail silence; the per-chunk timing that layout implies (JSON, SRT, WebVTT); and writing
the audio as WAV, FLAC or MP3. It knows nothing about how the text was chunked or how
the audio was generated.

A chunk whose generation failed (audio None) contributes nothing, not even its pause:
its neighbours are laid out as if it were not there, and its timing entry is an empty
span at the start of the next placed chunk (or at the end of the last one).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import soundfile as sf

from synth.pipeline.audio_io import encode_audio

AUDIO_FORMATS = ("wav", "flac", "mp3")


@dataclass(frozen=True)
class StitchSettings:
    sentence_pause_s: float = 0.25
    paragraph_pause_s: float = 0.7
    fade_s: float = 0.01  # linear fade in/out at each chunk's edges (no clicks)
    lead_in_s: float = 0.2  # silence before the first chunk
    tail_s: float = 0.5  # silence after the last chunk

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"StitchSettings.{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class TimedChunk:
    index: int
    text: str
    start_s: float
    end_s: float
    missing: bool  # generation failed, nothing was placed


def stitch(
    chunks: Sequence[tuple[str, np.ndarray | None, bool]],
    sample_rate_hz: int,
    settings: StitchSettings = StitchSettings(),
) -> tuple[np.ndarray, list[TimedChunk]]:
    """Lay out (text, audio [num_samples] float32 mono or None, paragraph_end) chunks.

    Returns the chapter audio [num_samples] float32 and one `TimedChunk` per input chunk,
    in order; times are exact sample positions divided by `sample_rate_hz`.
    """
    if sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")

    def samples(seconds: float) -> int:
        return int(round(seconds * sample_rate_hz))

    placed = []  # (chunk index, audio) of the chunks that have audio, in order
    for index, (_, audio, _) in enumerate(chunks):
        if audio is not None:
            audio = np.asarray(audio, dtype=np.float32)
            if audio.ndim != 1:
                raise ValueError(f"chunk {index}: audio must be [num_samples] mono, got shape {audio.shape}")
            placed.append((index, audio))

    lead_in, tail, fade = samples(settings.lead_in_s), samples(settings.tail_s), samples(settings.fade_s)
    spans = {}  # chunk index -> (first sample, end sample)
    cursor = lead_in
    for n, (index, audio) in enumerate(placed):
        spans[index] = (cursor, cursor + len(audio))
        cursor += len(audio)
        if n < len(placed) - 1:
            paragraph_end = chunks[index][2]
            cursor += samples(settings.paragraph_pause_s if paragraph_end else settings.sentence_pause_s)
    out = np.zeros(cursor + tail, dtype=np.float32)  # [num_samples]
    for index, audio in placed:
        start, end = spans[index]
        out[start:end] = _faded(audio, fade)

    timed = []
    next_start = cursor  # where a missing chunk's empty span sits: the next placed start, or the end
    for index in reversed(range(len(chunks))):
        text = chunks[index][0]
        start, end = spans.get(index, (next_start, next_start))
        next_start = start
        timed.append(TimedChunk(index, text, start / sample_rate_hz, end / sample_rate_hz, index not in spans))
    return out, timed[::-1]


def _faded(audio: np.ndarray, fade_samples: int) -> np.ndarray:
    """A copy with linear ramps over the first and last `fade_samples` (first/last sample 0)."""
    out = audio.copy()
    n = min(fade_samples, len(out) // 2)
    if n > 0:
        ramp = np.arange(n, dtype=np.float32) / n  # [n], 0 .. (n-1)/n
        out[:n] *= ramp
        out[-n:] *= ramp[::-1]
    return out


def timing_json(
    title: str, chapter_index: int, sample_rate_hz: int, num_samples: int, timed: list[TimedChunk]
) -> dict:
    """The chapter's timing file: where each chunk starts and ends, in seconds. `chapter_index` is
    the chapter's place in the book (0-based); the file gives its number, 1-based as its file name
    is (`chapter-001.json` says `"chapter": 1`), the one numbering a reader sees."""
    return {
        "title": title,
        "chapter": chapter_index + 1,
        "sample_rate_hz": sample_rate_hz,
        "duration_s": num_samples / sample_rate_hz,
        "num_samples": num_samples,
        "chunks": [
            {"index": t.index, "start_s": t.start_s, "end_s": t.end_s, "text": t.text, "missing": t.missing}
            for t in timed
        ],
    }


def to_srt(timed: list[TimedChunk]) -> str:
    """SubRip cues for the chunks that have audio, numbered from 1."""
    cues = [t for t in timed if not t.missing]
    return "".join(
        f"{n}\n{_timestamp(t.start_s, ',')} --> {_timestamp(t.end_s, ',')}\n{_cue_text(t.text)}\n\n"
        for n, t in enumerate(cues, start=1)
    )


def to_vtt(timed: list[TimedChunk]) -> str:
    """WebVTT cues for the chunks that have audio."""
    cues = [t for t in timed if not t.missing]
    body = "".join(
        f"{_timestamp(t.start_s, '.')} --> {_timestamp(t.end_s, '.')}\n{_cue_text(t.text)}\n\n" for t in cues
    )
    return "WEBVTT\n\n" + body


def _timestamp(seconds: float, ms_separator: str) -> str:
    """HH:MM:SS,mmm (SRT) or HH:MM:SS.mmm (VTT); hours grow past 99 if they must."""
    total_ms = int(round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{ms_separator}{ms:03d}"


def _cue_text(text: str) -> str:
    # A blank line ends a cue and `-->` marks a timing line, so neither may appear in text.
    return " ".join(text.split()).replace("-->", "->")


def encode_chapter(audio: np.ndarray, sample_rate_hz: int, fmt: str) -> bytes:
    """A chapter's audio as the bytes of one file format (wav, flac: 16-bit PCM; mp3)."""
    if fmt not in AUDIO_FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}; choose from {list(AUDIO_FORMATS)}")
    if fmt != "mp3":
        return encode_audio(audio, sample_rate_hz, fmt)
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), sample_rate_hz, format="MP3", subtype="MPEG_LAYER_III")
    return buf.getvalue()
