"""QC beside generation and speculative chains, on the tiny CSM with real metrics (issue 22).

The takes of the tiny model are noise whose loudness (as stored) spreads around -13 LUFS, so a
`min_loudness_lufs` bound there passes some takes and fails others, by seed: chains with a mix of
kept first takes, retakes that pass, and turns where another take than the newest is kept. The
same shard with speculation on and off must give the same rows and takes, bit for bit; the QC
thread's failure must end the run with its error; a queue of one take must still finish.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import dataset_store

from synth.engine.interface import SamplingParams
from synth.pipeline.chain import Chain, ChainTurn
from synth.pipeline.config import load_config
from synth.pipeline.context_plan import SegmentCost
from synth.pipeline.manifest import open_manifest, write_manifest
from synth.pipeline.plan import plan_shards
from synth.pipeline.retakes import QcCounts, Retakes, qc_totals
from synth.pipeline.verdicts import ChainFlight, KeepRate
from synth.pipeline.worker import ShardWorker, load_engine
from synth.qc.policy import QcSettings, Thresholds
from synth.qc.scorer import Take, TakeScorer

pytestmark = pytest.mark.slow  # whole shards with QC on the tiny CSM

LOUDNESS_SPLIT_LUFS = -13.2  # the tiny CSM's stored takes measure about -15 to -11 LUFS: this splits them
RUN_TIMEOUT_S = 300


def _settings(tiny_checkpoint: str, *extra: str):
    return load_config(None, [
        f"model.id={tiny_checkpoint}", "model.dtype=float32", "model.device=cpu", "generation.batch_size=4",
        "generation.max_audio_seconds=1.2", "output.commit_every_scripts=2", "sampling.do_sample=true",
        "qc.enabled=true", "qc.max_takes=2", "qc.metrics=[level,repetition]", "qc.own_process=false",
        f"qc.thresholds.min_loudness_lufs={LOUDNESS_SPLIT_LUFS}", "qc.cleanup.loudness_lufs=-20", *extra])


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_checkpoint):
    """The engine (loaded once) and a shard of four 4-turn chains."""
    work = tmp_path_factory.mktemp("speculation")
    rows = [{"id": f"c{i}", "seed": 100 + 10 * i,
             "turns": [{"speaker": t % 2, "text": f"Turn {t} of chain {i}, some words.", "audio": None}
                       for t in range(4)]} for i in range(4)]
    manifest = open_manifest(write_manifest(str(work / "manifest.parquet"), rows))
    (shard,) = plan_shards(manifest, 100).shards
    engine = load_engine(_settings(tiny_checkpoint))
    return work, engine, manifest, shard


def _run(setup, tiny_checkpoint, name: str, *extra: str, max_queued: int | None = None, min_rate: float = 0.0):
    """Run the shard into its own output; (commits, data rows by id, take rows by (id, take))."""
    work, engine, manifest, shard = setup
    worker = ShardWorker(_settings(tiny_checkpoint, *extra), engine, manifest, dataset_store(work / name),
                         log=lambda m: None)
    if max_queued is not None:
        worker.qc_max_queued = max_queued
    # min_rate 0: bet that every take is kept (the next turn ahead: the most to roll back); 1: once a take
    # number failed, bet that it fails (the next take ahead)
    worker.keep_rate = KeepRate(min_rate=min_rate)
    stats = engine.scheduler.stats
    before = stats.useful_frames + stats.discarded_frames
    try:
        commits = _in_time(lambda: worker.run_shard(shard))
    finally:
        worker.close()
    data = pq.read_table(work / name / "data").to_pylist()
    takes = pq.read_table(work / name / "takes").to_pylist()
    _frames_generated[name] = stats.useful_frames + stats.discarded_frames - before
    return commits, {r["id"]: r for r in data}, {(t["id"], t["take"]): t for t in takes}


_frames_generated: dict[str, int] = {}  # output name -> frames the engine generated for it (kept, rejected, discarded)


def _in_time(fn):
    """fn() on a thread that must finish within RUN_TIMEOUT_S (a hang fails the test, not the session)."""
    out: dict = {}

    def call():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(RUN_TIMEOUT_S)
    assert not thread.is_alive(), f"the run did not end within {RUN_TIMEOUT_S} s"
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture(scope="module")
def plain(setup, tiny_checkpoint):
    return _run(setup, tiny_checkpoint, "plain", "qc.speculative=false")


@pytest.fixture(scope="module")
def speculative(setup, tiny_checkpoint):
    # and scored in the scorer's own process (qc.own_process): the plain order's rows, scored on threads
    return _run(setup, tiny_checkpoint, "speculative", "qc.speculative=true", "qc.own_process=true")


@pytest.fixture(scope="module")
def retaking_ahead(setup, tiny_checkpoint):
    return _run(setup, tiny_checkpoint, "retaking-ahead", "qc.speculative=true", min_rate=1.0)


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        for column in a[key]:
            assert a[key][column] == b[key][column], (key, column)


def test_speculation_gives_the_plain_order_rows_and_takes_bit_for_bit(plain, speculative):
    (plain_commits, plain_data, plain_takes), (spec_commits, spec_data, spec_takes) = plain, speculative
    # the mix the test needs: first takes kept, retakes kept, and a turn keeping an older take than its newest
    outcomes = {(r["num_takes"], r["take"]) for r in plain_data.values()}
    assert {(1, 1), (2, 2), (2, 1)} <= outcomes, outcomes
    assert any(r["qc_pass"] for r in plain_data.values()) and not all(r["qc_pass"] for r in plain_data.values())
    assert len(plain_data) == 16 and plain_takes
    _same(plain_data, spec_data)  # ids, seeds, kept takes, codes, audio bytes, metrics, context: every column
    _same(plain_takes, spec_takes)
    spec = [c.qc for c in spec_commits]
    plain_qc = [c.qc for c in plain_commits]
    assert sum(q["speculative_turns"] for q in plain_qc) == 0  # off means off
    assert sum(q["speculative_turns"] for q in spec) >= 12  # every followed turn's first take at least
    assert sum(q["speculative_discarded"] for q in spec) > 0  # some parents failed: their continuations went
    assert qc_totals(spec) == {**qc_totals(plain_qc), **{k: v for k, v in qc_totals(spec).items() if "speculative" in k}}


@pytest.mark.parametrize("name", ["plain", "speculative", "retaking-ahead"])
def test_every_generated_frame_is_a_row_a_take_or_counted_as_discarded(plain, speculative, retaking_ahead, name):
    """The frames the engine generated for a run are the kept takes', the rejected takes', and the
    markers' (so run.json's) speculative_frames_discarded: finished takes thrown away and requests
    cancelled while they generated or waited to be decoded, reported by the engine."""
    commits, data, takes = {"plain": plain, "speculative": speculative, "retaking-ahead": retaking_ahead}[name]
    discarded = sum(c.qc["speculative_frames_discarded"] for c in commits)
    kept, rejected = sum(r["num_frames"] for r in data.values()), sum(t["num_frames"] for t in takes.values())
    assert kept + rejected + discarded == _frames_generated[name]
    assert (discarded == 0) == (name == "plain")


def test_retakes_generated_ahead_of_their_verdicts_give_the_plain_order_output(plain, retaking_ahead):
    """Betting that takes fail: a turn's next take is generated while the take before it is scored
    (discarded when that take passes), and the output is still the plain order's."""
    commits, data, takes = retaking_ahead
    _same(plain[1], data)
    _same(plain[2], takes)
    qc = [c.qc for c in commits]
    assert sum(q["speculative_turns"] for q in qc) > 0 and sum(q["speculative_discarded"] for q in qc) > 0


