"""Whether a unit's recorded files are still what was written."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.store.files import files_intact, stamp_of
from batchgen.store.journal import Journal

CONTENT = b"\x89PNG\r\n\x1a\n original"

# What a unit's POST sent, as the journal keeps it with ``submitting``.
SENT = '["model_x", {"prompt": "p"}]'


def written(tmp_path: Path) -> tuple[list[tuple[str, str]], list[tuple[int, int]]]:
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "images" / "u_0.png"
    path.write_bytes(CONTENT)
    return [("images/u_0.png", hashlib.sha256(CONTENT).hexdigest())], [stamp_of(path)]


def rewrite(path: Path, content: bytes, *, keep_stamp: bool) -> None:
    before = path.stat()
    path.write_bytes(content)
    if keep_stamp:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(
    ("change", "with_stamps", "intact"),
    [
        (None, True, True),
        (None, False, True),
        # Touched but the same bytes: the hash says it is intact.
        ("touch", True, True),
        ("other bytes", True, False),
        ("other bytes", False, False),
        ("deleted", True, False),
        # Same size and time as written: taken as unchanged without being read (the
        # price of not reading a whole dataset on every resume).
        ("same size, time restored", True, True),
        ("same size, time restored", False, False),
    ],
)
def test_files_intact(tmp_path: Path, change: str | None, with_stamps: bool, intact: bool) -> None:
    files, stamps = written(tmp_path)
    path = tmp_path / files[0][0]
    if change == "touch":
        rewrite(path, CONTENT, keep_stamp=False)
    elif change == "other bytes":
        rewrite(path, CONTENT + b" edited", keep_stamp=False)
    elif change == "deleted":
        path.unlink()
    elif change == "same size, time restored":
        rewrite(path, CONTENT.replace(b"original", b"ORIGINAL"), keep_stamp=True)
    assert files_intact(tmp_path, files, stamps if with_stamps else ()) is intact


def test_no_recorded_files_is_never_intact(tmp_path: Path) -> None:
    assert files_intact(tmp_path, [], []) is False


def test_the_journal_keeps_stamps_and_reads_rows_written_without_them(
    tmp_path: Path, open_journal: Callable[..., Journal]
) -> None:
    files, stamps = written(tmp_path)
    journal = open_journal(tmp_path)
    for unit_id, recorded in (("new", stamps), ("old", None)):
        journal.submitting(unit_id, "t", SENT)
        journal.submitted(unit_id, f"job-{unit_id}", 1.0)
        journal.downloaded(unit_id, files, {"id": unit_id}, recorded)
    new, old = journal.get("new"), journal.get("old")
    assert new is not None and old is not None
    assert new.files == old.files == tuple(files)
    assert new.stamps == tuple(stamps) and old.stamps == (None,)
