"""Old config key names still load, as their new ones, with a note; a run's recorded identity is the same."""

import warnings

import pytest

from synth.pipeline.config import ConfigError, SynthConfig, load_config
from synth.pipeline.output import run_identity
from synth.pipeline.plan import Plan
from synth.pipeline.renamed_keys import BATCH_SIZE, RENAMED, RenamedKey

# configs/csm-1b.yaml's engine settings as they were written before fast_engine held them
OLD_STYLE = """model:
  id: sesame/csm-1b
  engine: fast
generation:
  batch_size: 256
  max_positions: 2048
  max_audio_seconds: 30.0
  silence_stop_frames: 25
  loop_stop_frames: 3
  loop_max_period: 6
fast_engine:
  num_kv_buckets: 4
"""
NEW_STYLE = """model:
  id: sesame/csm-1b
  engine: fast
generation:
  max_audio_seconds: 30.0
fast_engine:
  num_kv_buckets: 4
  num_slots: 256
  max_positions: 2048
  silence_stop_frames: 25
  loop_stop_frames: 3
  loop_max_period: 6
"""
# plan.json's `generation` settings as synth recorded them before the rename: an output begun then
# is continued only if a relaunch records the same keys
RECORDED_GENERATION = {"max_audio_seconds", "min_audio_seconds", "chars_per_second", "seed", "context_low_water",
                       "max_positions", "silence_stop_frames", "loop_stop_frames", "loop_max_period"}


def _value(config: SynthConfig, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


@pytest.mark.parametrize("old, new, engine", [*((old, new, "fast") for old, new in RENAMED.items()),
                                              *(("generation.batch_size", new, e) for e, new in BATCH_SIZE.items())])
def test_an_old_key_loads_as_its_new_one_with_a_one_line_note(old, new, engine, capsys):
    engine_set = [f"model.engine={engine}"]
    config = load_config(None, [*engine_set, f"{old}=77"])
    assert _value(config, new) == 77
    assert config == load_config(None, [*engine_set, f"{new}=77"])
    note = capsys.readouterr().err.strip()
    assert note.count("\n") == 0 and old in note and new in note, note
    with pytest.warns(RenamedKey, match=new):
        SynthConfig.model_validate({"model": {"engine": engine}, old.split(".")[0]: {old.split(".")[1]: 77}})


def test_an_old_key_and_its_new_one_set_differently_are_refused_naming_both():
    config = load_config(None, ["generation.max_positions=512", "fast_engine.max_positions=512"])
    assert config.fast_engine.max_positions == 512  # the same value twice is one setting
    with pytest.raises(ConfigError) as err:
        load_config(None, ["generation.batch_size=8", "fast_engine.num_slots=256"])
    assert "generation.batch_size=8" in str(err.value) and "fast_engine.num_slots=256" in str(err.value)
    # under the transformers engine the old name is its rows per call, not the fast engine's slots
    config = load_config(None, ["model.engine=transformers", "generation.batch_size=8", "fast_engine.num_slots=256"])
    assert (config.transformers_engine.batch_size, config.fast_engine.num_slots) == (8, 256)
    # with no engine to say where it goes, the old name is an unknown key, and the bad engine is named
    with pytest.raises(ConfigError, match=r"model.engine: .*\n.*unknown key 'batch_size' in section generation"):
        load_config(None, ["model.engine=[1]", "generation.batch_size=3"])


def test_an_old_style_config_records_the_same_run_identity_as_its_new_style_twin(tmp_path, capsys):
    (tmp_path / "old.yaml").write_text(OLD_STYLE)
    (tmp_path / "new.yaml").write_text(NEW_STYLE)
    old, new = load_config(tmp_path / "old.yaml"), load_config(tmp_path / "new.yaml")
    assert old == new and new.fast_engine.num_slots == 256
    assert capsys.readouterr().err.count("synth: ") == 5  # five old keys, five notes
    plan = Plan((), 1, (), 1)
    assert run_identity(old, plan) == run_identity(new, plan)
    generation = run_identity(new, plan)["generation"]
    assert set(generation) == RECORDED_GENERATION
    assert (generation["max_positions"], generation["silence_stop_frames"], generation["loop_stop_frames"],
            generation["loop_max_period"]) == (2048, 25, 3, 6)
    # num_slots, like batch_size before it, is not recorded: it never changes what is generated
    fewer = load_config(tmp_path / "new.yaml", ["fast_engine.num_slots=8"])
    assert run_identity(fewer, plan) == run_identity(new, plan)


def test_a_validated_config_round_trips_without_notes():
    """Ray actors validate `config.model_dump()` again: it holds only new names, so no note and no conflict."""
    for engine in BATCH_SIZE:
        config = load_config(None, [f"model.engine={engine}", "generation.batch_size=3", "generation.max_positions=64"])
        with warnings.catch_warnings():
            warnings.simplefilter("error", RenamedKey)
            assert SynthConfig.model_validate(config.model_dump()) == config


def test_the_shipped_configs_use_only_new_names(capsys):
    for name in ("demo.yaml", "csm-1b.yaml"):
        load_config(f"configs/{name}")
    assert capsys.readouterr().err == ""
