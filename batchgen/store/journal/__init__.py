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

The package: ``schema.py`` (the tables, their migrations, rows, the connection and its
transactions), ``reads.py`` (what the journal is asked), ``sides.py`` (the quality
gate's and the uploads' tables), and here :class:`Journal`, the units' transitions.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ...redact import redact
from .reads import JournalReads
from .schema import (
    _NEXT_SEQ,
    FAILED_JOB_LIMIT,
    JOURNAL_NAME,
    SCHEMA_VERSION,
    SEQ_IF_CHANGED,
    Resume,
    Row,
    State,
    resume_action,
)
from .sides import SideTables

__all__ = [
    "FAILED_JOB_LIMIT",
    "JOURNAL_NAME",
    "SCHEMA_VERSION",
    "Journal",
    "Resume",
    "Row",
    "State",
    "resume_action",
]


class Journal(JournalReads, SideTables):
    """The SQLite store.  Methods are blocking and thread-safe; the engine calls them
    from a worker thread so a commit's fsync never stalls the event loop."""

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
        self._write_durably(
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
