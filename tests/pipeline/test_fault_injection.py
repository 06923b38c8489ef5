"""Fault injection: the driver and its actors crash at seeded random points, and every resume
ends in the whole dataset with the user's files untouched.

Crash points (`synth.store.faults`) sit in a part's commit, a shard's done marker, the
clean-up, the driver's loop, its final check and run.json, and the lease. A seeded RNG draws
each run's kill points: a few actor points and one driver point, each a (point, N-th hit)
pair. A point that fires exits its process with `os._exit(137)`, as `kill -9` would, and
leaves a token file, so a run counts only the points that fired. Each run goes on from the
output the one before left, until at least `MIN_KILLS` points have fired, among them driver
and actor points, a torn commit (a part's files written, its marker not) and a crash in the
middle of the clean-up that deletes such a commit's files. Once an output's shards are all
done (and after the last crash), the job is relaunched without kill points, and that resume
must exit 0; the next runs start a new output.

After every run, crashed or not: the user's files are untouched, and every committed part
matches its marker (sizes, sha256) with each of its row ids once (what no marker covers may
only be a crash's leftovers). After every run that exits 0: every expected row id is in
data/ exactly once, the dataset loads, and `synth verify` passes. The output is adopted and
holds the user's files in synth's own directories (errors/, wav/) as well as at its top.

Every run joins one Ray cluster started once for the module, so a run costs a driver and
an actor's start-up, not a cluster's. The seed is printed on failure; `SYNTH_FAULT_SEED`
runs another.
"""

import ast
import collections
import glob
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import helpers
import pyarrow.parquet as pq
import pytest

from synth.pipeline.output import RUN_RECORD, committed_parts, recorded_plan
from synth.pipeline.verify import verify_dataset
from synth.store import faults, storage
from synth.store.recovery import UNCOVERED

SEED = int(os.environ.get("SYNTH_FAULT_SEED", "20261201"))
MIN_KILLS = 20
MAX_RUNS = 40  # a schedule that needs more is a failure to report, not to wait out
NUM_SCRIPTS = 16
SHARDS = 4
PARTS_PER_SHARD = 4
SMALL_PARTS = ["--set", "output.scripts_per_shard=4", "--set", "output.commit_every_scripts=1"]  # 4 parts a shard
JOB_TIMEOUT_S = 120
RAY_PACKAGE = importlib.util.find_spec("ray").submodule_search_locations[0]
RAYLET = os.path.join(RAY_PACKAGE, "core/src/ray/raylet/raylet").encode()  # the command line of a raylet

# Every crash point, by the process it runs in, with the most hits one process life reaches
# on this manifest (4 parts a shard, one commit each; an actor's count restarts with it).
ACTOR_POINTS = {"commit-audio": 4, "commit-data": 4, "commit-marker": 4, "shard-parts-committed": 2}
DRIVER_POINTS = {"lease-taken": 1, "recover-quarantined": 2, "driver-result": 6, "driver-final-recover": 1,
                 "driver-run-record": 1, "recover-removing": 2}  # the last only drawn with leftovers to remove
ACTOR_POINTS_PER_RUN = 3
TORN_COMMIT = "commit-data"  # after a part's data file, before its marker
CLEAN_UP = "recover-removing"  # between deletions of uncommitted files
RESULT_OF_FIRST_SHARD = 3  # the driver's results on a run with work: `ready`, `prepare_voices`, the first shard
USER_FILES = {"notes.txt": b"the user's notes\n", "errors/README.txt": b"not synth's\n",
              "wav/README.txt": b"the user's too\n"}  # none under data/: load_dataset reads every file there


@dataclass(frozen=True)
class KillPoint:
    """Crash at the `hit`-th time a process reaches point `name`; `token` exists once it fired."""

    name: str
    hit: int
    token: str

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.hit}:{self.token}"

    @property
    def fired(self) -> bool:
        return os.path.exists(self.token)

    @property
    def in_driver(self) -> bool:
        return self.name in DRIVER_POINTS

    def __str__(self) -> str:
        return f"{self.name}:{self.hit}"


# -- the crash points themselves ---------------------------------------------------------


def _crash_in_subprocess(env_value: str | None, calls: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV_VAR}
    if env_value is not None:
        env[faults.ENV_VAR] = env_value
    code = f"from synth.store.faults import crash_point\n{calls}\nprint('survived')"
    return subprocess.run([sys.executable, "-c", code], cwd=helpers.REPO, env=env, capture_output=True, text=True,
                          timeout=60)


