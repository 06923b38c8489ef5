import io

import numpy as np
import pytest
import soundfile as sf

from synth.pipeline.audio_io import (
    FIT_PEAK_DBFS,
    AudioError,
    as_stored,
    clips_as_pcm16,
    decode_clip,
    encode_audio,
)


def test_recorded_clip_is_resampled_to_24k_mono(speech_clip):
    data = speech_clip.read_bytes()
    source, rate = sf.read(io.BytesIO(data))
    assert rate == 22050
    clip = decode_clip(data, 24000)
    assert clip.dtype == np.float32 and clip.ndim == 1
    assert abs(len(clip) - len(source) * 24000 / 22050) <= 2
    assert np.abs(clip).max() > 0.05  # speech, not silence


def test_stereo_becomes_mono_average():
    left = np.full(4800, 0.5, dtype=np.float32)
    right = np.full(4800, -0.1, dtype=np.float32)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], axis=1), 24000, format="WAV", subtype="FLOAT")
    clip = decode_clip(buf.getvalue(), 24000)
    assert clip.shape == (4800,)
    np.testing.assert_allclose(clip, 0.2, atol=1e-6)


def test_corrupt_and_empty_audio_raise_audio_error():
    with pytest.raises(AudioError, match="cannot decode"):
        decode_clip(b"RIFF....garbage", 24000, name="bad.wav")
    buf = io.BytesIO()
    sf.write(buf, np.zeros(0, dtype=np.float32), 24000, format="WAV")
    with pytest.raises(AudioError, match="empty"):
        decode_clip(buf.getvalue(), 24000)


def test_a_decode_error_names_the_clip_not_a_python_object():
    for data in (b"RIFF\x00\x00\x00\x00WAVEfmt garbage", b"not audio at all"):
        with pytest.raises(AudioError) as err:
            decode_clip(data, 24000, name="clips/corrupt.wav")
        message = str(err.value)
        assert message.startswith("clips/corrupt.wav: cannot decode audio (") and "object at 0x" not in message


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_encode_round_trips(fmt):
    t = np.arange(24000) / 24000
    samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    decoded, rate = sf.read(io.BytesIO(encode_audio(samples, 24000, fmt)), dtype="float32")
    assert rate == 24000 and decoded.shape == samples.shape
    np.testing.assert_allclose(decoded, samples, atol=1e-4)


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_what_is_stored_is_what_a_reader_decodes(fmt):
    """`as_stored` is the output's own conversion: the bytes of a clip decode to exactly its samples."""
    rng = np.random.default_rng(0)
    samples = (0.4 * rng.standard_normal(24000)).clip(-0.99, 0.99).astype(np.float32)
    stored, gain = as_stored(samples)
    assert gain is None  # nothing past full scale: unchanged but for 16-bit steps
    assert np.abs(stored - samples).max() <= 0.5 / 32768 + 1e-9
    decoded, _ = sf.read(io.BytesIO(encode_audio(samples, 24000, fmt)), dtype="float32")
    assert np.array_equal(decoded, stored)
    assert np.array_equal(as_stored(stored)[0], stored)  # stored audio goes through again unchanged


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_a_take_louder_than_full_scale_is_scaled_not_clipped(fmt):
    t = np.arange(24000) / 24000
    loud = (4.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)  # a peak of +13 dBFS, as the tiny CSM makes
    assert clips_as_pcm16(loud) and not clips_as_pcm16(loud / 5)
    stored, gain = as_stored(loud)
    assert gain == pytest.approx(FIT_PEAK_DBFS - 20 * np.log10(4.5), abs=1e-4)
    assert 20 * np.log10(np.abs(stored).max()) == pytest.approx(FIT_PEAK_DBFS, abs=1e-3)  # not 0 dBFS: no sample clipped
    assert np.abs(stored - loud * 10 ** (gain / 20)).max() <= 0.5 / 32768 + 1e-7  # one gain for the whole clip
    decoded, _ = sf.read(io.BytesIO(encode_audio(stored, 24000, fmt)), dtype="float32")
    assert np.array_equal(decoded, stored)
    assert as_stored(np.zeros(10, np.float32))[1] is None and as_stored(np.zeros(0, np.float32))[0].size == 0