def test_a_queue_of_one_take_still_finishes_with_the_same_output(setup, tiny_checkpoint, plain):
    """Backpressure: with room for one queued take the engine's result path waits on the QC thread."""
    _, data, takes = _run(setup, tiny_checkpoint, "queue-of-one", max_queued=1)
    _same(plain[1], data)
    _same(plain[2], takes)


def test_an_error_on_the_qc_thread_ends_the_run_with_it(setup, tiny_checkpoint, plain):
    work, engine, manifest, shard = setup
    worker = ShardWorker(_settings(tiny_checkpoint), engine, manifest, dataset_store(work / "broken"),
                         log=lambda m: None)
    scored = []

    def score_then_fail(takes):
        if scored:
            raise RuntimeError("the scorer broke")
        scored.append(len(takes))
        return TakeScorer.score(worker.retakes.scorer, takes)

    worker.retakes.scorer.score = score_then_fail  # the real scorer, broken after its first batch
    with pytest.raises(RuntimeError, match="the scorer broke"):
        _in_time(lambda: worker.run_shard(shard))
    assert scored
    # the engine is left as it was: the next shard runs to the end with the same output
    _, data, _ = _run(setup, tiny_checkpoint, "after-error", "qc.speculative=false")
    _same(plain[1], data)


def test_a_failed_parent_discards_its_finished_continuation_and_the_chain_goes_back(setup):
    """ChainFlight alone, on real takes: the continuation of a take that fails is counted as discarded
    frames, and the chain is as it was at the take (the retake's request is the turn's, new seed)."""
    _, engine, _, _ = setup
    settings = QcSettings(enabled=True, metrics=("level",), max_takes=2,
                          thresholds=Thresholds(min_loudness_lufs=0.0))  # nothing this loud: every take fails
    retakes = Retakes(settings, TakeScorer(settings, engine.sample_rate_hz).load(),
                      samples_per_frame=engine.samples_per_frame, encode_audio=lambda a, key: b"")
    chain = Chain([ChainTurn(f"t:{i}", i % 2, f"Turn number {i}.", max_frames=6, seed=i) for i in range(3)],
                  engine, SegmentCost(engine))
    retakes.start_chain(chain)
    flight = ChainFlight(chain, retakes, speculate=True)
    counts, sampling = QcCounts(), SamplingParams()
    (first,) = flight.first(lambda turn, reason: pytest.fail(reason), counts)
    (take,) = engine.generate([first], sampling)
    [(pending, scored)], (ahead,) = flight.on_take(first.request_id, take, None, counts)
    assert ahead.speculative and ahead.request_id == "t:1" and counts.speculative_turns == 1
    assert np.array_equal(ahead.context[-1].audio, take.audio)  # conditioned on the take, as it would be kept
    (continuation,) = engine.generate([ahead], sampling)
    # finished before its parent's verdict, and continued in turn (t:2, still generating)
    _, (further,) = flight.on_take(ahead.request_id, continuation, None, counts)
    assert further.request_id == "t:2" and counts.speculative_turns == 2
    pending.metrics = retakes.scorer.score([scored])[0]
    verdicts = flight.decide(counts, "t")
    assert not verdicts.accepted and verdicts.cancel == ["t:2"]  # what is still generating is cancelled
    (retake,) = verdicts.submit
    assert retake.request_id == "t:0#take2" and retake.context == first.context and retake.seed != first.seed
    # both speculative turns discarded; the finished one's frames counted (the cancelled one's are the engine's)
    assert counts.speculative_discarded == 2 and counts.speculative_frames_discarded == continuation.num_frames > 0
    assert chain.turn == 0 and chain.request == first and [i.key for i in chain.candidates] == []
    assert not flight.pending and flight.in_flight == [retake.request_id]


