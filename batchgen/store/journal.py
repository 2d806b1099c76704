"""The durable journal: what happened to every unit, in ``<out>/journal.sqlite3``.

A unit absent from the journal is *planned*.  Its state then only moves forward::

    submitting ──► submitted ──────────────────► downloaded
        │              │  ╲
        │              │   ╲──► abandoned ──► (re-attached by the next run)
        └──────────────┴──────► failed

``submitting`` is committed before the POST, with the request exactly as sent, and
``submitted`` (with the job id) as soon as the answer arrives.  A unit in
``submitting`` is *uncertain*: its POST may or may not have made a job (the answer was
lost, or the process died waiting for it).  It stays so until a reconciliation has read
the account's job list and either found its job (``submitted``) or, after reads spread
over a grace period, found none (``failed``, to be submitted again).  A job that ran
past its deadline and could not be cancelled is ``abandoned``: it runs on and is paid,
so the next run watches it again; it never buys a second one.  (``finished``, a job
ended and not yet downloaded, was written by earlier versions and is read as
``submitted``.)

Why SQLite: resume needs to look up one unit (and one job id) at a time among
millions without reading them all into memory; a transaction makes each transition
atomic; WAL mode lets ``batchgen status`` read while a run writes; and it is in the
standard library.

Durability: every commit survives the process being killed (WAL, ``synchronous=NORMAL``).
Against a power cut, the one fact that must be on disk before acting on it is
``submitting`` (else a POST could be sent again and paid twice), so that commit alone
waits for an fsync, which also makes everything committed before it durable.  A later
fact lost to a power cut costs a reconciliation or a download again, never a job.

:func:`resume_action` is the pure decision a run makes for each unit it meets.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_JOB_ATTEMPTS
from ..ledger import SCALE, Spend, to_units
from ..redact import redact
from .faults import storage_faults
from .files import NotRegularFile

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


class Journal:
    """The SQLite store.  Methods are blocking and thread-safe; the engine calls them
    from a worker thread so a commit's fsync never stalls the event loop."""

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

    # ---------------------------------------------------------------- reads

    def get(self, unit_id: str) -> Row | None:
        return self.get_many([unit_id]).get(unit_id)

    def get_many(self, unit_ids: list[str]) -> dict[str, Row]:
        """The rows of these units that the journal has, by id: one query for many."""
        rows = self._where_in(f"SELECT {ROW_COLUMNS} FROM units WHERE id IN", unit_ids)
        return {row[0]: _row(row) for row in rows}

    def job_owners(self, job_ids: list[str]) -> dict[str, str]:
        """The unit each of these jobs belongs to, for those that are some unit's."""
        return dict(self._where_in("SELECT job_id, unit_id FROM jobs WHERE job_id IN", job_ids))

    def _where_in(self, query: str, values: list[str]) -> list[tuple[Any, ...]]:
        """``query (?, ?, ...)`` for every chunk of ``values``: one query for many, within
        SQLite's limit on bound parameters."""
        found: list[tuple[Any, ...]] = []
        for start in range(0, len(values), LOOKUP_CHUNK):
            chunk = values[start : start + LOOKUP_CHUNK]
            with self._lock:
                found += self._db.execute(
                    f"{query} ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
        return found

    def owns_job(self, job_id: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
                is not None
            )

    def results(self) -> Iterator[str]:
        """The results line of every finished unit, in the order units first appeared."""
        for (line,) in self._paged("result", "result IS NOT NULL"):
            yield line

    def _paged(self, columns: str, where: str) -> Iterator[tuple[Any, ...]]:
        """Rows in journal order, read a page at a time: a run of millions of units is
        never in memory at once, and the lock is not held while the caller works."""
        after = 0
        while True:
            with self._lock:
                page = self._db.execute(
                    f"SELECT rowid, {columns} FROM units WHERE rowid > ? AND ({where})"
                    " ORDER BY rowid LIMIT ?",
                    (after, READ_PAGE),
                ).fetchall()
            for row in page:
                yield row[1:]
            if len(page) < READ_PAGE:
                return
            after = page[-1][0]

    def downloaded_files(self) -> Iterator[str]:
        """The recorded files (JSON, as kept) of every downloaded unit, a page at a time."""
        for (files,) in self._paged("files", f"state = '{State.DOWNLOADED.value}'"):
            yield files

    def downloaded_units(self) -> Iterator[tuple[str, str | None, str, str | None]]:
        """(unit id, job id, files as kept, results line) of every downloaded unit."""
        yield from self._paged("id, job_id, files, result", f"state = '{State.DOWNLOADED.value}'")

    def departed(self, current: Iterable[str]) -> Iterator[tuple[str, str | None]]:
        """(unit id, files as kept) of every unit not among ``current`` (the ids of a
        manifest's units, read once into a temporary table: memory does not grow with
        them), for :meth:`forget_departed`."""
        with self._lock:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS current (id TEXT PRIMARY KEY)")
            self._db.execute("DELETE FROM current")
            batch: list[tuple[str]] = []
            for unit_id in current:
                batch.append((unit_id,))
                if len(batch) >= READ_PAGE:
                    self._db.executemany("INSERT OR IGNORE INTO current VALUES (?)", batch)
                    batch.clear()
            self._db.executemany("INSERT OR IGNORE INTO current VALUES (?)", batch)
        yield from self._paged("id, files", "id NOT IN (SELECT id FROM temp.current)")

    def forget_departed(self) -> int:
        """Forget the units :meth:`departed` found: their rows go; the jobs they had stay
        theirs (a lost answer can never adopt one).  The views are rewritten next."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                gone = self._db.execute(
                    "DELETE FROM units WHERE id NOT IN (SELECT id FROM temp.current)"
                ).rowcount
                self._db.execute("DELETE FROM meta WHERE key LIKE 'views:%'")
            except BaseException:
                self._rollback("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._db.execute("DROP TABLE temp.current")
        return int(gone)

    # ---------------------------------------------------------------- views

    def result_seq(self) -> int:
        """The number of the latest change to any unit's results line (0: none yet)."""
        with self._lock:
            found = self._db.execute("SELECT MAX(result_seq) FROM units").fetchone()[0]
        return int(found or 0)

    def changed_results(self, after: int) -> tuple[int, bool]:
        """Since change ``after``: the latest change, and whether it changed the line of
        a unit the views show (which must then be replaced, or go)."""
        with self._lock:
            latest, replaced = self._db.execute(
                "SELECT MAX(result_seq), MAX(shown) FROM units WHERE result_seq > ?", (after,)
            ).fetchone()
        return (after, False) if latest is None else (int(latest), bool(replaced))

    def results_changed(self, after: int, upto: int) -> Iterator[str]:
        """The results lines of the units changed after ``after`` up to ``upto``, in the
        order they changed, a page at a time."""
        while True:
            with self._lock:
                page = self._db.execute(
                    "SELECT result_seq, result FROM units WHERE result_seq > ?"
                    " AND result_seq <= ? ORDER BY result_seq LIMIT ?",
                    (after, upto, READ_PAGE),
                ).fetchall()
            for _, line in page:
                if line is not None:
                    yield line
            if len(page) < READ_PAGE:
                return
            after = page[-1][0]

    def mark_shown(self, upto: int, after: int | None = None) -> None:
        """The views now show the current results line of every unit changed after
        ``after`` (of every unit, if None) up to change ``upto``."""
        values: tuple[int, ...]
        if after is None:  # rows a journal of an earlier version numbered none of too
            where, values = "result_seq IS NULL OR result_seq <= ?", (upto,)
        else:
            where, values = "result_seq > ? AND result_seq <= ?", (after, upto)
        self._write((f"UPDATE units SET shown = (result IS NOT NULL) WHERE {where}", values))

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

    def shapes(self) -> list[tuple[str | None, Row, int]]:
        """(cost shape, a row standing for them, how many) of the units, grouped by what
        decides what a run does with them (see :func:`resume_action`); a shape of None:
        units recorded by an earlier version, or restored, whose shape is not known."""
        with self._lock:
            found = self._db.execute(
                "SELECT shape, state, job_id IS NOT NULL, job_status, permanent, COUNT(*)"
                " FROM units GROUP BY shape, state, job_id IS NOT NULL, job_status, permanent"
            ).fetchall()
        return [
            (
                shape,
                Row(
                    "",
                    State(state),
                    job_id="" if has_job else None,
                    job_status=job_status,
                    permanent=bool(permanent),
                ),
                count,
            )
            for shape, state, has_job, job_status, permanent, count in found
        ]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM units GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    def spent(self) -> float:
        """Creative units spent on this output in all, as the ledger has them: what the
        API charged for every job of every run, net of refunds."""
        with self._lock:
            (total,) = self._db.execute("SELECT COALESCE(SUM(amount), 0) FROM ledger").fetchone()
        return to_units(int(total))

    def possibly_spent(self) -> float:
        """What the jobs that uncertain units' lost answers may have made would cost (as
        priced by a dry run): not spent as far as anyone knows, but counted against a
        budget."""
        with self._lock:
            (total,) = self._db.execute(
                "SELECT COALESCE(SUM(cost), 0) FROM units WHERE state = ?", (State.SUBMITTING,)
            ).fetchone()
        return float(total)

    def unpriced_jobs(self) -> int:
        """Jobs whose charge the API has not told (and that no refund made free)."""
        with self._lock:
            (count,) = self._db.execute(
                f"SELECT COUNT(*) FROM jobs WHERE ({NET_CHARGE}) IS NULL"
            ).fetchone()
        return int(count)

    def spend(self) -> Spend:
        """Every figure about money, from the ledger: the last run's (the one going on,
        or the last that went), the output's in all, the jobs of unknown price, what
        lost answers may have cost."""
        with self._lock:
            (last,) = self._db.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE run = ?", (self.run,)
            ).fetchone()
        return Spend(
            this_run=to_units(int(last)),
            in_all=self.spent(),
            unpriced_jobs=self.unpriced_jobs(),
            possibly=self.possibly_spent(),
        )

    @property
    def run_spent(self) -> float:
        """What this run has booked to the ledger (committed): read without a query,
        so a progress display can show it as often as it likes."""
        return to_units(self._booked)

    def begin_run(self) -> int:
        """A new run: what it learns is booked to it from now on."""
        with self._lock:
            self.run += 1
            self._booked = self._booking = 0
            self._write(
                ("INSERT OR REPLACE INTO meta (key, value) VALUES ('run', ?)", (str(self.run),))
            )
        return self.run

    def unit_cost(self, unit_id: str) -> float | None:
        """What a unit has cost in all (every job it had, net of refunds); None while
        one of its jobs has an unknown price."""
        with self._lock:
            unknown, total = self._db.execute(
                f"SELECT SUM(({NET_CHARGE}) IS NULL),"
                " (SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE job_id IN"
                " (SELECT job_id FROM jobs WHERE unit_id = ?)) FROM jobs WHERE unit_id = ?",
                (unit_id, unit_id),
            ).fetchone()
        return None if unknown else to_units(int(total))

    def failures(self) -> Iterator[tuple[str, str, bool, str | None]]:
        """(unit id, reason, permanent, job id) of every failed unit."""
        for unit_id, error, permanent, job_id in self._paged(
            "id, error, permanent, job_id", "state = 'failed'"
        ):
            yield unit_id, error or "", bool(permanent), job_id

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

    def submitting(
        self,
        unit_id: str,
        started: str,
        sent: str,
        cost: float | None = None,
        shape: str | None = None,
    ) -> None:
        """Committed and fsynced before the POST is sent (see the module docstring), with
        the request as sent (``sent``: JSON of [model, body]), what its job is expected
        to cost, and its cost shape (what that cost depends on, for ``--estimate``);
        inside a batch, the batch must be ``durable``."""
        with self._lock:
            synced = not self._in_batch
            if synced:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._write(
                    (
                        "INSERT INTO units (id, state, submit_started, sent, cost, updated, shape)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                        " state = excluded.state, job_id = NULL, job_status = NULL,"
                        " submit_started = excluded.submit_started, sent = excluded.sent,"
                        " cost = excluded.cost, error = NULL, result = NULL,"
                        f" result_seq = CASE WHEN result IS NULL THEN result_seq ELSE {_NEXT_SEQ}"
                        " END,"
                        " updated = excluded.updated, shape = excluded.shape",
                        (unit_id, State.SUBMITTING, started, sent, cost, time.time(), shape),
                    )
                )
            finally:
                if synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def submitted(
        self,
        unit_id: str,
        job_id: str,
        cost: float | None,
        status: str | None = None,
        refundable: bool | None = None,
    ) -> None:
        """The unit's job is known: from its POST's answer (``cost``: what the answer
        says was charged), or adopted or re-attached (what its record says)."""
        self._write(
            (
                "UPDATE units SET state = ?, job_id = ?, cost = COALESCE(?, cost), updated = ?"
                " WHERE id = ?",
                (State.SUBMITTED, job_id, cost, time.time(), unit_id),
            ),
            ("INSERT OR IGNORE INTO jobs (job_id, unit_id) VALUES (?, ?)", (job_id, unit_id)),
            self._job(job_id, cost, status, refundable),
        )

    # ---------------------------------------------------------------- quality gate

    def gate_of(self, asset_id: str) -> tuple[str | None, float | None, str | None] | None:
        """(verdict, score, reasons as JSON) of an image the gate was asked about (a
        verdict of None: asked, its answer not known), or None if never asked."""
        with self._lock:
            found = self._db.execute(
                "SELECT verdict, score, reasons FROM gates WHERE asset_id = ?", (asset_id,)
            ).fetchone()
        return None if found is None else (found[0], found[1], found[2])

    def gating(self, unit_id: str, asset_id: str, attempt: int) -> None:
        """Before a gate call is sent (fsynced, as a submission is: it is paid)."""
        with self._lock:
            synced = not self._in_batch
            if synced:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._write(
                    (
                        "INSERT OR IGNORE INTO gates (asset_id, unit_id, attempt) VALUES (?, ?, ?)",
                        (asset_id, unit_id, attempt),
                    )
                )
            finally:
                if synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def gated(
        self,
        unit_id: str,
        asset_id: str,
        verdict: str,
        score: float,
        reasons: list[str],
        cost: float | None,
    ) -> None:
        """The gate's verdict on an image, and its charge booked (as a job's)."""
        charge = f"gate:{asset_id}"
        self._write(
            (
                "UPDATE gates SET verdict = ?, score = ?, reasons = ? WHERE asset_id = ?",
                (verdict, score, json.dumps(reasons), asset_id),
            ),
            ("INSERT OR IGNORE INTO jobs (job_id, unit_id) VALUES (?, ?)", (charge, unit_id)),
            self._job(charge, cost, "success"),
        )

    def regenerating(self, unit_id: str, attempt: int, error: str) -> None:
        """The gate rejected the unit's image: it makes job ``attempt`` (its images moved
        aside); until that is submitted, the unit is to be submitted again."""
        self._write(
            (
                "UPDATE units SET state = ?, job_id = NULL, job_status = NULL, permanent = 0,"
                " quality_attempt = ?, error = ?, files = NULL, updated = ? WHERE id = ?",
                (State.FAILED, attempt, redact(error), time.time(), unit_id),
            )
        )

    def quality_counts(self) -> dict[str, int]:
        """The quality gate's tally: units kept by their verdict (``pass``, ``warn``,
        ``fail``), and ``regenerating``: units whose image it rejected, their next job
        not done yet.  Empty for an output with no gate."""
        with self._lock:
            kept = self._db.execute(
                "SELECT json_extract(result, '$.quality_verdict') AS verdict, COUNT(*)"
                " FROM units WHERE state = ? AND result IS NOT NULL AND verdict IS NOT NULL"
                " GROUP BY verdict",
                (State.DOWNLOADED,),
            ).fetchall()
            (again,) = self._db.execute(
                "SELECT COUNT(*) FROM units WHERE state != ? AND quality_attempt > 0",
                (State.DOWNLOADED,),
            ).fetchone()
        counts = {str(verdict): count for verdict, count in kept}
        return counts | ({"regenerating": again} if again else {})

    def is_empty(self) -> bool:
        """Whether no unit has a row (a new journal, or one emptied)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM units LIMIT 1").fetchone() is None

    def restore(
        self,
        unit_id: str,
        state: State,
        *,
        job_id: str | None = None,
        cost: float | None = None,
        error: str | None = None,
        permanent: bool = False,
        files: list[list[Any]] | None = None,
        result: dict[str, Any] | None = None,
        started: str | None = None,
        sent: str | None = None,
    ) -> None:
        """A row as a rebuild finds it (see :mod:`batchgen.store.rebuild`), in one step."""
        self._write(
            (
                "INSERT OR REPLACE INTO units (id, state, job_id, submit_started, job_status,"
                " permanent, cost, error, files, result, updated, sent, result_seq)"
                f" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_NEXT_SEQ})",
                (
                    unit_id,
                    state,
                    job_id,
                    started,
                    "success" if state is State.DOWNLOADED else None,
                    int(permanent),
                    cost,
                    error,
                    json.dumps(files) if files is not None else None,
                    json.dumps(result, ensure_ascii=False) if result is not None else None,
                    time.time(),
                    sent,
                ),
            ),
            *(
                [
                    (
                        "INSERT OR IGNORE INTO jobs (job_id, unit_id) VALUES (?, ?)",
                        (job_id, unit_id),
                    ),
                    self._job(job_id, cost, "success" if state is State.DOWNLOADED else None),
                ]
                if job_id
                else []
            ),
        )

    def upload(self, sha256: str) -> tuple[str, str | None, str | None] | None:
        """(name, asset id, when its last upload was sent) of an input image, if it was
        ever sent."""
        with self._lock:
            found = self._db.execute(
                "SELECT name, asset_id, started FROM uploads WHERE sha256 = ?", (sha256,)
            ).fetchone()
        return None if found is None else (found[0], found[1], found[2])

    def uploading(self, sha256: str, name: str, started: str, size: int) -> None:
        """Before an image's upload is sent (fsynced, as ``submitting`` is)."""
        with self._lock:
            synced = not self._in_batch
            if synced:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._write(
                    (
                        "INSERT INTO uploads (sha256, name, size, started) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (sha256) DO UPDATE SET started = excluded.started",
                        (sha256, name, size, started),
                    )
                )
            finally:
                if synced:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def uploaded(self, sha256: str, asset_id: str) -> None:
        self._write(
            (
                "UPDATE uploads SET asset_id = ?, started = NULL WHERE sha256 = ?",
                (asset_id, sha256),
            )
        )

    def may_have_cost(self, unit_id: str, cost: float) -> None:
        """What the job a lost POST may have made would cost: counted as spent until a
        reconciliation finds out (a run that cannot learn it overstates, never hides)."""
        self._write(
            (
                "UPDATE units SET cost = ? WHERE id = ? AND state = ? AND cost IS NULL",
                (cost, unit_id, State.SUBMITTING),
            )
        )

    def nothing_made(self, unit_id: str, error: str) -> None:
        """A reconciliation found no job for the unit's last POST: it is to be sent again
        (a failure for now, not for good, with no job)."""
        error = redact(error)
        self._write(
            (
                "UPDATE units SET state = ?, job_id = NULL, job_status = NULL, cost = NULL,"
                " permanent = 0, error = ?, updated = ? WHERE id = ? AND state = ?",
                (State.FAILED, error, time.time(), unit_id, State.SUBMITTING),
            )
        )

    def uncertain(self) -> list[tuple[str, str | None, str | None, str | None]]:
        """(unit id, when its last POST was sent, what it sent, the job it still has) of
        every unit whose POST may or may not have made a job.  A unit still has a job
        when the API lost it from view (:meth:`vanished`): that one job of its own may be
        found again; any earlier job of the unit never answers its new POST."""
        with self._lock:
            return self._db.execute(
                "SELECT id, submit_started, sent, job_id FROM units WHERE state = ?",
                (State.SUBMITTING,),
            ).fetchall()

    def vanished(self, unit_id: str) -> None:
        """The API no longer knows the unit's job (404 past the grace period): the unit
        is uncertain again, and its POST is reconciled as a lost answer's would be."""
        self._write(
            (
                "UPDATE units SET state = ?, updated = ? WHERE id = ? AND sent IS NOT NULL",
                (State.SUBMITTING, time.time(), unit_id),
            )
        )

    def abandoned(self, unit_id: str, job_id: str, error: str, result: dict[str, Any]) -> None:
        """The unit's job ran past its deadline and could not be cancelled: it runs on,
        and is paid; the next run watches it again."""
        error = redact(error)

        def record() -> None:
            line = self._line(unit_id, result)
            self._db.execute(
                "UPDATE units SET state = ?, job_id = ?, error = ?,"
                f" result = ?, {SEQ_IF_CHANGED}, updated = ? WHERE id = ?",
                (State.ABANDONED, job_id, error, line, line, time.time(), unit_id),
            )

        self._write(record)

    def downloaded(
        self,
        unit_id: str,
        files: list[tuple[str, str]],
        result: dict[str, Any],
        stamps: list[tuple[int, int]] | None = None,
        *,
        refundable: bool | None = None,
    ) -> None:
        """The unit's images are in place.  ``result["cost"]`` is what its job's record
        says was charged; the line keeps what the unit cost in all, from the ledger."""
        recorded: list[list[Any]] = [[path, digest] for path, digest in files]
        if stamps is not None:
            recorded = [[*entry, *stamp] for entry, stamp in zip(recorded, stamps, strict=True)]

        def record() -> None:
            line = self._line(unit_id, result)
            self._db.execute(
                "UPDATE units SET state = ?, job_status = 'success', files = ?, error = NULL,"
                f" result = ?, {SEQ_IF_CHANGED}, sent = NULL, updated = ? WHERE id = ?",
                (State.DOWNLOADED, json.dumps(recorded), line, line, time.time(), unit_id),
            )

        self._write(
            self._job(result.get("job_id"), result.get("cost"), "success", refundable), record
        )

    def failed(
        self,
        unit_id: str,
        *,
        error: str,
        permanent: bool,
        job_id: str | None,
        job_status: str | None,
        result: dict[str, Any],
        refundable: bool | None = None,
    ) -> None:
        """The unit failed, for now or (``permanent``, or its jobs failed too often) for
        good: the results line says which, as the row does."""
        failed_job = 1 if job_status == "failure" else 0
        error = redact(error)

        def record() -> None:
            found = self._db.execute(
                "SELECT failed_jobs FROM units WHERE id = ?", (unit_id,)
            ).fetchone()
            failed_jobs = (found[0] if found else 0) + failed_job
            for_good = permanent or failed_jobs >= self.failed_job_limit
            line = self._line(unit_id, {**result, "permanent": for_good})
            self._db.execute(
                "INSERT INTO units (id, state, job_id, job_status, failed_jobs, permanent, error,"
                f" result, result_seq, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {_NEXT_SEQ}, ?)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                " job_id = COALESCE(excluded.job_id, job_id), job_status = excluded.job_status,"
                " failed_jobs = excluded.failed_jobs, permanent = excluded.permanent,"
                " error = excluded.error, result = excluded.result,"
                " result_seq = CASE WHEN result IS excluded.result THEN result_seq"
                f" ELSE {_NEXT_SEQ} END, updated = excluded.updated",
                (
                    unit_id,
                    State.FAILED,
                    job_id,
                    job_status,
                    failed_jobs,
                    int(for_good),
                    error,
                    line,
                    time.time(),
                ),
            )

        self._write(self._job(job_id, result.get("cost"), job_status, refundable), record)

    def _line(self, unit_id: str, result: dict[str, Any]) -> str:
        """A unit's results line, its cost what the unit has cost in all (the ledger);
        no secret in it (see batchgen.redact)."""
        line = json.dumps({**result, "cost": self.unit_cost(unit_id)}, ensure_ascii=False)
        return redact(line)


def _refuse_special(path: Path) -> None:
    """SQLite follows a link at the journal's name (and writes its target): anything
    there but a regular file is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path)
