"""Mastering (synth.book.master) and the ACX check (synth.book.acx) on real speech (espeak-ng):
too quiet and too loud chapters fail with their reasons, and pass once mastered; the limiter
holds peaks without touching the rest; audio pyloudnorm cannot measure is still mastered."""

import numpy as np
import pytest
import soundfile as sf
import soxr

from synth.book.acx import acx_check
from synth.book.master import MasterSettings, integrated_loudness, limit, master
from synth.book.stitch import StitchSettings, stitch

SR = 24000


@pytest.fixture(scope="module")
def chapter(speech_clip):
    """Three sentences of espeak speech stitched as a chapter with ACX-length head and tail."""
    speech, rate = sf.read(str(speech_clip), dtype="float32")
    speech = soxr.resample(speech, rate, SR).astype(np.float32)
    peak = np.abs(speech).max()
    pieces = [("a", speech / peak * 0.5, False), ("b", speech / peak * 0.4, True), ("c", speech / peak * 0.5, False)]
    audio, _ = stitch(pieces, SR, StitchSettings(lead_in_s=0.75, tail_s=2.0))
    return audio


@pytest.mark.parametrize(("gain", "reasons"), [
    (0.03, ["RMS -", "is below -23..-18 dB"]),
    (1.9, ["is above -3 dBFS"]),
])
def test_a_chapter_fails_before_mastering_and_passes_after(chapter, gain, reasons):
    raw = acx_check(chapter * gain, SR)
    assert not raw.passes and all(any(r in reason for reason in raw.reasons) for r in reasons), raw.line()
    assert raw.line().startswith("ACX FAIL: ")
    mastered = master(chapter * gain, SR)
    assert len(mastered) == len(chapter)  # timing files stay exact
    report = acx_check(mastered, SR)
    assert report.passes, report.line()
    assert report.peak_dbfs <= MasterSettings().ceiling_dbfs + 1e-3
    assert -77 < report.noise_floor_db < -60  # room tone (its quietest half second), not digital silence
    assert report.head_s >= 0.5 and report.tail_s >= 1.0
    assert integrated_loudness(mastered, SR) == pytest.approx(-20, abs=2.5)


def test_the_limiter_holds_peaks_and_leaves_the_rest():
    t = np.arange(SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 220 * t)
    tone[SR // 2] = 0.99  # one spike
    limited = limit(tone, SR, MasterSettings(ceiling_dbfs=-6))
    assert np.abs(limited).max() <= 10 ** (-6 / 20) + 1e-9
    far = np.r_[0 : SR // 4, 3 * SR // 4 : SR]  # a quarter second from the spike
    assert np.array_equal(limited[far], tone[far])


def test_audio_too_short_or_silent_to_measure_is_still_mastered():
    short = (0.9 * np.sin(np.arange(SR // 5) / 3)).astype(np.float32)  # 0.2 s: pyloudnorm refuses it
    assert integrated_loudness(short, SR) == float("-inf")
    assert np.abs(master(short, SR)).max() <= 10 ** (-3.5 / 20) + 1e-6
    silence = master(np.zeros(SR, np.float32), SR)
    assert acx_check(silence, SR).noise_floor_db == pytest.approx(-75, abs=1)
    with pytest.raises(ValueError, match="room tone below the ceiling"):
        MasterSettings(room_tone_dbfs=-2)