def test_crash_point_fires_once_at_its_hit_and_is_inert_unarmed(tmp_path):
    calls = "for i in range(3):\n    print('at', i, flush=True)\n    crash_point('p')"
    assert _crash_in_subprocess(None, calls).stdout.endswith("survived\n")
    token = tmp_path / "token"
    armed = f"other:1:{tmp_path / 'other'},p:2:{token}"
    first = _crash_in_subprocess(armed, calls)
    assert first.returncode == faults.CRASH_EXIT_STATUS and first.stdout == "at 0\nat 1\n", first
    assert token.exists() and not (tmp_path / "other").exists()
    again = _crash_in_subprocess(armed, calls)  # a restarted process: the token says it fired already
    assert again.returncode == 0 and again.stdout.endswith("survived\n"), again
    bad = _crash_in_subprocess("p:0:x", "crash_point('p')")
    assert bad.returncode == 1 and "bad spec 'p:0:x'" in bad.stderr


# The other stores' crash points: a synthesis run never reaches them. tests/export/test_export_resume.py fires
# an export's, tests/pipeline/test_rescore.py rescore's; `store-withdrawn` is a unit put aside to be made again
# (an export whose source part changed), not a moment of a run.
OTHER_POINTS = {"export-part-files", "export-part-done", "rescore-scored", "store-withdrawn"}


