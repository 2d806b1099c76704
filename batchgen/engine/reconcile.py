"""Finding the job a lost answer may have made, before anything is sent again.

Scenario has no idempotency key: a POST whose answer was lost may or may not have
created a job, which is paid for either way.  The unit is *uncertain* until the
account's job list has been read: the job made by that very request is adopted, and
only when reads spread over a grace period have all missed it is the request sent
again.  Why a grace period: the list is eventually consistent, and shows a new job a
few seconds late; one read straight after the loss would find nothing and pay twice.

One task (:meth:`Reconciler.run`) serves every lost answer waiting: each scan lists the
jobs created since the oldest of them (``GET /v1/jobs?createdAfter=``, every page, with
a margin, in the server's clock), and is matched against all of them, so five hundred
lost answers cost a handful of scans, not five hundred.  A job skipped by one scan (a
list that changes while it is paged) is found by the next: "nothing" needs two misses.

What may be adopted: a job made by that request (:func:`~batchgen.scenario.records.made_for`:
its stored input holds every field sent, normalised), the oldest first, that no unit has
had (this run's, or the journal's), the unit itself included: a retry sends the very
request its failed job was made by, and that failed job must never pass for the retry's
(which would be paid for and lost).  The one exception is the job a unit still has when
the API lost it from view (its own, found again).  While an identical request is still
awaiting its own answer, a loss waits: a job whose answer is merely late belongs to its
own unit.
"""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskStatus

from ..config import RetrySettings
from ..errors import ApiError, MalformedResponseError
from ..retry import Request, with_retries
from ..scenario.records import JobRecord, made_for
from ..store.journal import Journal
from .ports import Api

log = logging.getLogger(__name__)
T = TypeVar("T")

# Jobs created this long before a lost POST (in the server's clock) are still
# candidates: the moment is the client's best estimate of the server's time.
CLOCK_MARGIN = timedelta(seconds=60)
# Scans that must have missed a lost answer's job before it is taken as never made.
MISSES_NEEDED = 2
# How long the first scan waits after a loss, for others to share it.
GATHER_SECONDS = 0.25


class StillUncertain(ApiError):
    """The job list could not be read within the grace period: whether the lost POST
    made a job is unknown, so nothing is sent; the next run reconciles first."""


@dataclass(slots=True)
class _Loss:
    unit_id: str
    key: str
    body: dict[str, Any]
    since: datetime
    lost_at: float
    done: anyio.Event = field(default_factory=anyio.Event)
    found: JobRecord | None = None
    failed: ApiError | None = None
    misses: int = 0
    own_job: str | None = None


Record = Callable[..., Awaitable[Any]]


class Reconciler:
    def __init__(
        self,
        api: Api,
        journal: Journal,
        record: Record,
        claimed: set[str],
        retry: RetrySettings,
        rng: random.Random,
        *,
        grace: float,
    ) -> None:
        self._api = api
        self._journal = journal
        self._record = record
        self._claimed = claimed
        self._retry = retry
        self._rng = rng
        self.grace = grace
        self._waiting: list[_Loss] = []
        self._wake = anyio.Event()
        # Identical requests (model and body) whose answers are still awaited.
        self.posting: Counter[str] = Counter()
        self.scans = 0

    @property
    def scan_gap(self) -> float:
        return max(self.grace / 4, 0.05)

    async def find(
        self,
        unit_id: str,
        key: str,
        body: dict[str, Any],
        since: datetime,
        own_job: str | None = None,
    ) -> JobRecord | None:
        """The job the lost POST of ``body`` made at ``since`` (server time), or None if
        it made none; :class:`StillUncertain` if the list could not be read.
        ``own_job``: the job the unit still has, which may be found again."""
        loss = _Loss(unit_id, key, body, since, anyio.current_time(), own_job=own_job)
        self._waiting.append(loss)
        self._wake.set()
        try:
            await loss.done.wait()
        finally:
            if not loss.done.is_set() and loss in self._waiting:
                self._waiting.remove(loss)
        if loss.failed is not None:
            raise loss.failed
        return loss.found

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Scan for the lost answers waiting, until cancelled: the first scan a moment
        after a loss (others often follow it: they share the scan), then one every
        :attr:`scan_gap` while any wait, however many more arrive."""
        task_status.started()
        while True:
            if not self._waiting:
                await self._wake.wait()
                self._wake = anyio.Event()
                await anyio.sleep(min(self.scan_gap, GATHER_SECONDS))
                continue
            await self._scan()
            if self._waiting:
                await anyio.sleep(self.scan_gap)

    async def _scan(self) -> None:
        started = anyio.current_time()
        since = min(loss.since for loss in self._waiting) - CLOCK_MARGIN
        self.scans += 1
        try:
            found = await with_retries(
                Request.JOB_LIST,
                lambda: self._api.jobs_created_after(since),
                self._retry,
                self._rng,
            )
        except ApiError as exc:
            now = anyio.current_time()
            broken = isinstance(exc, MalformedResponseError)  # read again, it breaks again
            for loss in list(self._waiting):
                if broken or now - loss.lost_at >= self.grace:
                    self._resolve(
                        loss,
                        failed=StillUncertain(
                            f"cannot tell whether the lost POST made a job: the job list "
                            f"cannot be read ({exc})"
                        ),
                    )
            return
        candidates = sorted(found, key=lambda job: job.created_at)
        owners = await self._record(
            functools.partial(self._journal.job_owners, [job.job_id for job in candidates])
        )
        for loss in sorted(self._waiting, key=lambda loss: loss.lost_at):
            if self.posting[loss.key]:
                continue  # an identical request's own answer is still coming
            job = next(
                (
                    job
                    for job in candidates
                    if (
                        job.job_id == loss.own_job
                        or (job.job_id not in self._claimed and job.job_id not in owners)
                    )
                    and made_for(job, loss.body)
                ),
                None,
            )
            if job is not None:
                self._claimed.add(job.job_id)
                self._resolve(loss, found=job)
            elif started > loss.lost_at:
                loss.misses += 1
                if loss.misses >= MISSES_NEEDED and started - loss.lost_at >= self.grace:
                    self._resolve(loss)

    def _resolve(
        self, loss: _Loss, *, found: JobRecord | None = None, failed: ApiError | None = None
    ) -> None:
        self._waiting.remove(loss)
        loss.found, loss.failed = found, failed
        loss.done.set()
