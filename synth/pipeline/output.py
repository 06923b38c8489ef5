"""A dataset store: every name in a synth dataset, what its units hold, and a run's identity.

`synth run`, `synth book` and `synth import` write datasets: stores (`synth.store`) of the
kinds `run`, `book` and `import`, one layout. Besides the store's own records
(`_synth.json`, `_lease.json`, `_progress/<unit>.json` markers, `_quarantine/`):

    OUT/data/shard-00003-part-0001.parquet     one row per generated turn          } unit shard-00003-part-0001
    OUT/errors/shard-00003-part-0001.parquet   one row per bad manifest row or turn } (a part: the rows of
    OUT/takes/shard-00003-part-0001.parquet    one row per rejected take (QC on)    }  `commit_every_scripts`
    OUT/wav/00003/<script>-<turn>.wav           the same audio as files (or flac/) }  scripts of shard 3)
    OUT/_voices/<content hash>.npy             a voice's codes, encoded once        unit voice-<hash>
    OUT/qc/<part or file stem>.parquet         metrics of an existing dataset      unit qc-<stem> (`synth rescore`)
    OUT/book/manifest.parquet                  a book's passages as a manifest      unit book-manifest
    OUT/chapters/chapter-001.{wav,json,...}    a book's chapter                     unit chapter-001
    OUT/book.m4b                               the whole book                       unit book-m4b
    OUT/plan.json                              the identity: the plan (inputs fingerprinted) and settings
    OUT/run.json                               the last run's summary
    OUT/README.md                              the dataset card (README.synth.md if README.md is the user's)
    OUT/report.html                            the run report

Every name is a pure function of the shard and part (or the voice, file, chapter), so a
relaunch writes the same names; a part counts only once its marker exists and its files
match it (`synth.store.recovery`). This module owns those names, `PartCommit` (what a
part's marker says), committing a part (`commit_part`), reading the committed parts of a
dataset, and `run_identity` (plan.json's content). It knows nothing about the rows' fields
(`synth.pipeline.record`) or Parquet (`synth.pipeline.writer`), models or Ray.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

from synth.pipeline.config import SynthConfig
from synth.pipeline.plan import Plan, Shard
from synth.pipeline.record import DATA_SCHEMA  # the version of data/'s fields, which plan.json records
from synth.store.faults import crash_point
from synth.store.layout import Layout
from synth.store.marker import Damaged, FileRecord, Marker
from synth.store.store import Store

# -- the layout: paths relative to OUT ------------------------------------------------

DATA_DIR = "data"
ERRORS_DIR = "errors"
TAKES_DIR = "takes"
SCORES_DIR = "qc"
VOICES_DIR = "_voices"
AUDIO_DIRS = ("wav", "flac")  # one per output.audio_format
PLAN_RECORD = "plan.json"
RUN_RECORD = "run.json"
CARD_FILE = "README.md"  # the dataset card (synth.export.card), rewritten only when synth wrote it
CARD_FILE_ASIDE = "README.synth.md"  # the card, when README.md is the user's own
REPORT_FILE = "report.html"  # the run report (synth.export.report)
BOOK_MANIFEST = "book/manifest.parquet"
BOOK_M4B = "book.m4b"
CHAPTERS_DIR = "chapters"
CHAPTER_SUFFIXES = ("wav", "flac", "mp3", "json", "srt", "vtt")

_PART = r"shard-(\d{5,})-part-(\d{4,})"
PART_UNIT = re.compile(_PART)  # a part's unit name: (shard, part)
_UNIT_FILES = (
    rf"(?:{DATA_DIR}|{ERRORS_DIR}|{TAKES_DIR})/{_PART}\.parquet"
    rf"|(?:{'|'.join(AUDIO_DIRS)})/\d{{5,}}/[A-Za-z0-9._-]+-\d{{3,}}\.(?:{'|'.join(AUDIO_DIRS)})"
    rf"|{VOICES_DIR}/[0-9a-f]{{64}}\.npy"
    rf"|{SCORES_DIR}/[A-Za-z0-9._-]+\.parquet"
    rf"|{re.escape(BOOK_MANIFEST)}|{re.escape(BOOK_M4B)}"
    rf"|{CHAPTERS_DIR}/chapter-\d{{3,}}\.(?:{'|'.join(CHAPTER_SUFFIXES)})"
)

# The kinds of dataset store: a run's output, a book's render, an import of recordings.
RUN = Layout(kind="run", identity_file=PLAN_RECORD, unit_files=_UNIT_FILES,
             records=(RUN_RECORD, CARD_FILE, CARD_FILE_ASIDE, REPORT_FILE),
             hashed=rf"{VOICES_DIR}/.*|{re.escape(BOOK_MANIFEST)}", large_dirs=AUDIO_DIRS,
             adopt_option="--adopt-output", card_file=CARD_FILE)
BOOK = replace(RUN, kind="book")
IMPORT = replace(RUN, kind="import")
DATASET_KINDS = {layout.kind: layout for layout in (RUN, BOOK, IMPORT)}


def part_name(shard: int, part: int) -> str:
    """A part's unit name: the stem shared by its data file, errors file and marker."""
    return f"shard-{shard:05d}-part-{part:04d}"


