"""Whole runs against the simulator in memory, on virtual time: the application, the
engine and the client as they are, with no socket and no sleep.  What lands on disk is
what was served; what was paid for is what the units needed."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchgen.errors import BatchgenError
from batchgen.sim import Simulator
from tests.helpers import SIM_SECRET, World, assert_matches_what_was_served

MANIFEST = """\
model: model_sim-fast
width: 256
height: 256
jobs:
  - id: cats
    prompt: "a {animal} in {style}"
    vars: {animal: [cat, lynx], style: [oil, ink]}
  - prompt: "a mixed-size tile"
    sizes: [[128, 64], [320, 192]]
    count: 2
  - prompts_file: prompts.csv
    params: {numOutputs: 2}
"""
CSV = "prompt,sku\nred mug,A1\nblue mug,B2\n"
UNITS = 4 + 4 + 2

Write = Callable[[str, str], Path]


@pytest.fixture
def example(write: Write) -> Path:
    """MANIFEST and its prompts file: vars, mixed sizes, and a CSV with extra columns."""
    write("prompts.csv", CSV)
    return write("jobs.yaml", MANIFEST)


def many(count: int, *, head: str = "model: model_sim-fast\nwidth: 64\nheight: 64\n") -> str:
    """A manifest of ``count`` distinct prompts."""
    values = ", ".join(map(str, range(count)))
    return f"{head}jobs:\n  - prompt: 'p{{n}}'\n    vars: {{n: [{values}]}}\n"


def assert_every_job_belongs_to_one_unit(out: Path, sim: Simulator, *, job_attempts: int) -> None:
    """No job made for nobody or for two units (no double pay); a unit has more than one
    job only because the ones before its last ended in failure."""
    db = sqlite3.connect(out / "journal.sqlite3")
    try:
        rows = db.execute("SELECT job_id, unit_id FROM jobs ORDER BY rowid").fetchall()
    finally:
        db.close()
    ours = sorted(job_id for job_id, job in sim.jobs.items() if not job.by_other_client)
    assert sorted(job for job, _ in rows) == ours
    per_unit: dict[str, list[str]] = {}
    for job_id, unit_id in rows:
        per_unit.setdefault(unit_id, []).append(job_id)
    for jobs in per_unit.values():
        assert len(jobs) <= job_attempts
        assert all(sim.jobs[job].fails for job in jobs[:-1])


def test_a_run_makes_every_unit_once_and_a_second_run_nothing(
    example: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path)
    report = world.run(example, concurrency=3)
    assert report.exit_code == 0 and report.succeeded == UNITS
    results = world.results()
    assert len(results) == UNITS and len({r["id"] for r in results}) == UNITS
    assert_matches_what_was_served(world.out, results, world.sim)
    assert world.sim.jobs_created == UNITS  # nothing submitted twice
    csv_rows = [r for r in results if r["metadata"].get("sku")]
    assert sorted(r["metadata"]["sku"] for r in csv_rows) == ["A1", "B2"]
    assert all(len(r["files"]) == 2 for r in csv_rows)
    assert all(r["cost"] and r["cost"] > 0 for r in results)
    assert report.spent_this_run == report.spent_total == world.sim.spent
    assert not list(world.out.rglob("*.part"))
    assert SIM_SECRET not in caplog.text + (world.out / "results.jsonl").read_text()

    # Run again: everything is done, nothing is submitted or fetched.
    downloads = world.sim.requests["GET cdn"]
    again = world.run(example)
    assert (again.already_done, again.submitted, again.exit_code) == (UNITS, 0, 0)
    assert world.sim.jobs_created == UNITS and world.sim.requests["GET cdn"] == downloads


def test_in_flight_jobs_never_exceed_concurrency(write: Write, tmp_path: Path) -> None:
    # The server refuses a 4th running job: a slot must be held until the job ends,
    # not just for the POST, or this run would meet 429s.
    manifest = write("jobs.yaml", many(12))
    world = World(tmp_path, in_flight_limit=3, job_seconds=30)
    assert world.run(manifest, concurrency=3).exit_code == 0
    assert world.sim.requests["POST /v1/generate/custom/{model}"] == 12  # never a 429
    assert world.sim.jobs_created == 12


def test_jobs_are_watched_through_the_list_for_a_fraction_of_a_request_each(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", many(400))
    world = World(tmp_path, job_seconds=4, jitter=0.1, seed=4)
    assert world.run(manifest, concurrency=50, poll_interval=0.5).exit_code == 0
    requests = world.sim.requests
    assert requests["GET /v1/jobs/{job_id}"] == 0
    assert requests["GET /v1/jobs"] / 400 <= 0.25
    assert requests["POST /v1/assets/get-bulk"] + requests["GET /v1/assets/{asset_id}"] < 400 / 2


def test_a_refused_job_list_falls_back_to_asking_about_each_job(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", many(20))
    world = World(tmp_path, list_refused=True, job_seconds=10)
    assert world.run(manifest, concurrency=5, poll_interval=1).exit_code == 0
    assert world.sim.requests["GET /v1/jobs/{job_id}"] >= 20
    assert world.sim.jobs_created == 20


def test_a_late_and_gappy_job_list_still_shows_every_end(write: Write, tmp_path: Path) -> None:
    manifest = write("jobs.yaml", many(60))
    world = World(tmp_path, list_lag=8, list_holes=0.3, job_seconds=10, seed=2)
    report = world.run(manifest, concurrency=10, poll_interval=1)
    assert report.exit_code == 0 and world.sim.jobs_created == 60


def test_a_freed_slot_is_refilled_while_downloads_are_still_waiting(
    write: Write, tmp_path: Path
) -> None:
    # One download at a time, many jobs ending at once: submission does not wait for
    # the downloads (a slot is a job at the server, not a file on its way).
    manifest = write("jobs.yaml", many(30))
    world = World(tmp_path, job_seconds=20, jitter=0.0)
    assert world.run(manifest, concurrency=10, downloads=1, poll_interval=1).exit_code == 0
    starts = sorted(job.start for job in world.sim.jobs.values())
    # Three waves of ten jobs, each started as soon as the last one's jobs ended.
    assert starts[10] - starts[0] <= 20 + 3 and starts[20] - starts[10] <= 20 + 3


def test_failed_units_give_exit_1_with_reasons_and_wait_for_retry_failed(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: p\n    count: 6\n  - prompt: q forbidden\n",
    )
    world = World(tmp_path, failure_rate=0.6, seed=3)
    assert world.run(manifest, job_attempts=2).exit_code == 1
    results = world.results()
    failed = [r for r in results if r["status"] == "failure"]
    failed_p = [r for r in failed if r["prompt"] == "p"]
    assert failed_p and all("Simulated generation failure" in r["error"] for r in failed_p)
    # A refusal no check of the model's inputs can foresee (content moderation): a 400
    # from the API, for good.
    assert any(r["prompt"] == "q forbidden" and "moderation" in r["error"] for r in failed)
    assert len(results) == 7

    # Both jobs of those units failed: they failed for good, and a plain rerun leaves
    # them alone, keeping one line per unit.
    created_before = world.sim.jobs_created
    assert world.run(manifest, job_attempts=2).exit_code == 1
    assert world.sim.jobs_created == created_before
    assert world.results() == results

    # --retry-failed gives each failed unit one more job (q is refused again by the API).
    succeeded_before = {r["id"] for r in results if r["status"] == "success"}
    world.run(manifest, job_attempts=2, retry_failed=True)
    again = world.results()
    assert len(again) == 7 and len({r["id"] for r in again}) == 7
    assert world.sim.jobs_created - created_before == len(failed_p)
    assert succeeded_before <= {r["id"] for r in again if r["status"] == "success"}


def test_a_failed_job_is_tried_again_within_the_run_up_to_job_attempts(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", many(30))
    world = World(tmp_path, failure_rate=0.5, seed=9)
    world.run(manifest, job_attempts=3)
    results = world.results()
    assert len(results) == 30
    assert world.sim.jobs_created > 30  # failures were tried again, in this same run
    assert_every_job_belongs_to_one_unit(world.out, world.sim, job_attempts=3)
    for record in results:  # a unit gives up only after its third failed job
        jobs_of_unit = [j for j in world.sim.jobs.values() if j.body["prompt"] == record["prompt"]]
        if record["status"] == "failure":
            assert len(jobs_of_unit) == 3 and all(j.fails for j in jobs_of_unit)


def test_a_failed_download_is_fetched_again_from_its_job_never_resubmitted(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: p\n    count: 3\n    params: {numOutputs: 2}\n",
    )
    world = World(tmp_path, url_lifetime=-1)  # every signed URL has expired on arrival
    assert world.run(manifest, retries=2).exit_code == 1
    first = world.results()
    assert [r["status"] for r in first] == ["failure"] * 3
    assert all(r["job_status"] == "success" and "HTTP 403" in r["error"] for r in first)
    assert not list((world.out / "images").iterdir())  # nothing partial under any name

    world.configure(url_lifetime=600)
    assert world.run(manifest, retries=2).exit_code == 0
    again = world.results()
    assert len(again) == 3
    assert world.sim.jobs_created == 3  # the images were paid for once
    assert {r["job_id"] for r in again} == {r["job_id"] for r in first}
    assert_matches_what_was_served(world.out, again, world.sim)


@pytest.mark.parametrize("normalised", [False, True], ids=["input-as-sent", "input-normalised"])
def test_lost_answers_are_reconciled_so_every_unit_is_made_and_paid_once(
    write: Write, tmp_path: Path, normalised: bool
) -> None:
    # Identical bodies (count > 1) are the hard case: each lost answer must adopt a
    # different job, and none may take the job another unit's answer is bringing.  With
    # normalised input the server stores each job's input with its defaults, the seed
    # as a string and modelId added: a lost job must still be recognised.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: same\n    count: 12\n  - prompt: 'p{n}'\n"
        "    vars: {n: [" + ", ".join(map(str, range(40))) + "]}\n"
        "    params: {seed: 1234, guidance: 2.5}\n",
    )
    world = World(tmp_path, lose_answer_rate=0.3, seed=7, normalise_input=normalised)
    assert world.run(manifest, concurrency=6).exit_code == 0
    results = world.results()
    assert len(results) == 52 and {r["status"] for r in results} == {"success"}
    assert world.sim.answers_lost > 5
    assert world.sim.jobs_created == 52  # no job paid for twice, none lost
    assert len({r["job_id"] for r in results}) == 52
    assert_matches_what_was_served(world.out, results, world.sim)


def test_lost_answers_cost_a_handful_of_list_scans_not_one_each(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", many(600))
    world = World(tmp_path, lose_answer_rate=0.1, job_seconds=1, seed=11)
    assert world.run(manifest, concurrency=200, poll_interval=0.25).exit_code == 0
    assert world.sim.jobs_created == 600 and world.sim.answers_lost > 40
    # Batched: one scan serves every loss waiting at the time.
    assert world.sim.created_scans < world.sim.answers_lost / 5


def test_429_pressure_lowers_the_cap_to_the_servers_limit(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write("jobs.yaml", many(24))
    # An account whose limits cannot be read: the cap is learnt from the 429s.
    world = World(tmp_path, in_flight_limit=3, job_seconds=20, team_access=False)
    with caplog.at_level(logging.INFO, logger="batchgen"):
        assert world.run(manifest, concurrency=12).exit_code == 0
    assert world.sim.jobs_created == 24
    assert world.sim.requests["POST /v1/generate/custom/{model}"] > 24  # 429s were met
    assert "jobs in flight: at most 3 now (--concurrency 12)" in caplog.text


def test_out_of_credits_stops_submitting_and_the_rest_waits_for_more(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: p\n    count: 10\n",
    )
    world = World(tmp_path, credits=5.0)  # one creative unit per 64x64 job
    # Refused before anything is spent: the account says it cannot finish the batch.
    with pytest.raises(BatchgenError, match="needs about 10 CU .* has 5 left until") as refused:
        world.run(manifest, concurrency=2)
    assert refused.value.exit_code == 6 and world.sim.jobs_created == 0
    assert not world.sim.requests["POST /v1/generate/custom/{model}"]
    # --allow-partial runs what the credits allow.
    report = world.run(manifest, concurrency=2, allow_partial=True)
    assert report.exit_code == 6 and report.stopped == "out-of-credits"
    assert world.sim.jobs_created == 5
    assert "out of creative units" in report.line
    assert sum(r["status"] == "success" for r in world.results()) == 5

    world.configure(credits=None)  # topped up
    assert world.run(manifest, concurrency=2).exit_code == 0
    assert world.sim.jobs_created == 10


def test_a_model_the_plan_does_not_cover_fails_its_units_after_one_request(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "jobs:\n"
        "  - {model: model_imagen4-ultra, prompt: a, count: 4, aspect_ratio: '1:1'}\n"
        "  - {model: model_sim-fast, prompt: b, count: 2, width: 64, height: 64}\n",
    )
    world = World(tmp_path, restricted_models=("model_imagen4-ultra",))
    assert world.run(manifest, concurrency=1).exit_code == 1
    results = world.results()
    refused = [r for r in results if r["model"] == "model_imagen4-ultra"]
    assert len(refused) == 4 and all("does not give access" in r["error"] for r in refused)
    assert world.sim.requests["POST /v1/generate/custom/{model}"] == 1 + 2
    assert [r["status"] for r in results if r["model"] == "model_sim-fast"] == ["success"] * 2


def test_the_estimate_matches_what_the_run_then_spends(example: Path, tmp_path: Path) -> None:
    world = World(tmp_path)
    estimate = world.estimate(example)
    assert world.sim.jobs_created == 0  # dry runs create nothing
    assert estimate.units == UNITS == sum(shape.units for shape in estimate.shapes)
    # One dry run per model/size/params shape: the cats, two tile sizes, the CSV's numOutputs.
    assert (
        len(estimate.shapes)
        == world.sim.requests["POST /v1/generate/custom/{model} (dry run)"]
        == 4
    )
    assert estimate.estimated_left == sum(s.units * (s.cost_each or 0) for s in estimate.shapes) > 0
    assert world.run(example).exit_code == 0
    assert estimate.cost == world.sim.spent
    done = world.estimate(example)  # everything is done now
    assert (done.units, done.estimated_left) == (0, 0)


def test_an_estimate_with_no_journal_counts_entries_as_expanding_every_unit_would(
    write: Write,
) -> None:
    from batchgen.estimating import _shapes_of_entries, _shapes_of_units
    from batchgen.manifest import load_manifest
    from batchgen.options import RunOptions
    from batchgen.scenario.preflight import read_prompts

    write("p.csv", "prompt,numOutputs\na,1\nb,2\na,1\n")
    manifest = load_manifest(
        write(
            "jobs.yaml",
            "model: model_sim-fast\nwidth: 256\nheight: 256\njobs:\n"
            "  - {prompt: 'x {n}', vars: {n: [1, 2, 3]}, count: 2,"
            " sizes: [[256, 256], [512, 512], '16:9']}\n"
            "  - {prompts_file: p.csv, count: 3}\n"
            "  - {prompt: same shape again, params: {seed: per-unit}}\n"
            "  - {prompt: other model, model: model_sim-noseed}\n"
            "  - {prompt: 'gated {n}', vars: {n: [1, 2]}, count: 2,"
            " params: {numOutputs: 3}, quality: {attempts: 2}}\n",
        )
    )
    outputs = {"model_sim-fast": 4, "model_sim-noseed": 4}
    by_entries = _shapes_of_entries(manifest, read_prompts(manifest), {}, outputs)
    by_units = _shapes_of_units(manifest, None, None, RunOptions(), {}, outputs)
    assert by_entries == by_units
    assert sum(c.units for c in by_entries.values()) == 3 * 2 * 3 + 3 * 3 + 1 + 1 + 4
    # The gated entry: each image of its 4 units scored, 2 regenerations each at most.
    (gated,) = [c for c in by_entries.values() if c.gated]
    assert (gated.units, gated.gated, gated.regenerations) == (4, 12, 8)


def test_an_estimate_of_a_run_cut_short_counts_by_shape_as_expanding_every_unit_would(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial journal whose units are all the manifest's: the units left are the
    entries' less the journal's done, by shape; a manifest edited since is counted
    unit by unit (a departed unit must not be taken off)."""
    from batchgen import estimating as app
    from batchgen.estimating import _shapes_of_units
    from batchgen.manifest import load_manifest
    from batchgen.options import RunOptions
    from batchgen.store.journal import Journal

    text = (
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - {prompt: 'x {n}', vars: {n: [1, 2, 3, 4, 5, 6]}, count: 2,"
        " sizes: [[64, 64], [128, 128]]}\n"
        "  - {prompt: other model, model: model_sim-noseed, count: 5}\n"
    )
    manifest = write("jobs.yaml", text)
    world = World(tmp_path, job_seconds=10, jitter=0.5, seed=4)
    report = world.run(manifest, concurrency=6, max_runtime=25)
    assert 0 < report.succeeded < 29
    counted_by_units: list[int] = []
    original = app._shapes_of_units

    def spy(*args: object, **kwargs: object) -> object:
        counted_by_units.append(1)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "_shapes_of_units", spy)
    fast = world.estimate(manifest)
    assert counted_by_units == []  # by shape, no unit made
    journal = Journal(world.out)
    try:
        slow = _shapes_of_units(load_manifest(manifest), None, journal, RunOptions(), {}, {})
    finally:
        journal.close()
    assert {(s.model, s.size, s.units) for s in fast.shapes} == {
        (c.model, app._size_label(c.body), c.units) for c in slow.values()
    }
    assert fast.units == sum(c.units for c in slow.values()) > 0
    # Edited: two units leave; until a run of it ends with none departed, unit by unit.
    edited = write("jobs.yaml", text.replace("count: 5", "count: 3"))
    again = world.estimate(edited)
    assert counted_by_units == [1]
    assert again.units <= fast.units


