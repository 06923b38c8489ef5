import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.pipeline.manifest import (
    ManifestError,
    RowError,
    Script,
    check_unique_ids,
    open_manifest,
    read_scripts,
    write_manifest,
)
from synth.pipeline.plan import plan_shards


def test_scripts_form_resolves_relative_audio_and_reads_row_ranges(tmp_path):
    rows = [
        {"id": f"s{i}", "turns": [{"speaker": 0, "text": "Hi.", "audio": "clips/a.wav"},
                                 {"speaker": 1, "text": f"Line {i}.", "audio": None}]}
        for i in range(10)
    ]
    write_manifest(str(tmp_path / "m.parquet"), rows, row_group_size=3)
    manifest = open_manifest(str(tmp_path / "m.parquet"))
    assert manifest.form == "scripts" and manifest.num_rows == 10
    scripts = read_scripts(manifest, 0, 4, 8)  # spans row groups 1 and 2
    assert [s.id for s in scripts] == ["s4", "s5", "s6", "s7"]
    assert [s.row for s in scripts] == [4, 5, 6, 7]
    assert scripts[0].turns[0].audio == f"{tmp_path}/clips/a.wav"
    assert scripts[0].turns_to_generate == [1]


def test_flat_form_is_a_one_turn_script(tmp_path):
    table = pa.table({"id": ["a", "b"], "text": ["Hello.", "World."], "speaker": [0, 3], "seed": [5, None]})
    pq.write_table(table, tmp_path / "flat.parquet")
    manifest = open_manifest(str(tmp_path / "flat.parquet"))
    a, b = read_scripts(manifest, 0, 0, 2)
    assert manifest.form == "flat"
    assert isinstance(a, Script) and a.turns[0].speaker == 0 and a.seed == 5
    assert b.seed is None and b.turns[0].text == "World."


def test_voices_stand_in_for_speakers_in_both_forms(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["Hello.", "World."], "voice": ["narrator", None]}),
                   tmp_path / "flat.parquet")
    a, b = read_scripts(open_manifest(str(tmp_path / "flat.parquet")), 0, 0, 2)
    assert isinstance(a, Script) and a.voice == "narrator" and a.turns[0].speaker is None
    assert isinstance(b, RowError) and "speaker must be a non-negative integer" in b.reason  # no voice, no speaker

    rows = [{"id": "d", "turns": [{"speaker": None, "text": "Hi.", "audio": None, "voice": "guest"},
                                  {"speaker": 0, "text": "Hey.", "audio": None, "voice": None}]},
            {"id": "e", "turns": [{"speaker": 0, "text": "Hi.", "audio": "a.wav", "voice": "guest"}]}]
    write_manifest(str(tmp_path / "s.parquet"), rows)
    d, e = read_scripts(open_manifest(str(tmp_path / "s.parquet")), 0, 0, 2)
    assert [t.voice for t in d.turns] == ["guest", None] and [t.speaker for t in d.turns] == [None, 0]
    assert isinstance(e, RowError) and "applies to generated turns only" in e.reason and e.turn == 0


def test_bad_rows_get_errors_naming_row_and_problem(tmp_path):
    table = pa.table(
        {
            "id": ["ok", "empty", "alice", "half", "", "ctx-only"],
            "text": ["Fine.", "   ", "Hi.", "Hi.", "Hi.", "Hi."],
            "speaker": ["0", "1", "alice", "1.5", "2", "3"],
        }
    )
    pq.write_table(table, tmp_path / "bad.parquet")
    items = read_scripts(open_manifest(str(tmp_path / "bad.parquet")), 0, 0, 6)
    # speakers arrive as strings here: every one of them is refused, naming the value
    assert all(isinstance(i, RowError) for i in items)
    assert "speaker must be a non-negative integer, got '0'" in str(items[0])
    assert str(items[2]).startswith("row 2 (id 'alice')")

    table = pa.table({"id": ["ok", "empty", "neg"], "text": ["Fine.", "  ", "Hi."], "speaker": [0.0, 1.0, -1.0]})
    pq.write_table(table, tmp_path / "bad2.parquet")
    ok, empty, neg = read_scripts(open_manifest(str(tmp_path / "bad2.parquet")), 0, 0, 3)
    assert isinstance(ok, Script) and ok.turns[0].speaker == 0
    assert isinstance(empty, RowError) and "text must be a non-empty string" in empty.reason and empty.row == 1
    assert isinstance(neg, RowError) and "-1.0" in neg.reason


def test_script_with_nothing_to_generate_is_an_error(tmp_path):
    write_manifest(str(tmp_path / "m.parquet"), [{"id": "x", "turns": [{"speaker": 0, "text": "Hi.", "audio": "a.wav"}]}])
    (item,) = read_scripts(open_manifest(str(tmp_path / "m.parquet")), 0, 0, 1)
    assert isinstance(item, RowError) and "no turn to generate" in item.reason


