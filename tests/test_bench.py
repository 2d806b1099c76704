"""The benchmarks still run: every scenario of ``bench/bench.py`` and ``bench/bucket.py``
at a tiny size (slow: real processes).  Only that they run and say each figure beside
its target; the figures themselves are the benchmark's to print, never a test's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(script: str, *args: str) -> str:
    if not (BENCH / script).is_file():
        pytest.skip("no bench/ here (an sdist)")
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_every_scenario_of_the_benchmark_runs() -> None:
    said = bench(
        "bench.py",
        *("--units", "20", "--concurrency", "5", "--job-seconds", "0.1"),
        *("--memory-units", "100", "200", "--memory-concurrency", "20"),
        *("--floor-units", "100", "--floor-concurrency", "20"),
        *("--fast-units", "100", "--fast-concurrency", "20"),
        *("--validate-lines", "2000", "--resume-units", "1000", "--gallery-units", "10"),
    )
    for scenario in ("pipeline:", "latency:", "memory:", "floor:", "fast:", "validate:"):
        assert scenario in said
    assert "resume:" in said and "gallery:" in said
    assert said.count("meets") + said.count("MISSES") >= 10


def test_the_bucket_benchmark_runs() -> None:
    said = bench(
        "bucket.py", "--units", "100", "--concurrency", "8", "--memory-units", "100", "200"
    )
    assert "batchgen run:" in said and "memory growth" in said