def test_a_budget_stops_submitting_before_it_is_passed(write: Write, tmp_path: Path) -> None:
    # 256x256 costs 1 CU, 1024x1024 costs 4 CU in the simulator.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\njobs:\n"
        "  - {prompt: small, width: 256, height: 256, count: 6}\n"
        "  - {prompt: big, width: 1024, height: 1024, count: 3}\n",
    )
    world = World(tmp_path)
    report = world.run(manifest, concurrency=3, budget=9)
    assert report.exit_code == 6 and report.stopped == "budget"
    assert world.sim.spent <= 9 and world.sim.jobs_created >= 6
    assert "would pass --budget" in report.line
    # The budget counts what earlier runs spent in this directory too.
    assert world.run(manifest, concurrency=3, budget=12).exit_code == 6
    assert world.sim.spent <= 12
    assert world.run(manifest, concurrency=3, budget=100).exit_code == 0
    assert world.sim.jobs_created == 9


def test_the_seed_used_is_recorded(write: Write, tmp_path: Path) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - {prompt: fixed, params: {seed: 7}}\n"
        "  - {prompt: derived, params: {seed: per-unit}}\n"
        "  - {prompt: api}\n",
    )
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 0
    by_prompt = {r["prompt"]: r for r in world.results()}
    assert by_prompt["fixed"]["seed"] == 7
    derived = by_prompt["derived"]
    body = world.sim.jobs[derived["job_id"]].body
    assert derived["seed"] == derived["params"]["seed"] == body["seed"]
    api = by_prompt["api"]  # chosen by the API: read back from the asset's metadata
    assert api["seed"] == world.sim.assets[world.sim.jobs[api["job_id"]].asset_ids[0]].seed


