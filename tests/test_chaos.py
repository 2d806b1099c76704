"""Every fault at once, seeded: each unit ends verified or failed with a reason, and
every job the server created belongs to exactly one unit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.sim import Simulator
from tests.conftest import SIM_SECRET
from tests.test_end_to_end import read_results, run_cli

UNITS = 1000


def assert_every_job_belongs_to_one_unit(out: Path, sim: Simulator, *, job_attempts: int) -> None:
    """No job created for nobody or for two units (no double pay); a unit has more than
    one job only because the ones before its last ended in failure."""
    with sqlite3.connect(out / "journal.sqlite3") as db:
        rows = db.execute("SELECT job_id, unit_id FROM jobs ORDER BY rowid").fetchall()
    assert sorted(job for job, _ in rows) == sorted(sim.jobs)
    per_unit: dict[str, list[str]] = {}
    for job_id, unit_id in rows:
        per_unit.setdefault(unit_id, []).append(job_id)
    for jobs in per_unit.values():
        assert len(jobs) <= job_attempts
        assert all(sim.jobs[job].fails for job in jobs[:-1])


def test_a_chaotic_run_loses_nothing_pays_nothing_twice_and_leaks_nothing(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 32\nheight: 32\njobs:\n"
        "  - prompt: same body\n    count: 100\n"
        "  - prompt: 'unit {n}'\n    vars: {n: [" + ", ".join(map(str, range(900))) + "]}\n",
    )
    sim = start_simulator(
        job_seconds=0.1,
        jitter=0.5,
        seed=42,
        error_rate=0.03,
        lose_answer_rate=0.03,
        truncate_rate=0.05,
        failure_rate=0.03,
        stuck_rate=0.02,
        url_lifetime=600,
        normalise_input=True,
    )
    out = tmp_path / "out"
    code = run_cli(
        sim,
        manifest,
        out,
        "--concurrency",
        "50",
        "--poll-interval",
        "0.02",
        "--job-timeout",
        "2",
        "--retries",
        "8",
    )
    results = read_results(out)
    assert len(results) == UNITS and len({r["id"] for r in results}) == UNITS
    failed = [r for r in results if r["status"] == "failure"]
    assert code == (1 if failed else 0)
    assert sim.faults_injected > 10 and sim.answers_lost > 0

    for record in results:
        if record["status"] == "failure":
            assert record["error"], record
            continue
        job = sim.jobs[record["job_id"]]
        for relative, asset_id in zip(record["files"], job.asset_ids, strict=True):
            assert (out / relative).read_bytes() == sim.assets[asset_id].content()

    assert_every_job_belongs_to_one_unit(out, sim, job_attempts=2)
    assert any("timed out" in r["error"] for r in failed)  # the stuck jobs
    assert not list(out.rglob("*.part"))
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, (out / "results.jsonl").read_text()):
        assert SIM_SECRET not in text
    assert SIM_SECRET.encode() not in (out / "journal.sqlite3").read_bytes()
