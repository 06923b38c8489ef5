import io

import numpy as np
import pytest
import soundfile as sf

from synth.pipeline.audio_io import AudioError, decode_clip, encode_audio


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
