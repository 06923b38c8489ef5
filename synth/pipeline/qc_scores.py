"""The QC verdicts a dataset's rows carry: data/'s own QC columns, else what `synth rescore` wrote.

A run with `qc.enabled` writes each row's verdict and metrics into data/; `synth rescore OUT`
writes them afterwards into `qc/<part>.parquet`, the unit `qc-<part>` of the dataset's store
(`synth.pipeline.rescore`). This module owns reading those scores back for the commands that
filter or describe rows by QC (`synth export --qc-pass-only`, `synth train` with
`data.qc_filter`, the card and the report): a part's scores count only when their unit's
marker is sound, their bytes are the ones it recorded, and its `input_sha256` is the sha256
of the part's data file as committed now (scores of rows made again since are stale and
ignored); a row takes them only where its own `qc_pass` is null. Rescoring replaces a part's
scores, so the newest settings win; each part keeps the hash of the settings that scored it
(`Rescored.settings`), which the card reports. It knows nothing about models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from synth.pipeline.output import SCORES_DIR, part_name, scores_file, scores_unit
from synth.pipeline.record import QC_FIELDS, QC_PASS  # what a scores file holds for a row besides its id
from synth.store.marker import Damaged
from synth.store.store import Store

SETTINGS_KEY = b"synth_qc_settings"  # a scores file's metadata: the `qc:` settings it was scored with (JSON)
INPUT_SHA256 = "input_sha256"  # a scores unit's marker: the sha256 of the file it scored
SETTINGS_HASH = "qc_settings"  # a scores unit's marker: the hash of the settings it was scored with


@dataclass(frozen=True)
class Rescored:
    """One data part's scores from `synth rescore`: row id -> its QC fields, and the settings that made them."""

    scores: dict[str, dict]
    settings: str  # the hash the scores unit's marker records
    thresholds: dict | None  # the settings' thresholds (from the file's metadata), for the card

    def fill(self, row: dict) -> bool:
        """Give `row` its rescored QC fields where it has no verdict of its own; True when it took them."""
        if row.get(QC_PASS) is not None or row.get("id") not in self.scores:
            return False
        row.update(self.scores[row["id"]])
        return True


def scored_parts(store: Store) -> set[str]:
    """The names of the parts that have a scores file (one listing of qc/): the only ones worth asking
    `rescored` about, where each question costs a read (a request, on an object store)."""
    return {path.removeprefix(f"{SCORES_DIR}/").removesuffix(".parquet") for path in store.file_sizes(SCORES_DIR)}


def rescored(store: Store, shard: int, part: int, data_sha256: str) -> Rescored | None:
    """The scores `synth rescore` committed for a data part whose committed bytes have `data_sha256`;
    None when there are none, or they cannot be trusted (damaged, changed, or made from other bytes)."""
    unit = scores_unit(part_name(shard, part))
    try:
        marker = store.marker(unit)
    except Damaged:
        return None
    if marker is None or marker.meta.get(INPUT_SHA256) != data_sha256:
        return None
    data = store.read_verified(unit, scores_file(part_name(shard, part)))
    if data is None:
        return None
    table = pq.read_table(pa.BufferReader(data))
    wanted = [c for c in QC_FIELDS if c in table.column_names]
    scores = {row.pop("id"): row for row in table.select(["id", *wanted]).to_pylist()}
    try:
        thresholds = json.loads((table.schema.metadata or {}).get(SETTINGS_KEY, b"{}")).get("thresholds")
    except (ValueError, AttributeError):
        thresholds = None
    return Rescored(scores, str(marker.meta.get(SETTINGS_HASH, "")), thresholds)
