from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.store.journal import FAILED_JOB_LIMIT, Journal, Resume, Row, State, resume_action

# What a unit's POST sent, as the journal keeps it with ``submitting``.
SENT = '["model_x", {"prompt": "p"}]'


@pytest.mark.parametrize(
    ("row", "retry_failed", "action"),
    [
        (None, False, Resume.SUBMIT),
        (
            Row("u", State.SUBMITTING, submit_started="2026-01-01T00:00:00+00:00"),
            False,
            Resume.RECONCILE,
        ),
        (Row("u", State.SUBMITTED, job_id="j"), False, Resume.REATTACH),
        (Row("u", State.FINISHED, job_id="j", job_status="success"), False, Resume.REATTACH),
        (
            Row("u", State.DOWNLOADED, job_id="j", files=(("images/u_0.png", "ab"),)),
            False,
            Resume.VERIFY,
        ),
        # made and paid for, only the download failed: never resubmitted
        (Row("u", State.FAILED, job_id="j", job_status="success"), False, Resume.REATTACH),
        (Row("u", State.FAILED, job_id="j", job_status="failure"), False, Resume.SUBMIT),
        (Row("u", State.FAILED, permanent=True), False, Resume.SKIP_FAILED),
        (Row("u", State.FAILED, permanent=True), True, Resume.SUBMIT),
        (Row("u", State.FAILED, error="HTTP 503"), False, Resume.SUBMIT),
        # still running at the server, paid: watched again, never bought twice
        (Row("u", State.ABANDONED, job_id="j"), True, Resume.REATTACH),
    ],
)
def test_resume_table(row: Row | None, retry_failed: bool, action: Resume) -> None:
    assert resume_action(row, retry_failed=retry_failed) is action


def test_an_abandoned_job_is_bought_again_only_when_asked() -> None:
    row = Row("u", State.ABANDONED, job_id="j")
    assert resume_action(row, retry_failed=False, resubmit_abandoned=True) is Resume.SUBMIT
    others = [Row("u", State.SUBMITTED, job_id="j"), Row("u", State.FAILED, permanent=True)]
    for other in others:  # it asks for nothing else
        plain = resume_action(other, retry_failed=False)
        assert resume_action(other, retry_failed=False, resubmit_abandoned=True) is plain


