"""``status``: what the runs in an output (or every shard under it) have done so far,
read from their journals; also while a run goes on."""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import (
    Callable,
    Iterable,
    Iterator,
)
from pathlib import Path
from typing import Any, TypeVar

from .ledger import Spend
from .manifest import Manifest
from .manifest.shard import Shard
from .plan import UNITS_CHUNK, units_of
from .report import Status
from .store.faults import storage_faults
from .store.journal import Journal, State

log = logging.getLogger(__name__)
T = TypeVar("T")


# How a place's recorded files are checked: (path, whether missing) of each one not as
# written (files_not_as_written for a directory, Present.problems for a bucket).
FileCheck = Callable[[Iterable[str]], Iterator[tuple[str, bool]]]


def tally(
    out: str,
    places: list[tuple[Path, Shard | None, FileCheck]],
    loaded: Manifest | None,
    *,
    running: bool,
    sharded: bool,
) -> Status:
    """The journals of ``places``, each with how its files are checked, summed up."""
    counts: Counter[str] = Counter()
    quality: Counter[str] = Counter()
    spend = Spend()
    failures: list[dict[str, Any]] = []
    missing = changed = manifest_units = left = 0
    for place, shard, not_as_written in places:
        journal = Journal(place)
        try:
            with storage_faults(journal.path):
                counts.update(journal.counts())
                quality.update(journal.quality_counts())
                spend += journal.spend()
                failures.extend(
                    {"id": unit_id, "error": error, "permanent": permanent, "job_id": job_id}
                    for unit_id, error, permanent, job_id in journal.failures()
                )
                for _, gone in not_as_written(journal.downloaded_files()):
                    missing += gone
                    changed += not gone
                if loaded is not None:
                    units = units_of(loaded, shard)
                    while chunk := list(itertools.islice(units, UNITS_CHUNK)):
                        rows = journal.get_many([unit.id for unit in chunk])
                        manifest_units += len(chunk)
                        left += sum(
                            1
                            for unit in chunk
                            if unit.id not in rows or rows[unit.id].state is not State.DOWNLOADED
                        )
        finally:
            journal.close()
    return Status(
        out=out,
        shards=[shard.directory for _, shard, _ in places if shard is not None] if sharded else [],
        running=running,
        units=sum(counts.values()),
        states=dict(counts),
        spend=spend,
        failures=failures,
        missing_files=missing,
        changed_files=changed,
        manifest_units=manifest_units if loaded is not None else None,
        left=left if loaded is not None else None,
        quality=dict(quality),
    )
