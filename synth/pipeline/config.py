"""Typed run configuration: what a synthesis job is asked to do.

This module owns the pydantic models, loading them from YAML, and applying
`--set section.field=value` overrides from the command line. Every field has a
default or fails at load time with a message that names the field and the value,
before any model or GPU is touched. It knows nothing about Ray or the model code.
"""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from synth.engine.interface import DTYPE_NAMES, SamplingParams
from synth.engine.options import FastEngineSettings
from synth.errors import SynthError
from synth.pipeline.context_plan import LOW_WATER
from synth.pipeline.renamed_keys import RenamedKey, upgrade
from synth.qc.policy import QcSettings


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """Which CSM to load, and how."""

    id: str = Field("sesame/csm-1b", description="Hub id or local checkpoint directory.")
    build_tiny: bool = Field(
        False,
        description="Build a tiny random offline checkpoint at `id` on first use "
        "(demo and tests; never for real data).",
    )
    engine: Literal["fast", "transformers"] = Field(
        "fast", description="`fast`: continuous batching; `transformers`: reference generate."
    )
    dtype: Literal[DTYPE_NAMES] = "bfloat16"  # the engine's names: float32, bfloat16, float16, float64
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool | None = Field(None, description="torch.compile + static cache; None = on CUDA only.")

    @property
    def resolved_id(self) -> str:
        """`id` with `~` expanded when it names a local path."""
        return str(Path(self.id).expanduser()) if self.id.startswith(("~", "/", ".")) else self.id


class SamplingConfig(_Section):
    """Sampling for the backbone (codebook 0) and the depth decoder (codebooks 1..31)."""

    do_sample: bool = True
    temperature: float = Field(0.9, gt=0)
    top_k: int = Field(50, ge=0)
    depth_temperature: float = Field(0.9, gt=0)
    depth_top_k: int = Field(50, ge=0)

    def to_params(self) -> SamplingParams:
        return SamplingParams(**self.model_dump())


class GenerationConfig(_Section):
    """Per-row length caps, seeds and the context of a script's turns, for either engine. The fast
    engine's sizes and early stops are in `fast_engine`, the transformers engine's rows per call in
    `transformers_engine` (`synth.pipeline.renamed_keys` reads their old names here)."""

    max_audio_seconds: float = Field(20.0, gt=0, description="Hard cap on one generated turn.")
    min_audio_seconds: float = Field(1.0, gt=0, description="Floor of the text-derived cap.")
    chars_per_second: float = Field(
        10.0, gt=0, description="Slowest speaking rate assumed when a row gives no cap: "
        "cap = max(min_audio_seconds, len(text) / chars_per_second), then clipped to max_audio_seconds.",
    )
    seed: int = Field(0, description="Base seed; a row's seed is its `seed` column or derived from this and its id.")
    context_from: Literal["codes", "audio"] | None = Field(
        None, description="How a generated turn conditions the later turns of its script: `codes`, the codes it "
        "was generated from; `audio`, its audio Mimi-encoded again (what chaining transformers' generate calls "
        "does). None: codes on the fast engine, audio on transformers (whose processor always re-encodes).",
    )
    context_low_water: float | None = Field(
        LOW_WATER, gt=0, le=1, description="The context window of a script's turns: a fraction, a window sliding by "
        "blocks (once the recent turns no longer fit, drop the oldest down to this fraction of the room, then keep "
        "that start while they fit, so KV continuation keeps the prefix); None, a rolling window (every turn "
        "keeps the most recent turns that fit).",
    )

    def turn_cap_seconds(self, text: str, row_max_seconds: float | None) -> float:
        """The length cap of one generated turn: the row's own cap, else one derived from
        the text at the slowest assumed speaking rate; never above max_audio_seconds."""
        if row_max_seconds is not None:
            return min(row_max_seconds, self.max_audio_seconds)
        return min(max(self.min_audio_seconds, len(text) / self.chars_per_second), self.max_audio_seconds)

    @model_validator(mode="after")
    def _min_below_max(self) -> "GenerationConfig":
        if self.min_audio_seconds > self.max_audio_seconds:
            raise ValueError(
                f"min_audio_seconds ({self.min_audio_seconds}) must not exceed "
                f"max_audio_seconds ({self.max_audio_seconds})"
            )
        return self


class TransformersEngineConfig(_Section):
    """The reference engine (`model.engine: transformers`): transformers' `generate` on batches of rows."""

    batch_size: int = Field(8, ge=1, description="Rows per `generate` call (before: generation.batch_size).")


class ActorsConfig(_Section):
    """The pool of Ray actors, each holding one loaded model for its whole life."""

    num_actors: int = Field(1, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 for csm-1b on a GPU node).")
    num_cpus: float = Field(
        1.0, gt=0, description="CPUs per actor; keep the sum below the cluster's CPUs (fractions allowed)."
    )
    torch_threads: int | None = Field(None, ge=1, description="torch threads per actor; default = ceil(num_cpus).")