def test_every_crash_point_in_the_code_is_drawn_here():
    named = set()
    for root, _, files in os.walk(os.path.join(helpers.REPO, "synth")):
        for name in (f for f in files if f.endswith(".py")):
            for node in ast.walk(ast.parse(open(os.path.join(root, name)).read())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "crash_point":
                    named.add(node.args[0].value)
    assert named == set(ACTOR_POINTS) | set(DRIVER_POINTS) | OTHER_POINTS


# -- one Ray cluster for every run -----------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU head node (as on CI) in its own session (`helpers.ray_head`); jobs join it through RAY_ADDRESS."""
    with helpers.ray_head() as head:
        yield head


def _pids_titled(session: int, title: bytes) -> list[int]:
    """Processes of the session whose command line starts with `title` (Ray retitles an actor's
    process `ray::SynthActor...`)."""
    found = []
    for pid in helpers.session_pids(session):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(title):
                    found.append(pid)
        except OSError:
            pass
    return found


def run_job(cluster, args: list[str], log_path: str, points: list[KillPoint]) -> tuple[int, str]:
    """Run the job to its end (or its crash), then wait until Ray has taken its actors down:
    a relaunch must not race a dead driver's actors (README, *Resuming*)."""
    env = {k: v for k, v in cluster["env"].items() if k != faults.ENV_VAR}
    if points:
        env[faults.ENV_VAR] = ",".join(p.spec for p in points)
    job = helpers.JobProcess(args, env, log_path)
    try:
        rc = job.finish(JOB_TIMEOUT_S)
    finally:
        job.kill()
    deadline = time.time() + 60
    while left := _pids_titled(cluster["session"], b"ray::SynthActor"):
        assert time.time() < deadline, f"actors {left} outlive their driver"
        time.sleep(0.1)
    assert _pids_titled(cluster["session"], RAYLET), (
        f"the module's Ray cluster died under the run (killed from outside: a `ray stop`?):\n{job.output()[-2000:]}")
    return rc, job.output()


# -- the output and its checks ------------------------------------------------------------


def new_output(directory: str) -> tuple[str, dict]:
    """An output directory holding the user's files (so the job must adopt it); returns it and
    what those files are now."""
    for name, data in USER_FILES.items():
        os.makedirs(os.path.dirname(os.path.join(directory, name)), exist_ok=True)
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return directory, user_files(directory)


def user_files(out: str) -> dict[str, tuple]:
    """Each user file's bytes, inode and mtime: a rewrite or a move changes one of them."""
    found = {}
    for name in USER_FILES:
        path = os.path.join(out, name)
        if os.path.exists(path):
            st = os.stat(path)
            found[name] = (open(path, "rb").read(), st.st_ino, st.st_mtime_ns)
    return found


def check_commits(out: str) -> int:
    """What any run must leave, crashed or not: every committed part matches its marker (sizes,
    sha256, rows) and no row id is committed twice. Returns how many part files no marker covers
    (a crash's leftovers, which the next run's clean-up deletes); nothing else may be wrong."""
    output = helpers.dataset_store(out)
    if recorded_plan(output) is None:  # killed before plan.json: nothing may be committed yet
        assert not os.path.exists(os.path.join(out, "_progress")), os.listdir(out)
        return 0
    report = verify_dataset(output)  # parts not committed yet (`missing`) are what a relaunch finishes
    wrong = [finding for finding in report.findings if UNCOVERED not in finding]
    assert not wrong, report.render()
    return len(report.findings) - len(wrong)


def check_finished(out: str, expected: list[str]) -> None:
    """After a run that exits 0: (b) every expected row id exactly once, (c) the dataset loads,
    (d) `synth verify` passes; and no temp file is left."""
    ds = helpers.load_output(out)
    repeated = {i: n for i, n in collections.Counter(ds["id"]).items() if n > 1}
    assert not repeated, f"row ids more than once: {repeated}"
    assert sorted(ds["id"]) == sorted(expected), f"missing {set(expected) - set(ds['id'])}"
    helpers.check_audio_rows(ds)
    verified = subprocess.run([sys.executable, "-m", "synth", "verify", out], cwd=helpers.REPO, capture_output=True,
                              text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    files = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs]
    assert not [f for f in files if storage.is_temp(f)], files
    assert '"shards_failed": {}' in open(os.path.join(out, RUN_RECORD)).read()


# -- drawing kill points ----------------------------------------------------------------------


def draw(rng: random.Random, token_dir: str, run: int, out: str, leftovers: int, cleaned_up: bool) -> list[KillPoint]:
    """The kill points of one run. Random: `ACTOR_POINTS_PER_RUN` actor points and one driver
    point. Two cases are steered so that clean-up has something to clean: while no crash has
    hit the clean-up, a run first tears a commit (its actor dies after a part's data, and the
    driver as that death reaches it, before the retry); a run that finds leftovers is killed
    while deleting them. Once every shard is done, none: a crash could only hit the start and
    the end of a run with nothing to do, so the run is a resume that must finish."""

    def point(name: str, hit: int) -> KillPoint:
        return KillPoint(name, hit, os.path.join(token_dir, f"run{run:02d}-{name}-{hit}"))

    if len(committed_parts(helpers.dataset_store(out))) == SHARDS * PARTS_PER_SHARD:
        return []
    if leftovers:
        return [point(CLEAN_UP, rng.randint(1, leftovers))]
    if not cleaned_up:
        return [point(TORN_COMMIT, 1), point("driver-result", RESULT_OF_FIRST_SHARD)]
    actor: dict[str, KillPoint] = {}
    while len(actor) < ACTOR_POINTS_PER_RUN:
        name = rng.choice(sorted(ACTOR_POINTS))
        chosen = point(name, rng.randint(1, ACTOR_POINTS[name]))
        actor[str(chosen)] = chosen
    name = rng.choice(sorted(set(DRIVER_POINTS) - {CLEAN_UP}))
    return [*actor.values(), point(name, rng.randint(1, DRIVER_POINTS[name]))]


def missing(fired: list[KillPoint]) -> list[str]:
    """What the fired kill points still lack."""
    names = {p.name for p in fired}
    return [what for what, ok in [
        (f"{MIN_KILLS} kill points", len(fired) >= MIN_KILLS),
        ("a driver point", any(p.in_driver for p in fired)),
        ("an actor point", any(not p.in_driver for p in fired)),
        (f"a torn commit ({TORN_COMMIT})", TORN_COMMIT in names),
        (f"a crash in the clean-up ({CLEAN_UP})", CLEAN_UP in names),
    ] if not ok]


# -- the test ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_seeded_kill_points_every_resume_ends_whole_and_untouched(cluster, tiny_checkpoint, speech_clip, tmp_path):
    rng = random.Random(SEED)
    manifest, expected = helpers.write_scripts_manifest(str(tmp_path / "in"), speech_clip, NUM_SCRIPTS)
    token_dir = str(tmp_path / "tokens")
    os.makedirs(token_dir)
    history: list[str] = []
    started = time.time()

    outputs = 0
    out, users = new_output(str(tmp_path / f"out{outputs}"))
    resumed = False  # whether the current output has had a run
    fired: list[KillPoint] = []
    leftovers = 0
    runs = 0

    def launch(points: list[KillPoint]) -> int:
        nonlocal runs
        runs += 1
        args = helpers.job_args(manifest, out, tiny_checkpoint, *SMALL_PARTS, "--adopt-output")
        t0 = time.time()
        rc, log = run_job(cluster, args, str(tmp_path / f"run{runs:02d}.log"), points)
        now = [p for p in points if p.fired]
        fired.extend(now)
        history.append(f"run {runs} on {os.path.basename(out)}: armed {[str(p) for p in points]}, "
                       f"fired {[str(p) for p in now]}, exit {rc}, {time.time() - t0:.1f} s")
        driver_died = rc == faults.CRASH_EXIT_STATUS
        # the driver dies at its one point that fires; otherwise it ends done, or with shards
        # that failed every attempt (too many of the actor's points hit one shard)
        assert len([p for p in now if p.in_driver]) == int(driver_died), log[-4000:]
        assert driver_died or rc == 0 or (rc == 1 and "FAILED after" in log), log[-4000:]
        assert points or rc == 0, f"a relaunch without kill points did not finish:\n{log[-4000:]}"
        assert user_files(out) == users, "the user's files changed"
        return rc

    try:
        while missing(fired) or resumed:  # and once nothing is missing, resume the last output to its end
            assert runs < MAX_RUNS, f"still missing {missing(fired)} after {runs} runs"
            cleaned_up = CLEAN_UP in {p.name for p in fired}
            rc = launch(draw(rng, token_dir, runs + 1, out, leftovers, cleaned_up) if missing(fired) else [])
            leftovers, resumed = check_commits(out), True
            if rc == 0:  # a resume that finished: the whole dataset, then a new output for the next runs
                check_finished(out, expected)
                outputs += 1
                out, users = new_output(str(tmp_path / f"out{outputs}"))
                leftovers, resumed = 0, False
    except AssertionError as e:
        raise AssertionError(f"{e}\nSYNTH_FAULT_SEED={SEED}; runs so far:\n" + "\n".join(history)) from None
    print(f"\n{len(fired)} kill points fired in {runs} runs on {outputs} output(s), {time.time() - started:.0f} s, "
          f"SYNTH_FAULT_SEED={SEED}:\n" + "\n".join(history))


# -- damage, changed input and refusals: every store's protocol, tried as an unlucky user would ----------
#
# One finished run output (`finished`) on the module's cluster, with the user's files in it, bad rows
# (an out-of-range value in every numeric column, two null ids) and the voice library's cache. Each
# test below works on a copy of it, or on its input, and never on the original.

BAD_ROWS = {  # id -> what its error row must say (an out-of-range value in every numeric column)
    "big-speaker": f"speaker must be at most {2**31 - 1}",
    "big-seed": "seed must be an integer from",
    "negative-cap": "max_audio_seconds must be a positive number",
    "infinite-cap": "max_audio_seconds must be a positive number",
}


def _bad_rows() -> list[dict]:
    line = {"speaker": 0, "text": "A line.", "audio": None}
    return [{"id": "big-speaker", "turns": [{**line, "speaker": 2**31}]},
            {"id": "big-seed", "seed": 2**63 - 1, "turns": [line, line]},
            {"id": "negative-cap", "max_audio_seconds": -1.0, "turns": [line]},
            {"id": "infinite-cap", "max_audio_seconds": float("inf"), "turns": [line]},
            {"id": None, "turns": [line]}, {"id": None, "turns": [line]}]  # null ids: bad rows, not duplicates


def _main(args: list[str], capsys) -> tuple[int, str]:
    """`synth ...` in this process: its exit status and what it printed (a traceback fails the test)."""
    from synth.cli import main

    rc = main(args)
    said = capsys.readouterr()
    return rc, said.out + said.err


def _tree(out: str) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(out) for f in fs}


