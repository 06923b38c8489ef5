"""The export store: its names, what an exported part's marker says, and its identity.

An export directory is a store (`synth.store`) of kind `export`. Besides the store's own
records (`_synth.json`, `_lease.json`, `_progress/<unit>.json`, `_quarantine/`):

    EXPORT/_identity.json                            what is exported: the source, the format, the filters
    EXPORT/export.json                               the counts of the last export into it
    EXPORT/shar/{cuts,recording,codes}.shard-00003-part-0001.{jsonl.gz,tar}   Lhotse Shar   } unit: the source
    EXPORT/nemo/audio/00003/<key>.{wav,flac}         NeMo: the clips                         } part's name,
    EXPORT/nemo/manifests/shard-00003-part-0001.jsonl  NeMo: one part's lines                } shard-00003-
    EXPORT/wds/shard-00003-part-0001-000.tar         WebDataset shards                       } part-0001
    EXPORT/nemo/manifest.jsonl                       NeMo: every exported part's lines       unit nemo-manifest

One source part is one unit: its files are written atomically under names that are a
pure function of the part, then its marker records each file with its size and sha256,
and the sha256 of the source part's data file it was made from. A rerun skips the parts
whose marker is sound and whose source part is unchanged; a part whose source was made
again since (a quarantined part regenerated) is exported again. This module owns those
names and `UnitCommit`; claiming, leasing, recovery and verification are the store's.
It knows nothing about the formats' contents or Ray.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from synth.store.layout import Layout
from synth.store.marker import Damaged, FileRecord, Marker

EXPORT_RECORD = "export.json"
NEMO_MANIFEST = "nemo/manifest.jsonl"
NEMO_MANIFEST_UNIT = "nemo-manifest"
_PART = r"shard-\d{5,}-part-\d{4,}"
EXPORT = Layout(
    kind="export",
    identity_file="_identity.json",
    unit_files=(rf"shar/(?:cuts|recording|codes)\.{_PART}\.(?:jsonl\.gz|tar)"
                rf"|nemo/audio/\d{{5,}}/[A-Za-z0-9_-]+\.(?:wav|flac)|nemo/manifests/{_PART}\.jsonl"
                rf"|{re.escape(NEMO_MANIFEST)}|wds/{_PART}-\d{{3,}}\.tar"),
    records=(EXPORT_RECORD,),
    large_dirs=("nemo",),
)


@dataclass(frozen=True)
class UnitCommit:
    """What one exported source part holds; stored in its marker.

    source_sha256: the sha256 of the source part's data file, as the source's marker records it."""

    shard: int
    part: int
    rows: int  # rows exported
    audio_seconds: float
    dropped: dict[str, int] = field(default_factory=dict)  # filter -> rows it dropped
    source_sha256: str = ""
    files: tuple[FileRecord, ...] = ()

    def meta(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "files"}

    @classmethod
    def from_marker(cls, marker: Marker) -> "UnitCommit":
        """The commit an exported part's marker records; raises Damaged when its fields are not one's."""
        try:
            commit = cls(**marker.meta, files=marker.files)
            assert isinstance(commit.rows, int) and isinstance(commit.dropped, dict)
        except (TypeError, AssertionError):
            raise Damaged(f"its fields are not an exported part's ({sorted(marker.meta)[:8]})") from None
        return commit


def accept_unit(marker: Marker) -> str | None:
    """The export's check of a sound marker: an exported part's holds a part's fields."""
    if marker.unit == NEMO_MANIFEST_UNIT:
        return None
    try:
        UnitCommit.from_marker(marker)
    except Damaged as e:
        return f"its marker is damaged: {e}"
    return None
