"""The export store: its names, what an exported part's marker says, and its identity.

An export directory is a store (`synth.store`) of kind `export`. Besides the store's own
records (`_synth.json`, `_lease.json`, `_progress/<unit>.json`, `_quarantine/`):

    EXPORT/_identity.json                            what is exported: the source, the format, the filters, splits
    EXPORT/export.json                               the counts of the last export into it
    EXPORT/README.md                                 the export's card: its splits as `configs` for `load_dataset`
    EXPORT/shar/{cuts,recording,codes}.shard-00003-part-0001.{jsonl.gz,tar}   Lhotse Shar   } unit: the source
    EXPORT/nemo/audio/00003/<key>.{wav,flac}         NeMo: the clips                         } part's name,
    EXPORT/nemo/manifests/shard-00003-part-0001.jsonl  NeMo: one part's lines                } shard-00003-
    EXPORT/wds/shard-00003-part-0001-000.tar         WebDataset shards                       } part-0001
    EXPORT/nemo/manifest.jsonl                       NeMo: every exported part's lines       unit nemo-manifest

With splits (`--split dev=0.01,test=0.01`), every split has its own files: `shar/<split>/...`,
`nemo/manifests/<split>/<part>.jsonl` and `nemo/manifest-<split>.jsonl` (the clips stay in one
`nemo/audio/`), `wds/<split>/<part>-000.tar` (`split_dir`, `nemo_manifest`). One source part is one
unit: its files (of every split) are written atomically under names that are a pure function
of the part, then its marker records each file with its size and sha256, and the sha256 of
the source part's data file it was made from. A rerun skips the parts
whose marker is sound and whose source part is unchanged; a part whose source was made
again since (a quarantined part regenerated) is exported again. This module owns those
names and `UnitCommit`; claiming, leasing, recovery and verification are the store's.
It knows nothing about the formats' contents or Ray.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from synth.store.layout import Layout
from synth.store.marker import Damaged, FileRecord, Marker

EXPORT_RECORD = "export.json"
EXPORT_CARD = "README.md"
NEMO_MANIFEST = "nemo/manifest.jsonl"
NEMO_MANIFEST_UNIT = "nemo-manifest"
_PART = r"shard-\d{5,}-part-\d{4,}"
_SPLIT = r"[a-z][a-z0-9_]{0,31}"  # `synth.export.options.SPLIT_NAME`
EXPORT = Layout(
    kind="export",
    identity_file="_identity.json",
    unit_files=(rf"shar/(?:{_SPLIT}/)?(?:cuts|recording|codes)\.{_PART}\.(?:jsonl\.gz|tar)"
                rf"|nemo/audio/\d{{5,}}/[A-Za-z0-9_-]+\.(?:wav|flac)|nemo/manifests/(?:{_SPLIT}/)?{_PART}\.jsonl"
                rf"|nemo/manifest(?:-{_SPLIT})?\.jsonl|wds/(?:{_SPLIT}/)?{_PART}-\d{{3,}}\.tar"),
    records=(EXPORT_RECORD, EXPORT_CARD),
    large_dirs=("nemo",),
)


def split_dir(directory: str, split: str | None) -> str:
    """Where the files of `split` go under a format's `directory` (`shar`, `nemo/manifests`, `wds`): its
    own subdirectory; the directory itself when the export has no splits (None)."""
    return directory if split is None else f"{directory}/{split}"


def nemo_manifest(split: str | None) -> str:
    """The whole NeMo manifest of `split` (None: the export has no splits)."""
    return NEMO_MANIFEST if split is None else f"nemo/manifest-{split}.jsonl"


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
    splits: dict[str, int] = field(default_factory=dict)  # split -> rows exported into it (none: no splits)
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