def _failing_flight(engine, max_takes: int = 2):
    """A 3-turn chain whose takes all fail (nothing is this loud), its retakes, and a keep rate that
    has seen takes 1 and 2 not kept: take 2 is bet on before take 1 is generated, and no next turn
    is bet on either."""
    settings = QcSettings(enabled=True, metrics=("level",), max_takes=max_takes,
                          thresholds=Thresholds(min_loudness_lufs=0.0))
    retakes = Retakes(settings, TakeScorer(settings, engine.sample_rate_hz).load(),
                      samples_per_frame=engine.samples_per_frame, encode_audio=lambda a, key: b"")
    chain = Chain([ChainTurn(f"t:{i}", i % 2, f"Turn number {i}.", max_frames=6, seed=i) for i in range(3)],
                  engine, SegmentCost(engine))
    retakes.start_chain(chain)
    rate = KeepRate()
    rate.record(1, False)
    rate.record(2, False)
    return retakes, chain, ChainFlight(chain, retakes, speculate=True, keep_rate=rate)


def test_a_take_bet_to_fail_is_generated_beside_its_retake_and_both_are_scored_together(setup):
    """With take 1 failing lately, a turn's takes 1 and 2 are requested together; a take 2 that finishes
    first waits for take 1, both go to scoring in chain order, and the verdicts keep one of them and
    request the next turn's two takes at once."""
    _, engine, _, _ = setup
    retakes, chain, flight = _failing_flight(engine)
    counts, sampling = QcCounts(), SamplingParams()
    first, second = flight.first(lambda turn, reason: pytest.fail(reason), counts)
    assert (first.request_id, second.request_id) == ("t:0", "t:0#take2") and second.speculative
    assert not first.speculative and second.context == first.context and second.seed != first.seed
    assert counts.speculative_turns == 1 and flight.in_flight == ["t:0", "t:0#take2"]
    take1, take2 = engine.generate([first, second], sampling)
    assert flight.on_take(second.request_id, take2, None, counts) == ([], [])  # take 1 still generating
    ready, ahead = flight.on_take(first.request_id, take1, None, counts)
    assert [p.engine_id for p, _ in ready] == ["t:0", "t:0#take2"] and [p.number for p, _ in ready] == [1, 2]
    assert ahead == [] and flight.in_flight == []
    for pending, metrics in zip((p for p, _ in ready), retakes.scorer.score([t for _, t in ready])):
        pending.metrics = metrics
    verdicts = flight.decide(counts, "t")
    (accepted,) = verdicts.accepted
    assert accepted[1].columns["num_takes"] == 2 and len(accepted[1].rejected) == 1
    assert [r.request_id for r in verdicts.submit] == ["t:1", "t:1#take2"] and not verdicts.cancel
    assert counts.speculative_discarded == 0 and chain.turn == 1


