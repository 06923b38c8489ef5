"""Dialogues as chains, the context budget, and the voice library: real checkpoint, real files."""

import os
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import dataset_store, load_errors

from synth.engine.interface import Segment
from synth.pipeline.config import SynthConfig
from synth.pipeline.context_plan import ContextItem, ContextTooLong, plan_context
from synth.pipeline.manifest import open_manifest, write_manifest
from synth.pipeline.output import VOICES_DIR, voice_codes_file
from synth.pipeline.plan import plan_shards
from synth.pipeline.worker import ShardWorker, load_engine


def _item(key, cost, pinned=False, turn=None, generated=False):
    return ContextItem(key, turn, Segment(0, key), cost, pinned, generated)


def test_plan_keeps_pinned_then_the_newest_turns_that_fit_leaving_room_for_the_cap():
    history = [_item("voice:a", 30, pinned=True), _item("t0", 20, turn=0), _item("t1", 25, turn=1),
               _item("t2", 10, turn=2), _item("t3", 15, turn=3)]
    plan = plan_context(history, target_cost=10, max_frames=40, max_positions=140)
    # budget for context: 140 - 10 - 40 = 90 = voice 30 + t3 15 + t2 10 + t1 25; t0 would need 20 more
    assert [i.key for i in plan.items] == ["voice:a", "t1", "t2", "t3"]
    assert plan.max_frames == 40 and plan.left_out == 1
    # the window stays contiguous: a small old turn does not jump a large recent one
    plan = plan_context([_item("t0", 5), _item("t1", 100), _item("t2", 10)], target_cost=10, max_frames=10,
                        max_positions=100)
    assert [i.key for i in plan.items] == ["t2"]


def test_plan_lowers_the_cap_only_when_the_text_leaves_less_room_and_refuses_text_that_cannot_fit():
    plan = plan_context([_item("voice:a", 5, pinned=True)], target_cost=90, max_frames=40, max_positions=100)
    assert plan.items == () and plan.max_frames == 10
    with pytest.raises(ContextTooLong, match="needs 100 positions"):
        plan_context([], target_cost=100, max_frames=5, max_positions=100)


def test_plan_notes_left_out_pinned_items_and_oversized_recorded_clips_not_the_rolling_window():
    # context budget: 140 - 10 - 40 = 90
    history = [_item("voice:a", 30, pinned=True), _item("voice:big", 100, pinned=True),
               _item("s:0", 70, pinned=True, turn=0), _item("s:1", 20, turn=1, generated=True),
               _item("s:2", 65, turn=2), _item("s:3", 10, turn=3, generated=True)]
    plan = plan_context(history, target_cost=10, max_frames=40, max_positions=140)
    assert [i.key for i in plan.items] == ["voice:a", "s:3"] and plan.left_out == 4
    assert plan.notes == (
        "voice prompt 'big' (100 positions) left out: it does not fit the turn's 90-position context budget",
        "context clip 's:0' (70 positions) left out: only 60 of the turn's 90 context positions were left after "
        "the pinned items before it",
        "context clip 's:2' (65 positions) left out: only 60 of the turn's 90 context positions were left after "
        "the pinned items",
    )
    # the rolling window at work is no news: a recorded clip that fits the room, had newer turns
    # not taken it, and generated turns of any length, left out silently
    for older in (_item("s:2", 55, turn=2), _item("s:2", 500, turn=2, generated=True)):
        plan = plan_context([_item("voice:a", 30, pinned=True), older, _item("s:3", 10, turn=3, generated=True)],
                            target_cost=10, max_frames=40, max_positions=140)
        assert [i.key for i in plan.items] == ["voice:a", "s:3"] and plan.left_out == 1 and plan.notes == ()


def _plan_chain(costs, low_water, voice=12, cap=20, max_positions=200):
    """Plans for a chain of generated turns of these costs (own text 8 positions, cap `cap`), the
    window's start carried from plan to plan as `Chain` does. Returns (plans, recent budget)."""
    candidates, plans, start = [_item("voice:a", voice, pinned=True)], [], 0
    for turn, cost in enumerate(costs):
        plan = plan_context(candidates, target_cost=8, max_frames=cap, max_positions=max_positions,
                            low_water=low_water, start=start)
        plans.append(plan)
        start = plan.start
        candidates.append(_item(f"s:{turn}", cost, turn=turn, generated=True))
    return plans, max_positions - 8 - cap - voice


