"""The training store: every name a fine-tuning run writes, and what verifying one checks.

A training output is a store (`synth.store`) of kind `train`. Besides the store's own
records (`_synth.json`, `_lease.json`, `_progress/<unit>.json`, `_quarantine/`):

    OUT/_identity.json       what the run is for: the dataset (and a fingerprint of its committed
                             parts), the settings that must not change on a relaunch
    OUT/train.json           the record: skipped rows, then the steps, the loss history, `finished`
    OUT/train_set.parquet    the prepared examples every worker reads          unit train-set
    OUT/model/...            the trained checkpoint (from_pretrained loads it)  unit model
    OUT/ray/run/...          Ray Train's checkpoints and its snapshot of them (Ray's own: never
                             committed, deleted or verified by synth)

A finished run's store holds both units; `verify_train_at` checks them. It knows nothing
of the model math or Ray.
"""

from __future__ import annotations

from synth.store.layout import Layout
from synth.store.recovery import Verification, verify
from synth.store.store import Store

TRAIN_RECORD = "train.json"
TRAIN_SET_FILE = "train_set.parquet"
TRAIN_SET_UNIT = "train-set"
MODEL_DIR = "model"
MODEL_UNIT = "model"
RAY_DIR = "ray"
RUN_NAME = "run"
TRAIN = Layout(kind="train", identity_file="_identity.json",
               unit_files=rf"{TRAIN_SET_FILE}|{MODEL_DIR}/[A-Za-z0-9._-]+",
               records=(TRAIN_RECORD,), other=rf"{RAY_DIR}/.+", hashed=TRAIN_SET_FILE)


def verify_train_at(uri: str, *, checksums: bool = True) -> Verification:
    """`synth verify` of a training output: its units, and both of them once the run has finished."""
    store = Store.at_uri(uri, TRAIN)
    store.open_existing({"train"}, "synth verify")
    record = store.read_record(TRAIN_RECORD) or {}
    expected = [TRAIN_SET_UNIT, MODEL_UNIT] if record.get("finished") else [TRAIN_SET_UNIT]
    report, _ = verify(store, expected=expected, checksums=checksums)
    return report
