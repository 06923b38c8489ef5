"""The QC policy: retake seeds, the best take, reasons, and the `qc:` config section's validation."""

import pytest

from synth.pipeline.config import ConfigError, load_config
from synth.qc.deps import QcUnavailable, require
from synth.qc.policy import QcSettings, Thresholds, judge, pick, take_score, take_seed


def test_retake_seeds_are_derived_from_seed_and_take_alone():
    assert take_seed(1234, 1) == 1234
    seeds = [take_seed(1234, k) for k in range(1, 6)]
    assert len(set(seeds)) == 5 and all(0 <= s < 2**31 for s in seeds)
    assert seeds == [take_seed(1234, k) for k in range(1, 6)]  # same seed, same takes
    assert take_seed(1235, 2) != take_seed(1234, 2)


def test_best_take_fewest_failures_then_lowest_wer_then_voice():
    takes = [
        ({"wer": 0.1, "speaker_sim": 0.9}, ["dnsmos: 2 < min 3", "speech_ratio: 0.2 < min 0.5"]),
        ({"wer": 0.5, "speaker_sim": 0.9}, ["wer: 0.5 > max 0.3"]),
        ({"wer": 0.4, "speaker_sim": 0.6}, ["wer: 0.4 > max 0.3"]),
        ({"wer": 0.4, "speaker_sim": 0.8}, ["wer: 0.4 > max 0.3"]),
        ({"wer": 0.4, "speaker_sim": 0.8}, ["wer: 0.4 > max 0.3"]),
    ]
    assert pick([take_score(m, r) for m, r in takes]) == 3  # the earliest of the two equal best


def test_judge_checks_only_measured_defined_metrics():
    t = Thresholds()
    metrics = {"wer": 0.5, "speaker_sim": None, "loop_score": 0.9}
    assert judge(metrics, t, {"wer", "speaker_sim", "loop_score"}) == ["wer: 0.5 > max 0.3", "loop_score: 0.9 > max 0.5"]
    assert judge(metrics, t, {"speaker_sim"}) == []
    assert judge({"wer": 0.5}, Thresholds(max_wer=None), {"wer"}) == []


def test_qc_config_is_off_by_default_and_validated():
    config = load_config()
    assert config.qc == QcSettings() and not config.qc.enabled
    assert config.qc.asr.model == "openai/whisper-large-v3-turbo"
    on = load_config(None, ["qc.enabled=true", "qc.max_takes=4", "qc.metrics=[asr, timing]",
                            "qc.thresholds.max_wer=0.2", "qc.cleanup.trim_silence=true"])
    assert on.qc.max_takes == 4 and on.qc.metrics == ("asr", "timing") and on.qc.thresholds.max_wer == 0.2
    for override, message in [("qc.max_takes=0", "qc.max_takes must be >= 1"),
                              ("qc.metrics=[asr, mos]", "unknown ['mos']"),
                              ("qc.thresholds.max_werr=1", "qc.thresholds.max_werr"),
                              ("qc.asr.batch_size=0", "qc.asr.batch_size"),
                              ("qc.asr.num_beams=0", "qc.asr.num_beams must be >= 1"),
                              ("qc.num_workers=0", "qc.num_workers must be between 1 and 64, got 0"),
                              ("qc.num_workers=65", "qc.num_workers must be between 1 and 64, got 65"),
                              ("qc.cleanup.trim_silence=true", "needs the `timing` metrics")]:
        extra = ["qc.metrics=[asr]"] if "trim" in override else []
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, [*extra, override])


def test_a_missing_qc_library_names_the_extra():
    with pytest.raises(QcUnavailable, match=r"pip install -e '\.\[qc\]'"):
        require("synth_no_such_qc_library")


def test_a_run_with_qc_on_checks_the_extra_first(monkeypatch, tmp_path):
    """Without the extra's libraries, `synth run` with qc.enabled stops before Ray with the install line."""
    from synth.pipeline.runner import run
    from synth.qc import deps

    monkeypatch.setattr(deps, "MODULES", ("jiwer", "synth_no_such_qc_library"))
    config = load_config(None, ["qc.enabled=true"])
    with pytest.raises(QcUnavailable, match="missing: synth_no_such_qc_library"):
        run(config, str(tmp_path / "no-manifest.parquet"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_num_workers_is_how_qc_runs_not_what_it_computes():
    """Changing qc.num_workers between a run and its relaunch (or a rescore) changes no recorded setting."""
    on = load_config(None, ["qc.enabled=true", "qc.num_workers=4"])
    assert on.qc.num_workers == 4 and QcSettings().num_workers == 2
    assert on.qc.identity() == load_config(None, ["qc.enabled=true"]).qc.identity()
    assert "num_workers" not in on.qc.identity() and on.qc.identity()["asr"]["num_beams"] == 1


def test_speculation_is_how_qc_runs_not_what_it_computes():
    """qc.speculative (on by default) can be turned off between a run and its relaunch: no recorded setting changes."""
    off = load_config(None, ["qc.enabled=true", "qc.speculative=false"])
    assert off.qc.speculative is False and QcSettings().speculative is True
    assert off.qc.identity() == load_config(None, ["qc.enabled=true"]).qc.identity()
    assert "speculative" not in off.qc.identity()
