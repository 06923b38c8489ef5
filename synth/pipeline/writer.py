"""The output dataset's Parquet side: the error schema, rows to bytes.

This module owns the schema of errors/*.parquet and turns a part's rows (of the record
`synth.pipeline.record` owns: data/'s fields, types and HF features), rejected takes and
error rows into the bytes of its files (data and takes files marked with what made their
audio: `synth.pipeline.provenance`). A row that cannot be written in its columns (a
value out of a column's range that validation missed) becomes an error row naming it,
and the rest of its part is written. Where those files go, and the order that commits
them, is `synth.pipeline.output`'s. It knows nothing about models or Ray.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from synth.pipeline.manifest import RowError
from synth.pipeline.output import PartCommit, PartFiles, audio_file, commit_part
from synth.pipeline.provenance import parquet_metadata
from synth.pipeline.record import data_schema, takes_schema
from synth.store.store import Store

ERROR_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("id", pa.string()),
        ("turn", pa.int32()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("shard", pa.int32()),
    ]
)


class DatasetWriter:
    """Commits parts of one output dataset: rows and errors as Parquet, audio as files."""

    def __init__(self, store: Store, *, sample_rate_hz: int, audio_format: str, write_audio_files: bool):
        self.store = store
        self.sample_rate_hz = sample_rate_hz
        self.audio_format = audio_format
        self.write_audio_files = write_audio_files
        self.schema = data_schema(sample_rate_hz)
        self.takes_schema = takes_schema(sample_rate_hz)

    def audio_path(self, shard: int, script_id: str, turn: int) -> str:
        """Relative path of a clip's file: deterministic, one per (script, turn)."""
        return audio_file(shard, script_id, turn, self.audio_format)

    def _parquet_bytes(self, table: pa.Table, rows: list[dict] | None = None) -> bytes:
        """The table as Parquet; with `rows`, its metadata also marks what their audio is (`provenance`)."""
        if rows is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **parquet_metadata(rows)})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()

    def _rows_table(self, rows: list[dict], manifest_rows: dict[str, int]) -> tuple[pa.Table, list[RowError]]:
        """The data table of `rows`; a row that does not fit the columns is left out as an error row
        (found one row at a time, only when the whole table fails)."""
        try:
            return pa.Table.from_pylist(rows, schema=self.schema), []
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            pass
        kept, bad = [], []
        for row in rows:
            try:
                pa.Table.from_pylist([row], schema=self.schema)
            except (pa.ArrowException, OverflowError, TypeError, ValueError) as e:
                bad.append(RowError(manifest_rows.get(row.get("id"), -1), row.get("script_id"), "write",
                                    f"the row does not fit the dataset's columns: {str(e).splitlines()[0][:300]}",
                                    row.get("turn")))
                continue
            kept.append(row)
        return pa.Table.from_pylist(kept, schema=self.schema), bad

    def part_files(self, shard: int, part: int, rows: list[dict], errors: list[RowError], scripts: int,
                   takes: list[dict] = (), qc: dict | None = None,
                   manifest_rows: dict[str, int] | None = None) -> PartFiles:
        """A part's files as bytes, and what its marker will say. takes: rows of rejected takes;
        qc: the part's QC totals; manifest_rows: row id -> its script's manifest row (for error rows)."""
        table, unwritable = self._rows_table(rows, manifest_rows or {})
        if unwritable:
            written = set(table.column("id").to_pylist())
            rows, errors = [r for r in rows if r["id"] in written], [*errors, *unwritable]
        error_bytes = None
        if errors:
            err_table = pa.Table.from_pylist(
                [
                    {"row": e.row, "id": e.script_id, "turn": e.turn, "stage": e.stage, "reason": e.reason, "shard": shard}
                    for e in errors
                ],
                schema=ERROR_SCHEMA,
            )
            error_bytes = self._parquet_bytes(err_table)
        data_bytes = self._parquet_bytes(table, rows) if rows else None
        commit = PartCommit(
            shard=shard,
            part=part,
            rows=len(rows),
            errors=len(errors),
            audio_seconds=float(sum(r["duration_s"] for r in rows)),
            scripts=scripts,
            error_scripts=len({e.row for e in errors}),
            qc=qc or {},
        )
        takes_bytes = (self._parquet_bytes(pa.Table.from_pylist(list(takes), schema=self.takes_schema),
                                           [{**take, **_maker(rows)} for take in takes]) if takes else None)
        audio = tuple((r["audio"]["path"], r["audio"]["bytes"]) for r in rows) if self.write_audio_files else ()
        return PartFiles(commit, data=data_bytes, errors=error_bytes, audio=audio, takes=takes_bytes)

    def commit_part(
        self, shard: int, part: int, rows: list[dict], errors: list[RowError], scripts: int,
        takes: list[dict] = (), qc: dict | None = None, manifest_rows: dict[str, int] | None = None,
    ) -> PartCommit:
        """Write a part's files and then its marker (`synth.pipeline.output.commit_part`)."""
        return commit_part(self.store, self.part_files(shard, part, rows, errors, scripts, takes, qc, manifest_rows))


def _maker(rows: list[dict]) -> dict:
    """The model columns of a part's rows, for its takes (which do not repeat them)."""
    return {k: rows[0].get(k) for k in ("model", "model_weights")} if rows else {}