class WatermarkConfig(_Section):
    """An audio watermark in the samples, as Sesame marks CSM's output with silentcipher, for users who
    bring its weights (synth downloads nothing). Off by default (`output.watermark: null`): every file
    synth writes is marked in its metadata whatever this says (`synth.pipeline.provenance`). This
    version reserves the setting and checks it; it does not apply a watermark yet, and says so."""

    method: Literal["silentcipher"] = Field(description="The watermarking model (Sesame's choice for CSM).")
    weights: str = Field(min_length=1, description="Path of its checkpoint, which you bring.")

    @model_validator(mode="after")
    def _usable(self) -> "WatermarkConfig":
        import importlib.util
        import os

        if importlib.util.find_spec(self.method) is None:
            raise ValueError(f"method={self.method!r} needs the {self.method} package (pip install {self.method}) "
                             "and its weights at output.watermark.weights; synth downloads nothing")
        if not os.path.exists(os.path.expanduser(self.weights)):
            raise ValueError(f"weights={self.weights!r}: no such file or directory (bring {self.method}'s "
                             "checkpoint; synth downloads nothing)")
        raise ValueError("this version of synth does not apply an audio watermark yet (the setting is reserved): "
                         "leave output.watermark null; every file is still marked in its metadata")


class OutputConfig(_Section):
    """What lands in --output."""

    audio_format: Literal["wav", "flac"] = Field("wav", description="Encoding of embedded bytes and files.")
    write_audio_files: bool = Field(True, description="Also write each clip under wav/ (or flac/).")
    scripts_per_shard: int = Field(32, ge=1, description="Manifest rows per shard (the unit of work).")
    commit_every_scripts: int = Field(
        8, ge=1, description="Scripts per committed part: a crash redoes at most this many scripts per actor."
    )
    watermark: WatermarkConfig | None = Field(
        None, description="An audio watermark in the samples (silentcipher, with weights you bring); null: none."
    )


class JobConfig(_Section):
    """How the run treats failures."""

    max_shard_attempts: int = Field(3, ge=1, description="Attempts per shard before it is marked failed.")
    max_error_rate: float = Field(
        0.0, ge=0, le=1, description="Exit non-zero when failed rows / manifest rows exceed this."
    )
    speaking_rate_chars_per_second: float = Field(
        15.0, gt=0, description="Typical speaking rate, for --dry-run's audio-hours estimate only."
    )
    lease_stale_seconds: float = Field(
        60.0, gt=0, description="A run's lease on its output with no heartbeat for this long is taken over by a "
        "new run (the holder is presumed dead); a dead holder on the same host is taken over at once.",
    )


class VoiceConfig(_Section):
    """One named voice: a clean reference clip of the speaker and its transcript.

    CSM does best with roughly 5-15 s of clean reference speech; a turn or script that
    names the voice is conditioned on it (the clip is Mimi-encoded once per run).
    """

    audio: str = Field(description="Path or URI of the reference clip (relative: to the working directory).")
    text: str = Field(min_length=1, description="What the clip says, word for word.")
    speaker: int = Field(ge=0, description="The speaker id the voice's turns are generated as.")


def unknown_voice(name: str, voices: dict[str, VoiceConfig]) -> str:
    """The error for a voice name the config does not define."""
    return f"unknown voice {name!r} (the config's voices: {', '.join(sorted(voices)) or 'none'})"


class TextConfig(_Section):
    """What the model is given to say: the written text, or its spoken form (synth.text)."""

    normalize: bool | None = Field(
        None, description="Read numbers, dates, times, money, percentages, abbreviations and chapter numerals "
        "out as words before synthesis; None = on for books (`synth book`), off for manifests (`synth run`).",
    )
    normalizer: Literal["light", "nemo"] = Field(
        "light", description="`light`: num2words plus rules; `nemo`: NeMo's normaliser (pip install "
        "nemo_text_processing)."
    )
    date_order: Literal["mdy", "dmy", "ymd"] = Field(
        "mdy", description="How the light normaliser reads a numeric date whose numbers allow more than one "
        "order: 10/12/2023 is October twelfth (`mdy`, US) or the tenth of December (`dmy`, UK and Europe); `ymd` "
        "reads 98/01/07 year first. A date only one order fits (25.12.2020, 2016/07/03) is read that way."
    )
    lexicon: str | None = Field(
        None, description="Path or URI of a pronunciation lexicon (`word = respelling` per line), applied "
        "after normalisation (and without it)."
    )
    tables: Literal["rows", "skip"] = Field(
        "rows", description="How a book's tables (EPUB) are read: `rows`, row by row with each cell after its "
        "column's heading (`Item: Tea; Cost: one dollar.`); `skip`, a one-line note (`Table omitted.`) instead."
    )

    @model_validator(mode="after")
    def _date_order_is_the_light_normalisers(self) -> "TextConfig":
        if self.normalizer == "nemo" and self.date_order != "mdy":
            raise ValueError(f"text.date_order={self.date_order!r} needs text.normalizer='light': NeMo's normaliser "
                             "reads a date either order fits month first and takes no date order")
        return self


