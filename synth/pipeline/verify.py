"""`synth verify` of a dataset: the store's checks, and what only a dataset can be checked for.

This module owns verifying a dataset store (a run's output, a book's render, an import):
`synth.store.recovery.verify` (every unit against its marker by size and sha256, leftovers,
completeness against the plan: every part the plan gives each shard is committed, and a
book's manifest), plus every row id exactly once across the committed parts and each data
part opening as the dataset's Parquet (HF features in its metadata) with its marker's row
count. It reports and changes nothing; a file that is not one of synth's names (a user's,
in an adopted directory) is no finding. It knows nothing about Ray or the model.
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from synth.pipeline.output import (
    PLAN_RECORD,
    PartCommit,
    accept_part,
    data_file,
    dataset_store,
    parsed_part,
    part_units,
    recorded_plan,
)
from synth.store.errors import StoreError
from synth.store.recovery import Verification, verify
from synth.store.store import Store

BOOK_UNITS = ("book-manifest",)  # what a book render commits besides its parts, whatever its chapters


def verify_dataset_at(uri: str, *, checksums: bool = True) -> Verification:
    """`synth verify` of the dataset at `uri`."""
    return verify_dataset(dataset_store(uri, "synth verify"), checksums=checksums)


def verify_dataset(store: Store, *, checksums: bool = True) -> Verification:
    """Check a dataset store without changing anything (see the module docstring)."""
    try:
        plan = recorded_plan(store)
    except (StoreError, KeyError, TypeError) as e:
        report = Verification(findings=[f"{PLAN_RECORD} is damaged ({e}): the store's plan is unknown"])
        plan = None
    else:
        report = None
    expected = None
    if plan is not None:
        expected = part_units(plan) + (list(BOOK_UNITS) if store.layout.kind == "book" else [])
    checked, trusted = verify(store, expected=expected, checksums=checksums, accept=accept_part)
    if report is not None:
        checked.findings = report.findings + checked.findings
    elif plan is None:
        checked.findings.insert(0, f"{store.uri} holds no {PLAN_RECORD}: no run has started here")
    ids: Counter[str] = Counter()
    for unit, marker in sorted(trusted.items()):
        if parsed_part(unit) is not None and (commit := PartCommit.from_marker(marker)).rows:
            checked.findings += _check_data_part(store, commit, ids)
    checked.rows = sum(ids.values())
    checked.findings += [f"row id {key!r} appears {n} times" for key, n in ids.items() if n > 1]
    return checked


def _check_data_part(store: Store, commit: PartCommit, ids: Counter) -> list[str]:
    """A data part opens as the dataset's Parquet (HF features in its metadata) with the marker's
    row count; its ids join `ids`."""
    path = data_file(commit.shard, commit.part)
    location = store.at(path)
    try:
        table = pq.read_table(location.fs.open_input_file(location.path), columns=["id"])
        metadata = pq.read_schema(location.fs.open_input_file(location.path)).metadata or {}
    except (pa.ArrowException, OSError) as e:
        return [f"{path}: does not open as Parquet ({e})"]
    problems = []
    if b"huggingface" not in metadata:
        problems.append(f"{path}: its schema lacks the `huggingface` features metadata `datasets` reads")
    if table.num_rows != commit.rows:
        problems.append(f"{path}: {table.num_rows} rows, its marker says {commit.rows}")
    ids.update(table.column("id").to_pylist())
    return problems
