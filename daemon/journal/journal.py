"""The job journal: every job's state in SQLite (WAL), so a crash never loses or repeats work.

A job moves through ``queued → running [→ dispatched] → writing → written → done`` (or ``failed`` /
``deferred`` / ``interrupted``). The two states around the output files are what make a
``kill -9`` at any instant harmless:

* ``writing`` is committed, with the planned output paths, *before* the first output file is
  renamed into place. If the process dies now, recovery deletes whatever of that group made it
  into the outbox and the job runs again from scratch: no half batch, no ``-1`` copy.
* ``written`` is committed once every output is in place. If the process dies before the
  input was archived, recovery archives it instead of painting it again.
* ``failing`` (with the reason) is committed before a failed input and its companions move
  to ``_failed``; recovery finishes the move and writes the report if it is missing.

Readers (``img2imgd status``) open the database read-only while the daemon writes: WAL lets
them see the last committed state without blocking the daemon.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from daemon.intake.jobs import Job, JobStatus

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY,
    profile     TEXT NOT NULL,
    label       TEXT NOT NULL,     -- profile/sub-path/name, for people
    inputs      TEXT NOT NULL,     -- JSON list of absolute input paths (image first)
    image_size  INTEGER,           -- identify the same file after a restart
    image_mtime INTEGER,
    state       TEXT NOT NULL,
    attempt     INTEGER NOT NULL DEFAULT 0,
    outputs     TEXT NOT NULL DEFAULT '[]',
    reason      TEXT NOT NULL DEFAULT '',
    queued_at   REAL NOT NULL,
    started_at  REAL,
    finished_at REAL,
    seconds     REAL,
    worker      TEXT NOT NULL DEFAULT '',  -- the render worker it was sent to (executor: ray)
    frames      INTEGER            -- a video's frames (its share of the work); NULL: one image
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
CREATE TABLE IF NOT EXISTS live (
    image       TEXT PRIMARY KEY,  -- a live input's absolute path
    digest      TEXT NOT NULL,     -- its content (image, companions, settings) last rendered
    seed        INTEGER NOT NULL   -- the seed it renders with, kept across edits
);
"""
# States in which a job was in hand when the process stopped.
UNFINISHED = (
    JobStatus.QUEUED,
    JobStatus.RUNNING,
    JobStatus.DISPATCHED,
    JobStatus.WRITING,
    JobStatus.WRITTEN,
    JobStatus.FAILING,
)
KEEP_FINISHED = 10_000  # rows of finished jobs kept for `status`; older ones are pruned


@dataclass(frozen=True)
class Entry:
    id: int
    profile: str
    label: str
    inputs: tuple[Path, ...]
    image_size: int | None
    image_mtime: int | None
    state: JobStatus
    attempt: int
    outputs: tuple[Path, ...]
    reason: str
    queued_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float | None
    worker: str = ""
    frames: int | None = None  # a video's; None for an image

    @property
    def images(self) -> int:
        """Its share of the work: a video counts its frames, anything else counts one."""
        return self.frames or 1

    def image_unchanged(self) -> bool:
        """True when the image recorded is still in the inbox, as it was."""
        try:
            st = self.inputs[0].lstat()
        except OSError:
            return False
        return (st.st_size, st.st_mtime_ns) == (self.image_size, self.image_mtime)