class RayConfig(_Section):
    """How to reach Ray."""

    address: str | None = Field(
        None, description="Cluster address ('auto' = the cluster `ray start` runs here); None = "
        "RAY_ADDRESS (set by `ray job submit`), else a new local cluster.",
    )


class SynthConfig(_Section):
    """The whole run configuration."""

    model: ModelConfig = ModelConfig()
    sampling: SamplingConfig = SamplingConfig()
    generation: GenerationConfig = GenerationConfig()
    actors: ActorsConfig = ActorsConfig()
    output: OutputConfig = OutputConfig()
    job: JobConfig = JobConfig()
    ray: RayConfig = RayConfig()
    text: TextConfig = TextConfig()
    fast_engine: FastEngineSettings = Field(
        FastEngineSettings(), description="The fast engine: its slots, positions and early stops (recorded "
        "settings), and how it runs (CUDA graphs, attention buckets, result thread, ...; never what it generates).",
    )
    transformers_engine: TransformersEngineConfig = TransformersEngineConfig()
    voices: dict[str, VoiceConfig] = Field(default_factory=dict, description="The voice library, by name.")
    qc: QcSettings = Field(
        QcSettings(), description="Quality control of every generated turn: metrics, thresholds, retakes, "
        "clean-up (`synth.qc.policy`; off by default).",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        """Old key names (`synth.pipeline.renamed_keys`) read as their new ones, each with a note."""
        if not isinstance(data, dict):
            return data
        model, engine = data.get("model"), ModelConfig.model_fields["engine"].default
        if isinstance(model, dict):
            engine = model.get("engine", engine)
        data, notes = upgrade(data, engine)
        for note in notes:
            warnings.warn(note, RenamedKey, stacklevel=2)
        return data

    @field_validator("voices")
    @classmethod
    def _voice_names(cls, voices: dict[str, VoiceConfig]) -> dict[str, VoiceConfig]:
        for name in voices:
            if not name.strip() or name != name.strip():
                raise ValueError(f"voice name {name!r} must be non-empty without surrounding spaces")
        return voices

    @property
    def context_from(self) -> Literal["codes", "audio"]:
        """`generation.context_from`, resolved for the engine (recorded in plan.json)."""
        default = "codes" if self.model.engine == "fast" else "audio"
        return self.generation.context_from or default

    @model_validator(mode="after")
    def _codes_context_needs_the_fast_engine(self) -> "SynthConfig":
        if self.generation.context_from == "codes" and self.model.engine != "fast":
            raise ValueError("generation.context_from='codes' needs model.engine='fast': the transformers engine's "
                             "processor encodes every context clip again ('audio')")
        return self

    @field_validator("model")
    @classmethod
    def _tiny_needs_local_path(cls, model: ModelConfig) -> ModelConfig:
        if model.build_tiny and not model.id.startswith(("~", "/", ".")):
            raise ValueError(f"model.build_tiny needs a local path in model.id, got {model.id!r}")
        return model


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class ConfigError(SynthError, ValueError):
    """A configuration file or override that cannot be used; the message says why."""


def _parse_value(item: str, raw: str) -> Any:
    """Read an override's value as YAML, so `4`, `0.5`, `true`, `null` get their types.
    item: the whole override, for the message when the value is not YAML."""
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        mark = getattr(e, "problem_mark", None)
        where = ""
        if mark is not None:
            where = f" at column {mark.column + 1}" + (f" of line {mark.line + 1}" if mark.line else "")
        raise ConfigError(
            f"override {item!r}: the value {raw!r} is not valid YAML ({problem}{where}); "
            "to pass it as text, put it in YAML quotes"
        ) from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.field=value` strings to a nested dict (copied)."""
    data = copy.deepcopy(data)  # not a JSON round trip: YAML dates and the like are no JSON
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_value(item, raw)
    return data


_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")  # pydantic's, for models and dataclasses


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        field = ".".join(loc) or "(top level)"
        value = e.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        message = e["msg"]
        if e["type"] in _UNKNOWN_KEY:
            message = f"unknown key {loc[-1]!r} in " + (f"section {'.'.join(loc[:-1])}" if len(loc) > 1 else "the top level")
        lines.append(f"  {field}: {message}{shown}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                schema: type[ConfigT] = SynthConfig) -> ConfigT:
    """Load a YAML config (or the defaults) and apply overrides; raise ConfigError naming bad fields.
    schema: the config's model (SynthConfig for runs; synth.train's TrainConfig for fine-tuning)."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", RenamedKey)
            config = schema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    for note in notes:  # one line each, where the user looks; other warnings as they came
        if issubclass(note.category, RenamedKey):
            print(f"synth: {source}: {note.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(note.message, note.category, note.filename, note.lineno)
    return config
