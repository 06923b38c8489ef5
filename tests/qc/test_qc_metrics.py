"""Each QC metric on real speech against real failures, offline: espeak-ng speech against noise,
silence, a clip cut short, another espeak voice and a wrong transcript; the ASR path end to end
through `from_pretrained` with a tiny Whisper saved locally. The models load once per module."""

import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr

from synth.qc import cleanup, quality, repetition
from synth.qc.asr import Transcriber, error_rates, normalize
from synth.qc.policy import AsrSettings, QcSettings, judge
from synth.qc.scorer import Take, TakeScorer
from synth.qc.timing import timing_of

RATE = 24000
TEXT = "The quick brown fox jumps over the lazy dog near the quiet river bank."
OTHER_TEXT = "Seven silver swans swam silently across the cold grey lake at dawn."


def _espeak(tmp_path, name: str, text: str, voice: str = "en") -> np.ndarray:
    path = tmp_path / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    samples, rate = sf.read(path, dtype="float32")
    return soxr.resample(samples, rate, RATE).astype(np.float32)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qc-clips")
    speech = _espeak(tmp, "speech", TEXT)
    noise = np.random.default_rng(0).normal(0, 0.1, len(speech)).astype(np.float32)
    return {
        "speech": speech,
        "same_voice": _espeak(tmp, "same", OTHER_TEXT),  # the same voice saying something else
        "other_voice": _espeak(tmp, "other", TEXT, voice="en-us+f3"),
        "noise": noise,
        "noisy_speech": np.clip(speech + 2 * noise, -1, 1),
        "silence": np.zeros(2 * RATE, np.float32),
        "cut_short": speech[: len(speech) // 3],
        "padded": np.concatenate([np.zeros(int(1.5 * RATE), np.float32), speech, np.zeros(RATE, np.float32)]),
    }


@pytest.fixture(scope="module")
def scorer(tiny_whisper):
    # DNSMOS in float32 through onnxruntime: the tests below hold it to speechmos's own values
    # (tests/qc/test_dnsmos_net.py holds the bfloat16 path to its tolerance)
    settings = QcSettings(enabled=True, asr=AsrSettings(model=tiny_whisper, batch_size=4), dnsmos_precision="float32")
    return TakeScorer(settings, RATE).load()


@pytest.fixture(scope="module")
def scored(scorer, clips):
    """Every clip scored in one batch as a take of TEXT in the espeak voice of `speech`."""
    names = list(clips)
    takes = [Take(clips[n], TEXT, reference=clips["same_voice"]) for n in names]
    return dict(zip(names, scorer.score(takes)))


def test_asr_runs_end_to_end_through_from_pretrained_batched(tiny_whisper, clips, scorer, scored):
    asr = Transcriber(tiny_whisper, batch_size=3)
    assert asr.pipe.model.name_or_path == tiny_whisper  # the checkpoint on disk, via from_pretrained
    to16 = [scorer._at_16k(clips[n]) for n in ("speech", "noise", "cut_short")]
    batched = asr.transcribe(to16 + [np.zeros(0, np.float32)])
    assert len(batched) == 4 and batched[3] == ""  # an empty clip is not sent to the model
    assert batched[:3] == [asr.transcribe([clip])[0] for clip in to16]  # a batch gives each clip's own
    assert all(isinstance(t, str) for t in batched)
    # the rates come from the transcript the model made, normalised
    row = scored["speech"]
    assert row["asr_text"] is not None and (row["wer"], row["cer"]) == pytest.approx(error_rates(TEXT, row["asr_text"]))


def test_asr_caps_the_transcript_without_a_warning_per_batch(tiny_whisper, clips, scorer):
    """The tiny random Whisper never ends a transcript, so each is as long as the cap; transformers must
    not print its `max_new_tokens`/`max_length` warning for every batch (it did, once per batch)."""
    import logging

    asr = Transcriber(tiny_whisper, batch_size=2, max_new_tokens=12)
    heard = []
    handler = logging.Handler()
    handler.emit = lambda record: heard.append(record.getMessage())
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        texts = asr.transcribe([scorer._at_16k(clips[n]) for n in ("speech", "noise", "cut_short", "padded")])
    finally:
        logger.removeHandler(handler)
    assert not [m for m in heard if "max_new_tokens" in m or "max_length" in m], heard
    assert all(0 < len(t) <= 12 for t in texts), texts  # byte-level vocabulary: at most a character per token


def test_error_rates_normalise_then_count_errors():
    assert error_rates("Hello, World! It's Mr. Smith.", "hello world it is mister smith") == (0.0, 0.0)
    wer, cer = error_rates(TEXT, OTHER_TEXT)  # a wrong transcript
    assert wer > 0.8 and cer > 0.4
    wer, _ = error_rates(TEXT, TEXT.replace("lazy", "crazy"))
    assert wer == pytest.approx(1 / len(normalize(TEXT).split()))
    assert error_rates(TEXT, "") == (1.0, 1.0) and error_rates(" ", "anything") == (None, None)


def test_speaker_similarity_tells_the_voice_apart(scorer, clips, scored):
    same, other = scored["speech"]["speaker_sim"], scored["other_voice"]["speaker_sim"]
    assert same > 0.8 and other < 0.75 < same  # the default threshold sits between them
    assert scored["noise"]["speaker_sim"] < 0.75
    assert scorer.score([Take(clips["speech"], TEXT)])[0]["speaker_sim"] is None  # no reference: undefined


def test_dnsmos_ranks_clean_speech_over_noisy_speech_over_noise(scored):
    clean, noisy, noise = (scored[n]["dnsmos"] for n in ("speech", "noisy_speech", "noise"))
    assert clean > noisy > noise and clean > 2.3 and noise < 1.6
    assert scored["silence"]["dnsmos"] is None


def test_level_loudness_peak_and_clipping(clips, scored):
    speech = scored["speech"]
    assert -30 < speech["loudness_lufs"] < -10 and speech["peak_dbfs"] < 0 and speech["clipped_fraction"] == 0
    assert scored["silence"]["loudness_lufs"] is None and scored["silence"]["peak_dbfs"] is None
    assert quality.loudness_lufs(clips["speech"][: RATE // 4], RATE) is None  # under BS.1770's 0.4 s
    hot = np.clip(clips["speech"] * 8, -1, 1)
    assert quality.clipped_fraction(hot) > 0.001 and quality.peak_dbfs(hot) > -0.01
    assert quality.loudness_lufs(clips["speech"] * 0.1, RATE) == pytest.approx(speech["loudness_lufs"] - 20, abs=0.1)


def test_timing_finds_silence_speech_ratio_and_speaking_rate(clips, scored):
    speech, padded, silence, cut = (scored[n] for n in ("speech", "padded", "silence", "cut_short"))
    assert speech["leading_silence_s"] < 0.3 and speech["speech_ratio"] > 0.8 and 8 < speech["chars_per_s"] < 25
    assert 1.3 < padded["leading_silence_s"] < 1.8 and 0.9 < padded["trailing_silence_s"] < 1.5
    assert padded["speech_ratio"] < 0.7
    assert silence["speech_ratio"] == 0 and silence["chars_per_s"] is None
    assert cut["chars_per_s"] > 2.5 * speech["chars_per_s"]  # a clip cut short says the text impossibly fast


def test_policy_rejects_each_failure_and_passes_clean_speech_with_lenient_dnsmos(scored):
    settings = QcSettings(enabled=True, metrics=("speaker", "dnsmos", "level", "timing"))
    thresholds = settings.thresholds
    from dataclasses import replace

    lenient = replace(thresholds, min_dnsmos=2.0)  # espeak is robotic: DNSMOS OVRL ~2.7
    metrics = settings.measured()

    def failed(name, t=lenient):
        return {reason.split(":")[0] for reason in judge(scored[name], t, metrics)}

    assert failed("speech") == set()
    assert "dnsmos" in failed("speech", thresholds)  # the default 3.0 (Emilia's filters) rejects espeak
    assert failed("other_voice") == {"speaker_sim"}
    assert {"dnsmos", "speech_ratio", "speaker_sim"} <= failed("noise")
    assert {"leading_silence_s", "trailing_silence_s", "speech_ratio"} <= failed("silence")
    assert failed("padded") >= {"leading_silence_s"}
    assert "chars_per_s" in failed("cut_short")


def test_loop_score_from_codes():
    rng = np.random.default_rng(0)
    fresh = rng.integers(0, 2048, size=(60, 32))
    looped = np.tile(rng.integers(0, 2048, size=(5, 32)), (12, 1))  # a 5-frame loop, 60 frames
    held = np.full((60, 32), 7)
    assert repetition.loop_score(fresh) < 0.05
    assert repetition.loop_score(looped) == pytest.approx(1 - 5 / 57)
    assert repetition.loop_score(held) > 0.95
    assert repetition.loop_score(fresh[:3]) is None


def test_cleanup_trims_whole_frames_and_normalises_loudness(clips, scored):
    spf = 1920
    frames = len(clips["padded"]) // spf
    audio, codes = clips["padded"][: frames * spf], np.arange(frames * 2).reshape(frames, 2)
    padded = scored["padded"]
    cut = cleanup.frames_to_trim(padded["leading_silence_s"], padded["trailing_silence_s"], frames, 0.08, 0.16)
    assert cut[0] >= 14 and cut[1] >= 8  # ~1.5 s and ~1 s of silence, less the 0.16 s kept
    trimmed_audio, trimmed_codes = cleanup.trim(audio, codes, cut, spf)
    assert len(trimmed_audio) == len(trimmed_codes) * spf and trimmed_codes[0, 0] == codes[cut[0], 0]
    assert cleanup.frames_to_trim(5.0, 5.0, 10, 0.08, 0.0) == (0, 9)  # all silence, nothing to keep: one frame
    # no speech detected (silences meet): keep_silence_s is kept, in whole frames, not one 80 ms frame
    assert cleanup.frames_to_trim(0.8, 0.8, 10, 0.08, 0.16) == (0, 8)
    assert cleanup.frames_to_trim(0.8, 0.8, 10, 0.08, 0.2) == (0, 7)  # 0.2 s: 3 frames (240 ms) keep it all
    assert cleanup.frames_to_trim(0.8, 0.8, 10, 0.08, 5.0) == (0, 0)  # more than the clip: all of it
    louder, gain = cleanup.normalize_loudness(clips["speech"] * 0.05, RATE, -20.0, -1.0)
    assert gain > 0 and quality.loudness_lufs(louder, RATE) == pytest.approx(-20.0, abs=0.5)
    assert quality.peak_dbfs(louder) <= -1.0 + 1e-3
    assert cleanup.normalize_loudness(clips["silence"], RATE, -20.0, -1.0)[1] is None


# How far a batched metric may be from the same metric computed one clip at a time, the way the
# libraries compute it alone (resemblyzer's embed_utterance, speechmos's DNSMOS, silero's
# get_speech_timestamps): float rounding of batched kernels, nothing more.
BATCH_TOLERANCE = {"speaker_sim": 1e-4, "dnsmos": 1e-4, "leading_silence_s": 0.0, "trailing_silence_s": 0.0,
                   "speech_ratio": 0.0, "chars_per_s": 0.0, "loudness_lufs": 0.0, "peak_dbfs": 0.0,
                   "clipped_fraction": 0.0}


@pytest.mark.slow
def test_a_batch_scores_each_take_as_the_libraries_score_it_alone(scorer, clips, scored):
    """Every metric of the batch (every clip at once, their work split among the workers) against
    the libraries' own one-clip paths, which the scorer used before it batched."""
    import speechmos.dnsmos
    import torch
    from resemblyzer import VoiceEncoder
    from silero_vad import get_speech_timestamps

    encoder = VoiceEncoder(device="cpu", verbose=False)
    dnsmos = scorer._dnsmos
    alone = speechmos.dnsmos.DNSMOS(dnsmos.path, dnsmos.path.replace("sig_bak_ovr", "model_v8"))
    vad = scorer._vads[0].model
    reference = encoder.embed_utterance(scorer._at_16k(clips["same_voice"]))
    for name, clip in clips.items():
        clip16 = scorer._at_16k(clip)
        expected = {"speaker_sim": float(np.dot(encoder.embed_utterance(clip16), reference)),
                    "loudness_lufs": quality.loudness_lufs(clip, RATE), "peak_dbfs": quality.peak_dbfs(clip),
                    "clipped_fraction": quality.clipped_fraction(clip)}
        window = dnsmos.windows_of(clip16)
        expected["dnsmos"] = None if window is None else float(alone(window[0], 16000, False)["ovrl_mos"])
        spans = [(s["start"], s["end"]) for s in get_speech_timestamps(torch.from_numpy(clip16), vad)]
        timing = timing_of(clip16, TEXT, spans)
        expected.update(leading_silence_s=timing.leading_silence_s, trailing_silence_s=timing.trailing_silence_s,
                        speech_ratio=timing.speech_ratio, chars_per_s=timing.chars_per_s)
        for metric, tolerance in BATCH_TOLERANCE.items():
            got, want = scored[name][metric], expected[metric]
            assert (got is None) == (want is None), (name, metric, got, want)
            assert got is None or abs(got - want) <= tolerance, (name, metric, got, want)
    (alone_row,) = scorer.score([Take(clips["padded"], TEXT, reference=clips["same_voice"])])
    assert alone_row == pytest.approx(scored["padded"], abs=1e-4)  # a batch of one: the same row


def test_a_reference_voice_is_embedded_once_per_scorer(scorer, clips, monkeypatch):
    calls = []
    embed = scorer._speaker.embed_batch
    monkeypatch.setattr(scorer._speaker, "embed_batch", lambda parts: calls.append(len(parts)) or embed(parts))
    reference = np.copy(clips["same_voice"])
    takes = [Take(clips[n], TEXT, reference=reference) for n in ("speech", "noise", "cut_short")]
    first = scorer.score(takes)
    again = scorer.score(takes)
    assert calls == [4, 3]  # one encoder call per batch; the reference only in the first
    assert [r["speaker_sim"] for r in first] == [r["speaker_sim"] for r in again]


def test_long_clips_are_scored_every_hop_as_speechmos_does(scorer, clips):
    """A clip longer than DNSMOS's 9 s window: speechmos's windows (one per 1 s hop), averaged."""
    import speechmos.dnsmos

    long16 = scorer._at_16k(np.concatenate([clips["speech"]] * 4))
    dnsmos = scorer._dnsmos
    windows = dnsmos.windows_of(long16)
    assert len(windows) == int(np.floor(len(long16) / 16000) - 9.01) + 1 > 1
    alone = speechmos.dnsmos.DNSMOS(dnsmos.path, dnsmos.path.replace("sig_bak_ovr", "model_v8"))
    assert dnsmos.ovrl(long16) == pytest.approx(float(alone(long16, 16000, False)["ovrl_mos"]), abs=1e-4)


def test_the_scorer_keeps_torch_threads_and_its_models_where_it_says(scorer):
    import torch

    before = torch.get_num_threads()
    scorer.score([Take(np.zeros(RATE, np.float32), TEXT)])
    assert torch.get_num_threads() == before  # importing silero_vad set it to 1 for the whole process
    assert scorer.placement == {"asr": "cpu (Whisper, batched)", "speaker": scorer.placement["speaker"],
                                "dnsmos": "cpu (onnxruntime; short clips by their period)", "timing": "cpu workers (Silero VAD, batched)",
                                "level": "cpu workers (pyloudnorm)", "repetition": "cpu (from the codes)"}
    assert scorer.stats.cpu_s > 0 and scorer.stats.device_s == 0 and scorer.num_workers == 2


def test_asr_decodes_greedily_unless_told(tiny_whisper, clips, scorer):
    """transformers' ASR pipeline searches 5 beams unless the checkpoint says otherwise; QC asks for 1."""
    seen = []
    for beams in (1, 2):
        asr = Transcriber(tiny_whisper, batch_size=2, max_new_tokens=8, num_beams=beams)
        generate = asr.pipe.model.generate
        asr.pipe.model.generate = lambda *a, **k: seen.append(k.get("num_beams")) or generate(*a, **k)
        asr.transcribe([scorer._at_16k(clips["speech"])])
    assert seen == [1, 2]
    assert QcSettings().asr.num_beams == 1


def test_warm_up_runs_every_model_once_and_counts_nothing(scorer, monkeypatch):
    """The first calls (Whisper's generate, the speaker encoder) are paid at load, not by the first
    batch beside generation; the warm-up's take is in neither the stats nor the reference cache."""
    from synth.qc.scorer import ScorerStats

    calls = []
    for model, method in ((scorer._asr, "transcribe"), (scorer._speaker, "embed_batch")):
        original = getattr(model, method)
        monkeypatch.setattr(model, method, lambda *a, _m=method, _f=original: calls.append(_m) or _f(*a))
    assert scorer.warm_up() is scorer
    assert sorted(calls) == ["embed_batch", "transcribe"]
    assert scorer.stats == ScorerStats() and not scorer._references
