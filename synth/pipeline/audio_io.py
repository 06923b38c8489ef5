"""Reading context clips and encoding generated audio.

This module owns audio at the edges: decoding a clip of any format, sample rate and
channel count into float32 mono at the codec's rate (resampled with soxr), and
encoding float32 samples to WAV/FLAC bytes, with the string tags that mark them. It knows
nothing about the model.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import soxr

from synth.errors import SynthError


class AudioError(SynthError, ValueError):
    """A clip that cannot be used as context; the message says why."""


def decode_clip(data: bytes, target_rate_hz: int, *, name: str = "clip") -> np.ndarray:
    """Decode audio bytes to [num_samples] float32 mono at `target_rate_hz`.
    name: the clip's path, URI or voice, which every error message starts with."""
    buffer = io.BytesIO(data)
    try:
        samples, rate_hz = sf.read(buffer, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:  # its str() names the buffer object: keep libsndfile's own words
        raise AudioError(f"{name}: cannot decode audio ({e.error_string})") from None
    except (RuntimeError, TypeError) as e:
        raise AudioError(f"{name}: cannot decode audio ({str(e).replace(repr(buffer), 'the bytes')})") from None
    if samples.shape[0] == 0:
        raise AudioError(f"{name}: audio is empty")
    mono = samples.mean(axis=1)  # [num_samples]
    if not np.isfinite(mono).all():
        raise AudioError(f"{name}: audio holds NaN or infinite samples")
    if rate_hz != target_rate_hz:
        mono = soxr.resample(mono, rate_hz, target_rate_hz, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def encode_audio(samples: np.ndarray, rate_hz: int, fmt: str, tags: dict[str, str] | None = None) -> bytes:
    """Encode [num_samples] float32 mono as WAV (16-bit PCM) or FLAC bytes. tags: soundfile's string
    fields (title, software, comment...), written as a WAV's INFO chunk or a FLAC's Vorbis comments
    (`synth.pipeline.provenance.Provenance.audio_tags`)."""
    buf = io.BytesIO()
    clipped = np.clip(samples, -1.0, 1.0)
    with sf.SoundFile(buf, "w", rate_hz, 1, format=fmt.upper(), subtype="PCM_16") as f:
        for name, value in (tags or {}).items():  # strings go in before the first frame
            setattr(f, name, value)
        f.write(clipped)
    return buf.getvalue()
