"""The journal's schema and its migrations, its rows and the decision made of each
(:func:`resume_action`), and what every query uses: the connection, its lock, its
transactions, the ledger's booking (see :mod:`batchgen.store.journal`)."""

from __future__ import annotations

import enum
import hashlib
import json
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import DEFAULT_JOB_ATTEMPTS
from ...ledger import SCALE
from ..faults import storage_faults
from ..files import NotRegularFile

JOURNAL_NAME = "journal.sqlite3"
SCHEMA_VERSION = 3
# A job that ended in status "failure" costs money each time: after this many, the
# unit is a permanent failure, retried only with --retry-failed.
FAILED_JOB_LIMIT = DEFAULT_JOB_ATTEMPTS

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    job_id TEXT,
    submit_started TEXT,
    job_status TEXT,
    failed_jobs INTEGER NOT NULL DEFAULT 0,
    permanent INTEGER NOT NULL DEFAULT 0,
    cost REAL,
    error TEXT,
    files TEXT,
    result TEXT,
    updated REAL NOT NULL,
    sent TEXT,
    result_seq INTEGER,
    shown INTEGER NOT NULL DEFAULT 0,
    shape TEXT
);
-- Every job ever assigned to a unit, also after the unit moved on to a new one: a
-- lost answer must never adopt a job that is already someone's.  cost: what the API
-- charged (NULL: not known); status: the last it was seen in; refundable: whether a
-- failure is refunded (its billing's disableRefund).
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, unit_id TEXT NOT NULL, cost REAL, status TEXT,
    refundable INTEGER NOT NULL DEFAULT 1
);
-- A unit's jobs, read for each results line (its cost): without it, a scan of every job.
CREATE INDEX IF NOT EXISTS jobs_unit ON jobs (unit_id);
-- The money (see batchgen.ledger): each change to what a job costs the account, in
-- thousandths of a creative unit, booked to the run that learned it.
CREATE TABLE IF NOT EXISTS ledger (
    seq INTEGER PRIMARY KEY, run INTEGER NOT NULL, job_id TEXT NOT NULL, amount INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_job ON ledger (job_id);
-- Each image the quality gate was asked about (by its asset id): sent, then answered
-- (its verdict): an image is never gated twice, a lost answer read back from the asset.
CREATE TABLE IF NOT EXISTS gates (
    asset_id TEXT PRIMARY KEY, unit_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    verdict TEXT, score REAL, reasons TEXT
);
CREATE INDEX IF NOT EXISTS units_state ON units (state);
-- Every input image uploaded, by its sha256: uploaded once, reused by every unit and run.
-- name: what it was uploaded as (how a lost answer's asset is found); started: when its
-- last upload was sent (the server's clock), while no asset id is known.
CREATE TABLE IF NOT EXISTS uploads (
    sha256 TEXT PRIMARY KEY, name TEXT NOT NULL, asset_id TEXT, size INTEGER, started TEXT
);
"""
# What a journal written by an earlier version lacks, added when it is opened.
MIGRATIONS = (
    ("units", "sent", "ALTER TABLE units ADD COLUMN sent TEXT"),
    ("units", "result_seq", "ALTER TABLE units ADD COLUMN result_seq INTEGER"),
    ("units", "shown", "ALTER TABLE units ADD COLUMN shown INTEGER NOT NULL DEFAULT 0"),
    ("units", "shape", "ALTER TABLE units ADD COLUMN shape TEXT"),
    ("jobs", "status", "ALTER TABLE jobs ADD COLUMN status TEXT"),
    ("jobs", "refundable", "ALTER TABLE jobs ADD COLUMN refundable INTEGER NOT NULL DEFAULT 1"),
    ("units", "quality_attempt", "ALTER TABLE units ADD COLUMN quality_attempt INTEGER"),
)
# A journal kept before the ledger: its jobs' costs, as it counted them, booked to run 0.
LEDGER_FROM_JOBS = (
    "INSERT INTO ledger (run, job_id, amount) SELECT 0, job_id, CAST(ROUND(cost * ?) AS INTEGER)"
    " FROM jobs WHERE cost IS NOT NULL"
)
LEDGER_SCHEMA = 3
# What a job costs the account in the end (batchgen.ledger.net_charge), in thousandths:
# nothing once a refundable job failed or was cancelled, NULL while its charge is unknown.
NET_CHARGE = (
    "CASE WHEN status IN ('failure', 'canceled') AND refundable THEN 0"
    f" WHEN cost IS NULL THEN NULL ELSE CAST(ROUND(cost * {SCALE}) AS INTEGER) END"
)
# After the migrations: an index on a column an older journal gains with them.
INDEXES = "CREATE INDEX IF NOT EXISTS units_result_seq ON units (result_seq);"
# A unit whose results line changes gets the next number: the output views are brought
# up to date from the rows numbered after the last they show (see store.views).
_NEXT_SEQ = "(SELECT COALESCE(MAX(result_seq), 0) + 1 FROM units)"
SEQ_IF_CHANGED = f"result_seq = CASE WHEN result IS ? THEN result_seq ELSE {_NEXT_SEQ} END"


# One step of a write: a statement (SQL, values), or a call that makes its own.
Step = tuple[str, tuple[Any, ...]] | Callable[[], None]


class State(enum.StrEnum):
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    FINISHED = "finished"
    DOWNLOADED = "downloaded"
    FAILED = "failed"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    state: State
    job_id: str | None = None
    submit_started: str | None = None
    job_status: str | None = None
    failed_jobs: int = 0
    permanent: bool = False
    cost: float | None = None
    error: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    # Each file's (size, mtime_ns) as written, when recorded: resume checks it first.
    stamps: tuple[tuple[int, int] | None, ...] = ()
    # What its last POST sent (JSON of [model, body]), while it may be needed.
    sent: str | None = None
    # Jobs it made again because the quality gate rejected an image (0: its first).
    quality_attempt: int = 0


class Resume(enum.Enum):
    SUBMIT = "submit"
    VERIFY = "check the files, then skip or download again"
    REATTACH = "watch the recorded job, never resubmit"
    RECONCILE = "find the job the last POST may have created"
    SKIP_FAILED = "leave a permanent failure alone"


def resume_action(
    row: Row | None, *, retry_failed: bool, resubmit_abandoned: bool = False
) -> Resume:
    """What a run does with a unit, given what the journal says about it.  An abandoned
    job is watched again; ``resubmit_abandoned`` buys the unit a new one instead (the
    abandoned job stays its first unit's, paid, and is never adopted by another)."""
    if row is None:
        return Resume.SUBMIT
    if row.state is State.DOWNLOADED:
        return Resume.VERIFY
    if row.state is State.ABANDONED:
        return Resume.SUBMIT if resubmit_abandoned else Resume.REATTACH
    if row.state in (State.SUBMITTED, State.FINISHED):
        return Resume.REATTACH
    if row.state is State.SUBMITTING:
        return Resume.RECONCILE
    # failed
    if row.job_id is not None and row.job_status == "success":
        return Resume.REATTACH  # made and paid for; only the download is missing
    if row.permanent and not retry_failed:
        return Resume.SKIP_FAILED
    return Resume.SUBMIT


ROW_COLUMNS = (
    "id, state, job_id, submit_started, job_status, failed_jobs, permanent, cost, error, files,"
    " sent, quality_attempt"
)
# Ids per query: well under SQLite's limit on bound parameters.
LOOKUP_CHUNK = 500
# Rows per read when walking the whole journal.
READ_PAGE = 1000


def _row(found: tuple[Any, ...]) -> Row:
    # Each file is [path, sha256] or, since stamps are kept, [path, sha256, size, mtime_ns].
    recorded = json.loads(found[9] or "[]")
    files = tuple((entry[0], entry[1]) for entry in recorded)
    stamps = tuple((entry[2], entry[3]) if len(entry) == 4 else None for entry in recorded)
    return Row(
        id=found[0],
        state=State(found[1]),
        job_id=found[2],
        submit_started=found[3],
        job_status=found[4],
        failed_jobs=found[5],
        permanent=bool(found[6]),
        cost=found[7],
        error=found[8],
        files=files,
        stamps=stamps,
        sent=found[10],
        quality_attempt=found[11] or 0,
    )


class JournalBase:
    """The connection, opened and migrated; transactions; the ledger's booking."""

    def __init__(self, out_dir: Path, *, failed_job_limit: int = FAILED_JOB_LIMIT) -> None:
        self.failed_job_limit = failed_job_limit
        self.path = out_dir / JOURNAL_NAME
        self._lock = threading.RLock()
        self._in_batch = False
        # What this run booked to the ledger, committed and not yet (see _book).
        self._booked = 0
        self._booking = 0
        with storage_faults(self.path):
            out_dir.mkdir(parents=True, exist_ok=True)
            for name in (JOURNAL_NAME, f"{JOURNAL_NAME}-wal", f"{JOURNAL_NAME}-shm"):
                _refuse_special(out_dir / name)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                self._open()
            except BaseException:
                self._db.close()
                raise

    def _open(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        # The migrations and the note of the schema they made, in one transaction: the
        # ledger's first entries are made once, never again by a run killed half-way.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            (kept,) = self._db.execute(
                "SELECT MAX(value) FROM meta WHERE key = 'schema'"
            ).fetchone()
            for table, column, statement in MIGRATIONS:
                columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in columns:
                    self._db.execute(statement)
            self._db.execute(INDEXES)
            if kept is None or int(kept) < LEDGER_SCHEMA:
                self._db.execute(LEDGER_FROM_JOBS, (SCALE,))
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema', ?)",
                (str(SCHEMA_VERSION),),
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        found = self._db.execute("SELECT value FROM meta WHERE key = 'run'").fetchone()
        # The run the ledger books to: the last one begun, until begin_run.
        self.run = int(found[0]) if found else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def remember(self, key: str, value: str) -> None:
        """Keep a fact about the run beside the units (such as a model's inputs)."""
        self._write(("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)))

    def first_time(self, remark: str) -> bool:
        """Whether this remark is new to the output (it is noted as said)."""
        key = "said:" + hashlib.sha256(remark.encode()).hexdigest()[:16]
        with self._lock:
            if self._db.execute("SELECT 1 FROM meta WHERE key = ?", (key,)).fetchone():
                return False
        self._write(("INSERT OR IGNORE INTO meta (key, value) VALUES (?, '1')", (key,)))
        return True

    def recall(self, prefix: str) -> dict[str, str]:
        """The facts kept under keys starting with ``prefix``, by the rest of the key."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        return {key[len(prefix) :]: value for key, value in rows}

    def is_empty(self) -> bool:
        """Whether no unit has a row (a new journal, or one emptied)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM units LIMIT 1").fetchone() is None

    # ---------------------------------------------------------------- transitions

    @contextmanager
    def batch(self, *, durable: bool = False) -> Iterator[None]:
        """Make every transition inside one commit: for facts that arrive together, such
        as the results of jobs that finished in one poll.  ``durable`` waits for the
        fsync (needed when the batch holds a ``submitting``); the safety level cannot
        change inside a transaction, so it is chosen here, for the whole batch."""
        with self._lock:
            if self._in_batch:
                yield
                return
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._in_batch = True
                try:
                    yield
                except BaseException:
                    self._rollback("ROLLBACK")
                    raise
                else:
                    self._commit()
                finally:
                    self._in_batch = False
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def each(self) -> Iterator[None]:
        """Inside a batch, one call's transitions stand or fall together (a savepoint),
        so a call that fails leaves nothing half-written for the batch to commit."""
        with self._lock:
            if not self._in_batch:
                yield
                return
            self._db.execute("SAVEPOINT one_call")
            booking = self._booking
            try:
                yield
            except BaseException:
                self._rollback("ROLLBACK TO one_call", "RELEASE one_call")
                self._booking = booking
                raise
            self._db.execute("RELEASE one_call")

    @property
    def in_transaction(self) -> bool:
        """False once SQLite has rolled back a whole transaction of its own accord (as
        it does when the disk is full): a batch's every call is then lost."""
        return self._db.in_transaction

    def _rollback(self, *statements: str) -> None:
        """Undo, unless SQLite already undid the whole transaction."""
        if self._db.in_transaction:
            for statement in statements:
                self._db.execute(statement)
        if statements and statements[0] == "ROLLBACK":
            self._booking = 0

    def _commit(self) -> None:
        self._db.execute("COMMIT")
        self._booked += self._booking
        self._booking = 0

    def _write(self, *steps: Step) -> None:
        """Statements, and bookings to the ledger (``_book``), in one transaction."""
        with self._lock:
            if self._in_batch:
                self._do(steps)
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._do(steps)
            except BaseException:
                self._rollback("ROLLBACK")
                raise
            self._commit()

    def _write_durably(self, *steps: Step) -> None:
        """Steps committed and fsynced before what they record is sent (it is paid for:
        a job, a gate call, an upload): alone, with ``synchronous=FULL``; inside a batch,
        the batch must be ``durable``."""
        with self._lock:
            synced = not self._in_batch
            if synced:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._write(*steps)
            finally:
                if synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def _do(self, steps: Iterable[Step]) -> None:
        for step in steps:
            if isinstance(step, tuple):
                self._db.execute(*step)
            else:
                step()

    def _job(
        self,
        job_id: str | None,
        cost: float | None,
        status: str | None = None,
        refundable: bool | None = None,
    ) -> Step:
        """What is now known of a job (None: nothing new), and the ledger brought to
        agree with it."""

        def update() -> None:
            if job_id is None:
                return
            self._db.execute(
                "UPDATE jobs SET cost = COALESCE(?, cost), status = COALESCE(?, status),"
                " refundable = COALESCE(?, refundable) WHERE job_id = ?",
                (cost, status, None if refundable is None else int(refundable), job_id),
            )
            self._book(job_id)

        return update

    def _book(self, job_id: str) -> None:
        """Book to this run the difference between what the job costs the account now
        (NET_CHARGE) and what the ledger has for it: nothing when they agree."""
        found = self._db.execute(
            f"SELECT {NET_CHARGE}, (SELECT COALESCE(SUM(amount), 0) FROM ledger"
            " WHERE job_id = jobs.job_id) FROM jobs WHERE job_id = ?",
            (job_id,),
        ).fetchone()
        if found is None or found[0] is None or found[0] == found[1]:
            return
        change = int(found[0]) - int(found[1])
        self._db.execute(
            "INSERT INTO ledger (run, job_id, amount) VALUES (?, ?, ?)", (self.run, job_id, change)
        )
        self._booking += change


def _refuse_special(path: Path) -> None:
    """SQLite follows a link at the journal's name (and writes its target): anything
    there but a regular file is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path)