def test_block_window_extends_the_previous_context_between_slides_and_slides_to_the_low_water_mark():
    costs = np.random.default_rng(3).integers(8, 30, size=80).tolist()
    plans, room = _plan_chain(costs, low_water=0.5)
    assert plans == _plan_chain(costs, low_water=0.5)[0]  # a pure function of the costs: a relaunch sees the same
    slides = 0
    for turn, (prev, plan) in enumerate(zip(plans, plans[1:]), start=1):
        keys = [i.key for i in plan.items]
        assert keys[0] == "voice:a"  # pinned, always kept
        recent = [i.turn for i in plan.items[1:]]
        assert recent == list(range(turn - len(recent), turn)) and recent  # contiguous, up to the newest turn
        cost = sum(i.cost for i in plan.items[1:])
        assert cost <= room
        if keys == [i.key for i in prev.items] + [f"s:{turn - 1}"]:
            continue  # the predecessor's prompt, then the predecessor: a KV continuation keeps all of it
        slides += 1
        # a slide: only when extending would not fit, and down to the mark (or the newest turn alone)
        assert sum(i.cost for i in prev.items[1:]) + costs[turn - 1] > room
        assert cost <= 0.5 * room or recent == [turn - 1]
        assert cost + costs[recent[0] - 1] > 0.5 * room  # no lower than needed
    assert 3 <= slides <= len(costs) // 4, slides
    # the rolling window (today's): the newest turns that fit, so once full most turns drop one
    rolling, _ = _plan_chain(costs, low_water=None)
    for turn, plan in enumerate(rolling[1:], start=1):
        cost = sum(i.cost for i in plan.items[1:])
        first = plan.items[1].turn
        assert cost <= room and (first == 0 or cost + costs[first - 1] > room)
    extended = sum([i.key for i in b.items] == [i.key for i in a.items] + [f"s:{t}"]
                   for t, (a, b) in enumerate(zip(rolling, rolling[1:])))
    assert 2 * extended < len(plans) - 1 - slides  # block: every turn but the slides extends
    # what it costs: the block window holds less context on average, but at least the mark
    mean = {name: np.mean([sum(i.cost for i in p.items[1:]) for p in ps[20:]])
            for name, ps in (("block", plans), ("rolling", rolling))}
    assert 0.5 * room < mean["block"] < mean["rolling"] <= room
    with pytest.raises(ValueError, match="low_water=1.5"):
        plan_context([], target_cost=8, max_frames=8, max_positions=100, low_water=1.5)


def _espeak(path, text):
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True)
    return str(path)


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory, speech_clip):
    d = tmp_path_factory.mktemp("voices")
    shutil.copy(speech_clip, d / "narrator.wav")
    _espeak(d / "guest.wav", "Good evening, I am the guest speaker tonight.")
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt nonsense")
    return d


def _config(checkpoint, voices_dir, num_slots=8, max_positions=None, **generation):
    return SynthConfig.model_validate({
        "model": {"id": checkpoint, "engine": "fast", "dtype": "float32", "device": "cpu"},
        "sampling": {"do_sample": False},
        "generation": {"max_audio_seconds": 0.8, "min_audio_seconds": 0.4, **generation},
        "fast_engine": {"num_slots": num_slots, "max_positions": max_positions},
        "output": {"scripts_per_shard": 100, "commit_every_scripts": 2},
        "voices": {
            "narrator": {"audio": str(voices_dir / "narrator.wav"),
                         "text": "Hello there, this is a recorded voice prompt.", "speaker": 0},
            "guest": {"audio": str(voices_dir / "guest.wav"),
                      "text": "Good evening, I am the guest speaker tonight.", "speaker": 1},
            "broken": {"audio": str(voices_dir / "corrupt.wav"), "text": "Nothing.", "speaker": 2},
        },
    })


def _write(path, rows):
    return write_manifest(str(path), rows)


