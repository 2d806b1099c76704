"""One ledger for money: every figure batchgen shows about cost agrees with the others,
and with what the account was charged, net of refunds.

The simulator counts what it charged for our jobs and refunds a failed or cancelled job
when it ends, unless its model does not refund (``disableRefund``), as the API does; it
gives discounts and ``costDetails``.  Runs are cut short where a kill would strike (a
job made and its answer never read), answers are lost, jobs fail, files are deleted and
fetched again, outputs are sharded: whatever happens, the figures agree to the unit.
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
from batchgen.sim.models import DEFAULT_MODELS
from batchgen.store.journal import Journal
from tests.helpers import World

Write = Callable[[str, str], Path]

NO_REFUND = "model_sim-norefund"
MODELS = (*DEFAULT_MODELS, NO_REFUND)


class Killed(BaseException):
    """The process dies here: nothing after this point runs but the unwinding."""


def run_or_die(world: World, manifest: Path, die_at_job: int | None, **options: Any) -> Any:
    """A run, killed right after the server made its ``die_at_job``-th job (before its
    answer is read), if given: its report, or None when it died."""

    def die(job: Any, made: list[int] = [0]) -> None:  # noqa: B006 - a counter of its own
        made[0] += 1
        if made[0] == die_at_job:
            raise Killed

    world.sim.on_job_created = die if die_at_job else None
    try:
        return world.run(manifest, **options)
    except Killed:
        return None
    except BaseExceptionGroup as group:
        assert group.subgroup(Killed) is not None, group
        return None
    finally:
        world.sim.on_job_created = None


def last_run(out: Path) -> int:
    """The number of the last run the output's journal has begun (0: none)."""
    if not (out / "journal.sqlite3").is_file():
        return 0
    db = sqlite3.connect(out / "journal.sqlite3")
    try:
        found = db.execute("SELECT value FROM meta WHERE key = 'run'").fetchone()
    finally:
        db.close()
    return int(found[0]) if found else 0


def ledger_by_run(out: Path) -> dict[int, float]:
    """What each run booked, read straight from the journal's ledger."""
    db = sqlite3.connect(out / "journal.sqlite3")
    try:
        rows = db.execute("SELECT run, SUM(amount) FROM ledger GROUP BY run").fetchall()
    finally:
        db.close()
    return {run: total / 1000 for run, total in rows}


def gallery_spent(root: Path) -> float:
    batchgen.gallery(root)
    page = (root / "gallery" / "index.html").read_text("utf-8")
    data = page.split('<script id="data" type="application/json">', 1)[1].split("</script>")[0]
    return float(json.loads(data.replace("<\\/", "</"))["summary"]["spent"])


