"""What an export is asked to do: its format, its filters and how it runs.

This module owns `ExportOptions`, the typed settings of one export (validated when
built, naming the bad field), `identity`, what must not change between an export and its
rerun into the same directory (the splits included), and `split_of`, the split a row
belongs to: decided by its script id alone (a hash), so that a conversation never straddles
two splits and a rerun, or another export with the same splits, puts every row where it put
it before. It knows nothing about the formats' files or Ray.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

FORMATS = ("lhotse_shar", "nemo", "webdataset")
TRAIN = "train"  # the split of every row no other split takes
SPLIT_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


def parse_splits(text: str) -> dict[str, float]:
    """`dev=0.01,test=0.01` -> {"dev": 0.01, "test": 0.01}; a ValueError naming what is wrong."""
    splits = {}
    for item in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            splits[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--split {item!r}: give NAME=FRACTION, e.g. dev=0.01") from None
    return splits


class ExportOptions(BaseModel):
    """One export's settings; see `synth export --help`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[FORMATS]
    qc_pass_only: bool = Field(False, description="keep only rows whose `qc_pass` is true (needs QC columns)")
    min_duration_s: float | None = Field(None, ge=0, description="drop rows shorter than this")
    max_duration_s: float | None = Field(None, gt=0, description="drop rows longer than this")
    speakers: tuple[int, ...] | None = Field(None, description="keep only these speaker ids")
    voices: tuple[str, ...] | None = Field(None, description="keep only rows generated in these voices")
    splits: dict[str, float] | None = Field(
        None, description="held-out splits by fraction of scripts, e.g. {dev: 0.01, test: 0.01}; the rest is train")
    shard_max_mb: float = Field(256.0, gt=0, description="WebDataset: start a new tar past this many MB")
    num_workers: int = Field(2, ge=1, description="parts exported at once (Ray tasks in flight)")
    num_cpus: float = Field(1.0, gt=0, description="CPUs one export task takes on the cluster")
    ray_address: str | None = Field(None, description="as the run's ray.address: None = RAY_ADDRESS, else local")
    lease_stale_seconds: float = Field(60.0, gt=0, description="as the run's job.lease_stale_seconds")

    @model_validator(mode="after")
    def _range(self) -> "ExportOptions":
        if self.min_duration_s is not None and self.max_duration_s is not None and (
                self.min_duration_s > self.max_duration_s):
            raise ValueError(f"min_duration_s ({self.min_duration_s}) is above max_duration_s ({self.max_duration_s})")
        return self

    @field_validator("splits")
    @classmethod
    def _splits(cls, splits: dict[str, float] | None) -> dict[str, float] | None:
        if not splits:
            return None
        for name, fraction in splits.items():
            if not SPLIT_NAME.fullmatch(name) or name == TRAIN:
                raise ValueError(f"split name {name!r}: use lower-case letters, digits and _ (not {TRAIN!r}, which "
                                 "holds every row the other splits do not)")
            if not 0 < fraction < 1:
                raise ValueError(f"split {name}={fraction}: a fraction of the scripts, between 0 and 1")
        if sum(splits.values()) >= 1:
            raise ValueError(f"splits {splits} take every script: their fractions must sum to less than 1, leaving "
                             f"{TRAIN} the rest")
        return dict(sorted(splits.items()))

    @property
    def split_names(self) -> tuple[str, ...]:
        """Every split the export writes: train, then the held-out ones by name."""
        return (TRAIN, *(self.splits or {}))

    def split_of(self, script_id: str) -> str:
        """The split of a row, by its script id alone: where a hash of the id falls among the fractions."""
        if not self.splits:
            return TRAIN
        point = int.from_bytes(hashlib.sha256(script_id.encode()).digest()[:8], "big") / 2**64  # uniform in [0, 1)
        edge = 0.0
        for name, fraction in self.splits.items():  # sorted by name: the order they were typed in does not matter
            edge += fraction
            if point < edge:
                return name
        return TRAIN

    def identity(self, source_uri: str) -> dict:
        """What a rerun into the same directory must repeat: the source, the format, the filters, the splits."""
        unsplit = {"splits"} if self.splits is None else set()  # as exports made before splits existed recorded it
        return {"source": source_uri, **self.model_dump(mode="json", exclude={"num_workers", "num_cpus", "ray_address",
                                                                  "lease_stale_seconds"} | unsplit)}