def test_a_take_generating_alone_gets_its_retake_beside_it_once_the_bet_turns(setup):
    """A run's first takes are requested before any verdict (bet kept); once take 1 fails often enough,
    a take 1 still generating alone gets take 2 beside it, once, and the verdicts go on as before."""
    _, engine, _, _ = setup
    retakes, chain, flight = _failing_flight(engine)
    flight.keep_rate = KeepRate()  # nothing seen yet: take 1 is bet kept
    counts, sampling = QcCounts(), SamplingParams()
    (first,) = flight.first(lambda turn, reason: pytest.fail(reason), counts)
    assert flight.bet_again(counts) == []  # the bet has not turned
    flight.keep_rate.record(1, False)
    flight.keep_rate.record(2, False)
    (second,) = flight.bet_again(counts)
    assert second.request_id == "t:0#take2" and second.speculative and second.seed != first.seed
    assert second.context == first.context and counts.speculative_turns == 1
    assert flight.bet_again(counts) == [] and flight.in_flight == ["t:0", "t:0#take2"]  # once
    take1, take2 = engine.generate([first, second], sampling)
    ready, ahead = flight.on_take(first.request_id, take1, None, counts)
    assert ready and ahead == []  # take 2 still generating beside it: no bet on take 1
    assert flight.bet_again(counts) == []  # a take awaits its verdict: nothing to add
    ready += flight.on_take(second.request_id, take2, None, counts)[0]
    for (pending, _), metrics in zip(ready, retakes.scorer.score([t for _, t in ready])):
        pending.metrics = metrics
    verdicts = flight.decide(counts, "t")
    assert len(verdicts.accepted) == 1 and [r.request_id for r in verdicts.submit] == ["t:1", "t:1#take2"]


