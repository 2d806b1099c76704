"""The output views, ``results.jsonl`` and ``metadata.jsonl``, kept current from the
journal at the end of every run.

They are views: the journal is the record.  Each is replaced atomically (a new file
renamed over the old one), so a reader, a user or ``datasets``, always sees a whole
file.  What keeps the end of a run cheap is that the journal numbers every change to a
unit's results line (:meth:`~batchgen.store.journal.Journal.changed_results`):

- nothing changed since the views were written: nothing is written (a rerun of a
  finished batch, a ``--max-runtime`` window that only watched jobs);
- only units with no line yet finished: the file is copied by the kernel (no work per
  line) and their lines appended, so the cost is that of the units finished;
- a line the views show changed (a failed unit that succeeded since, a unit being tried
  again), or a view's file is not as it was left (deleted, edited, or written by an
  earlier version): the view is rewritten from the journal, in journal order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from .dataset import METADATA_NAME, Kinds, extra_kinds, image_rows, mixed, write_metadata
from .files import copy_new
from .journal import Journal
from .results import RESULTS_NAME, write_results

STATE = "views:"


def update_views(journal: Journal, out_dir: Path, *, metadata: bool = True) -> str:
    """Bring ``results.jsonl`` (and, unless ``metadata`` is False, ``metadata.jsonl``)
    up to date with the journal; what was done: "unchanged", "appended" or "rewritten"."""
    views = [out_dir / RESULTS_NAME] + ([out_dir / METADATA_NAME] if metadata else [])
    state = journal.recall(STATE)
    shown = int(state.get("seq", -1))
    intact = shown >= 0 and all(_stamp(view) == state.get(view.name) for view in views)
    kinds: Kinds = json.loads(state.get("columns") or "{}")
    if intact:
        latest, replaced = journal.changed_results(shown)
        if latest == shown:
            return "unchanged"
        if metadata and not replaced:
            # New rows may not change a column's kind: the file would no longer load.
            grown = extra_kinds(
                (json.loads(line) for line in journal.results_changed(shown, latest)), kinds
            )
            replaced = any(kinds.get(column, kind) != kind for column, kind in grown.items())
            kinds = grown
        if not replaced:
            _append(views[0], journal.results_changed(shown, latest))
            if metadata:
                as_text = mixed(kinds)
                rows = (
                    json.dumps(row, ensure_ascii=False)
                    for line in journal.results_changed(shown, latest)
                    for row in image_rows(json.loads(line), "", as_text)
                )
                _append(views[1], rows)
            journal.mark_shown(latest, after=shown)
            _remember(journal, latest, views, kinds)
            return "appended"
    latest = journal.result_seq()
    write_results(journal.results(), out_dir)
    if metadata:
        kinds = write_metadata(out_dir, lambda: [("", journal.results())], journal.first_time)
    journal.mark_shown(latest)
    _remember(journal, latest, views, kinds)
    return "rewritten"


def _append(path: Path, lines: Iterable[str]) -> None:
    """``path`` with ``lines`` added, put in place in one rename: the old lines are
    copied by the kernel (``sendfile``), not read into Python."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        copy_new(path, temporary)
        with temporary.open("a", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _stamp(path: Path) -> str | None:
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return f"{status.st_size}:{status.st_mtime_ns}"


def _remember(journal: Journal, latest: int, views: list[Path], kinds: Kinds) -> None:
    journal.remember(STATE + "seq", str(latest))
    journal.remember(STATE + "columns", json.dumps(kinds, sort_keys=True))
    for view in views:
        journal.remember(STATE + view.name, _stamp(view) or "")
