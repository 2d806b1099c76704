"""What the library returns: how a run went (:class:`Report`), what an estimate, a
validation and a status found.  A module of its own, light: the rerun of a finished
batch builds a report without loading the engine."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .ledger import Spend


@dataclass(frozen=True, slots=True)
class Report:
    """How a run went: its summary, with the output directory's total spend and the
    exit code the command line gives for it."""

    total: int
    succeeded: int
    failed: int
    already_done: int
    failed_earlier: int
    # Jobs still running at the server past --job-timeout: paid, picked up next run.
    abandoned: int
    not_finished: int
    submitted: int
    # Creative units, from the ledger (batchgen.ledger): spent by this run, on this
    # output in all (earlier runs included), and jobs whose charge is not known.
    spent_this_run: float
    spent_total: float
    unpriced_jobs: int
    # What lost answers not yet resolved may have cost (estimated; see Summary).
    possibly_spent: float
    elapsed_seconds: float
    stopped: str | None
    # The first few failed units ({"id", "error", "permanent"}), and every failure
    # counted by reason ({"reason", "units"}).
    failures: list[dict[str, Any]]
    failure_reasons: list[dict[str, Any]]
    output: str
    exit_code: int
    uploaded: int = 0  # input images this run uploaded
    # The quality gate: the verdicts of the units it kept, and the images made again.
    quality_verdicts: dict[str, int] = field(default_factory=dict)
    regenerated: int = 0
    line: str = field(repr=False, default="")

    @property
    def cost(self) -> float:
        """Spent by this run (the name of earlier versions)."""
        return self.spent_this_run

    def to_json(self) -> dict[str, Any]:
        report = dataclasses.asdict(self)
        del report["line"]
        return report


@dataclass(frozen=True, slots=True)
class Shape:
    model: str
    size: str
    units: int
    cost_each: float | None
    # The quality gate: the images it scores of the units' first jobs, its price a call
    # (None: not priced), and the jobs it may make again at most.
    gate_calls: int = 0
    gate_cost_each: float | None = None
    regenerations_at_most: int = 0


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the units left to do would cost, by the API's dry run: an estimate, never
    booked.  Units of a shape the dry run gave no price for are counted apart."""

    units: int
    # The units' jobs and the quality gate's calls on their images.
    estimated_left: float
    shapes: list[Shape]
    unpriced_units: int = 0
    gate_calls: int = 0
    # Jobs the quality gate may make again, at most, and the cost if it makes them all
    # (each regeneration's images scored again).
    regenerations_at_most: int = 0
    worst_case: float | None = None
    unpriced_gate_calls: int = 0

    @property
    def cost(self) -> float:
        """The estimate (the name of earlier versions)."""
        return self.estimated_left

    def to_json(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "estimated_left": self.estimated_left,
            "unpriced_units": self.unpriced_units,
            "gate_calls": self.gate_calls,
            "regenerations_at_most": self.regenerations_at_most,
            "worst_case": self.worst_case,
            "unpriced_gate_calls": self.unpriced_gate_calls,
            "shapes": [dataclasses.asdict(shape) for shape in self.shapes],
        }


@dataclass(frozen=True, slots=True)
class Validation:
    manifest: str
    entries: int
    units: int
    # Whether the models' inputs were checked (they need credentials and the API), and
    # if not, why not.
    inputs_checked: bool
    not_checked_because: str = ""
    # Against the account, where its limits can be read: what the batch would cost
    # (the API's dry run: an estimate), what is left, and whether it is enough.
    estimated_cost: float | None = None
    # With the quality gate making every regeneration it may.
    worst_case: float | None = None
    credits_left: float | None = None
    credits_refusal: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Status:
    out: str
    shards: list[str]
    running: bool
    units: int
    states: dict[str, int]
    # Creative units, from the ledger: ``this_run`` is the last run's.
    spend: Spend
    failures: list[dict[str, Any]]
    # Images gone, and images whose size or time changed since they were written (a
    # quick look: batchgen verify hashes them).
    missing_files: int = 0
    changed_files: int = 0
    # Given the manifest: its units, and how many of them are not done yet.
    manifest_units: int | None = None
    left: int | None = None
    # The quality gate's tally: units kept as passed, warned, failed, and regenerating.
    quality: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