def test_an_aspect_ratio_model_runs_end_to_end_and_records_each_images_real_size(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_imagen4-ultra\naspect_ratio: '1:1'\n"
        "filename: '{aspect_ratio}/{index}-{width}x{height}'\njobs:\n"
        "  - prompt: a lighthouse\n    sizes: ['16:9', '9:16']\n"
        "  - prompt: a harbour\n    params: {numOutputs: 2}\n",
    )
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 0
    results = {(r["prompt"], r["aspect_ratio"]): r for r in world.results()}
    assert world.sim.jobs_created == 3 and not world.sim.refusals
    expected = {("a lighthouse", "16:9"): (1408, 768), ("a lighthouse", "9:16"): (768, 1408),
                ("a harbour", "1:1"): (1024, 1024)}  # fmt: skip
    for key, (width, height) in expected.items():
        record = results[key]
        assert (record["width"], record["height"]) == (width, height)
        body = world.sim.jobs[record["job_id"]].body
        assert body["aspectRatio"] == key[1] and "width" not in body and "height" not in body
        for path, size in zip(record["files"], record["sizes"], strict=True):
            assert size == [width, height]
            content = (world.out / path).read_bytes()
            assert int.from_bytes(content[16:20], "big") == width  # the PNG's own header
    assert results[("a lighthouse", "16:9")]["files"] == ["images/16x9/0-1408x768.png"]
    rows = [json.loads(line) for line in (world.out / "metadata.jsonl").read_text().splitlines()]
    assert {(r["width"], r["height"]) for r in rows} == set(expected.values())
    assert len(rows) == 4