class Journal:
    """Thread-safe: the main loop records queued jobs, the worker the rest.

    Made closed, so that the daemon can hand it to its parts when it builds them; the daemon
    opens it in ``start()``, once it holds the state folder's lock, and closes it at stop.
    Used while closed, it raises (a record that went nowhere would break "exactly once").
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def open(self) -> Journal:
        if self.read_only:
            target, uri = f"file:{self.path}?mode=ro", True
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target, uri = str(self.path), False
        db = sqlite3.connect(target, uri=uri, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        if not self.read_only:
            _prepare(db)
        with self._lock:
            self._db = db
        return self

    def close(self, *, prune: bool = False) -> None:
        """`prune`: first drop the oldest finished rows, if it is open (the daemon's stop)."""
        if prune and self._db is not None:
            self.prune()
        with self._lock:
            db, self._db = self._db, None
        if db is not None:
            db.close()

    def _run(self, sql: str, *args: object) -> sqlite3.Cursor:
        with self._lock:
            return self._open().execute(sql, args)

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the journal {self.path} is not open")
        return self._db

    # ----------------------------------------------------------------- the daemon writes

    def queued(self, job: Job, *, frames: int | None = None) -> int:
        size: int | None = None
        mtime: int | None = None
        try:
            st = job.image.lstat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            pass  # gone already; recovery will simply not find it
        cursor = self._run(
            "INSERT INTO jobs (profile, label, inputs, image_size, image_mtime, state, attempt,"
            " queued_at, frames) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            job.profile, job.label, json.dumps([str(p) for p in job.inputs]), size, mtime,
            JobStatus.QUEUED.value, job.attempt, time.time(), frames,
        )  # fmt: skip
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def running(self, row: int) -> None:
        self._set(row, JobStatus.RUNNING, started_at=time.time())

    def frames(self, row: int, frames: int) -> None:
        """A video's exact frame count, once it is known (its share of the work)."""
        self._run("UPDATE jobs SET frames = ? WHERE id = ?", frames, row)

    def dispatched(self, row: int, worker: str) -> None:
        self._set(row, JobStatus.DISPATCHED, worker=worker)

    def writing(self, row: int, outputs: list[Path]) -> None:
        self._set(row, JobStatus.WRITING, outputs=json.dumps([str(p) for p in outputs]))

    def written(self, row: int) -> None:
        self._set(row, JobStatus.WRITTEN)

    def failing(self, row: int, reason: str) -> None:
        """The input is being moved to _failed: recovery finishes the move and the report."""
        self._set(row, JobStatus.FAILING, reason=reason)

    def finished(
        self, row: int, state: JobStatus, *, reason: str = "", seconds: float | None = None
    ) -> None:
        self._set(row, state, reason=reason, finished_at=time.time(), seconds=seconds)

    def _set(self, row: int, state: JobStatus, **columns: object) -> None:
        names = ", ".join(f"{name} = ?" for name in columns)
        sql = f"UPDATE jobs SET state = ?{', ' + names if names else ''} WHERE id = ?"
        self._run(sql, state.value, *columns.values(), row)

    def live_state(self, image: Path) -> tuple[str, int] | None:
        """A live input's last rendered content digest and its kept seed."""
        row = self._run("SELECT digest, seed FROM live WHERE image = ?", str(image)).fetchone()
        return (row["digest"], row["seed"]) if row else None

    def live_rendered(self, image: Path, digest: str, seed: int) -> None:
        self._run(
            "INSERT INTO live (image, digest, seed) VALUES (?, ?, ?) ON CONFLICT(image)"
            " DO UPDATE SET digest = excluded.digest, seed = excluded.seed",
            str(image), digest, seed,
        )  # fmt: skip

    def unfinished(self) -> list[Entry]:
        placeholders = ", ".join("?" for _ in UNFINISHED)
        return self._entries(
            f"SELECT * FROM jobs WHERE state IN ({placeholders}) ORDER BY id",
            *(state.value for state in UNFINISHED),
        )

    def prune(self, keep: int = KEEP_FINISHED) -> None:
        self._run(
            "DELETE FROM jobs WHERE finished_at IS NOT NULL"
            " AND id <= (SELECT MAX(id) FROM jobs) - ?",
            keep,
        )

    # ----------------------------------------------------------------- anyone reads

    def recent(
        self, limit: int = 10, *, states: tuple[JobStatus, ...] | None = None
    ) -> list[Entry]:
        if states:
            marks = ", ".join("?" for _ in states)
            return self._entries(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?",
                *(state.value for state in states), limit,
            )  # fmt: skip
        return self._entries("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", limit)

    def counts(self, since: float = 0.0) -> dict[str, int]:
        rows = self._run(
            "SELECT state, COUNT(*) FROM jobs WHERE queued_at >= ? GROUP BY state", since
        ).fetchall()
        return {state: count for state, count in rows}

    def _entries(self, sql: str, *args: object) -> list[Entry]:
        with self._lock:
            rows = self._open().execute(sql, args).fetchall()
        return [_entry(row) for row in rows]

    def has_schema(self) -> bool:
        with self._lock:
            found = (
                self._open()
                .execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'jobs'")
                .fetchone()
            )
        return found is not None


def _prepare(db: sqlite3.Connection) -> None:
    """The writer's settings, the tables, and the columns that older journals lack."""
    db.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed `writing` row must survive a power cut, or recovery could not know
    # which outputs were half-written.
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
    if "worker" not in columns:  # a journal from before executor: ray
        db.execute("ALTER TABLE jobs ADD COLUMN worker TEXT NOT NULL DEFAULT ''")
    if "frames" not in columns:  # a journal from before videos were counted by frame
        db.execute("ALTER TABLE jobs ADD COLUMN frames INTEGER")


def _entry(row: sqlite3.Row) -> Entry:
    return Entry(
        id=row["id"],
        profile=row["profile"],
        label=row["label"],
        inputs=tuple(Path(p) for p in json.loads(row["inputs"])),
        image_size=row["image_size"],
        image_mtime=row["image_mtime"],
        state=JobStatus(row["state"]),
        attempt=row["attempt"],
        outputs=tuple(Path(p) for p in json.loads(row["outputs"])),
        reason=row["reason"],
        queued_at=row["queued_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        seconds=row["seconds"],
        worker=row["worker"] if "worker" in row.keys() else "",  # noqa: SIM118
        frames=row["frames"] if "frames" in row.keys() else None,  # noqa: SIM118
    )


def open_read_only(path: Path) -> Journal | None:
    """The journal for reading while a daemon may be writing it; None when there is none."""
    if not path.exists():
        return None
    journal = Journal(path, read_only=True).open()
    if not journal.has_schema():  # the daemon is creating it right now
        journal.close()
        return None
    return journal
