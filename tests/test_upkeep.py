"""prune and verify: looking after an output directory between runs, never buying a job."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

import batchgen
from batchgen.cli import main
from batchgen.store.journal import Journal
from tests.helpers import World, assert_matches_what_was_served

Write = Callable[[str, str], Path]


def manifest_of(write: Write, prompts: list[str]) -> Path:
    jobs = "".join(f"  - prompt: {prompt!r}\n" for prompt in prompts)
    return write("jobs.yaml", f"model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n{jobs}")


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name_the_manifest", [True, False])
def test_prune_forgets_the_units_that_left_the_manifest(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture, name_the_manifest: bool
) -> None:
    world = World(tmp_path)
    world.run(manifest_of(write, ["a", "b", "c"]))
    gone = next(r for r in world.results() if r["prompt"] == "c")
    manifest = manifest_of(write, ["a", "b"])
    world.run(manifest)
    assert "1 units recorded" in caplog.text and "batchgen prune" in caplog.text

    pruned = batchgen.prune(world.out, manifest if name_the_manifest else None, delete_files=True)
    assert (pruned.units, pruned.files_deleted) == (1, 1)
    assert {r["prompt"] for r in world.results()} == {"a", "b"}
    assert {row["prompt"] for row in lines(world.out / "metadata.jsonl")} == {"a", "b"}
    assert not (world.out / str(gone["files"][0])).exists()  # type: ignore[index]
    journal = Journal(world.out)
    try:
        assert journal.owns_job(str(gone["job_id"]))  # its job stays its own, for ever
    finally:
        journal.close()
    caplog.clear()
    assert world.run(manifest).already_done == 2
    assert "no longer in the manifest" not in caplog.text
    assert world.sim.jobs_created == 3


def test_prune_keeps_files_unless_asked_and_needs_a_manifest_to_know(
    write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(tmp_path)
    world.run(manifest_of(write, ["a", "b"]))
    kept = world.results()[1]["files"][0]  # type: ignore[index]
    manifest = manifest_of(write, ["a"])
    assert main(["prune", str(world.out), str(manifest)]) == 0
    assert capsys.readouterr().out.strip() == f"{world.out}: 1 unit forgotten"
    assert (world.out / str(kept)).is_file()
    assert main(["prune", str(tmp_path / "nowhere")]) == 2


def test_verify_finds_missing_and_altered_images_and_fixes_them_without_a_job(
    write: Write, tmp_path: Path
) -> None:
    world = World(tmp_path, seed=3)
    world.run(manifest_of(write, ["a", "b", "c", "d"]))
    results = world.results()
    missing, altered = (world.out / str(r["files"][0]) for r in results[:2])  # type: ignore[index]
    missing.unlink()
    altered.write_bytes(b"\x89PNG\r\n\x1a\n not what was served")

    found = batchgen.verify(world.out)
    assert (found.checked, len(found.missing), len(found.altered)) == (4, 1, 1)
    assert not found.intact

    fixed = world.call(lambda: batchgen.averify(world.out, fix=True, backend=world.backend))
    assert fixed.fixed == 2 and fixed.intact and not fixed.not_fixed
    assert world.sim.jobs_created == 4  # fetched again from their jobs, never bought
    assert_matches_what_was_served(world.out, world.results(), world.sim)
    assert batchgen.verify(world.out).intact


def test_verify_on_the_command_line_exits_1_when_images_are_broken(
    write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(tmp_path)
    world.run(manifest_of(write, ["a"]))
    assert main(["verify", str(world.out), "-q"]) == 0
    assert capsys.readouterr().out == ""
    (world.out / str(world.results()[0]["files"][0])).unlink()  # type: ignore[index]
    assert main(["verify", str(world.out), "--json"]) == 1
    assert len(json.loads(capsys.readouterr().out)["missing"]) == 1


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="batchgen")


def test_status_notices_deleted_files_and_what_is_left(
    write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World(tmp_path)
    world.run(manifest_of(write, ["a", "b"]))
    (world.out / str(world.results()[0]["files"][0])).unlink()  # type: ignore[index]
    grown = manifest_of(write, ["a", "b", "c"])
    found = batchgen.status(world.out, grown)
    assert (found.missing_files, found.changed_files) == (1, 0)
    assert (found.manifest_units, found.left) == (3, 1)
    assert main(["status", str(world.out), str(grown)]) == 0
    shown = capsys.readouterr().out
    assert "1 of the manifest's 3 units left to do" in shown and "1 image missing" in shown


def test_verify_fix_takes_simulate_as_run_does(
    tmp_path: Path, write: Callable[[str, str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--simulate is offered by every command that talks to the API: an output made on
    the simulator is mended from it."""
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 2}\n",
    )
    out = tmp_path / "out"
    fast = ["--sim-job-seconds", "0.05", "--poll-interval", "0.02", "-q"]
    assert main(["run", str(manifest), "--out", str(out), "--simulate", *fast]) == 0
    image = next((out / "images").rglob("*.png"))
    image.unlink()
    assert main(["verify", str(out), "--fix", "--simulate", "-q"]) == 0
    assert image.is_file()
    capsys.readouterr()