def test_images_are_named_by_the_filename_template(example: Path, tmp_path: Path) -> None:
    world = World(tmp_path)
    template = "{entry}/{index:03d}-{slug}-{width}x{height}"
    assert world.run(example, filename=template).exit_code == 0
    results = world.results()
    assert_matches_what_was_served(world.out, results, world.sim)
    files = sorted(path for record in results for path in record["files"])
    assert files[:3] == [
        "images/cats/000-a-cat-in-oil-256x256.png",
        "images/cats/001-a-cat-in-ink-256x256.png",
        "images/cats/002-a-lynx-in-oil-256x256.png",
    ]
    # Two images from one job: the second is numbered.
    assert "images/jobs-2/008-red-mug-256x256.png" in files
    assert "images/jobs-2/008-red-mug-256x256-1.png" in files
    assert len(set(files)) == len(files) == 4 + 4 + 2 * 2
    on_disk = (world.out / "images").rglob("*.png")
    assert sorted(p.relative_to(world.out).as_posix() for p in on_disk) == files

    # The next run finds every image under its templated name: nothing is fetched again.
    downloads = world.sim.requests["GET cdn"]
    assert world.run(example, filename=template).exit_code == 0
    assert world.sim.requests["GET cdn"] == downloads and world.sim.jobs_created == UNITS