def _run(config, engine, manifest_path, out, log=lambda m: None):
    manifest = open_manifest(manifest_path)
    (shard,) = plan_shards(manifest, 100).shards
    worker = ShardWorker(config, engine, manifest, dataset_store(out), log=log)
    commits = worker.run_shard(shard)
    rows = [r for f in sorted(os.listdir(out / "data")) for r in pq.read_table(out / "data" / f).to_pylist()]
    return worker, commits, {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def engine(tiny_checkpoint, voices_dir):
    return load_engine(_config(tiny_checkpoint, voices_dir))


@pytest.fixture(scope="module")
def voiced(tmp_path_factory, tiny_checkpoint, voices_dir, engine):
    d = tmp_path_factory.mktemp("voiced")
    manifest = _write(d / "m.parquet", [
        {"id": "interview", "turns": [{"voice": "narrator", "text": "Welcome to the show."},
                                      {"voice": "guest", "text": "Thanks for having me."},
                                      {"speaker": 0, "text": "Let us begin."},
                                      {"voice": "narrator", "text": "First question."}]},
        {"id": "told", "voice": "narrator", "turns": [{"text": "Once upon a time."}, {"text": "The end."}]},
        {"id": "unknown", "turns": [{"voice": "nobody", "text": "Who am I?"}]},
        {"id": "broken", "turns": [{"voice": "broken", "text": "I cannot be heard."}]},
        {"id": "clash", "turns": [{"voice": "guest", "speaker": 3, "text": "Which speaker?"}]},
    ])
    config = _config(tiny_checkpoint, voices_dir)
    encoded_before = engine.codec.encoded_clips
    worker, commits, rows = _run(config, engine, manifest, d / "out")
    return d, config, worker, commits, rows, engine.codec.encoded_clips - encoded_before


def test_voice_prompts_condition_every_turn_of_their_script(voiced):
    _, _, _, _, rows, _ = voiced
    assert set(rows) == {"interview:0", "interview:1", "interview:2", "interview:3", "told:0", "told:1"}
    assert rows["interview:0"]["context_ids"] == ["voice:narrator", "voice:guest"]
    assert rows["interview:2"]["context_ids"] == ["voice:narrator", "voice:guest", "interview:0", "interview:1"]
    assert rows["interview:1"]["speaker"] == 1 and rows["interview:1"]["voice"] == "guest"
    assert rows["interview:3"]["speaker"] == 0 and rows["interview:3"]["context_ids"][:2] == [
        "voice:narrator", "voice:guest"]  # a voice named twice is one prompt
    assert rows["told:1"]["context_ids"] == ["voice:narrator", "told:0"]
    assert rows["told:1"]["speaker"] == 0 and rows["told:1"]["voice"] == "narrator"


def test_bad_voices_are_recorded_errors_and_the_rest_goes_on(voiced):
    d, *_ = voiced
    errors = {e["id"]: e for e in load_errors(d / "out")}
    assert set(errors) == {"unknown", "broken", "clash"}
    assert errors["unknown"]["stage"] == "voice" and "unknown voice 'nobody'" in errors["unknown"]["reason"]
    assert "guest, narrator" in errors["unknown"]["reason"]  # names what exists
    assert "cannot use its reference clip" in errors["broken"]["reason"] and errors["broken"]["row"] == 3
    assert "corrupt.wav: cannot decode audio" in errors["broken"]["reason"]  # the clip, not a Python object
    assert "object at 0x" not in errors["broken"]["reason"]
    assert "contradicts voice 'guest'" in errors["clash"]["reason"] and errors["clash"]["turn"] == 0


def test_each_voice_is_encoded_once_and_then_read_from_the_run_cache(voiced, engine):
    d, config, worker, _, rows, engine_encodes = voiced
    assert worker.voices.encoded == 2  # narrator and guest; broken never decodes
    assert sorted(f"{VOICES_DIR}/{f}" for f in os.listdir(d / "out" / VOICES_DIR)) == sorted(
        voice_codes_file(k) for k in engine.codec.pinned)  # what the engine uses is what was stored
    # the engine never encoded a voice itself: its encodes are the voices (via the library); the
    # generated turns that became context (interview:0, :1, :2 and told:0) came as their own codes
    # (generation.context_from: codes, the fast engine's default), and the engine let go of those
    # once their chains were done: only the voices stay pinned (above)
    assert engine_encodes == 2
    # a second worker on the same output (another actor, or a resumed run) encodes nothing
    again = ShardWorker(config, engine, worker.manifest, dataset_store(d / "out"), log=lambda m: None)
    assert again.voices.prepare()["encoded"] == 0
    assert again.voices.get("narrator").speaker == 0


def test_a_voice_is_the_same_as_its_clip_given_as_a_recorded_turn(voiced, tiny_checkpoint, voices_dir, engine,
                                                                  tmp_path):
    *_, rows, _ = voiced
    manifest = _write(tmp_path / "m.parquet", [{"id": "told", "turns": [
        {"speaker": 0, "text": "Hello there, this is a recorded voice prompt.",
         "audio": str(voices_dir / "narrator.wav")},
        {"speaker": 0, "text": "Once upon a time."}, {"speaker": 0, "text": "The end."}]}])
    _, _, recorded = _run(_config(tiny_checkpoint, voices_dir), engine, manifest, tmp_path / "out")
    assert recorded["told:1"]["codes"] == rows["told:0"]["codes"]
    assert recorded["told:2"]["codes"] == rows["told:1"]["codes"]


def test_long_chains_keep_the_voice_and_the_newest_turns_within_the_budget(tiny_checkpoint, voices_dir, tmp_path):
    """max_positions 200: the voice prompt (~40 positions) stays, old turns fall out, every prompt + cap fits."""
    config = _config(tiny_checkpoint, voices_dir, max_positions=200, max_audio_seconds=0.8)
    engine = load_engine(config)
    long_text = "word " * 400
    manifest = _write(tmp_path / "m.parquet", [
        {"id": "chapter", "voice": "narrator", "turns": [{"text": f"Sentence number {i} of the chapter."}
                                                         for i in range(12)]},
        {"id": "too-long", "voice": "guest", "turns": [{"text": "Fine."}, {"text": long_text}, {"text": "After."}]},
    ])
    worker, _, rows = _run(config, engine, manifest, tmp_path / "out")
    chapter = [rows[f"chapter:{i}"] for i in range(12)]
    for row in chapter:
        assert row["context_ids"][0] == "voice:narrator"
        assert row["num_prompt_tokens"] + json_max_frames(row) <= 200
        recent = [int(k.rsplit(":", 1)[1]) for k in row["context_ids"][1:]]
        assert recent == list(range(row["turn"] - len(recent), row["turn"]))  # the newest, contiguous
    assert len(chapter[-1]["context_ids"]) < 12  # the budget left old turns out
    assert len(chapter[-1]["context_ids"]) >= 2  # but kept some recent ones
    (error,) = load_errors(tmp_path / "out")
    assert error["id"] == "too-long" and error["turn"] == 1 and "leaving no room" in error["reason"]
    assert rows["too-long:2"]["context_ids"] == ["voice:guest", "too-long:0"]  # the chain went on


def test_context_left_out_is_said_in_the_row_warnings_and_the_rolling_window_is_not(tiny_checkpoint, voices_dir,
                                                                                     tmp_path):
    """max_positions 200: a 20 s clip (250 frames) fits no turn's context, as an opening recorded turn,
    a voice prompt or a recorded turn in the middle; the turn is generated all the same and says so."""
    import soundfile as sf

    long_clip = str(tmp_path / "long.wav")
    seconds = np.arange(20 * 24000) / 24000
    sf.write(long_clip, (0.3 * np.sin(2 * np.pi * 220 * seconds)).astype(np.float32), 24000)
    base = _config(tiny_checkpoint, voices_dir, max_positions=200, max_audio_seconds=0.8).model_dump()
    config = SynthConfig.model_validate(
        {**base, "voices": {**base["voices"], "long": {"audio": long_clip, "text": "A long hum.", "speaker": 2}}})
    engine = load_engine(config)
    manifest = _write(tmp_path / "m.parquet", [
        {"id": "long-open", "turns": [{"speaker": 0, "text": "A long hum.", "audio": long_clip},
                                      {"speaker": 1, "text": "That was long."}]},
        {"id": "long-voice", "voice": "long", "turns": [{"text": "In a long voice."}]},
        {"id": "long-mid", "turns": [{"speaker": 0, "text": "First."},
                                     {"speaker": 1, "text": "A long hum.", "audio": long_clip},
                                     {"speaker": 0, "text": "Then."}]},
        {"id": "chapter", "voice": "narrator", "turns": [{"text": f"Sentence number {i} of the chapter."}
                                                         for i in range(12)]},
    ])
    lines = []
    _, _, rows = _run(config, engine, manifest, tmp_path / "out", log=lines.append)
    assert set(rows) == {"long-open:1", "long-voice:0", "long-mid:0", "long-mid:2"} | {
        f"chapter:{i}" for i in range(12)}
    budget = "-position context budget"
    assert rows["long-open:1"]["context_ids"] == []
    assert rows["long-open:1"]["warnings"].startswith("context clip 'long-open:0' (2") and budget in (
        rows["long-open:1"]["warnings"])
    assert rows["long-voice:0"]["context_ids"] == []
    assert rows["long-voice:0"]["warnings"].startswith("voice prompt 'long' (2") and budget in (
        rows["long-voice:0"]["warnings"])
    assert rows["long-mid:2"]["context_ids"] == [] and "context clip 'long-mid:1'" in rows["long-mid:2"]["warnings"]
    assert rows["long-mid:0"]["warnings"] is None
    # a long chapter's old turns fall out of the window every turn: normal, and not reported
    assert len(rows["chapter:11"]["context_ids"]) < 12
    assert all(rows[f"chapter:{i}"]["warnings"] is None for i in range(12))
    # commit_every_scripts 2: parts 0 (long-open, long-voice) and 1 (long-mid, chapter) count theirs
    assert sum("2 turns with `warnings`" in line for line in lines) == 1, lines
    assert sum("1 turns with `warnings`" in line for line in lines) == 1, lines


def json_max_frames(row):
    import json

    return json.loads(row["generation"])["max_frames"]


def test_many_dialogues_are_in_flight_at_once(tiny_checkpoint, voices_dir, tmp_path):
    """16 dialogues of 4 turns on 16 slots: the frames run are about those of one dialogue, not 16."""
    config = _config(tiny_checkpoint, voices_dir, num_slots=16, max_audio_seconds=0.8)
    engine = load_engine(config)
    manifest = _write(tmp_path / "m.parquet", [
        {"id": f"d{i:02d}", "turns": [{"speaker": t % 2, "text": f"Turn {t} of dialogue {i}."} for t in range(4)]}
        for i in range(16)])
    frames_before = engine.scheduler.stats.frames
    _, _, rows = _run(config, engine, manifest, tmp_path / "out")
    assert len(rows) == 64
    useful = sum(r["num_frames"] for r in rows.values())
    frames = engine.scheduler.stats.frames - frames_before
    assert frames * 4 < useful, (frames, useful)  # serial would need frames == useful
    assert np.mean([len(r["context_ids"]) for r in rows.values() if r["turn"] == 3]) == 3


def test_dry_run_reports_unknown_voices_and_missing_reference_clips(tiny_checkpoint, voices_dir, tmp_path):
    from synth.pipeline.dry_run import dry_run

    config = _config(tiny_checkpoint, voices_dir)
    config = config.model_copy(update={"voices": {
        **config.voices, "gone": config.voices["guest"].model_copy(update={"audio": str(tmp_path / "gone.wav")})}})
    manifest_path = _write(tmp_path / "m.parquet", [
        {"id": "ok", "voice": "narrator", "turns": [{"text": "Fine."}]},
        {"id": "unknown", "turns": [{"speaker": 0, "text": "Hi."}, {"voice": "nobody", "text": "Who?"}]},
        {"id": "gone", "turns": [{"voice": "gone", "text": "Where?"}]},
    ])
    manifest = open_manifest(manifest_path)
    report = dry_run(config, manifest, plan_shards(manifest, 10))
    assert report.bad_rows == 2 and report.turns_to_generate == 1
    reasons = {e.script_id: (e.stage, e.turn, e.reason) for e in report.errors}
    assert reasons["unknown"][:2] == ("voice", 1) and "unknown voice 'nobody'" in reasons["unknown"][2]
    assert reasons["gone"][:2] == ("voice", 0) and "reference clip not found" in reasons["gone"][2]
