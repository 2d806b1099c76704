"""Datasets that pass: every image scored by Scenario's quality gate, those it rejects set
aside and made again with a new seed within their attempts, the verdict in the dataset.

The simulator's gate scores an image from its bytes (``Simulator.quality_of``), so a
test knows which images fail; it keeps the verdict on the asset, and can lose its
answer, as any POST's.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import batchgen
from batchgen.errors import ConfigError, ManifestError
from batchgen.manifest import load_manifest
from batchgen.sim import Simulator
from tests.helpers import World

Write = Callable[[str, str], Path]


def manifest_text(units: int, quality: str) -> str:
    words = ", ".join(f"w{n}" for n in range(units))
    return (
        f"model: model_sim-fast\nwidth: 64\nheight: 64\nquality: {quality}\n"
        f"jobs:\n  - {{prompt: 'a {{w}}', vars: {{w: [{words}]}}}}\n"
    )


def kept_verdict(sim: Simulator, record: dict[str, Any]) -> tuple[int, str]:
    job = sim.jobs[record["job_id"]]
    return sim.quality_of(sim.assets[job.asset_ids[0]].content(), "medium")


def ledger(out: Path) -> float:
    db = sqlite3.connect(out / "journal.sqlite3")
    try:
        (total,) = db.execute("SELECT COALESCE(SUM(amount), 0) FROM ledger").fetchone()
    finally:
        db.close()
    return float(total) / 1000


def test_images_the_gate_rejects_are_made_again_and_set_aside(write: Write, tmp_path: Path) -> None:
    manifest = write("jobs.yaml", manifest_text(40, "{on_fail: regenerate, attempts: 2}"))
    world = World(tmp_path, job_seconds=5)
    report = world.run(manifest)
    assert report.exit_code == 0
    results = world.results()
    assert len(results) == 40
    for record in results:
        score, verdict = kept_verdict(world.sim, record)
        assert (record["quality_score"], record["quality_verdict"]) == (score, verdict)
        # Made again only after a fail, and at most twice.
        assert record["quality_attempt"] <= 2
        assert verdict != "fail" or record["quality_attempt"] == 2
    regenerated = sum(r["quality_attempt"] for r in results)
    assert regenerated > 0 and report.regenerated == regenerated
    assert world.sim.jobs_created == 40 + regenerated  # jobs = units + regenerations
    # Each image gated once; the rejected ones kept, never deleted.
    assert set(world.sim.gate_calls.values()) == {1}
    assert len(world.sim.gate_calls) == 40 + regenerated
    rejected = list((world.out / "images" / "_rejected").rglob("*.png"))
    assert len(rejected) == regenerated
    assert ledger(world.out) == world.sim.spent == report.spent_total
    rows = [json.loads(line) for line in (world.out / "metadata.jsonl").read_text().splitlines()]
    assert {r["quality_verdict"] for r in rows} <= {"pass", "warn", "fail"}
    assert all(isinstance(json.loads(r["quality_reasons"]), list) for r in rows)


def test_keep_marks_a_failed_image_and_makes_nothing_again(write: Write, tmp_path: Path) -> None:
    manifest = write("jobs.yaml", manifest_text(30, "{on_fail: keep, min_score: 50}"))
    world = World(tmp_path)
    report = world.run(manifest)
    assert report.exit_code == 0 and world.sim.jobs_created == 30
    for record in world.results():
        score, _ = kept_verdict(world.sim, record)
        assert (record["quality_verdict"] == "fail") == (score < 50 or record["quality_score"] < 20)
        assert record["quality_attempt"] == 0


def test_killed_anywhere_and_answers_lost_nothing_is_gated_or_made_twice(
    write: Write, tmp_path: Path
) -> None:
    """Runs killed where a job is made and its answer never read, gate answers lost: in
    the end every unit passed or failed for good after its attempts, each image gated
    once, jobs = units + regenerations, the ledger the simulator's charge."""
    manifest = write("jobs.yaml", manifest_text(60, "{on_fail: regenerate, attempts: 2}"))
    world = World(tmp_path, lose_answer_rate=0.15, seed=5, job_seconds=3)
    rng = random.Random(7)

    class Killed(BaseException):
        pass

    for _ in range(4):
        die_at = rng.randint(1, 25)
        made = [0]

        def die(job: Any, made: list[int] = made, die_at: int = die_at) -> None:
            made[0] += 1
            if made[0] == die_at:
                raise Killed

        world.sim.on_job_created = die
        try:
            world.run(manifest, concurrency=8)
        except (Killed, BaseExceptionGroup):
            pass
        world.sim.on_job_created = None
    world.configure(lose_answer_rate=0.0)
    final = world.run(manifest, concurrency=8)
    assert final.exit_code == 0
    results = world.results()
    assert len(results) == 60
    for record in results:
        score, verdict = kept_verdict(world.sim, record)
        assert record["quality_verdict"] == verdict
        assert verdict != "fail" or record["quality_attempt"] == 2  # failed for good
    ours = [job for job in world.sim.jobs.values() if not job.by_other_client]
    regenerated = sum(r["quality_attempt"] for r in results)
    assert len(ours) == 60 + regenerated
    assert max(world.sim.gate_calls.values()) == 1  # no image gated twice
    world.clock.jump(60)
    assert ledger(world.out) == world.sim.spent


def test_the_quality_block_is_checked_at_its_line(write: Write) -> None:
    for quality, field, words in [
        ("{sensitivity: extreme}", "quality.sensitivity", "one of low, medium, high"),
        ("{on_fail: retry}", "quality.on_fail", "keep or regenerate"),
        ("{attempts: 11}", "quality.attempts", "from 0 to 10"),
        ("{min_score: 120}", "quality.min_score", "from 0 to 100"),
        ("{speed: 1}", "quality", "unknown key"),
    ]:
        path = write("bad.yaml", manifest_text(2, quality))
        with pytest.raises(ManifestError) as caught:
            load_manifest(path)
        assert caught.value.line == 4 and caught.value.field.startswith("quality")
        assert words in str(caught.value), (quality, str(caught.value))
        del field


def test_an_output_in_a_bucket_refuses_the_gate_for_now(write: Write, tmp_path: Path) -> None:
    manifest = write("jobs.yaml", manifest_text(2, "{attempts: 1}"))
    with pytest.raises(ConfigError, match="quality: .* a bucket does not do yet"):
        batchgen.run(manifest, out="memory://q-test/x", simulate=True)