def manifest_text(units: int) -> str:
    """Three shapes: two prices by size, and a model that does not refund."""
    entries = [
        ("model_sim-fast", 64, "s", units),
        ("model_sim-fast", 1024, "l", max(units // 3, 1)),
        (NO_REFUND, 512, "n", max(units // 2, 1)),
    ]
    lines = ["jobs:"]
    for model, side, tag, count in entries:
        words = ", ".join(f"{tag}{n}" for n in range(count))
        lines.append(
            f"  - {{model: {model}, width: {side}, height: {side}, prompt: '{{w}}',"
            f" vars: {{w: [{words}]}}}}"
        )
    return "\n".join(lines) + "\n"


def test_every_figure_agrees_with_what_the_account_was_charged(
    write: Write, tmp_path: Path
) -> None:
    """Random worlds, on virtual time: kills, lost answers, failures refunded or not,
    discounts, deleted files fetched again, shards.  Afterwards the runs' own figures
    sum to the output's, which is what status, the gallery and the results say, and what
    the simulator charged net of refunds."""
    for seed in range(6):
        check_one_world(write, tmp_path / f"world{seed}", seed)


def check_one_world(write: Write, place: Path, seed: int) -> None:
    rng = random.Random(seed)
    place.mkdir()
    world = World(
        place,
        seed=seed,
        job_seconds=2,
        failure_rate=rng.choice((0.1, 0.3)),
        lose_answer_rate=rng.choice((0.0, 0.2)),
        discount=rng.choice((0.0, 0.25)),
        models=MODELS,
        no_refund_models=(NO_REFUND,),
    )
    manifest = write(f"world{seed}/jobs.yaml", manifest_text(rng.randint(8, 14)))
    shards = rng.random() < 0.4
    # (the output directory, the run's number in its ledger, its report or None: killed)
    runs: list[tuple[Path, int, Any]] = []

    def one_run(shard: str | None, die_at: int | None) -> Any:
        place = world.out / f"shard-{shard.replace('/', '-of-')}" if shard else world.out
        options: dict[str, Any] = {"concurrency": 6, "job_attempts": 2}
        if shard:
            options["shard"] = shard
        report = run_or_die(world, manifest, die_at, **options)
        runs.append((place, last_run(place), report))
        return report

    for round_number in range(4):
        shard = f"{round_number % 2 + 1}/2" if shards else None
        one_run(shard, rng.choice((None, rng.randint(1, 12 - 2 * round_number))))
        deleted = [p for p in world.out.rglob("images/**/*.png")]
        for image in rng.sample(deleted, min(len(deleted), 2)):
            image.unlink()  # fetched again by a later run: for nothing
        world.clock.jump(5)
    for shard in ("1/2", "2/2") if shards else (None,):
        final = one_run(shard, None)
        assert final.exit_code in (0, 1) and final.possibly_spent == 0
        assert final.unpriced_jobs == 0
    world.clock.jump(60)  # every job the account has made has ended

    places = sorted({place for place, _, _ in runs})
    assert places == (sorted(world.out.glob("shard-*")) if shards else [world.out])
    in_all = 0.0
    for out in places:
        by_run = ledger_by_run(out)
        # Each run that ended said what the ledger has for it; killed ones said
        # nothing, and the ledger keeps what they learned.
        for _, number, report in [r for r in runs if r[0] == out and r[2] is not None]:
            assert report.spent_this_run == by_run.get(number, 0.0), (seed, number)
        journal = Journal(out)
        try:
            assert sum(by_run.values()) == journal.spent()
            in_all += journal.spent()
        finally:
            journal.close()
    status = batchgen.status(world.out)
    results = [
        json.loads(line)
        for out in places
        for line in (out / "results.jsonl").read_text().splitlines()
    ]
    assert status.spend.in_all == in_all == gallery_spent(world.out), seed
    assert sum(r["cost"] for r in results) == in_all, seed  # no unit unpriced here
    assert world.sim.spent == in_all, (seed, world.sim.charged, world.sim.refunded)
    assert world.sim.refunded > 0 or world.sim.charged == in_all


def test_a_double_count_is_caught(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted double count (each charge booked twice) fails the same checks."""
    original = Journal._book

    def twice(self: Journal, job_id: str) -> None:
        original(self, job_id)
        self._db.execute(
            "INSERT INTO ledger (run, job_id, amount) SELECT run, job_id, amount FROM ledger"
            " WHERE job_id = ? ORDER BY seq DESC LIMIT 1",
            (job_id,),
        )

    monkeypatch.setattr(Journal, "_book", twice)
    with pytest.raises(AssertionError):
        check_one_world(write, tmp_path / "planted", 1)


def test_a_retry_whose_answer_is_lost_adopts_its_own_job_not_the_failed_one(
    write: Write, tmp_path: Path
) -> None:
    """A unit's job fails; its retry sends the identical request, whose answer is lost:
    the reconciler adopts the retry's job (paid), never the failed one."""
    manifest = write(
        "jobs.yaml", "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p}\n"
    )
    world = World(tmp_path, failure_rate=1.0, job_seconds=2, jitter=0.0)
    first = world.run(manifest, job_attempts=1)
    (failed_job,) = world.sim.jobs
    assert first.failed == 1 and world.results()[0]["permanent"] is True
    world.configure(failure_rate=0.0, lose_answer_rate=1.0)
    again = world.run(manifest, retry_failed=True)
    (record,) = world.results()
    assert again.exit_code == 0 and record["status"] == "success"
    assert record["job_id"] != failed_job and len(world.sim.jobs) == 2
    assert world.sim.jobs[record["job_id"]].phase(world.clock.current_time())[0] == "success"
    # The failed job was refunded; the retry's is paid, once.
    assert again.spent_total == world.sim.spent == world.sim.jobs[record["job_id"]].cost


def test_fetching_deleted_images_again_costs_nothing(write: Write, tmp_path: Path) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 3}\n",
    )
    world = World(tmp_path)
    first = world.run(manifest)
    before = {r["id"]: r["cost"] for r in world.results()}
    for image in list(world.out.rglob("images/**/*.png"))[:2]:
        image.unlink()
    again = world.run(manifest)
    assert again.exit_code == 0 and "0 CU by this run" in again.line
    assert again.spent_this_run == 0 and again.spent_total == first.spent_total == world.sim.spent
    assert {r["id"]: r["cost"] for r in world.results()} == before


def test_failures_refunded_or_not_and_the_fields_that_say_so_agree(
    write: Write, tmp_path: Path
) -> None:
    """Every job fails: refunded, except the model that does not refund.  The results,
    status and the gallery say the same money and the same "for good"."""
    manifest = write(
        "jobs.yaml",
        "width: 64\nheight: 64\njobs:\n"
        "  - {model: model_sim-fast, prompt: a, count: 3}\n"
        f"  - {{model: {NO_REFUND}, prompt: b, count: 2}}\n",
    )
    world = World(
        tmp_path, failure_rate=1.0, discount=0.5, models=MODELS, no_refund_models=(NO_REFUND,)
    )
    report = world.run(manifest, job_attempts=2)
    assert report.failed == 5 and report.exit_code == 1
    results = world.results()
    status = batchgen.status(world.out)
    charged_each = world.sim.cost_of(world.sim.model(NO_REFUND), {"width": 64, "height": 64})  # type: ignore[arg-type]
    assert world.sim.spent == 2 * 2 * charged_each  # two jobs each, not refunded
    assert report.spent_total == status.spend.in_all == gallery_spent(world.out) == world.sim.spent
    assert sum(r["cost"] for r in results) == world.sim.spent
    assert {r["permanent"] for r in results} == {True}  # its jobs failed as often as allowed
    assert all(f["permanent"] for f in status.failures)


def test_a_budget_that_stops_a_run_says_spent_reserved_and_left(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 9}\n",
    )
    world = World(tmp_path, job_seconds=5)
    report = world.run(manifest, budget=4, concurrency=2)
    assert report.stopped == "budget" and report.spent_total == world.sim.spent <= 4
    (said,) = [r.message for r in caplog.records if "budget:" in r.message]
    assert "CU spent" in said and "reserved" in said and "left" in said and "estimated" in said
