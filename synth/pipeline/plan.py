"""The shard plan: how a manifest is cut into units of work, and what exactly it was cut from.

This module owns the plan, a pure function of the manifest's files (their names under the
input, sizes, content hashes and row counts) and of `scripts_per_shard` and
`commit_every_scripts`: shard k covers a contiguous row range of one manifest file and is
committed in parts of `commit_every_scripts` scripts, each part one unit of the output
(`shard-00003-part-0001`). The plan records a fingerprint of every input file and the hash
of the ids each shard holds, so that a relaunch on changed input is refused, naming the
file and what changed (`changes`), and an actor can check that the rows it reads are the
rows the plan gave its shard. The same manifest and settings always give the same plan,
wherever the manifest lies. It knows nothing about models or Ray.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from synth.pipeline.manifest import Manifest, ids_sha256, iter_ids
from synth.store import storage


@dataclass(frozen=True)
class Shard:
    index: int
    file_index: int
    start: int  # file-local row range [start, stop)
    stop: int
    ids_sha256: str = ""  # the hash of the ids of rows [start, stop), in order ("": not recorded)

    @property
    def num_scripts(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class InputFile:
    """One manifest file as planned: its name under the input, rows, size and content hash."""

    name: str  # path relative to the input directory ("" when the input is this one file)
    num_rows: int
    size: int = -1  # -1: not recorded
    sha256: str = ""


@dataclass(frozen=True)
class Plan:
    shards: tuple[Shard, ...]
    scripts_per_shard: int
    manifest_files: tuple[InputFile, ...]
    commit_every_scripts: int = 1

    def parts_of(self, shard: Shard) -> int:
        """How many parts (units) a shard commits."""
        return math.ceil(shard.num_scripts / self.commit_every_scripts)

    def to_dict(self) -> dict:
        return {
            "scripts_per_shard": self.scripts_per_shard,
            "commit_every_scripts": self.commit_every_scripts,
            "manifest_files": [asdict(f) for f in self.manifest_files],
            "shards": [asdict(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        """The plan `to_dict` gave (as recorded in an output's plan.json)."""
        return cls(
            tuple(Shard(**s) for s in data["shards"]),
            data["scripts_per_shard"],
            tuple(InputFile(**f) for f in data["manifest_files"]),
            data.get("commit_every_scripts", 1),
        )


def _name(manifest: Manifest, path: str) -> str:
    root = manifest.location.path.rstrip("/")
    return "" if path == root else path.removeprefix(root + "/")


def plan_shards(manifest: Manifest, scripts_per_shard: int, commit_every_scripts: int = 1) -> Plan:
    """The plan of a manifest: its files fingerprinted (size, sha256, read once), every shard's ids hashed."""
    files, shards = [], []
    ids = iter(iter_ids(manifest))
    for file_index, mf in enumerate(manifest.files):
        size, sha = storage.sha256_of(storage.Location(manifest.location.fs, mf.path, mf.uri))
        files.append(InputFile(_name(manifest, mf.path), mf.num_rows, size, sha))
        for start in range(0, mf.num_rows, scripts_per_shard):
            stop = min(start + scripts_per_shard, mf.num_rows)
            digest = ids_sha256(value for _, value in (next(ids) for _ in range(stop - start)))
            shards.append(Shard(len(shards), file_index, start, stop, digest))
    return Plan(tuple(shards), scripts_per_shard, tuple(files), commit_every_scripts)


def changes(recorded: dict, plan: Plan) -> list[str]:
    """What differs between a recorded plan (plan.json's `plan`) and this one, one line each,
    naming the file and what changed; [] when they are the same plan."""
    lines = []
    before = {f["name"]: f for f in recorded.get("manifest_files", []) if isinstance(f, dict) and "name" in f}
    now = {f.name: f for f in plan.manifest_files}
    if not before and recorded.get("manifest_files"):
        return ["plan.json records the manifest as an older synth version did (paths without fingerprints)"]
    for name in sorted(set(before) - set(now)):
        lines.append(f"{name or 'the manifest'}: planned, now missing from the input")
    for name in sorted(set(now) - set(before)):
        lines.append(f"{name or 'the manifest'}: a new file, not in the plan")
    for name in sorted(set(now) & set(before)):
        old, new = before[name], now[name]
        what = [f"{k} {old.get(k)} -> {getattr(new, k)}" for k in ("num_rows", "size") if old.get(k) != getattr(new, k)]
        if old.get("sha256") != new.sha256:
            what.append("its content differs (sha256)")
        if what:
            lines.append(f"{name or 'the manifest'}: " + ", ".join(what))
    for key in ("scripts_per_shard", "commit_every_scripts"):
        if recorded.get(key, 1) != getattr(plan, key):
            lines.append(f"output.{key}: {recorded.get(key)} -> {getattr(plan, key)}")
    if not lines and recorded != plan.to_dict():
        old_shards = {s["index"]: s for s in recorded.get("shards", [])}
        moved = [s.index for s in plan.shards if old_shards.get(s.index) != asdict(s)]
        lines.append(f"the rows of shards {moved[:10]} differ (ids reordered or changed)")
    return lines
