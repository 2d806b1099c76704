"""batchgen from Python: ``batchgen.run`` and ``await batchgen.arun`` in the three places
a library is called from, with the same options and report as the command line."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import batchgen

MANIFEST = "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 3}\n"
FAST = {"simulate": True, "sim_job_seconds": 0.02, "poll_interval": 0.02}


@pytest.fixture
def manifest(write: Callable[[str, str], Path]) -> Path:
    return write("jobs.yaml", MANIFEST)


def check(report: batchgen.Report, out: Path) -> None:
    assert (report.succeeded, report.failed, report.exit_code) == (3, 0, 0)
    assert report.output == str(out) and report.spent_total == report.spent_this_run > 0
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_run_in_the_main_thread_installs_no_signal_handler(manifest: Path, tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGINT)
    report = batchgen.run(manifest, out=tmp_path / "out", **FAST)
    check(report, tmp_path / "out")
    assert signal.getsignal(signal.SIGINT) is before
    status = batchgen.status(tmp_path / "out")
    assert status.states == {"downloaded": 3} and not status.running


def test_run_from_a_worker_thread(manifest: Path, tmp_path: Path) -> None:
    reports: list[batchgen.Report] = []
    worker = threading.Thread(
        target=lambda: reports.append(batchgen.run(manifest, out=tmp_path / "out", **FAST))
    )
    worker.start()
    worker.join(timeout=60)
    check(reports[0], tmp_path / "out")


def test_run_and_arun_while_an_event_loop_runs_as_in_a_notebook(
    manifest: Path, tmp_path: Path
) -> None:
    async def notebook_cell() -> tuple[batchgen.Report, batchgen.Report]:
        awaited = await batchgen.arun(manifest, out=tmp_path / "a", **FAST)
        # The plain call too, made from inside the running loop (a cell without await).
        plain = batchgen.run(manifest, out=tmp_path / "b", **FAST)
        return awaited, plain

    awaited, plain = asyncio.run(notebook_cell())
    check(awaited, tmp_path / "a")
    check(plain, tmp_path / "b")


def test_estimate_validate_and_unknown_options(manifest: Path, tmp_path: Path) -> None:
    found = batchgen.estimate(manifest, out=tmp_path / "out", simulate=True)
    assert found.units == 3 and found.estimated_left > 0 and found.shapes[0].size == "64x64"
    checked = batchgen.validate(manifest, offline=True)
    assert checked.units == 3 and checked.entries == 1 and not checked.inputs_checked
    checked = batchgen.validate(manifest, simulate=True)
    assert checked.units == 3 and checked.inputs_checked
    with pytest.raises(batchgen.ConfigError, match="unknown option"):
        batchgen.run(manifest, concurency=3)


def test_errors_are_raised_with_their_exit_code(write: Callable[[str, str], Path]) -> None:
    bad = write("bad.yaml", "jobs: []\n")
    with pytest.raises(batchgen.BatchgenError) as caught:
        batchgen.run(bad, simulate=True)
    assert caught.value.exit_code == 2


def test_the_report_is_what_the_cli_prints_as_json(manifest: Path, tmp_path: Path) -> None:
    report = batchgen.run(manifest, out=tmp_path / "out", **FAST)
    fields: dict[str, Any] = report.to_json()
    assert {"total", "succeeded", "failed", "exit_code", "spent_total", "stopped"} <= set(fields)
