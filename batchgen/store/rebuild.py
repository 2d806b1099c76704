"""A lost journal rebuilt from what is left: ``results.jsonl``, the files, and (through
the run's first reconciliation) the account's job list.

A run refuses to start over an output directory whose journal is missing or empty while
earlier work is there (:class:`~batchgen.errors.JournalMissingError`, exit 2): starting
from nothing would pay for every unit again.  ``--rebuild-journal`` writes a journal
from what remains:

- each line of ``results.jsonl`` becomes its unit's row.  ``success``: downloaded, each
  file hashed once here and recorded if it still holds its bytes (one that does not is
  fetched again from the unit's job by the run); ``failure``: failed (for good unless the
  line says otherwise: a line of an earlier version does not, and a retry would buy a
  job, so ``--retry-failed`` decides); ``abandoned``: watched again.
- every unit of the manifest without a line may have been submitted by a run whose
  results were never written (killed, or stopped with jobs in flight): it is
  *uncertain*, with the very request it would have sent, since the oldest trace in the
  directory less :data:`LOOKBACK`.  The run reconciles it before anything is sent,
  adopting its job from the account's list if one was made.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..manifest import Unit
from .files import IMAGES_DIR, Stamp, sha256_of, stamp_of
from .journal import Journal, State
from .results import RESULTS_NAME

log = logging.getLogger(__name__)

# How long before the oldest file in the directory its first POST may have been sent
# (a job runs a while before its image is written; clocks disagree).
LOOKBACK = 86_400.0


@dataclass(frozen=True, slots=True)
class Rebuilt:
    restored: int
    uncertain: int
    since: str


def earlier_work(out_dir: Path) -> bool:
    """Whether the directory holds results or images of earlier runs."""
    results = out_dir / RESULTS_NAME
    if results.is_file() and results.stat().st_size > 0:
        return True
    for _, _, names in os.walk(out_dir / IMAGES_DIR):
        if any(not name.startswith(".") for name in names):
            return True
    return False


class Remains(Protocol):
    """What is left of the output's files: a folder's, or a bucket's as listed."""

    def stamp(self, relative: str, sha256: str) -> Stamp | None:
        """The file's stamp if it still holds its bytes (as far as can be told); None
        if it is gone or another's: the run fetches it again from its job."""

    def oldest(self) -> float:
        """When the oldest thing the runs wrote was written (a POSIX time)."""


@dataclass(frozen=True, slots=True)
class FolderRemains:
    """A folder's files: each hashed once, its stamp taken."""

    out_dir: Path

    def stamp(self, relative: str, sha256: str) -> Stamp | None:
        try:
            if sha256_of(self.out_dir / relative) == sha256:
                return stamp_of(self.out_dir / relative)
        except OSError:
            pass
        return None

    def oldest(self) -> float:
        return _oldest_trace(self.out_dir)


def rebuild(
    journal: Journal,
    out_dir: Path,
    units: Iterable[Unit],
    sent_for: Callable[[Unit], str],
    remains: Remains | None = None,
) -> Rebuilt:
    """Write a row for every unit of ``units`` and every line of ``results.jsonl`` in
    ``out_dir`` (``sent_for`` gives the request a unit would send, as the journal keeps
    it; ``remains``: the files, the folder's unless given)."""
    remains = remains or FolderRemains(out_dir)
    records = _read_results(out_dir / RESULTS_NAME)
    since = datetime.fromtimestamp(remains.oldest() - LOOKBACK, UTC).isoformat()
    restored = uncertain = 0
    for unit in units:
        record = records.pop(unit.id, None)
        if record is None:
            journal.restore(unit.id, State.SUBMITTING, started=since, sent=sent_for(unit))
            uncertain += 1
        elif _restore(journal, remains, record):
            restored += 1
    for record in records.values():  # units no longer in the manifest keep their lines
        restored += _restore(journal, remains, record)
    return Rebuilt(restored, uncertain, since)


def _restore(journal: Journal, remains: Remains, record: dict[str, Any]) -> bool:
    unit_id, status, job_id = record["id"], record.get("status"), record.get("job_id")
    cost = record.get("cost")
    if status == "success":
        files: list[list[Any]] = []
        for path, digest in zip(record.get("files", []), record.get("sha256", []), strict=False):
            entry: list[Any] = [path, digest]
            stamp = remains.stamp(path, digest)
            if stamp is not None:
                entry.extend(stamp)
            files.append(entry)
        journal.restore(
            unit_id, State.DOWNLOADED, job_id=job_id, cost=cost, files=files, result=record
        )
    elif status == "abandoned" and job_id:
        journal.restore(
            unit_id,
            State.ABANDONED,
            job_id=job_id,
            cost=cost,
            error=record.get("error"),
            result=record,
        )
    elif status == "failure":
        journal.restore(
            unit_id,
            State.FAILED,
            job_id=job_id,
            cost=cost,
            error=record.get("error") or "failed",
            permanent=record.get("permanent", True),
            result=record,
        )
    else:
        return False
    return True


def _read_results(path: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {}
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        return records
    with handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                records[str(record["id"])] = record
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: not a result line; left out of the rebuild", path, number)
    return records


def _oldest_trace(out_dir: Path) -> float:
    """The oldest modification time of anything the runs wrote (the client's clock)."""
    oldest = datetime.now(UTC).timestamp()
    for root, _, names in os.walk(out_dir):
        for name in names:
            try:
                oldest = min(oldest, (Path(root) / name).stat().st_mtime)
            except OSError:
                continue
    return oldest