@pytest.fixture(scope="module")
def finished(cluster, tiny_checkpoint, speech_clip, tmp_path_factory):
    """A finished run: its input directory, output, job arguments, the ids it must hold, the user's files."""
    from synth.pipeline.manifest import write_manifest

    work = tmp_path_factory.mktemp("finished")
    manifest, expected = helpers.write_scripts_manifest(str(work / "in"), speech_clip, 8)
    rows = pq.read_table(manifest).to_pylist()
    write_manifest(manifest, rows + _bad_rows())
    out, users = new_output(str(work / "out"))
    args = helpers.job_args(str(work / "in"), out, tiny_checkpoint, *SMALL_PARTS, "--adopt-output",
                            "--set", "job.max_error_rate=1.0")
    rc, log = run_job(cluster, args, str(work / "run.log"), [])
    assert rc == 0, log[-4000:]
    return {"input": str(work / "in"), "out": out, "args": args, "expected": expected, "users": users}


def _copy(finished, tmp_path) -> tuple[str, list[str]]:
    """A copy of the finished output, and the job arguments that write into it."""
    out = str(tmp_path / "out")
    shutil.copytree(finished["out"], out)
    args = [out if a == finished["out"] else a for a in finished["args"]]
    return out, args


def _check_whole(out: str, expected: list[str], users: dict, capsys) -> None:
    """Each id once, the dataset loading, the user's files as they were, `synth verify` finding nothing."""
    ds = helpers.load_output(out)
    helpers.assert_exactly_once(ds["id"], expected)
    assert {k: v[0] for k, v in user_files(out).items()} == {k: v[0] for k, v in users.items()}, "user files changed"
    rc, said = _main(["verify", out], capsys)
    assert rc == 0, said