def test_an_edited_manifest_never_overwrites_an_image_already_made(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    head = "model: model_sim-fast\nwidth: 64\nheight: 64\nfilename: '{index:03d}'\njobs:\n"
    manifest = write("jobs.yaml", head + "  - prompt: second\n  - prompt: third\n")
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 0
    images = world.out / "images"
    before = {p.name: p.read_bytes() for p in images.iterdir()}
    assert sorted(before) == ["000.png", "001.png"]

    # A prompt inserted at the top takes index 0, whose name the first run used.
    write("jobs.yaml", head + "  - prompt: first\n  - prompt: second\n  - prompt: third\n")
    assert world.run(manifest).exit_code == 0
    assert world.sim.jobs_created == 3
    for name, content in before.items():
        assert (images / name).read_bytes() == content
    by_prompt = {r["prompt"]: r for r in world.results()}
    assert by_prompt["second"]["files"] == ["images/000.png"]
    first = by_prompt["first"]
    assert first["files"] == [f"images/000~{first['id']}-0.png"]
    assert_matches_what_was_served(world.out, list(by_prompt.values()), world.sim)
    assert "images/000.png holds another image" in caplog.text


def test_a_changed_or_deleted_image_is_fetched_again_under_its_own_name(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\nfilename: '{entry}/{index}'\n"
        "jobs:\n  - {id: mugs, prompt: a mug, count: 3}\n",
    )
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 0
    first = world.results()
    mugs = world.out / "images/mugs"
    (mugs / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n edited by hand")
    (mugs / "1.png").unlink()

    assert world.run(manifest).exit_code == 0
    assert world.sim.jobs_created == 3  # fetched from the jobs already made, not made again
    again = world.results()
    assert [r["files"] for r in again] == [r["files"] for r in first]
    assert_matches_what_was_served(world.out, again, world.sim)
    assert sorted(p.name for p in mugs.iterdir()) == ["0.png", "1.png", "2.png"]


def test_max_runtime_stops_with_exit_4_and_the_next_run_finishes_the_work(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", many(8))
    world = World(tmp_path, job_seconds=60, jitter=0.0)
    report = world.run(manifest, concurrency=2, max_runtime=100)
    assert (report.exit_code, report.stopped) == (4, "max-runtime")
    made = world.sim.jobs_created
    assert 2 <= made < 8 and report.succeeded < 8
    again = world.run(manifest, concurrency=2)
    assert again.exit_code == 0 and world.sim.jobs_created == 8
    assert len(world.results()) == 8


def test_status_reports_states_cost_and_failures(write: Write, tmp_path: Path) -> None:
    import batchgen

    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: p\n    count: 4\n  - prompt: q forbidden\n",
    )
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 1
    status = batchgen.status(world.out)
    assert status.running is False and status.states == {"downloaded": 4, "failed": 1}
    assert status.spend.in_all == sum(r["cost"] or 0 for r in world.results()) > 0
    (failure,) = status.failures
    assert failure["permanent"] is True and "moderation" in failure["error"]
    # A permanent failure is left alone on a rerun, and tried again with --retry-failed.
    report = world.run(manifest)
    assert report.exit_code == 1 and "--retry-failed" in report.line
    posts = world.sim.requests["POST /v1/generate/custom/{model}"]
    world.run(manifest, retry_failed=True)
    assert world.sim.requests["POST /v1/generate/custom/{model}"] == posts + 1


def test_shards_run_apart_make_exactly_the_whole_set(write: Write, tmp_path: Path) -> None:
    import batchgen

    manifest = write("jobs.yaml", many(30))
    world = World(tmp_path)
    for shard in ("1/3", "2/3", "3/3"):
        assert world.run(manifest, shard=shard).exit_code == 0
    assert world.sim.jobs_created == 30
    per_shard = [world.results(world.out / f"shard-{i}-of-3") for i in (1, 2, 3)]
    ids = [r["id"] for results in per_shard for r in results]
    assert len(ids) == len(set(ids)) == 30  # every unit in exactly one shard
    assert all(per_shard)
    assert batchgen.status(world.out).states == {"downloaded": 30}
    rows = (world.out / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 30  # one dataset at the root, covering every shard


def test_a_chaotic_run_loses_nothing_pays_nothing_twice_and_leaks_nothing(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    units = 350
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 32\nheight: 32\njobs:\n"
        "  - prompt: same body\n    count: 50\n"
        "  - prompt: 'unit {n}'\n    vars: {n: [" + ", ".join(map(str, range(300))) + "]}\n",
    )
    world = World(
        tmp_path,
        job_seconds=20,
        jitter=0.5,
        seed=42,
        error_rate=0.03,
        lose_answer_rate=0.03,
        truncate_rate=0.05,
        failure_rate=0.03,
        stuck_rate=0.02,
        list_lag=3,
        list_holes=0.1,
        young_job_404=2,
        normalise_input=True,
    )
    report = world.run(manifest, concurrency=50, job_timeout=600, retries=8)
    results = world.results()
    assert len(results) == units and len({r["id"] for r in results}) == units
    failed = [r for r in results if r["status"] == "failure"]
    abandoned = [r for r in results if r["status"] == "abandoned"]
    assert report.exit_code == (1 if failed or abandoned else 0)
    assert world.sim.faults_injected > 10 and world.sim.answers_lost > 0
    for record in results:
        if record["status"] != "success":
            assert record["error"], record
            continue
        job = world.sim.jobs[record["job_id"]]
        for relative, asset_id in zip(record["files"], job.asset_ids, strict=True):
            assert (world.out / relative).read_bytes() == world.sim.assets[asset_id].content()
    assert_every_job_belongs_to_one_unit(world.out, world.sim, job_attempts=2)
    # The stuck jobs: past their deadline, cancels refused, abandoned (not failed).
    stuck = {job_id for job_id, job in world.sim.jobs.items() if job.stuck}
    assert {r["job_id"] for r in abandoned} == stuck and stuck
    assert report.abandoned == len(stuck)
    assert not list(world.out.rglob("*.part"))
    for text in (caplog.text, (world.out / "results.jsonl").read_text()):
        assert SIM_SECRET not in text
    assert SIM_SECRET.encode() not in (world.out / "journal.sqlite3").read_bytes()

    # The next run watches the abandoned jobs again and buys them no second one.
    def jobs_of(record: dict[str, object]) -> int:
        return sum(job.body["prompt"] == record["prompt"] for job in world.sim.jobs.values())

    before = {record["id"]: jobs_of(record) for record in abandoned}
    world.configure(error_rate=0.0, lose_answer_rate=0.0, truncate_rate=0.0)
    world.run(manifest, concurrency=50, job_timeout=600, retries=8)
    again = {r["id"]: r for r in world.results()}
    for record in abandoned:
        assert again[record["id"]]["job_id"] == record["job_id"]
        if record["prompt"] != "same body":
            assert jobs_of(record) == before[record["id"]]


def test_fresh_moves_the_old_output_aside_and_starts_over(write: Write, tmp_path: Path) -> None:
    manifest = write("jobs.yaml", many(2))
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 0
    first = (world.out / "results.jsonl").read_text()
    assert world.run(manifest, fresh=True).exit_code == 0
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("out.")]
    assert (aside / "results.jsonl").read_text() == first  # nothing was deleted
    assert world.sim.jobs_created == 4  # asked for: everything generated again
    assert len(world.results()) == 2


def test_status_on_the_command_line_reads_a_runs_directory(
    write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchgen.cli import main

    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: p\n    count: 4\n  - prompt: q forbidden\n",
    )
    world = World(tmp_path)
    world.run(manifest)
    assert main(["status", str(world.out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["states"] == {"downloaded": 4, "failed": 1} and report["running"] is False
    assert main(["status", str(world.out)]) == 0
    text = capsys.readouterr().out
    assert "4 downloaded" in text and "(for good)" in text and "moderation" in text
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    assert "no batchgen journal" in capsys.readouterr().err


def test_a_directory_written_before_engine_v2_resumes_as_it_is(
    write: Write, tmp_path: Path
) -> None:
    """A journal of schema 1 (no request kept with ``submitting``; ``finished`` states),
    as the previous version left it after a kill: every unit is finished from the jobs
    it has, and none is paid twice."""
    from batchgen.manifest import iter_units, load_manifest

    manifest = write("jobs.yaml", many(4))
    units = list(iter_units(load_manifest(manifest)))
    world = World(tmp_path)
    model = world.sim.model("model_sim-fast")
    assert model is not None

    def job_for(index: int) -> str:
        job = world.sim._job(model, units[index].request_body(), 1.0, created=True)
        return job.job_id

    world.out.mkdir()
    db = sqlite3.connect(world.out / "journal.sqlite3")
    try:
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE units (id TEXT PRIMARY KEY, state TEXT NOT NULL, job_id TEXT,
                submit_started TEXT, job_status TEXT, failed_jobs INTEGER NOT NULL DEFAULT 0,
                permanent INTEGER NOT NULL DEFAULT 0, cost REAL, error TEXT, files TEXT,
                result TEXT, updated REAL NOT NULL);
            CREATE TABLE jobs (job_id TEXT PRIMARY KEY, unit_id TEXT NOT NULL, cost REAL);
            CREATE INDEX units_state ON units (state);
            INSERT INTO meta VALUES ('schema', '1');
            """
        )
        lost = world.sim.server_wall() - 5  # an answer lost five seconds before
        rows = [
            (units[0].id, "submitted", job_for(0), None),
            (units[1].id, "finished", job_for(1), "success"),
            (units[2].id, "submitting", None, None),
        ]
        job_for(2)  # the lost answer's job, made all the same
        for unit_id, state, job_id, status in rows:
            started = datetime.fromtimestamp(lost, UTC).isoformat()
            db.execute(
                "INSERT INTO units (id, state, job_id, submit_started, job_status, updated)"
                " VALUES (?, ?, ?, ?, ?, 0)",
                (unit_id, state, job_id, started, status),
            )
            if job_id:
                db.execute("INSERT INTO jobs VALUES (?, ?, 1.0)", (job_id, unit_id))
        db.commit()
    finally:
        db.close()
    world.clock.jump(60)  # the jobs ended while batchgen was down
    report = world.run(manifest)
    assert report.exit_code == 0 and report.succeeded == 4
    assert world.sim.jobs_created == 4  # three adopted or watched again, one new
    assert_matches_what_was_served(world.out, world.results(), world.sim)
