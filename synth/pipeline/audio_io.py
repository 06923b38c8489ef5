"""Reading context clips and encoding generated audio.

This module owns audio at the edges: decoding a clip of any format, sample rate and
channel count into float32 mono at the codec's rate (resampled with soxr), and
encoding float32 samples to WAV/FLAC bytes, with the string tags that mark them. It also
owns the conversion the output applies (16-bit PCM: `pcm16`, one rule for WAV and FLAC)
and the level rule a generated take goes through before it is measured or stored
(`as_stored`): a take that would clip as 16-bit PCM is scaled down to `FIT_PEAK_DBFS`,
never clipped, and the gain is returned for the row. It knows nothing about the model.
"""

from __future__ import annotations

import io
import math

import numpy as np

from synth.errors import SynthError

PCM16_SCALE = 32768  # a 16-bit sample s reads back as s / 32768 (soundfile, libsndfile, numpy readers)
FIT_PEAK_DBFS = -1.0  # where a take louder than full scale is scaled to (EBU R128's -1 dBTP ceiling)


class AudioError(SynthError, ValueError):
    """A clip that cannot be used as context; the message says why."""


def decode_clip(data: bytes, target_rate_hz: int, *, name: str = "clip") -> np.ndarray:
    """Decode audio bytes to [num_samples] float32 mono at `target_rate_hz`.
    name: the clip's path, URI or voice, which every error message starts with."""
    import soundfile as sf  # here and in encode_audio: `as_stored` needs neither (a bare GPU box has none)
    import soxr

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


def pcm16(samples: np.ndarray) -> np.ndarray:
    """[num_samples] float samples as the 16-bit PCM the output stores: rounded to the nearest
    step of 1/32768; a sample past full scale saturates (callers that must not clip `fit_to_full_scale` first)."""
    scaled = np.rint(np.asarray(samples, np.float64) * PCM16_SCALE)
    return np.clip(scaled, -PCM16_SCALE, PCM16_SCALE - 1).astype(np.int16)


def clips_as_pcm16(samples: np.ndarray) -> bool:
    """Whether any sample would saturate as 16-bit PCM (round past -32768..32767)."""
    if not len(samples):
        return False
    return bool(np.rint(float(np.max(samples)) * PCM16_SCALE) > PCM16_SCALE - 1
                or np.rint(float(np.min(samples)) * PCM16_SCALE) < -PCM16_SCALE)


def fit_to_full_scale(samples: np.ndarray) -> tuple[np.ndarray, float | None]:
    """samples scaled so their peak is at `FIT_PEAK_DBFS`, and that gain in dB, when they would clip
    as 16-bit PCM; otherwise the samples unchanged and None."""
    if not clips_as_pcm16(samples):
        return samples, None
    peak = float(np.max(np.abs(samples)))
    gain_db = FIT_PEAK_DBFS - 20 * math.log10(peak)
    return (np.asarray(samples, np.float64) * 10 ** (gain_db / 20)).astype(np.float32), gain_db


def as_stored(samples: np.ndarray) -> tuple[np.ndarray, float | None]:
    """A generated clip as the output stores it and any reader decodes it: fitted to full scale
    (`fit_to_full_scale`), then 16-bit PCM, read back as float32. Returns (samples, gain_db or None)."""
    fitted, gain_db = fit_to_full_scale(samples)
    return (pcm16(fitted).astype(np.float32) / PCM16_SCALE), gain_db


def encode_audio(samples: np.ndarray, rate_hz: int, fmt: str, tags: dict[str, str] | None = None) -> bytes:
    """Encode [num_samples] float32 mono as WAV or FLAC bytes, 16-bit PCM (`pcm16`: a sample past full
    scale saturates; generated takes are `as_stored` first, so theirs never do). tags: soundfile's string
    fields (title, software, comment...), written as a WAV's INFO chunk or a FLAC's Vorbis comments
    (`synth.pipeline.provenance.Provenance.audio_tags`)."""
    import soundfile as sf

    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", rate_hz, 1, format=fmt.upper(), subtype="PCM_16") as f:
        for name, value in (tags or {}).items():  # strings go in before the first frame
            setattr(f, name, value)
        f.write(pcm16(samples))
    return buf.getvalue()