@pytest.mark.slow
def test_bad_values_are_error_rows_and_cost_no_good_row(finished, capsys):
    rows = [r for f in sorted(glob.glob(os.path.join(finished["out"], "errors", "*.parquet")))
            for r in pq.read_table(f).to_pylist()]  # errors/ also holds the user's README.txt
    errors = {e["id"]: e for e in rows}
    for script, reason in BAD_ROWS.items():
        assert reason in errors[script]["reason"], errors.get(script)
    assert [e["id"] for e in rows if e["id"] is None] == [None, None]
    _check_whole(finished["out"], finished["expected"], finished["users"], capsys)


@pytest.mark.slow
def test_every_damage_at_once_is_found_by_verify_and_repaired_by_a_relaunch(cluster, finished, tmp_path, capsys):
    import numpy as np

    from synth.pipeline.output import PLAN_RECORD, data_file, part_name
    from synth.store.layout import LEASE_FILE, QUARANTINE_DIR, marker_file

    out, args = _copy(finished, tmp_path)
    marker = lambda shard, part: os.path.join(out, marker_file(part_name(shard, part)))  # noqa: E731
    with open(marker(0, 1), "r+b") as f:
        f.truncate(30)  # a part marker cut short
    with open(marker(0, 3), "wb") as f:
        f.write(b"\xff\xfe\x00 not a marker")  # garbled
    for name in os.listdir(os.path.join(out, "_progress")):  # a whole shard gone, data and markers
        if name.startswith("shard-00001-"):
            os.remove(os.path.join(out, "_progress", name))
    for path in glob.glob(os.path.join(out, "*", "shard-00001-part-*.parquet")):
        os.remove(path)
    damaged = os.path.join(out, data_file(0, 2))
    with open(damaged, "r+b") as f:
        f.truncate(os.path.getsize(damaged) // 2)  # a committed data file cut short
    (voice,) = glob.glob(os.path.join(out, "_voices", "*.npy"))[:1]
    original_voice = open(voice, "rb").read()
    codes = np.load(voice)
    np.save(voice, (codes + 1) % 2048)  # other valid codes of the same size: only the checksum tells
    assert os.path.getsize(voice) == len(original_voice)
    plan = open(os.path.join(out, PLAN_RECORD), "rb").read()
    open(os.path.join(out, PLAN_RECORD), "wb").write(plan[:40])  # the identity cut short
    open(os.path.join(out, LEASE_FILE), "wb").write(b"\x9c\x00 torn")  # a lease no one can read

    rc, said = _main(["verify", out, "--sizes-only"], capsys)
    assert rc == 1 and "Traceback" not in said, said
    for part in (part_name(0, 1), part_name(0, 3)):
        assert f"{part}: its marker is damaged" in said
    assert f"{data_file(0, 2)} has " in said and "plan.json is damaged" in said, said  # so no plan to miss parts by

    rc, log = run_job(cluster, args, str(tmp_path / "relaunch.log"), [])
    assert rc == 0 and "Traceback" not in log, log[-4000:]
    assert "took over the lease" in log and "from a damaged holder" in log
    assert "plan.json was damaged; rewrote it" in log
    assert log.count("VERIFY FAILED") >= 4, log[-4000:]  # two markers, the data file, the voice
    assert open(voice, "rb").read() == original_voice  # encoded again, the same codes
    quarantined = [os.path.relpath(p, out) for p in glob.glob(os.path.join(out, QUARANTINE_DIR, "*", "_voices", "*"))]
    assert len(quarantined) == 1  # the tampered cache, kept for inspection
    _check_whole(out, finished["expected"], finished["users"], capsys)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["reordered", "edited", "grown", "new file", "voice clip"])