def test_a_take_bet_to_fail_that_passes_discards_its_retake_beside_it(setup):
    """The bet lost: take 1 is kept, so the take 2 generated beside it is thrown away: cancelled while
    it generates, or its frames counted when it had finished first; the chain goes on from take 1."""
    _, engine, _, _ = setup
    for finished_first in (False, True):
        retakes, chain, flight = _failing_flight(engine)
        counts, sampling = QcCounts(), SamplingParams()
        first, second = flight.first(lambda turn, reason: pytest.fail(reason), counts)
        take1, take2 = engine.generate([first, second], sampling)
        if finished_first:
            flight.on_take(second.request_id, take2, None, counts)
        ready, _ = flight.on_take(first.request_id, take1, None, counts)  # take 2 with it if it had finished
        assert len(ready) == 1 + finished_first
        pending = ready[0][0]
        pending.metrics = {**retakes.scorer.score([Take(take1.audio, first.text, take1.codes, None)])[0],
                           "loudness_lufs": 0.0, "clipped_fraction": 0.0}  # as loud as asked, unclipped: kept
        verdicts = flight.decide(counts, "t")
        assert [p.engine_id for p, _ in verdicts.accepted] == ["t:0"]
        assert verdicts.cancel == ([] if finished_first else ["t:0#take2"])
        assert counts.speculative_discarded == 1
        assert counts.speculative_frames_discarded == (take2.num_frames if finished_first else 0)
        assert chain.turn == 1 and [r.request_id for r in verdicts.submit][0] == "t:1"


def test_isolated_with_qc_a_failing_script_is_an_error_row_and_the_rest_is_the_same(setup, tiny_checkpoint, plain,
                                                                                    monkeypatch):
    """The retry path (each script alone): a script whose generation raises becomes an error row, the
    QC stage beside each script's run; the others' rows are those of the shard run together."""
    from helpers import load_errors

    from synth.store.faults import RAISE_VAR

    work, engine, manifest, shard = setup
    monkeypatch.setenv(RAISE_VAR, "generate:c1")
    worker = ShardWorker(_settings(tiny_checkpoint), engine, manifest, dataset_store(work / "isolated"),
                         log=lambda m: None)
    _in_time(lambda: worker.run_shard(shard, isolate=True))
    data = {r["id"]: r for r in pq.read_table(work / "isolated" / "data").to_pylist()}
    (error,) = load_errors(work / "isolated")
    assert error["id"] == "c1" and "InjectedFault" in error["reason"], error
    _same({k: v for k, v in plain[1].items() if not k.startswith("c1:")}, data)


def test_the_bet_on_a_take_is_placed_while_that_take_number_is_kept_often_enough():
    rate = KeepRate(min_rate=0.5, window=4)
    assert rate.worth_it(1) and rate.worth_it(2)  # nothing seen yet: bet
    for kept in (False, False, True):
        rate.record(1, kept)
    assert not rate.worth_it(1) and rate.worth_it(2)  # 1 of 3 first takes kept; take 2 unseen
    for _ in range(3):
        rate.record(1, True)  # the window keeps the last 4: 3 of 4 kept
    assert rate.worth_it(1)
    with pytest.raises(ValueError, match="min_rate"):
        KeepRate(min_rate=1.5)


def test_the_reference_engine_runs_a_qc_shard_with_speculation_to_its_end(setup, tiny_checkpoint):
    """The transformers reference takes the QC stage's submissions and cancels in its rounds: every turn
    is written, every take judged (its batches seed by their first row, so its codes are not compared)."""
    work, _, manifest, shard = setup
    config = _settings(tiny_checkpoint, "model.engine=transformers", "sampling.do_sample=false")
    worker = ShardWorker(config, load_engine(config), manifest, dataset_store(work / "reference"), log=lambda m: None)
    worker.keep_rate = KeepRate(min_rate=0.0)
    commits = _in_time(lambda: worker.run_shard(shard))
    data = pq.read_table(work / "reference" / "data").to_pylist()
    assert sorted(r["id"] for r in data) == sorted(f"c{i}:{t}" for i in range(4) for t in range(4))
    qc = [c.qc for c in commits]
    assert sum(q["turns"] for q in qc) == 16 and sum(q["speculative_turns"] for q in qc) > 0