def parsed_part(unit: str) -> tuple[int, int] | None:
    """(shard, part) of a part's unit name; None for any other unit."""
    match = PART_UNIT.fullmatch(unit)
    return (int(match.group(1)), int(match.group(2))) if match else None


def data_file(shard: int, part: int) -> str:
    return f"{DATA_DIR}/{part_name(shard, part)}.parquet"


def errors_file(shard: int, part: int) -> str:
    return f"{ERRORS_DIR}/{part_name(shard, part)}.parquet"


def takes_file(shard: int, part: int) -> str:
    return f"{TAKES_DIR}/{part_name(shard, part)}.parquet"


def scores_file(stem: str) -> str:
    """Where `synth rescore` writes the metrics of one input file (by its stem: a part's name)."""
    return f"{SCORES_DIR}/{safe_name(stem)}.parquet"


def scores_unit(stem: str) -> str:
    return f"qc-{safe_name(stem)}"


def audio_file(shard: int, script_id: str, turn: int, audio_format: str) -> str:
    """A clip's file: deterministic, one per (script, turn); the row's `audio.path`."""
    return f"{audio_format}/{shard:05d}/{safe_name(script_id)}-{turn:03d}.{audio_format}"


def voice_codes_file(clip_key: str) -> str:
    """Where a voice reference's codes are cached, by the clip's content hash."""
    return f"{VOICES_DIR}/{clip_key}.npy"


def voice_unit(clip_key: str) -> str:
    return f"voice-{clip_key}"


def safe_name(script_id: str) -> str:
    """A filesystem-safe, collision-free file stem for a script id."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", script_id)[:80]
    if slug == script_id:
        return slug
    return f"{slug}-{hashlib.sha1(script_id.encode()).hexdigest()[:8]}"


def part_units(plan: Plan) -> list[str]:
    """Every part the plan's shards commit: the units a finished run holds."""
    return [part_name(shard.index, part) for shard in plan.shards for part in range(plan.parts_of(shard))]


# -- what markers hold ----------------------------------------------------------------


@dataclass(frozen=True)
class PartCommit:
    """What a committed part holds; stored in its marker.

    files: every file of the part with its size and checksum. qc: the part's QC totals
    (`synth.pipeline.retakes.QcCounts`); empty without QC. run_id, settings: the run that
    committed it and the hash of the settings it was made with (plan.json's history)."""

    shard: int
    part: int
    rows: int
    errors: int
    audio_seconds: float
    scripts: int
    error_scripts: int
    files: tuple[FileRecord, ...] = ()
    qc: dict = field(default_factory=dict)
    run_id: str | None = None
    settings: str | None = None

    def meta(self) -> dict:
        """The marker's own fields (the store adds the files, run and settings)."""
        return {k: v for k, v in asdict(self).items() if k not in ("files", "run_id", "settings")}

    @classmethod
    def from_marker(cls, marker: Marker) -> "PartCommit":
        """The commit a part's marker records; raises Damaged when its fields are not a part's."""
        names = {"shard", "part", "rows", "errors", "audio_seconds", "scripts", "error_scripts", "qc"}
        try:
            fields = {k: v for k, v in marker.meta.items() if k in names}
            commit = cls(**fields, files=marker.files, run_id=marker.run_id, settings=marker.settings)
            ints = (commit.shard, commit.part, commit.rows, commit.errors, commit.scripts, commit.error_scripts)
            assert all(isinstance(v, int) and v >= 0 for v in ints) and isinstance(commit.qc, dict)
            assert isinstance(commit.audio_seconds, (int, float)) and commit.audio_seconds >= 0
        except (TypeError, AssertionError):
            raise Damaged(f"its fields are not a part's ({sorted(marker.meta)[:8]})") from None
        if part_name(commit.shard, commit.part) != marker.unit:
            raise Damaged(f"it names part {part_name(commit.shard, commit.part)}")
        return commit


