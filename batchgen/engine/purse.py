"""The budget, shared by everything a run pays for: jobs and quality-gate calls.

A payment is reserved before its request is sent (the API charges before it answers,
and an answer may be lost) and released once the ledger has what was charged, or
nothing was made.  Checking and reserving are one step, with no await between them, so
payments made at once never pass the budget together.
"""

from __future__ import annotations

import logging

from ..store.journal import Journal
from .summary import Summary

log = logging.getLogger(__name__)


class Purse:
    def __init__(
        self,
        summary: Summary,
        journal: Journal,
        budget: float | None,
        *,
        warn_at: float | None = None,
    ) -> None:
        self._summary = summary
        self._journal = journal
        self.budget = budget
        # Spend at which to warn once (a fraction of the budget: --warn-at), if asked.
        self._warn_at = warn_at * budget if warn_at is not None and budget is not None else None
        # Creative units reserved by payments under way.
        self.reserved = 0.0

    def reserve(self, cost: float, what: str, *, after_stop: bool = False) -> bool:
        """Reserve ``cost`` for the next ``what`` (a job, a gate call), or say no if it
        would pass the budget: then submitting stops for this run, and the warning is
        given once.  ``after_stop``: a payment for what is already made (a gate call on
        an image paid for) goes on while it fits, also once submitting has stopped for
        the budget; never once the account is out of credits."""
        if self._summary.out_of_credits:
            return False
        if self._summary.over_budget and not after_stop:
            return False
        if self.budget is None:
            return True
        spent = self._summary.spent_before + self._journal.run_spent
        if spent + self.reserved + cost > self.budget:
            if not self._summary.over_budget:
                self._summary.over_budget = True
                log.warning(
                    "budget: %g CU spent, %g reserved for payments under way, the next %s "
                    "costs about %g (estimated), %s is %g (%g left): no more submissions; "
                    "the jobs in flight finish",
                    spent,
                    self.reserved,
                    what,
                    cost,
                    self._summary.budget_option,
                    self.budget,
                    max(self.budget - spent - self.reserved, 0.0),
                )
            return False
        self.reserved += cost
        return True

    def release(self, cost: float) -> None:
        """The ledger has what a reserved payment charged, or nothing was made."""
        self.reserved -= cost

    def out_of_credits(self, why: str) -> None:
        """The API said the account is out of creative units: nothing more is paid for
        this run (said once); the jobs in flight finish."""
        if not self._summary.out_of_credits:
            self._summary.out_of_credits = True
            log.warning(
                "out of creative units (%s): no more submissions; the jobs in flight finish",
                why,
            )

    def warn_if_near(self) -> None:
        """Said once, when the spend (as the summary has it) reaches ``--warn-at``."""
        spent = self._summary.spent
        if self._warn_at is None or spent < self._warn_at:
            return
        self._warn_at = None
        log.warning(
            "budget: %g CU spent, %.0f%% of %s %g (--warn-at)",
            spent,
            100 * spent / (self.budget or 1),
            self._summary.budget_option,
            self.budget,
        )
