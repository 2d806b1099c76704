"""Money: what a job cost, by the API's own word, and the figures shown about it.

Every figure batchgen shows about cost is read from one ledger, kept in the journal
(:class:`~batchgen.store.journal.Journal`): each job's charge is written once, from what
the API said (the POST's ``creativeUnitsCost``; the job's ``billing`` for a job adopted
after a lost answer, re-attached, or ended), and a failed or cancelled job is refunded
unless its billing says ``disableRefund``.  When what is known of a job changes (its
charge, its end), the ledger gains the difference, booked to the run that learned it:
so "spent by this run" summed over the runs is "spent on this output in all", and both
are what the account was charged, net of refunds.

A dry run's price (HTTP 269) is an *estimate*, never booked.  A job whose charge was
never learned is *unpriced*: counted apart, never as 0.  Amounts are kept in thousandths
of a creative unit (integers), so that sums are exact.
"""

from __future__ import annotations

from dataclasses import dataclass

# What a refund is due for: the job made nothing.
REFUNDED_STATUSES = frozenset({"failure", "canceled"})
# Amounts are booked in thousandths of a creative unit.
SCALE = 1000


def to_units(amount: int) -> float:
    """Thousandths of a creative unit, as creative units."""
    return amount / SCALE


def to_thousandths(creative_units: float) -> int:
    return round(creative_units * SCALE)


def net_charge(charged: float | None, status: str | None, refundable: bool) -> float | None:
    """What a job costs the account in the end: nothing once refunded (a failure or a
    cancel, unless its model does not refund), else what was charged; None: unknown."""
    if status in REFUNDED_STATUSES and refundable:
        return 0.0
    return charged


@dataclass(frozen=True, slots=True)
class Spend:
    """The figures, in creative units: spent by this run, on the output in all (earlier
    runs included), jobs whose charge is not known, and what lost answers may have cost
    (jobs that may exist, priced by a dry run: counted against a budget, not as spent)."""

    this_run: float = 0.0
    in_all: float = 0.0
    unpriced_jobs: int = 0
    possibly: float = 0.0

    def __add__(self, other: Spend) -> Spend:
        """Two outputs' figures together (the shards of one output)."""
        return Spend(
            self.this_run + other.this_run,
            self.in_all + other.in_all,
            self.unpriced_jobs + other.unpriced_jobs,
            self.possibly + other.possibly,
        )

    def words(self) -> str:
        """``spent 641 CU by this run, 900 on this output in all`` (and what is unknown)."""
        text = f"spent {self.this_run:g} CU by this run, {self.in_all:g} on this output in all"
        return text + self.caveats()

    def status_words(self) -> str:
        """``spent 900 CU on this output in all (267 by the last run)``."""
        text = f"spent {self.in_all:g} CU on this output in all ({self.this_run:g} by the last run)"
        return text + self.caveats()

    def caveats(self) -> str:
        text = ""
        if self.unpriced_jobs:
            text += f" (+ {plural(self.unpriced_jobs, 'job')} of unknown price)"
        if self.possibly:
            text += f" (+ up to {self.possibly:g} estimated for lost answers not yet resolved)"
        return text


def plural(count: int, noun: str) -> str:
    """``1 unit``, ``2 units``, ``3 entries``."""
    if count == 1:
        return f"{count} {noun}"
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return f"{count} {noun[:-1]}ies"
    return f"{count} {noun}s"