def test_manifest_level_errors(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        open_manifest(str(tmp_path / "nope.parquet"))
    pq.write_table(pa.table({"id": ["a"], "words": ["x"]}), tmp_path / "cols.parquet")
    with pytest.raises(ManifestError, match="`turns` column"):
        open_manifest(str(tmp_path / "cols.parquet"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        open_manifest(str(tmp_path / "junk.parquet"))
    empty = write_manifest(str(tmp_path / "empty" / "0.parquet"), [])  # the right columns, no rows
    with pytest.raises(ManifestError, match=r"empty/0\.parquet: the manifest has no rows \(1 file\(s\), all empty\)"):
        open_manifest(empty)
    write_manifest(str(tmp_path / "empty" / "1.parquet"), [])
    with pytest.raises(ManifestError, match=r"the manifest has no rows \(2 file\(s\)"):
        open_manifest(str(tmp_path / "empty"))
    write_manifest(str(tmp_path / "empty" / "2.parquet"), [{"id": "a", "turns": [{"speaker": 0, "text": "Hi."}]}])
    assert open_manifest(str(tmp_path / "empty")).num_rows == 1  # empty files among others are fine


def test_duplicate_ids_are_refused_across_files(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"], "speaker": [0, 0]}), d / "1.parquet")
    pq.write_table(pa.table({"id": ["c", "a"], "text": ["x", "y"], "speaker": [0, 0]}), d / "2.parquet")
    manifest = open_manifest(str(d))
    assert manifest.num_rows == 4 and [f.first_row for f in manifest.files] == [0, 2]
    with pytest.raises(ManifestError, match="id 'a' at rows 0 and 3"):
        check_unique_ids(manifest)


def test_plan_is_deterministic_and_covers_every_row_once(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    for name, n in [("a.parquet", 7), ("b.parquet", 5)]:
        pq.write_table(pa.table({"id": [f"{name}{i}" for i in range(n)], "text": ["x"] * n, "speaker": [0] * n}),
                       d / name)
    manifest = open_manifest(str(d))
    plan = plan_shards(manifest, 3)
    assert plan == plan_shards(open_manifest(str(d)), 3)
    covered = [(s.file_index, r) for s in plan.shards for r in range(s.start, s.stop)]
    assert sorted(covered) == [(0, r) for r in range(7)] + [(1, r) for r in range(5)]
    assert len(covered) == len(set(covered)) == 12
    assert [s.index for s in plan.shards] == list(range(len(plan.shards)))


def test_values_out_of_their_output_column_s_range_are_error_rows_nulls_are_not_duplicates(tmp_path):
    rows = [{"id": "big-speaker", "turns": [{"speaker": 2**31, "text": "Hi."}]},
            {"id": "ok", "turns": [{"speaker": 2**31 - 1, "text": "Hi."}], "seed": 2**63 - 2},
            {"id": "big-seed", "turns": [{"speaker": 0, "text": "Hi."}, {"speaker": 0, "text": "Ho."}],
             "seed": 2**63 - 1},  # its second turn's seed would not fit the int64 column
            {"id": None, "turns": [{"speaker": 0, "text": "Hi."}]},
            {"id": None, "turns": [{"speaker": 0, "text": "Hi."}]}]
    write_manifest(str(tmp_path / "m.parquet"), rows)
    manifest = open_manifest(str(tmp_path / "m.parquet"))
    check_unique_ids(manifest)  # two null ids: two bad rows, not "duplicate ids: None"
    big, ok, seed, null, _ = read_scripts(manifest, 0, 0, 5)
    assert isinstance(big, RowError) and f"speaker must be at most {2**31 - 1}" in big.reason and big.turn == 0
    assert isinstance(ok, Script) and ok.turns[0].speaker == 2**31 - 1
    assert isinstance(seed, RowError) and "seed must be an integer from" in seed.reason
    assert isinstance(null, RowError) and null.script_id is None and "`id` must be a non-empty string" in null.reason


@pytest.mark.parametrize("ids", [pa.array([["a"], ["b"]]), pa.array([{"x": 1}, {"x": 2}]), pa.array([1, 2])])
def test_an_id_column_that_is_not_strings_is_refused_naming_its_type(tmp_path, ids):
    pq.write_table(pa.table({"id": ids, "text": ["x", "y"], "speaker": [0, 0]}), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="the `id` column must hold strings .* it is "):
        open_manifest(str(tmp_path / "m.parquet"))


def test_actors_read_only_the_planned_files_and_refuse_rows_the_plan_did_not_give_them(tmp_path):
    from synth.pipeline.manifest import open_planned
    from synth.store.errors import InputChanged

    d = tmp_path / "in"
    rows = [{"id": f"s{i}", "turns": [{"speaker": 0, "text": f"Line {i}."}]} for i in range(4)]
    write_manifest(str(d / "a.parquet"), rows)
    plan = plan_shards(open_manifest(str(d)), 2)
    names = [(f.name, f.num_rows) for f in plan.manifest_files]
    assert names == [("a.parquet", 4)] and all(len(s.ids_sha256) == 64 for s in plan.shards)
    write_manifest(str(d / "b.parquet"), rows[:1])  # a file added to the input meanwhile: not read
    planned = open_planned(str(d), names)
    assert [f.uri.rsplit("/", 1)[-1] for f in planned.files] == ["a.parquet"]
    shard = plan.shards[1]
    assert [s.id for s in read_scripts(planned, 0, shard.start, shard.stop, shard.ids_sha256)] == ["s2", "s3"]
    write_manifest(str(d / "a.parquet"), [rows[i] for i in (0, 1, 3, 2)])  # reordered in place: same count
    with pytest.raises(InputChanged, match="ids of rows 2..3 of .*a.parquet are not the ones planned"):
        read_scripts(open_planned(str(d), names), 0, shard.start, shard.stop, shard.ids_sha256)
    write_manifest(str(d / "a.parquet"), rows[:3])
    with pytest.raises(InputChanged, match="has 3 rows, the plan 4"):
        open_planned(str(d), names)
