"""Kill batchgen anywhere, run it again: every unit exactly once, nothing paid twice.

Real processes against the simulator over real HTTP, killed with SIGKILL: what no
in-memory test can show.  Marked slow (``pytest -m "not slow"`` leaves them out)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.sim import Simulator
from tests.helpers import (
    SIM_SECRET,
    assert_matches_what_was_served,
    fast_run,
    read_results,
    start_batchgen,
)

pytestmark = pytest.mark.slow

MANIFEST = """\
model: model_sim-fast
width: 64
height: 64
jobs:
  - prompt: same request every time
    count: 12
  - prompt: "item {n} in {colour}"
    vars: {n: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], colour: [red, green, blue, grey]}
  - prompt: two outputs
    count: 8
    params: {numOutputs: 2}
"""
UNITS = 12 + 40 + 8
KILL_ROUNDS = 5


def start_run(manifest: Path, out: Path, sim: Simulator) -> subprocess.Popen[str]:
    return start_batchgen(fast_run(manifest, out, sim))


def wait_for_lines(process: subprocess.Popen[str], marker: str, count: int) -> None:
    """Read the run's log until it has said ``marker`` ``count`` times (or ended)."""
    assert process.stderr is not None
    seen = 0
    for line in process.stderr:
        seen += marker in line
        if seen >= count:
            return


def kill_after_lines(process: subprocess.Popen[str], marker: str, count: int) -> None:
    """SIGKILL the run once it has logged ``marker`` ``count`` times (or ended)."""
    wait_for_lines(process, marker, count)
    process.kill()
    process.communicate(timeout=30)


def kill_at_job_creation(sim: Simulator, process: subprocess.Popen[str], nth: int) -> None:
    """SIGKILL the run right after the server created its nth job, before the answer."""
    created = {"count": 0}

    def hook(job: object) -> None:
        created["count"] += 1
        if created["count"] == nth:
            os.kill(process.pid, signal.SIGKILL)

    sim.on_job_created = hook
    process.communicate(timeout=60)
    sim.on_job_created = None


def test_killed_at_random_moments_the_final_state_equals_an_uninterrupted_run(
    write: Callable[[str, str], Path], tmp_path: Path, start_simulator: Callable[..., Simulator]
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    out = tmp_path / "out"
    sim = start_simulator(job_seconds=0.15, jitter=0.5, lose_answer_rate=0.15, seed=5)
    rng = random.Random(2026)
    kills = 0
    # Each round kills within its first few events, so every round has work left to
    # interrupt: in the POST-to-answer window, after answers were recorded, and while
    # re-attaching to the jobs of the run before.
    for round_number in range(KILL_ROUNDS):
        process = start_run(manifest, out, sim)
        if round_number % 2 == 0:
            kill_at_job_creation(sim, process, rng.randint(1, 4))
        else:
            marker = "watching its job" if round_number == 3 else "submitted unit"
            kill_after_lines(process, marker, rng.randint(1, 4))
        kills += process.returncode == -signal.SIGKILL

    final = start_run(manifest, out, sim)
    stdout, stderr = final.communicate(timeout=120)
    assert final.returncode == 0, stderr[-3000:]
    assert kills == KILL_ROUNDS  # every kill really interrupted a run
    results = read_results(out)
    assert len(results) == UNITS and len({r["id"] for r in results}) == UNITS
    assert_matches_what_was_served(out, results, sim)
    assert sim.jobs_created == UNITS  # no image paid for twice, none lost
    assert len({r["job_id"] for r in results}) == UNITS
    assert not list(out.rglob("*.part"))
    assert SIM_SECRET not in stdout + stderr


def test_a_second_run_on_the_same_directory_refuses_with_exit_3(
    write: Callable[[str, str], Path], tmp_path: Path, start_simulator: Callable[..., Simulator]
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    out = tmp_path / "out"
    sim = start_simulator(job_seconds=0.5)  # 60 units, 4 at a time: the first run lasts 7 s
    first = start_run(manifest, out, sim)
    try:
        assert first.stderr is not None
        for line in first.stderr:  # the first run holds the lock once it submits
            if "submitted unit" in line:
                break
        second = start_run(manifest, out, sim)
        _, err = second.communicate(timeout=30)
        assert second.returncode == 3
        assert "in use by another batchgen run" in err and f"pid {first.pid}" in err
    finally:
        first.kill()
        first.communicate(timeout=30)
    # The dead run's lock is taken over at once.
    sim.config = dataclasses.replace(sim.config, job_seconds=0.05)
    third = start_run(manifest, out, sim)
    third.communicate(timeout=120)
    assert third.returncode == 0


def test_status_reads_while_a_run_is_going_on(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    out = tmp_path / "out"
    sim = start_simulator(job_seconds=30)
    process = start_run(manifest, out, sim)
    try:
        wait_for_lines(process, "submitted unit", 4)
        assert main(["status", str(out), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["running"] is True and report["states"].get("submitted", 0) >= 4
    finally:
        process.kill()
        process.communicate(timeout=30)
    # Killed, it no longer runs; what it recorded stays.
    assert main(["status", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False and report["states"].get("submitted", 0) >= 4
