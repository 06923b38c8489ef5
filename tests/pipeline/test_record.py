"""The data/ record: its version tied to its fields, its rows, its ids made and parsed in one place."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from synth.pipeline import record
from synth.pipeline.record import (
    DATA_FIELDS,
    DATA_FINGERPRINT,
    DATA_SCHEMA,
    FINGERPRINTS,
    QC_ROW_FIELDS,
    TAKE_FIELDS,
    Field,
    OutputRow,
    TakeRow,
    arrow_type,
    codes_to_list,
    data_schema,
    fingerprint,
    no_qc,
    parse_row_id,
    parse_take_id,
    row_id,
    take_id,
    takes_schema,
    voice_key,
    voice_name,
)
from synth.qc.policy import METRICS

SR = 24_000
REPO = __file__.rsplit("/tests/", 1)[0]


def test_the_schema_version_is_bumped_with_the_fields():
    now = fingerprint()
    assert now == DATA_FINGERPRINT, (
        f"data/'s or takes/'s fields changed (fingerprint {now}, recorded {DATA_FINGERPRINT} for DATA_SCHEMA "
        f"{DATA_SCHEMA}): bump DATA_SCHEMA in synth/pipeline/record.py, say what changed in its comment, and add "
        f"{DATA_SCHEMA + 1}: \"{now}\" to FINGERPRINTS")
    # a version's fingerprint is never rewritten: versions only grow, each with fields of its own
    assert max(FINGERPRINTS) == DATA_SCHEMA, f"FINGERPRINTS ends at {max(FINGERPRINTS)}, DATA_SCHEMA is {DATA_SCHEMA}"
    assert len(set(FINGERPRINTS.values())) == len(FINGERPRINTS), "two versions with the same fields"
    assert FINGERPRINTS[5] == "44c3bce35d090029", "version 5's fields are what outputs of it hold: add a version"


@pytest.mark.parametrize("change", ["type", "name", "added", "order", "takes"])
def test_the_fingerprint_sees_every_kind_of_field_change(monkeypatch, change):
    before = fingerprint()
    data, takes = list(DATA_FIELDS), list(TAKE_FIELDS)
    if change == "type":
        data[2] = Field("turn", "int64")
    elif change == "name":
        data[2] = Field("turn_index", "int32")
    elif change == "added":
        data.append(Field("new_column", "string"))
    elif change == "order":
        data[0], data[1] = data[1], data[0]
    else:
        takes[-1] = Field("gain", "float64")
    monkeypatch.setattr(record, "DATA_FIELDS", tuple(data))
    monkeypatch.setattr(record, "TAKE_FIELDS", tuple(takes))
    assert fingerprint() != before


def test_the_files_carry_the_records_types_and_hf_features():
    for schema, record_fields in ((data_schema(SR), DATA_FIELDS), (takes_schema(SR), TAKE_FIELDS)):
        assert schema.names == [f.name for f in record_fields]
        assert [schema.field(f.name).type for f in record_fields] == [arrow_type(f.type) for f in record_fields]
        assert b"huggingface" in schema.metadata and f'"sampling_rate": {SR}'.encode() in schema.metadata[b"huggingface"]
    assert len(set(f.name for f in DATA_FIELDS)) == len(DATA_FIELDS)
    assert {f.name for f in DATA_FIELDS} >= set(METRICS) | set(QC_ROW_FIELDS)


def _row(**qc) -> OutputRow:
    codes = np.arange(6).reshape(2, 3)
    return OutputRow(id=row_id("a:b", 3), script_id="a:b", turn=3, speaker=1, text="Hi.", spoken_text="hi",
                     audio={"bytes": b"RIFF", "path": "wav/00000/a_b-3.wav"}, sampling_rate=SR, duration_s=0.16,
                     num_frames=2, codes=codes_to_list(codes), stop_reason="eos", seed=7, voice=None,
                     context_turns=[2], context_ids=[voice_key("ann"), row_id("a:b", 2)], num_prompt_tokens=12,
                     model="m", model_weights="w", engine="fast", generation="{}", warnings=None, qc=qc or no_qc())


def test_an_output_row_has_every_data_field_and_writes_as_it_was_built():
    typed = [f.name for f in fields(OutputRow) if f.name != "qc"]
    assert typed + list(QC_ROW_FIELDS) == [f.name for f in DATA_FIELDS]
    row = _row().to_dict()
    assert list(row) == [f.name for f in DATA_FIELDS]
    assert (row["take"], row["num_takes"], row["qc_pass"], row["gain_db"]) == (1, 1, None, None)
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([row], schema=data_schema(SR)), sink)
    assert pq.read_table(io.BytesIO(sink.getvalue())).to_pylist() == [row]


def test_an_output_row_refuses_a_qc_field_the_record_does_not_have():
    with pytest.raises(AssertionError, match="not QC fields"):
        _row(**no_qc(), seed=3).to_dict()
    assert replace(_row(), qc={}).to_dict().keys() == {f.name for f in DATA_FIELDS} - set(QC_ROW_FIELDS)


def test_a_take_row_fills_the_takes_fields_but_its_turns_count():
    take = TakeRow(id=row_id("s", 0), script_id="s", turn=0, take=2, kept_take=1, seed=5, num_frames=2,
                   stop_reason="max_frames", codes=[[1, 2], [3, 4]], audio=None, qc_pass=False,
                   qc_reasons=["wer: 1 > max 0.3"], metrics={**dict.fromkeys(METRICS), "wer": 1.0}, gain_db=None)
    row = take.to_dict()
    assert set(row) == {f.name for f in TAKE_FIELDS} - {"num_takes"}
    written = pa.Table.from_pylist([row], schema=takes_schema(SR)).to_pylist()[0]
    assert written["num_takes"] is None and written["wer"] == 1.0 and written["take"] == 2


@pytest.mark.parametrize("key, parsed", [("a:b:3", ("a:b", 3)), ("s:0", ("s", 0)), (":12", ("", 12)),
                                         ("s", None), ("s:", None), ("s:x", None), ("s:-1", None), ("s:³", None),
                                         ("s:0#take2", None)])
def test_row_ids_parse_from_the_right(key, parsed):
    assert parse_row_id(key) == parsed


def test_take_and_voice_ids():
    assert take_id("a:b:3", 2) == "a:b:3#take2"
    assert parse_take_id("a:b:3#take2") == ("a:b:3", 2)
    assert parse_take_id("a#take:3#take12") == ("a#take:3", 12)
    assert parse_take_id("a:b:3") is None and parse_take_id("voice#take2") is None
    assert voice_key("ann") == "voice:ann" and voice_name("voice:ann") == "ann"
    assert voice_name("s:3") is None


@given(st.text(), st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=99))
def test_ids_round_trip_whatever_the_script_id_holds(script_id, turn, take):
    key = row_id(script_id, turn)
    assert parse_row_id(key) == (script_id, turn)
    assert parse_take_id(take_id(key, take)) == (key, take)
    assert voice_name(voice_key(script_id)) == script_id


def test_readers_of_data_name_only_its_fields():
    from synth.book.render import QC_COLUMNS
    from synth.export.rows import HEAVY_COLUMNS
    from synth.export.stats import LIGHT_COLUMNS
    from synth.pipeline.qc_scores import QC_FIELDS
    from synth.pipeline.rescore import SCORES_SCHEMA
    from synth.train.dataset import COLUMNS, SPOKEN_COLUMN

    names = {f.name for f in DATA_FIELDS}
    for used in (QC_COLUMNS, HEAVY_COLUMNS, LIGHT_COLUMNS, QC_FIELDS, SCORES_SCHEMA.names, COLUMNS, [SPOKEN_COLUMN]):
        assert set(used) <= names, f"not a data/ field: {set(used) - names}"
    assert [SCORES_SCHEMA.field(n).type for n in QC_FIELDS] == [data_schema(SR).field(n).type for n in QC_FIELDS]


def test_the_ids_need_neither_pyarrow_nor_datasets():
    """The benchmark plans context (`context_plan`, which names voice prompts by `voice_key`) on a bare GPU box."""
    code = ("import sys\n"
            "for name in ('pyarrow', 'datasets', 'ray', 'pydantic'):\n"
            "    sys.modules[name] = None\n"
            "import synth.pipeline.context_plan\n"
            "from synth.pipeline.record import parse_row_id, row_id, voice_key\n"
            "assert parse_row_id(row_id('a:b', 3)) == ('a:b', 3) and voice_key('x') == 'voice:x'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
