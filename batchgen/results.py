"""``<out>/results.jsonl``: one JSON object per unit, appended as units finish.

A rerun on the same output directory reads it first: a unit recorded as ``success``
whose files are all still there is not generated again.  A unit recorded as failed is
tried again, and its old line is dropped when the run ends, so the file keeps one
line per unit.  (The durable journal of the resume issue will supersede this.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .manifest import Unit

RESULTS_NAME = "results.jsonl"


@dataclass(frozen=True, slots=True)
class UnitResult:
    unit: Unit
    status: str
    job_id: str | None = None
    files: tuple[tuple[str, str], ...] = ()
    cost: float | None = None
    error: str | None = None
    job_status: str | None = None

    @classmethod
    def success(
        cls, unit: Unit, *, job_id: str, files: list[tuple[str, str]], cost: float | None
    ) -> UnitResult:
        return cls(
            unit=unit,
            status="success",
            job_id=job_id,
            files=tuple(files),
            cost=cost,
            job_status="success",
        )

    @classmethod
    def failure(
        cls,
        unit: Unit,
        *,
        error: str,
        job_id: str | None = None,
        cost: float | None = None,
        job_status: str | None = None,
    ) -> UnitResult:
        return cls(
            unit=unit,
            status="failure",
            job_id=job_id,
            error=error,
            cost=cost,
            job_status=job_status,
        )

    def to_json(self) -> dict[str, Any]:
        unit = self.unit
        return {
            "id": unit.id,
            "status": self.status,
            "entry": unit.entry,
            "model": unit.model,
            "prompt": unit.prompt,
            "width": unit.width,
            "height": unit.height,
            "params": dict(unit.params),
            "repeat": unit.repeat,
            "job_id": self.job_id,
            "job_status": self.job_status,
            "files": [path for path, _ in self.files],
            "sha256": [digest for _, digest in self.files],
            "cost": self.cost,
            "error": self.error,
            "metadata": dict(unit.metadata),
            "source": unit.source,
        }


def _files_present(out_dir: Path, record: Mapping[str, Any]) -> bool:
    files = record.get("files")
    if not isinstance(files, list) or not files:
        return False
    return all(isinstance(f, str) and (out_dir / f).is_file() for f in files)


class ResultsFile:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / RESULTS_NAME
        self._done: set[str] = set()
        self._retried: set[str] = set()
        self._failed_before: set[str] = set()
        self._reattach: dict[str, str] = {}
        self._job_ids: set[str] = set()
        self._previous_bytes = 0
        self._handle: TextIO | None = None

    def load(self) -> int:
        """Read what earlier runs recorded; returns how many units are already done."""
        if not self.path.exists():
            return 0
        with self.path.open("rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break  # a line cut by a crash: not a record
                self._previous_bytes += len(raw)
                try:
                    record = json.loads(raw)
                except ValueError:
                    continue
                unit_id = record.get("id") if isinstance(record, dict) else None
                if not isinstance(unit_id, str):
                    continue
                self._reattach.pop(unit_id, None)
                if isinstance(record.get("job_id"), str):
                    self._job_ids.add(record["job_id"])
                if record.get("status") == "success" and _files_present(self.out_dir, record):
                    self._done.add(unit_id)
                    self._failed_before.discard(unit_id)
                    continue
                self._done.discard(unit_id)
                self._failed_before.add(unit_id)
                job_id = record.get("job_id")
                if record.get("job_status") == "success" and isinstance(job_id, str):
                    # The images were made and paid for; only their download is missing.
                    self._reattach[unit_id] = job_id
        return len(self._done)

    def is_done(self, unit_id: str) -> bool:
        return unit_id in self._done

    def known_job_ids(self) -> set[str]:
        """Every job id an earlier run recorded for some unit."""
        return self._job_ids

    def job_to_reattach(self, unit_id: str) -> str | None:
        """The id of a job that succeeded for this unit but whose files are missing."""
        return self._reattach.get(unit_id)

    def open(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > self._previous_bytes:
            # Drop a partial last line left by a crash, so the next record starts clean.
            with self.path.open("r+b") as handle:
                handle.truncate(self._previous_bytes)
        self._handle = self.path.open("a", encoding="utf-8")

    def append(self, result: UnitResult) -> None:
        assert self._handle is not None, "open() first"
        if result.unit.id in self._failed_before:
            self._retried.add(result.unit.id)
        self._handle.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle is None:
            return
        self._handle.close()
        self._handle = None
        if self._retried:
            self._drop_superseded()

    def _drop_superseded(self) -> None:
        """Rewrite without the earlier lines of units recorded again by this run."""
        temporary = self.path.with_name(f".{RESULTS_NAME}.tmp")
        with self.path.open("rb") as source, temporary.open("wb") as target:
            position = 0
            for raw in source:
                earlier = position < self._previous_bytes
                position += len(raw)
                if earlier:
                    try:
                        unit_id = json.loads(raw).get("id")
                    except (ValueError, AttributeError):
                        unit_id = None
                    if unit_id in self._retried:
                        continue
                target.write(raw)
            target.flush()
            os.fsync(target.fileno())
        os.replace(temporary, self.path)
