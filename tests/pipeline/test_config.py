import pytest

from synth.engine.options import FastEngineOptions, FastEngineSettings
from synth.pipeline.config import ConfigError, SynthConfig, load_config


def test_defaults_are_valid_and_overrides_are_typed():
    config = load_config(None, ["fast_engine.num_slots=3", "sampling.do_sample=false", "model.compile=null"])
    assert config.fast_engine.num_slots == 3
    assert config.sampling.do_sample is False
    assert config.model.compile is None
    assert SynthConfig().model.id == "sesame/csm-1b"


@pytest.mark.parametrize(
    "override, field",
    [
        ("fast_engine.num_slots=0", "num_slots"),
        ("transformers_engine.batch_size=0", "transformers_engine.batch_size"),
        ("model.dtype=fp8", "model.dtype"),
        ("actors.num_cpus=lots", "actors.num_cpus"),
        ("sampling.temperature=-1", "sampling.temperature"),
        ("output.surprise=1", "output.surprise"),
    ],
)
def test_bad_values_name_the_field_and_value(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert field in message
    assert override.split("=", 1)[1] in message


def test_min_above_max_audio_seconds_is_refused():
    with pytest.raises(ConfigError, match="min_audio_seconds"):
        load_config(None, ["generation.min_audio_seconds=30", "generation.max_audio_seconds=10"])


def test_yaml_file_and_its_errors(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("model:\n  id: ./ckpt\n  build_tiny: true\nfast_engine:\n  num_slots: 2\n")
    config = load_config(good, ["fast_engine.num_slots=5"])
    assert config.fast_engine.num_slots == 5 and config.model.build_tiny
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="build_tiny needs a local path"):
        load_config(None, ["model.build_tiny=true", "model.id=sesame/csm-1b"])


def test_an_override_whose_value_is_not_yaml_names_the_override_and_why():
    cases = {"generation.seed=[1": "expected ',' or ']'", 'model.id="unclosed': "unexpected end of stream",
             "model.id=@home": "cannot start any token"}
    for override, problem in cases.items():
        with pytest.raises(ConfigError, match="not valid YAML") as err:
            load_config(None, [override])
        assert f"override {override!r}" in str(err.value) and problem in str(err.value)


def test_overrides_apply_to_a_config_file_holding_yaml_dates(tmp_path):
    """YAML reads 2024-01-01 as a date, which is no JSON: copying the file's values must not fail."""
    dated = tmp_path / "c.yaml"
    dated.write_text("model:\n  id: 2024-01-01\n")
    with pytest.raises(ConfigError, match="model.id"):  # a date is no model id: a config error, no TypeError
        load_config(dated, ["fast_engine.num_slots=2"])


def test_the_shipped_configs_load():
    assert load_config("configs/demo.yaml").model.build_tiny
    real = load_config("configs/csm-1b.yaml")
    assert real.model.id == "sesame/csm-1b" and real.actors.num_gpus == 1


def test_fast_engine_options_load_from_yaml_and_bad_ones_name_the_field(tmp_path):
    assert SynthConfig().fast_engine.options() == FastEngineOptions()
    path = tmp_path / "c.yaml"
    path.write_text("fast_engine:\n  num_kv_buckets: 2\n  result_thread: false\n  codec_dtype: bfloat16\n"
                    "  compile_mode: max-autotune-no-cudagraphs\n")
    config = load_config(path, ["fast_engine.status_lag=1"])
    assert config.fast_engine.options() == FastEngineOptions(
        num_kv_buckets=2, result_thread=False, codec_dtype="bfloat16", status_lag=1,
        compile_mode="max-autotune-no-cudagraphs")
    assert config.fast_engine == FastEngineSettings(**vars(config.fast_engine.options()))
    assert SynthConfig.model_validate(config.model_dump()) == config  # as the Ray actors receive it
    for override, field in [
        ("fast_engine.num_kv_buckets=0", "num_kv_buckets"),  # the record's own check
        ("fast_engine.codec_dtype=fp8", "codec_dtype"),
        # modes that turn on inductor's CUDA graphs inside the engine's own capture
        ("fast_engine.compile_mode=reduce-overhead", "compile_mode"),
        ("fast_engine.compile_mode=max-autotune", "compile_mode"),
        ("fast_engine.decode_batch=lots", "fast_engine.decode_batch"),  # a type pydantic checks
        ("fast_engine.surprise=1", "fast_engine.surprise"),  # unknown keys are refused
    ]:
        with pytest.raises(ConfigError) as err:
            load_config(None, [override])
        message = str(err.value)
        assert "fast_engine" in message and field in message, message
        assert override.split("=", 1)[1] in message, message
    for mode in (None, "default", "max-autotune-no-cudagraphs"):
        assert FastEngineOptions(compile_mode=mode).compile_mode == mode
    with pytest.raises(ValueError, match="inductor's own CUDA graphs"):
        FastEngineOptions(compile_mode="reduce-overhead")


def test_the_audio_watermark_is_off_by_default_and_refused_clearly_when_it_cannot_run(tmp_path, monkeypatch):
    """output.watermark: null by default, and not in a run's recorded settings then (outputs made before it
    continue); set, it names what is missing (the package, the weights), and never downloads anything."""
    import importlib.util

    from synth.pipeline.output import run_identity
    from synth.pipeline.plan import Plan

    config = load_config(None, [])
    assert config.output.watermark is None
    assert "watermark" not in run_identity(config, Plan((), 1, (), 1))["output"]
    weights = tmp_path / "silentcipher-ckpt"
    with pytest.raises(ConfigError, match=r"output.watermark: .*needs the silentcipher package \(pip install "
                                          r"silentcipher\).*synth downloads nothing"):
        load_config(None, [f"output.watermark={{method: silentcipher, weights: {weights}}}"])
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "silentcipher" else found(
        name, *a))  # as where the package is installed
    with pytest.raises(ConfigError, match=r"weights=.*silentcipher-ckpt.*: no such file or directory"):
        load_config(None, [f"output.watermark={{method: silentcipher, weights: {weights}}}"])
    weights.mkdir()
    with pytest.raises(ConfigError, match=r"does not apply an audio watermark yet \(the setting is reserved\)"):
        load_config(None, [f"output.watermark={{method: silentcipher, weights: {weights}}}"])
    with pytest.raises(ConfigError, match="output.watermark.method"):
        load_config(None, ["output.watermark={method: audioseal, weights: /x}"])


@pytest.mark.parametrize("override, section", [
    ("output.surprise=1", "section output"),  # a pydantic section
    ("fast_engine.surprise=1", "section fast_engine"),  # a dataclass validated by pydantic
    ("qc.thresholds.surprise=1", "section qc.thresholds"),  # nested
    ("surprise=1", "the top level"),
])
def test_an_unknown_key_is_refused_naming_the_key_and_its_section(override, section):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"unknown key 'surprise' in {section}" in str(err.value), str(err.value)
