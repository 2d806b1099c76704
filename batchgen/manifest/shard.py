"""Split one manifest's units over many machines: ``--shard I/N``.

A unit belongs to shard ``I`` of ``N`` when its stable id, read as a number, leaves
remainder ``I - 1`` modulo ``N``: every unit is in exactly one shard, the same one on
every machine and every run, and the shards come out evenly sized.  Each shard keeps
its own journal, lock and results in ``ROOT/shard-I-of-N/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .types import Unit

SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
SHARD_DIRECTORY = re.compile(r"^shard-(\d+)-of-(\d+)$")
MAX_SHARDS = 100_000
# Bits of the unit id used: plenty to spread units evenly over any number of shards.
ID_HEX_DIGITS = 15


@dataclass(frozen=True, slots=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = SHARD_PATTERN.match(text)
        if not match:
            raise ValueError(f"--shard must look like I/N (e.g. 3/8), got {text!r}")
        index, count = int(match[1]), int(match[2])
        if not 1 <= count <= MAX_SHARDS or not 1 <= index <= count:
            raise ValueError(f"--shard I/N needs 1 <= I <= N <= {MAX_SHARDS}, got {text!r}")
        return cls(index, count)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], shards: int | None = None) -> Shard:
        """The shard of this task of a Kubernetes indexed Job (``JOB_COMPLETION_INDEX``,
        0-based, with ``shards`` the Job's completions) or a SLURM array
        (``SLURM_ARRAY_TASK_ID`` from ``SLURM_ARRAY_TASK_MIN``, of
        ``SLURM_ARRAY_TASK_COUNT``): ``--shard auto``."""
        if environ.get("SLURM_ARRAY_TASK_ID"):
            try:
                task = int(environ["SLURM_ARRAY_TASK_ID"])
                first = int(environ.get("SLURM_ARRAY_TASK_MIN") or 0)
                count = shards or int(environ["SLURM_ARRAY_TASK_COUNT"])
            except (KeyError, ValueError):
                raise ValueError(
                    "--shard auto: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and "
                    "SLURM_ARRAY_TASK_COUNT must be whole numbers (or give --shards N)"
                ) from None
            return cls.parse(f"{task - first + 1}/{count}")
        if environ.get("JOB_COMPLETION_INDEX"):
            if shards is None:
                raise ValueError(
                    "--shard auto in a Kubernetes indexed Job needs --shards N (its completions)"
                )
            try:
                index = int(environ["JOB_COMPLETION_INDEX"])
            except ValueError:
                raise ValueError("--shard auto: JOB_COMPLETION_INDEX is not a number") from None
            return cls.parse(f"{index + 1}/{shards}")
        raise ValueError(
            "--shard auto: neither JOB_COMPLETION_INDEX (a Kubernetes indexed Job) nor "
            "SLURM_ARRAY_TASK_ID (a SLURM array) is set"
        )

    def holds(self, unit_id: str) -> bool:
        return int(unit_id[:ID_HEX_DIGITS], 16) % self.count == self.index - 1

    def select(self, units: Iterable[Unit]) -> Iterator[Unit]:
        return (unit for unit in units if self.holds(unit.id))

    @property
    def directory(self) -> str:
        return f"shard-{self.index}-of-{self.count}"


def shard_directories(root: Path) -> list[Path]:
    """The shard output directories under an output root, in shard order."""
    found = []
    for child in root.iterdir() if root.is_dir() else ():
        match = SHARD_DIRECTORY.match(child.name)
        if match and child.is_dir():
            found.append((int(match[2]), int(match[1]), child))
    return [path for _, _, path in sorted(found)]
