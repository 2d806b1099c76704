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
    cost: float
    elapsed_seconds: float
    stopped: str | None
    # The first few failed units ({"id", "error", "permanent"}), and every failure
    # counted by reason ({"reason", "units"}).
    failures: list[dict[str, Any]]
    failure_reasons: list[dict[str, Any]]
    spent_total: float
    output: str
    exit_code: int
    uploaded: int = 0  # input images this run uploaded
    line: str = field(repr=False, default="")

    def to_json(self) -> dict[str, Any]:
        report = dataclasses.asdict(self)
        del report["line"]
        return report
