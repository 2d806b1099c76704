"""results.jsonl and metadata.jsonl kept current from the journal: nothing written when
nothing changed, lines appended when only new units finished, a rewrite when a line
shown must change or a file is not as it was left; whole files at every moment."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchgen.store.dataset import METADATA_NAME
from batchgen.store.journal import Journal
from batchgen.store.results import RESULTS_NAME
from batchgen.store.views import update_views

SENT = '["model_x", {"prompt": "p"}]'


def success(journal: Journal, unit_id: str, prompt: str = "p") -> None:
    journal.submitting(unit_id, "2027-01-15T08:00:00+00:00", SENT)
    journal.submitted(unit_id, f"job-{unit_id}", 1.0)
    result = result_line(unit_id, "success", prompt=prompt, files=[f"images/{unit_id}_0.png"])
    journal.downloaded(unit_id, [(f"images/{unit_id}_0.png", "ab")], result)


def failure(journal: Journal, unit_id: str) -> None:
    journal.submitting(unit_id, "2027-01-15T08:00:00+00:00", SENT)
    journal.failed(
        unit_id,
        error="HTTP 503",
        permanent=False,
        job_id=None,
        job_status=None,
        result=result_line(unit_id, "failure", files=[]),
    )


def result_line(unit_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"id": unit_id, "status": status, "sizes": [[64, 64]], "cost": 1.0, **fields}


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ids(out: Path) -> list[str]:
    return [record["id"] for record in lines(out / RESULTS_NAME)]


def images(out: Path) -> list[str]:
    return [row["file_name"] for row in lines(out / METADATA_NAME)]


def test_views_follow_the_journal_doing_only_what_changed(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    success(journal, "u1")
    success(journal, "u2")
    assert update_views(journal, tmp_path) == "rewritten"  # the first time
    assert ids(tmp_path) == ["u1", "u2"]
    before = (tmp_path / RESULTS_NAME).stat().st_mtime_ns, (tmp_path / METADATA_NAME).stat()

    assert update_views(journal, tmp_path) == "unchanged"  # a rerun with nothing to do
    assert (tmp_path / RESULTS_NAME).stat().st_mtime_ns == before[0]

    success(journal, "u3")
    failure(journal, "u4")
    assert update_views(journal, tmp_path) == "appended"
    assert ids(tmp_path) == ["u1", "u2", "u3", "u4"]
    assert images(tmp_path) == [f"images/{u}_0.png" for u in ("u1", "u2", "u3")]

    # The same line again (a deleted file fetched again from its job): no change.
    again = result_line("u1", "success", prompt="p", files=["images/u1_0.png"])
    journal.downloaded("u1", [("images/u1_0.png", "ab")], again)
    assert update_views(journal, tmp_path) == "unchanged"

    success(journal, "u4")  # a line shown changes: failed, now done
    assert update_views(journal, tmp_path) == "rewritten"
    assert [r["status"] for r in lines(tmp_path / RESULTS_NAME)] == ["success"] * 4
    assert sorted(images(tmp_path)) == [f"images/u{n}_0.png" for n in range(1, 5)]


def test_a_unit_tried_again_leaves_the_views_until_it_has_a_result(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    failure(journal, "u1")
    success(journal, "u2")
    update_views(journal, tmp_path)
    journal.submitting("u1", "2027-01-15T09:00:00+00:00", SENT)  # sent again
    assert update_views(journal, tmp_path) == "rewritten"
    assert ids(tmp_path) == ["u2"]
    success(journal, "u1")
    assert update_views(journal, tmp_path) == "appended"
    assert ids(tmp_path) == ["u2", "u1"]


def test_a_view_not_as_it_was_left_is_rewritten(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    success(journal, "u1")
    update_views(journal, tmp_path)
    (tmp_path / RESULTS_NAME).unlink()
    assert update_views(journal, tmp_path) == "rewritten"
    assert ids(tmp_path) == ["u1"]
    with (tmp_path / METADATA_NAME).open("a") as handle:
        handle.write('{"file_name": "a stray row"}\n')
    success(journal, "u2")
    assert update_views(journal, tmp_path) == "rewritten"
    assert images(tmp_path) == ["images/u1_0.png", "images/u2_0.png"]


def test_appending_gives_the_lines_a_rewrite_would(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path / "a")
    for n in range(50):
        success(journal, f"u{n:02d}", prompt=f"prompt {n}")
        if n % 10 == 9:
            update_views(journal, tmp_path / "a")
    appended = (tmp_path / "a" / RESULTS_NAME).read_text()
    (tmp_path / "a" / RESULTS_NAME).unlink()
    update_views(journal, tmp_path / "a")
    assert (tmp_path / "a" / RESULTS_NAME).read_text() == appended
    assert not [p for p in os.listdir(tmp_path / "a") if p.endswith(".tmp")]


def test_a_journal_of_an_earlier_version_gets_its_views_rewritten_once(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    journal = open_journal(tmp_path)
    success(journal, "u1")
    # As an earlier version left it: results not numbered, no views recorded.
    journal._db.execute("UPDATE units SET result_seq = NULL, shown = 0")
    assert update_views(journal, tmp_path) == "rewritten"
    assert update_views(journal, tmp_path) == "unchanged"
    success(journal, "u2")
    assert update_views(journal, tmp_path) == "appended"
    assert ids(tmp_path) == ["u1", "u2"]


def test_a_rerun_with_nothing_to_do_writes_no_view(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    from tests.helpers import World

    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 5}\n",
    )
    world = World(tmp_path)
    world.run(manifest)
    stamps = [(world.out / name).stat().st_mtime_ns for name in (RESULTS_NAME, METADATA_NAME)]
    assert world.run(manifest).already_done == 5
    assert [(world.out / n).stat().st_mtime_ns for n in (RESULTS_NAME, METADATA_NAME)] == stamps


def test_a_finished_batch_is_known_finished_without_expanding_a_unit(
    write: Callable[[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchgen import running as app
    from tests.helpers import World

    write("p.txt", "".join(f"prompt {n}\n" for n in range(20)))
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompts_file: p.txt\n",
    )
    world = World(tmp_path)
    assert world.run(manifest).succeeded == 20
    engine = app.run_engine

    async def no_engine(*args: Any) -> Any:
        raise AssertionError("the engine ran for a finished batch")

    monkeypatch.setattr(app, "run_engine", no_engine)
    again = world.run(manifest)
    assert again.exit_code == 0 and again.already_done == 20

    # Anything changed, and the engine looks: a file deleted, a prompt added.
    monkeypatch.setattr(app, "run_engine", engine)
    first = world.results()[0]["files"][0]
    (world.out / first).unlink()
    assert world.run(manifest).already_done == 19 and (world.out / first).is_file()
    monkeypatch.setattr(app, "run_engine", no_engine)
    assert world.run(manifest).already_done == 20
    monkeypatch.setattr(app, "run_engine", engine)
    with (tmp_path / "p.txt").open("a") as handle:
        handle.write("one more\n")
    grown = world.run(manifest)
    assert grown.succeeded == 1 and grown.already_done == 20
    assert world.sim.jobs_created == 21