def accept_part(marker: Marker) -> str | None:
    """The dataset's check of a sound marker (`synth.store.recovery.Accept`): a part's marker must
    hold a part's fields and list only its own files."""
    if parsed_part(marker.unit) is None:
        return None
    try:
        commit = PartCommit.from_marker(marker)
    except Damaged as e:
        return f"its marker is damaged: {e}"
    own = {data_file(commit.shard, commit.part), errors_file(commit.shard, commit.part),
           takes_file(commit.shard, commit.part)}
    strangers = [f.path for f in marker.files if f.path not in own and
                 not any(f.path.startswith(f"{d}/{commit.shard:05d}/") for d in AUDIO_DIRS)]
    return f"its marker lists files of another part ({strangers[0]})" if strangers else None


@dataclass(frozen=True)
class PartFiles:
    """A part's files as bytes, ready to commit; `commit` is what its marker will hold."""

    commit: PartCommit
    data: bytes | None  # data/<part>.parquet; None when the part has no rows
    errors: bytes | None  # errors/<part>.parquet; None when it has no error rows
    takes: bytes | None = None  # takes/<part>.parquet; None when no take was rejected
    audio: tuple[tuple[str, bytes], ...] = ()  # (path under OUT, bytes) of each clip file


def commit_part(store: Store, files: PartFiles) -> PartCommit:
    """Write a part's audio files, errors and data, then its marker (last, under the lease)."""
    shard, part = files.commit.shard, files.commit.part
    tables = [(path, data) for path, data in ((errors_file(shard, part), files.errors),
                                              (takes_file(shard, part), files.takes),
                                              (data_file(shard, part), files.data)) if data is not None]
    records = [store.write(path, data) for path, data in files.audio]
    crash_point("commit-audio")
    records += [store.write(path, data) for path, data in tables]
    crash_point("commit-data")  # the torn commit: the part's files are whole, its marker missing
    marker = store.commit(part_name(shard, part), records, files.commit.meta())
    crash_point("commit-marker")
    return PartCommit.from_marker(marker)


@dataclass(frozen=True)
class ShardSummary:
    """What a done shard holds: the sum of its parts, and the parts' own records."""

    shard: int
    rows: int
    errors: int
    error_scripts: int
    scripts: int
    audio_seconds: float
    voice_encodes: int = 0  # voices the shard's actor had to encode: 0 unless OUT/_voices lacked one
    parts: tuple[PartCommit, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, shard: int, commits: Iterable[PartCommit], voice_encodes: int = 0) -> "ShardSummary":
        commits = tuple(commits)
        return cls(
            shard=shard,
            rows=sum(c.rows for c in commits),
            errors=sum(c.errors for c in commits),
            error_scripts=sum(c.error_scripts for c in commits),
            scripts=sum(c.scripts for c in commits),
            audio_seconds=sum(c.audio_seconds for c in commits),
            voice_encodes=voice_encodes,
            parts=commits,
        )


def done_shards(plan: Plan, parts: dict[tuple[int, int], PartCommit]) -> dict[int, ShardSummary]:
    """The shards of the plan whose every part is among `parts` (trusted commits), summed."""
    done = {}
    for shard in plan.shards:
        commits = [parts.get((shard.index, p)) for p in range(plan.parts_of(shard))]
        if all(c is not None for c in commits):
            done[shard.index] = ShardSummary.of(shard.index, commits)
    return done


def shard_parts(shard: Shard, plan: Plan, parts: dict[tuple[int, int], PartCommit]) -> list[PartCommit]:
    """The committed parts of one shard, in order."""
    return [parts[(shard.index, p)] for p in range(plan.parts_of(shard)) if (shard.index, p) in parts]


