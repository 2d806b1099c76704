"""Where a run stands, and how it ended: one record for the engine to count in, the
displays to show (a copy, taken as they draw) and the report to be made from.  Pure."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..ledger import Spend, plural

# How many failed units it keeps to show; the results file has them all.
FAILURES_KEPT = 10
# Distinct reasons counted; any more are counted together (a bad night is a count of
# reasons, not a mail of thousands of lines).
REASONS_KEPT = 20
OTHER_REASONS = "other reasons"
# What makes one unit's error differ from another's for the same reason.
_IDENTIFIERS = re.compile(r"\b(?:job|asset|model)_[A-Za-z0-9-]+|\b[0-9a-f]{12,}\b")


def reason_of(error: str) -> str:
    """An error with the ids of its unit, job or asset left out: what units that failed
    for the same reason share."""
    return _IDENTIFIERS.sub("…", error)


@dataclass(slots=True)
class Summary:
    total: int = 0
    skipped: int = 0  # done by earlier runs
    left_failed: int = 0  # failed for good in earlier runs, not tried again
    submitted: int = 0  # jobs this run created (or adopted after a lost answer)
    succeeded: int = 0
    failed: int = 0
    # Units whose job ran past its deadline and could not be cancelled: it runs on at
    # the server, is paid, and the next run picks it up.
    abandoned: int = 0
    in_flight: int = 0  # jobs at the server
    downloading: int = 0  # jobs ended, their images on the way
    uploaded: int = 0  # input images this run uploaded
    # Units whose images the quality gate rejected, made again; and the verdicts kept.
    regenerating: int = 0
    verdicts: Counter[str] = field(default_factory=Counter)
    # Creative units, as the ledger has them (see batchgen.ledger): spent by this run,
    # and by the earlier runs of this output; jobs whose charge is not known.
    cost: float = 0.0
    spent_before: float = 0.0
    unpriced_jobs: int = 0
    # What lost answers not yet resolved may have cost (their jobs may exist), estimated:
    # counted against a budget, shown, and booked by the run that finds the jobs.
    possibly_spent: float = 0.0
    budget: float | None = None
    # Which option set the budget: --budget (the directory's) or --run-budget (this run's).
    budget_option: str = "--budget"
    elapsed: float = 0.0
    failures: list[tuple[str, str, bool]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    interrupted: bool = False
    # The signal that interrupted it, if one did (its exit code is 128 + it).
    signal: int | None = None
    out_of_time: bool = False
    out_of_credits: bool = False
    over_budget: bool = False

    def copy(self) -> Summary:
        return dataclasses.replace(
            self, failures=list(self.failures), reasons=Counter(), verdicts=Counter(self.verdicts)
        )

    # ------------------------------------------------------------------ counting

    def note_failure(self, unit_id: str, error: str, permanent: bool = False) -> None:
        self.failed += 1
        if len(self.failures) < FAILURES_KEPT:
            self.failures.append((unit_id, error, permanent))
        reason = reason_of(error)
        if reason not in self.reasons and len(self.reasons) >= REASONS_KEPT:
            reason = OTHER_REASONS
        self.reasons[reason] += 1

    # ------------------------------------------------------------------ derived

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def spent(self) -> float:
        """Creative units spent on this output in all, earlier runs included."""
        return self.spent_before + self.cost

    @property
    def spend(self) -> Spend:
        return Spend(
            this_run=self.cost,
            in_all=self.spent,
            unpriced_jobs=self.unpriced_jobs,
            possibly=self.possibly_spent,
        )

    @property
    def submitting_stopped(self) -> bool:
        return self.out_of_credits or self.over_budget

    @property
    def remaining(self) -> int:
        """Units this run still has to finish."""
        return max(0, self.total - self.skipped - self.left_failed - self.done - self.abandoned)

    @property
    def not_finished(self) -> int:
        return self.remaining

    @property
    def queued(self) -> int:
        """Units not yet submitted."""
        return max(0, self.remaining - self.in_flight - self.downloading)

    @property
    def finishing(self) -> int:
        """Units this run will still finish: once submitting has stopped (budget,
        credits), only those already submitted."""
        if self.submitting_stopped:
            return min(self.remaining, self.in_flight + self.downloading)
        return self.remaining

    @property
    def stopped(self) -> str | None:
        """Why the run ended before its work did, if it did."""
        if self.interrupted:
            return "interrupted"
        if self.out_of_time:
            return "max-runtime"
        if self.out_of_credits:
            return "out-of-credits"
        if self.over_budget:
            return "budget"
        return None

    def eta(self, rate: float | None) -> float | None:
        if self.finishing == 0:
            return 0.0
        if not rate:
            return None
        return self.finishing / rate

    # ------------------------------------------------------------------ words

    def line(self) -> str:
        """The final summary in a line."""
        parts = [
            f"{self.succeeded} succeeded",
            f"{self.failed} failed",
            f"{self.skipped} already done",
        ]
        if self.left_failed:
            parts.append(
                f"{self.left_failed} failed for good earlier (--retry-failed retries them)"
            )
        if self.abandoned:
            parts.append(
                f"{self.abandoned} still running at the server past --job-timeout "
                "(paid; the next run picks them up)"
            )
        if self.out_of_credits:
            parts.append("submitting stopped: out of creative units")
        if self.over_budget:
            parts.append(f"submitting stopped: the next job would pass {self.budget_option}")
        if self.not_finished > 0:
            parts.append(f"{self.not_finished} not finished")
        if self.uploaded:
            parts.append(f"{plural(self.uploaded, 'input image')} uploaded")
        if self.verdicts or self.regenerating:
            kept = ", ".join(f"{n} {v}" for v, n in sorted(self.verdicts.items()))
            parts.append(
                f"quality gate: {kept or 'nothing kept yet'} "
                f"({plural(self.regenerating, 'image')} made again)"
            )
        return f"{', '.join(parts)}; {self.spend.words()}; {self.elapsed:.1f}s"

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "already_done": self.skipped,
            "failed_earlier": self.left_failed,
            "abandoned": self.abandoned,
            "not_finished": self.not_finished,
            "submitted": self.submitted,
            "uploaded": self.uploaded,
            "quality_verdicts": dict(self.verdicts),
            "regenerated": self.regenerating,
            "spent_this_run": self.cost,
            "spent_total": self.spent,
            "unpriced_jobs": self.unpriced_jobs,
            "possibly_spent": self.possibly_spent,
            "elapsed_seconds": round(self.elapsed, 3),
            "stopped": self.stopped,
            "failures": [
                {"id": unit_id, "error": error, "permanent": permanent}
                for unit_id, error, permanent in self.failures
            ],
            "failure_reasons": [
                {"reason": reason, "units": units} for reason, units in self.reasons.most_common()
            ],
        }