def test_transitions_survive_reopening_and_old_jobs_stay_owned(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    journal.submitting("u1", "2026-01-01T00:00:00+00:00", SENT)
    journal.submitted("u1", "job-a", 4.0)
    journal.failed(
        "u1",
        error="bad luck",
        permanent=False,
        job_id="job-a",
        job_status="failure",
        result={"id": "u1", "status": "failure"},
    )
    journal.submitting("u1", "2026-01-01T00:01:00+00:00", SENT)  # tried again: a new job
    journal.close()

    reopened = open_journal(tmp_path)
    row = reopened.get("u1")
    assert row is not None and row.state is State.SUBMITTING and row.job_id is None
    assert row.submit_started == "2026-01-01T00:01:00+00:00" and row.failed_jobs == 1
    assert reopened.owns_job("job-a")  # a lost answer can never adopt the old job
    assert not reopened.owns_job("job-b")
    reopened.submitted("u1", "job-b", 4.0)
    reopened.downloaded("u1", [("images/u1_0.png", "ff")], {"id": "u1", "status": "success"})
    # The line's cost is what the unit cost in all: job-a was refunded, job-b was not.
    assert list(reopened.results()) == ['{"id": "u1", "status": "success", "cost": 4.0}']
    assert reopened.counts() == {"downloaded": 1}
    reopened.close()


def test_a_job_that_keeps_failing_becomes_a_permanent_failure(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    for attempt in range(FAILED_JOB_LIMIT):
        journal.submitting("u", f"2026-01-01T00:0{attempt}:00+00:00", SENT)
        journal.submitted("u", f"job-{attempt}", 1.0)
        journal.failed(
            "u",
            error="failed",
            permanent=False,
            job_id=f"job-{attempt}",
            job_status="failure",
            result={},
        )
        row = journal.get("u")
        assert row is not None
        assert row.permanent is (attempt + 1 >= FAILED_JOB_LIMIT)
    journal.close()


def test_get_many_finds_the_units_it_has_among_many(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    with journal.batch():
        for index in range(0, 1200, 2):
            journal.submitting(f"u{index}", "t", SENT)
    asked = [f"u{index}" for index in range(1200)]  # more than one query's worth
    found = journal.get_many(asked)
    assert sorted(found) == sorted(f"u{index}" for index in range(0, 1200, 2))
    assert all(row.state is State.SUBMITTING for row in found.values())
    assert journal.get("u1") is None


def test_a_batch_is_one_transaction_and_each_call_in_it_stands_alone(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    with pytest.raises(RuntimeError), journal.batch():
        journal.submitting("lost", "t", SENT)
        raise RuntimeError("the whole batch is rolled back")
    assert journal.get("lost") is None
    with journal.batch(durable=True):
        journal.submitting("kept", "t", SENT)
        with pytest.raises(RuntimeError), journal.each():
            journal.submitting("half", "t", SENT)
            raise RuntimeError("only this call is rolled back")
    assert journal.get("kept") is not None and journal.get("half") is None


def test_results_and_failures_come_in_journal_order_across_pages(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    total = 2500  # more than two pages
    with journal.batch():
        for index in range(total):
            journal.submitting(f"u{index}", "t", SENT)
            if index % 3:
                journal.downloaded(f"u{index}", [], {"id": f"u{index}"})
            else:
                journal.failed(f"u{index}", error="no", permanent=True, job_id=None,
                               job_status=None, result={"id": f"u{index}"})  # fmt: skip
    lines = [json.loads(line) for line in journal.results()]
    assert [line["id"] for line in lines] == [f"u{index}" for index in range(total)]
    assert [line.get("permanent") for line in lines[:3]] == [True, None, None]
    assert [unit for unit, *_ in journal.failures()] == [f"u{i}" for i in range(0, total, 3)]


def test_the_ledger_books_what_the_api_charged_to_the_run_that_learned_it(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    """A charge, a refund a later run learns of, a failure its model does not refund,
    a job of unknown price: each run's figure, and the output's, from the ledger."""
    journal = open_journal(tmp_path)
    assert journal.begin_run() == 1
    journal.submitting("u1", "t", SENT)
    journal.submitted("u1", "job-1", 4.0, "queued", True)
    journal.submitting("u2", "t", SENT)
    journal.submitted("u2", "job-2", 2.5, "queued", False)  # its model does not refund
    journal.submitting("u3", "t", SENT)
    journal.submitted("u3", "job-3", None)  # the answer said no price
    assert (journal.run_spent, journal.spent(), journal.unpriced_jobs()) == (6.5, 6.5, 1)
    journal.close()

    again = open_journal(tmp_path)
    assert again.begin_run() == 2 and again.run_spent == 0
    for unit, job in (("u1", "job-1"), ("u2", "job-2")):
        again.failed(unit, error="x", permanent=True, job_id=job, job_status="failure",
                     result={"id": unit, "cost": None})  # fmt: skip
    # job-1's refund is this run's news; job-2 stays paid.
    assert (again.run_spent, again.spent()) == (-4.0, 2.5)
    again.failed("u3", error="x", permanent=True, job_id="job-3", job_status="failure",
                 result={"id": "u3", "cost": None})  # fmt: skip
    assert again.unpriced_jobs() == 0  # refunded: free, whatever it was charged
    assert again.unit_cost("u2") == 2.5 and again.unit_cost("u1") == 0
    assert again.spend().this_run == -4.0 and again.spend().in_all == 2.5
    # The same fact twice books nothing more.
    again.failed("u1", error="x", permanent=True, job_id="job-1", job_status="failure",
                 result={"id": "u1"})  # fmt: skip
    assert again.spent() == 2.5


def test_a_transaction_rolled_back_books_nothing(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    journal.begin_run()
    with journal.batch(durable=True):
        journal.submitting("kept", "t", SENT)
        journal.submitted("kept", "job-k", 3.0)
        with pytest.raises(RuntimeError), journal.each():
            journal.submitting("half", "t", SENT)
            journal.submitted("half", "job-h", 5.0)
            raise RuntimeError("only this call is rolled back")
    assert journal.run_spent == journal.spent() == 3.0
    with pytest.raises(RuntimeError), journal.batch():
        journal.submitting("lost", "t", SENT)
        journal.submitted("lost", "job-l", 7.0)
        raise RuntimeError("the whole batch is rolled back")
    assert journal.run_spent == journal.spent() == 3.0


def test_a_journal_kept_before_the_ledger_keeps_what_it_counted(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "journal.sqlite3")
    db.executescript(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, unit_id TEXT NOT NULL, cost REAL);"
        "INSERT INTO jobs VALUES ('job-1', 'u1', 4.0), ('job-2', 'u2', NULL);"
    )
    db.commit()
    db.close()
    journal = Journal(tmp_path)
    try:
        assert journal.spent() == 4.0 and journal.unpriced_jobs() == 1
        assert journal.spend().this_run == 4.0  # booked to run 0, the last before any
    finally:
        journal.close()


def test_no_statement_run_for_each_unit_scans_a_whole_table(
    write: Callable[[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's journal statements, traced: each one run once a unit or more must find
    its rows by an index, never by reading a whole table (a scan per unit makes a run
    of N units cost N² reads: a unit's cost read its jobs so until they had an index)."""
    import sqlite3
    from collections import Counter

    from batchgen.store.journal import schema
    from tests.helpers import World

    statements: Counter[str] = Counter()
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        db = connect(*args, **kwargs)  # type: ignore[arg-type]
        db.set_trace_callback(lambda sql: statements.update([_shape(sql)]))
        return db

    monkeypatch.setattr(schema.sqlite3, "connect", traced)
    units = 40
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\njobs:\n  - prompt: 'u {n}'\n    vars: {n: ["
        + ", ".join(map(str, range(units)))
        + "]}\n",
    )
    world = World(tmp_path, failure_rate=0.2, seed=5)
    world.run(manifest)
    monkeypatch.undo()
    kinds = ("SELECT", "UPDATE", "DELETE", "INSERT")
    per_unit = [s for s, count in statements.items() if count >= units and s.startswith(kinds)]
    assert per_unit  # the trace saw the run's reads
    scans = {}
    with contextlib.closing(sqlite3.connect(world.out / "journal.sqlite3")) as db:
        for statement in per_unit:
            query = f"EXPLAIN QUERY PLAN {statement}"
            nulls = (None,) * statement.count("?")
            plan = " / ".join(row[3] for row in db.execute(query, nulls))
            if re.search(r"\bSCAN (units|jobs|ledger|gates|uploads)\b", plan):
                scans[statement] = plan
    assert scans == {}


def _shape(sql: str) -> str:
    """A traced statement with its values (which the trace writes in) made ``?``."""
    sql = re.sub(r"'(?:[^']|'')*'", "?", sql)
    return re.sub(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", "?", sql)