def test_changed_input_is_refused_naming_the_file_even_with_allow_changes(finished, tmp_path, capsys, change):
    from synth.pipeline.manifest import write_manifest

    out, args = _copy(finished, tmp_path)
    before = _tree(out)
    source = shutil.copytree(finished["input"], tmp_path / "in")
    manifest = str(source / "manifest.parquet")
    rows = pq.read_table(manifest).to_pylist()
    expect = {"reordered": "its content differs (sha256)",
              "edited": "its content differs (sha256)",
              "grown": f"manifest.parquet: num_rows {len(rows)} -> {len(rows) + 1}",
              "new file": "more.parquet: a new file, not in the plan",
              "voice clip": "an input that shapes every row changed (a voice's reference clip, the lexicon), "
                            "not even with --allow-changes (inputs.voices.narrator: was"}[change]
    if change == "reordered":
        write_manifest(manifest, rows[1:] + rows[:1])
    elif change == "edited":
        rows[0]["turns"][-1]["text"] = "Edited after the run."
        write_manifest(manifest, rows)
    elif change == "grown":
        write_manifest(manifest, rows + [{"id": "late", "turns": [{"speaker": 0, "text": "Late."}]}])
    elif change == "new file":
        write_manifest(str(source / "more.parquet"), [{"id": "late", "turns": [{"speaker": 0, "text": "Late."}]}])
    args = [str(source) if a == finished["input"] else a for a in args]
    if change == "voice clip":
        clip = tmp_path / "narrator.wav"
        shutil.copy(os.path.join(helpers.REPO, "examples/voices/narrator.wav"), clip)
        with open(clip, "r+b") as f:
            f.seek(-10, os.SEEK_END)
            f.write(b"\x01" * 10)
        args += ["--set", f"voices.narrator.audio={clip}"]
    rc, said = _main(["run", *args[1:], "--allow-changes"], capsys)  # args[0] is the job script
    assert rc == 2 and said.startswith("error: ") and expect in said, said
    assert "manifest.parquet" in said or change != "reordered"
    assert _tree(out) == before  # refused before anything was written


@pytest.mark.slow
def test_what_the_store_cannot_take_is_refused_with_a_message_never_a_traceback(finished, tmp_path, capsys):
    from synth.export.destination import EXPORT
    from synth.pipeline.output import part_name
    from synth.store.layout import LEASE_FILE, marker_file
    from synth.store.store import Store

    job = ["run", *finished["args"][1:]]
    out_at = job.index("--output") + 1

    def launch(output: str, *extra: str) -> tuple[int, str]:
        return _main([*job[:out_at], output, *job[out_at + 1:], *extra], capsys)

    (tmp_path / "file").write_text("mine")
    rc, said = launch(str(tmp_path / "file" / "sub"))  # --output FILE/sub
    assert rc == 2 and "is a file, so nothing can be written under it" in said, said
    Store.at_uri(str(tmp_path / "export"), EXPORT).claim()
    rc, said = launch(str(tmp_path / "export"))  # a run into an export's directory
    assert rc == 2 and "is a synth export store, and `synth run` writes only its own kind" in said, said
    assert sorted(os.listdir(tmp_path / "export")) == ["_synth.json"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "run.json").write_text("my own records")
    (mine / "report.html").write_text("<p>mine</p>")
    rc, said = launch(str(mine))  # --adopt-output is in the job's arguments
    assert rc == 2 and "names synth would write (report.html, run.json)" in said, said
    assert sorted(os.listdir(mine)) == ["report.html", "run.json"] and (mine / "run.json").read_text() == "my own records"
    out, _ = _copy(finished, tmp_path)
    os.makedirs(os.path.join(out, LEASE_FILE))
    rc, said = launch(out)
    assert rc == 2 and "_lease.json is a directory, not synth's lease file" in said, said
    os.rmdir(os.path.join(out, LEASE_FILE))
    with open(os.path.join(out, marker_file(part_name(0, 0))), "wb") as f:
        f.write(b"{")  # a source part whose marker is damaged: an export says so and exports nothing
    rc, said = _main(["export", out, "--format", "nemo", "--to", str(tmp_path / "nemo")], capsys)
    assert rc == 2 and f"the marker of part {part_name(0, 0)} is damaged" in said, said
    rc, said = _main(["export", finished["out"], "--format", "nemo", "--to", str(tmp_path / "file" / "x")], capsys)
    assert rc == 2 and "is a file, so nothing can be written under it" in said, said
