"""What an export is asked to do: its format, its filters and how it runs.

This module owns `ExportOptions`, the typed settings of one export (validated when
built, naming the bad field), and `identity`, what must not change between an export
and its rerun into the same directory. It knows nothing about the formats' files or Ray.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FORMATS = ("lhotse_shar", "nemo", "webdataset")


class ExportOptions(BaseModel):
    """One export's settings; see `synth export --help`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[FORMATS]
    qc_pass_only: bool = Field(False, description="keep only rows whose `qc_pass` is true (needs QC columns)")
    min_duration_s: float | None = Field(None, ge=0, description="drop rows shorter than this")
    max_duration_s: float | None = Field(None, gt=0, description="drop rows longer than this")
    speakers: tuple[int, ...] | None = Field(None, description="keep only these speaker ids")
    voices: tuple[str, ...] | None = Field(None, description="keep only rows generated in these voices")
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

    def identity(self, source_uri: str) -> dict:
        """What a rerun into the same directory must repeat: the source, the format, the filters."""
        return {"source": source_uri, **self.model_dump(mode="json", exclude={"num_workers", "num_cpus", "ray_address",
                                                                  "lease_stale_seconds"})}
