from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.journal import FAILED_JOB_LIMIT, Journal, Resume, Row, State, resume_action


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
    ],
)
def test_resume_table(row: Row | None, retry_failed: bool, action: Resume) -> None:
    assert resume_action(row, retry_failed=retry_failed) is action


def test_transitions_survive_reopening_and_old_jobs_stay_owned(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.submitting("u1", "2026-01-01T00:00:00+00:00")
    journal.submitted("u1", "job-a", 4.0)
    journal.finished("u1", "failure", 4.0)
    journal.failed(
        "u1",
        error="bad luck",
        permanent=False,
        job_id="job-a",
        job_status="failure",
        result={"id": "u1", "status": "failure"},
    )
    journal.submitting("u1", "2026-01-01T00:01:00+00:00")  # tried again: a new job
    journal.close()

    reopened = Journal(tmp_path)
    row = reopened.get("u1")
    assert row is not None and row.state is State.SUBMITTING and row.job_id is None
    assert row.submit_started == "2026-01-01T00:01:00+00:00" and row.failed_jobs == 1
    assert reopened.owns_job("job-a")  # a lost answer can never adopt the old job
    assert not reopened.owns_job("job-b")
    reopened.submitted("u1", "job-b", 4.0)
    reopened.downloaded("u1", [("images/u1_0.png", "ff")], {"id": "u1", "status": "success"})
    assert list(reopened.results()) == ['{"id": "u1", "status": "success"}']
    assert reopened.counts() == {"downloaded": 1}
    reopened.close()


def test_a_job_that_keeps_failing_becomes_a_permanent_failure(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for attempt in range(FAILED_JOB_LIMIT):
        journal.submitting("u", f"2026-01-01T00:0{attempt}:00+00:00")
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
