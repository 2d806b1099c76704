"""Every fault at once, seeded: each unit ends verified or failed with a reason, and
every job the server created belongs to exactly one unit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.sim import Simulator
from tests.conftest import SIM_SECRET
from tests.test_end_to_end import read_results, run_cli

UNITS = 1000


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

    owned = [r["job_id"] for r in results if r["job_id"]]
    assert len(owned) == len(set(owned))  # no job shared by two units
    assert sim.jobs_created == len(owned)  # and none created for nobody: no double pay
    assert any("timed out" in r["error"] for r in failed)  # the stuck jobs
    assert not list(out.rglob("*.part"))
    captured = capsys.readouterr()
    for text in (captured.out, captured.err, (out / "results.jsonl").read_text()):
        assert SIM_SECRET not in text
    assert SIM_SECRET.encode() not in (out / "journal.sqlite3").read_bytes()
