"""The shard plan: how a manifest is cut into units of work.

This module owns the plan, a pure function of the manifest's files and row counts and
of `scripts_per_shard`: shard k covers a contiguous row range of one manifest file.
The same manifest and setting always give the same plan, so output names derived from
shard ids are stable across relaunches. It knows nothing about models or Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from synth.pipeline.manifest import Manifest


@dataclass(frozen=True)
class Shard:
    index: int
    file_index: int
    start: int  # file-local row range [start, stop)
    stop: int

    @property
    def num_scripts(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    shards: tuple[Shard, ...]
    scripts_per_shard: int
    manifest_files: tuple[tuple[str, int], ...]  # (uri, num_rows)

    def to_dict(self) -> dict:
        return {
            "scripts_per_shard": self.scripts_per_shard,
            "manifest_files": [list(f) for f in self.manifest_files],
            "shards": [asdict(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """The plan `to_dict` gave (as recorded in an output's plan.json)."""
        return cls(
            tuple(Shard(**s) for s in data["shards"]),
            data["scripts_per_shard"],
            tuple((uri, num_rows) for uri, num_rows in data["manifest_files"]),
        )


def plan_shards(manifest: Manifest, scripts_per_shard: int) -> Plan:
    shards = []
    for file_index, mf in enumerate(manifest.files):
        for start in range(0, mf.num_rows, scripts_per_shard):
            shards.append(Shard(len(shards), file_index, start, min(start + scripts_per_shard, mf.num_rows)))
    return Plan(tuple(shards), scripts_per_shard, tuple((f.uri, f.num_rows) for f in manifest.files))
