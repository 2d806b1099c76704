"""Local faults: a full disk, a damaged or lost journal, a file in the way, a lock file
deleted under a run.  Each is one line with its own exit code, nothing recorded is
lost, and the next run pays for nothing twice.  On virtual time, against the simulator
in memory; the disk's refusals are injected where the bytes are written (tests run as
root, where permissions refuse nothing), SQLite's own "database or disk is full" by
capping the journal's pages."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import batchgen
from batchgen.cli import main
from batchgen.errors import JournalMissingError, OutputLockedError, StorageError
from batchgen.output import local as app
from batchgen.store.faults import storage_error
from batchgen.store.files import PartFile
from batchgen.store.journal import JOURNAL_NAME, Journal
from batchgen.store.lock import LOCK_NAME, OutputLock
from tests.helpers import World, assert_matches_what_was_served

Write = Callable[[str, str], Path]

MANIFEST = (
    "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
    "  - prompt: 'p{n}'\n    vars: {n: [" + ", ".join(map(str, range(30))) + "]}\n"
)


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


def disk_full_after(monkeypatch: pytest.MonkeyPatch, images: int) -> None:
    """Image files can be written ``images`` times more, then the disk is full."""
    finish = PartFile.finish
    left = [images]

    def finish_or_full(self: PartFile, *args: Any) -> Path:
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path))
        left[0] -= 1
        return finish(self, *args)

    monkeypatch.setattr(PartFile, "finish", finish_or_full)


def test_a_disk_that_fills_up_stops_the_run_in_one_line_and_the_next_run_resumes(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, seed=4)
    disk_full_after(monkeypatch, images=12)
    with pytest.raises(StorageError) as caught:
        world.run(manifest, concurrency=6)
    assert "No space left on device; free some space" in one_line(caught.value)
    assert caught.value.exit_code == 5
    assert not list((world.out / "images").rglob(".*.part"))  # nothing half-written kept
    status = batchgen.status(world.out)
    assert status.states.get("downloaded", 0) == 12

    monkeypatch.undo()  # space freed
    again = world.run(manifest, concurrency=6)
    assert again.exit_code == 0 and again.already_done == 12
    assert world.sim.jobs_created == 30  # not one job bought twice
    assert_matches_what_was_served(world.out, world.results(), world.sim)


def test_a_journal_that_cannot_grow_stops_the_run_and_pays_nothing_twice(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, seed=5)
    opened = Journal._open

    def capped(self: Journal) -> None:
        opened(self)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages + 2}")

    monkeypatch.setattr(Journal, "_open", capped)
    with pytest.raises(StorageError) as caught:
        world.run(manifest, concurrency=6)
    assert "database or disk is full" in one_line(caught.value)

    monkeypatch.undo()
    again = world.run(manifest, concurrency=6)
    assert again.exit_code == 0 and again.succeeded + again.already_done == 30
    # A POST whose job id the full journal could not take was recorded before it was
    # sent (submitting): its job is found again, not bought again.
    assert world.sim.jobs_created == 30
    assert_matches_what_was_served(world.out, world.results(), world.sim)


def test_the_lock_holds_when_its_file_is_deleted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputLock(out):
        (out / LOCK_NAME).unlink()
        with pytest.raises(OutputLockedError, match="in use by another batchgen run"):
            OutputLock(out).__enter__()
    with OutputLock(out):  # released with its holder
        pass


def test_a_run_on_a_directory_in_use_is_refused_even_without_its_lock_file(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    world.out.mkdir()
    with OutputLock(world.out):
        (world.out / LOCK_NAME).unlink()
        with pytest.raises(OutputLockedError):
            world.run(manifest)
    assert world.sim.jobs_created == 0


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_journal_over_earlier_work_is_refused_then_rebuilt_without_paying_again(
    write: Write, tmp_path: Path, how: str
) -> None:
    # And one unit the moderation refuses for good: a rebuild must not try it again.
    manifest = write("jobs.yaml", MANIFEST + "  - prompt: forbidden\n")
    world = World(tmp_path, seed=6)
    assert world.run(manifest, concurrency=6).exit_code == 1
    first = {r["id"]: r["job_id"] for r in world.results()}
    posts = world.sim.requests["POST /v1/generate/custom/{model}"]
    journal = world.out / JOURNAL_NAME
    for leftover in world.out.glob(JOURNAL_NAME + "-*"):
        leftover.unlink()
    if how == "deleted":
        journal.unlink()
    else:
        journal.write_bytes(b"")

    with pytest.raises(JournalMissingError) as caught:
        world.run(manifest, concurrency=6)
    assert "--rebuild-journal" in one_line(caught.value) and caught.value.exit_code == 2
    assert world.sim.jobs_created == 30

    rebuilt = world.run(manifest, concurrency=6, rebuild_journal=True)
    assert rebuilt.exit_code == 1 and rebuilt.already_done == 30 and rebuilt.failed_earlier == 1
    assert world.sim.jobs_created == 30
    assert world.sim.requests["POST /v1/generate/custom/{model}"] == posts  # none sent
    assert {r["id"]: r["job_id"] for r in world.results()} == first


def test_a_rebuild_finds_the_jobs_of_a_run_killed_before_it_wrote_its_results(
    write: Write, tmp_path: Path
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, seed=7, job_seconds=20)
    world.run(manifest, concurrency=6, max_runtime=45)  # about half done, six in flight
    done = len(world.results())
    # A run killed now would have written no results at all.
    (world.out / "results.jsonl").write_text(
        "".join(line + "\n" for line in (world.out / "results.jsonl").read_text().splitlines()[:5])
    )
    made = world.sim.jobs_created
    assert 5 < done < made < 30
    (world.out / JOURNAL_NAME).unlink()
    world.clock.jump(60)

    rebuilt = world.run(manifest, concurrency=6, rebuild_journal=True)
    assert rebuilt.exit_code == 0
    results = world.results()
    assert len(results) == 30 and {r["status"] for r in results} == {"success"}
    assert world.sim.jobs_created == 30  # every job made before was found, none bought again
    assert_matches_what_was_served(world.out, results, world.sim)


def test_rebuilding_a_journal_that_holds_units_is_refused(write: Write, tmp_path: Path) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    world.run(manifest)
    with pytest.raises(batchgen.errors.ConfigError, match="holds units"):
        world.run(manifest, rebuild_journal=True)


def test_a_damaged_journal_is_one_line_and_left_as_it_is(write: Write, tmp_path: Path) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    world.out.mkdir()
    damaged = b"this is not a database, it was overwritten " * 200
    (world.out / JOURNAL_NAME).write_bytes(damaged)
    with pytest.raises(StorageError) as caught:
        world.run(manifest)
    assert "journal is damaged" in one_line(caught.value)
    assert (world.out / JOURNAL_NAME).read_bytes() == damaged
    assert world.sim.jobs_created == 0
    with pytest.raises(StorageError, match="journal is damaged"):
        batchgen.status(world.out)


def test_cli_exit_codes_for_local_faults(
    write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a directory\n")
    code = main(["run", str(manifest), "--simulate", "--out", str(in_the_way), "-q"])
    error = capsys.readouterr().err.strip()
    assert code == 5 and error.count("\n") == 0
    assert error.startswith("batchgen: error: ") and "must be a directory" in error

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / JOURNAL_NAME).write_bytes(b"\x00garbage" * 500)
    assert main(["status", str(damaged)]) == 5
    assert "damaged" in capsys.readouterr().err


def test_fresh_twice_in_one_second_keeps_both(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    monkeypatch.setattr(app.time, "strftime", lambda _: "20270115-080000")
    world.run(manifest)
    world.run(manifest, fresh=True)
    world.run(manifest, fresh=True)
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out"))
    assert kept == ["out", "out.20270115-080000", "out.20270115-080000-2"]


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "x.png"), "x.png: No space left"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "free some space"),
        (OSError(errno.EROFS, "Read-only file system"), "make it writable"),
        (OSError(errno.EACCES, "Permission denied", "out"), "out: Permission denied; make"),
        (OSError(errno.ENOTDIR, "Not a directory", "out"), "must be a directory"),
        (sqlite3.OperationalError("database or disk is full"), "free some space"),
        (sqlite3.OperationalError("attempt to write a readonly database"), "make it writable"),
        (sqlite3.DatabaseError("file is not a database"), "--rebuild-journal"),
        (sqlite3.DatabaseError("database disk image is malformed"), "journal is damaged"),
    ],
)
def test_each_local_fault_says_what_it_hit_and_what_to_do(fault: Exception, says: str) -> None:
    error = storage_error(fault, Path("out/journal.sqlite3"))  # type: ignore[arg-type]
    assert says in one_line(error) and error.__cause__ is fault and error.exit_code == 5
