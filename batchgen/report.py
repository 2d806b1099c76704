"""How a run went, as :func:`batchgen.run` returns it (a module of its own: the
rerun of a finished batch builds one without loading the engine)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    line: str = field(repr=False, default="")

    @property
    def cost(self) -> float:
        """Spent by this run (the name of earlier versions)."""
        return self.spent_this_run

    def to_json(self) -> dict[str, Any]:
        report = dataclasses.asdict(self)
        del report["line"]
        return report