# -- reading a dataset ------------------------------------------------------------------


def dataset_store(uri: str, what: str) -> Store:
    """A dataset (run output, book render, import) to read, opened as its kind's store; anything
    else is a StoreError saying that `what` needs a dataset."""
    kind = Store.at_uri(uri, RUN).open_existing(DATASET_KINDS, what)
    return Store.at_uri(uri, DATASET_KINDS[kind])


def committed_parts(store: Store, *, strict: bool = True) -> dict[tuple[int, int], PartCommit]:
    """(shard, part) -> the commit of every part with a sound marker. A damaged marker is a
    StoreError when `strict` (a reader must not silently lose its rows), else skipped."""
    from synth.store.errors import StoreError

    found = {}
    for unit, marker in store.markers().items():
        if parsed_part(unit) is None:
            continue
        try:
            if isinstance(marker, Damaged):
                raise marker
            commit = PartCommit.from_marker(marker)
        except Damaged as e:
            if strict:
                raise StoreError(f"{store.uri}: the marker of part {unit} is damaged ({e}): its rows cannot be "
                                 "trusted. `synth verify` lists what is wrong; running the command that wrote the "
                                 "dataset again repairs it (the part is made again).") from None
            continue
        found[(commit.shard, commit.part)] = commit
    return found


def read_data_part(store: Store, shard: int, part: int, sha256: str) -> bytes:
    """A committed data part's bytes, only if they are the ones its marker recorded (`sha256`): a
    command that reads a dataset never trusts a part that was changed after synth committed it."""
    from synth.store.errors import StoreError

    path = data_file(shard, part)
    data = store.read(path)
    if hashlib.sha256(data).hexdigest() != sha256:
        raise StoreError(f"{store.at(path).uri} is not what its marker recorded (changed or damaged since it was "
                         "committed): its rows cannot be trusted. `synth verify` lists what is wrong; running the "
                         "command that wrote the dataset again makes the part again.")
    return data


def data_files(store: Store) -> list[str]:
    """Paths (in the store's filesystem) of the committed data parts, in order."""
    return [store.at(data_file(s, p)).path for (s, p), c in sorted(committed_parts(store).items()) if c.rows]


def recorded_plan(store: Store) -> Plan | None:
    """The plan in plan.json, or None before the first run."""
    identity = store.identity()
    return Plan.from_dict(identity["plan"]) if identity and "plan" in identity else None


# -- the run record -------------------------------------------------------------------

# What can never change between a run and its relaunch (not even with --allow-changes), and why.
FIXED = {
    "data_schema": "the output was written with the data columns of another synth version: parts of both would "
                   "not load as one dataset, so it cannot be continued, not even with --allow-changes (finish it "
                   "with the synth version that started it)",
    "context_from": "its turns were conditioned on context from another source (generation.context_from): a "
                    "script's turns would be conditioned two ways in one dataset, not even with --allow-changes",
    "plan": "the input or its plan changed (checked first, naming the file)",
    "inputs": "an input that shapes every row changed (a voice's reference clip, the lexicon), not even with "
              "--allow-changes",
}


def run_identity(config: SynthConfig, plan: Plan, inputs: dict | None = None) -> dict:
    """What must not change between a run and its relaunch on the same output (plan.json).
    inputs: fingerprints of the files besides the manifest that shape every row (voices, lexicon)."""
    return {
        "data_schema": DATA_SCHEMA,
        "model": config.model.resolved_id,
        "engine": config.model.engine,
        "dtype": config.model.dtype,
        "sampling": config.sampling.model_dump(),
        # the fast engine's sizes and stops under `generation`, where they were named before, so an output
        # begun with an older config continues: the recorded settings keep their layout
        "generation": {**config.generation.model_dump(exclude={"context_from"}), **config.fast_engine.recorded()},
        "context_from": config.context_from,
        # (a watermark left at null is left out: outputs made before the setting existed continue as they were)
        "output": config.output.model_dump(exclude={"commit_every_scripts", "scripts_per_shard"} | (
            {"watermark"} if config.output.watermark is None else set())),
        "voices": {name: voice.model_dump() for name, voice in config.voices.items()},
        "text": config.text.model_dump(),
        "qc": config.qc.identity(),
        "inputs": inputs or {},
        "plan": plan.to_dict(),
    }
