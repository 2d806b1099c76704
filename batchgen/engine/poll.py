"""The one shared poller: a single task watches every job in flight.

A unit's task calls :meth:`Poller.wait` with its job id and is woken when the job ends,
with the job's final record.  The poller lists the jobs the server changed (one request
covers every job in flight) and asks about single jobs only when it must; *when* to do
either is :mod:`.watch`'s pure decision, handed the clock.  This module does the I/O.

A job the API answers 404 for is taken as not visible yet (a new job may not have
reached every replica) for :data:`NOT_VISIBLE_GRACE` seconds from the first 404; only
then is it :class:`JobVanished`, and its unit goes back to *uncertain*, to be
reconciled: a 404 never leads to a blind resubmission.  A job whose record cannot be
read is asked about again later, not ever faster; its unit's deadline bounds the wait.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from ..config import RetrySettings
from ..errors import ApiError, MalformedResponseError, PermanentApiError
from ..retry import Request, with_retries
from ..scenario.records import RUNNING_STATUSES, JobRecord
from .ports import Api
from .watch import Watcher, WatchSettings

log = logging.getLogger(__name__)

# How long a job the API says it does not know is taken as merely not visible yet.
NOT_VISIBLE_GRACE = 60.0
# Single-job looks made at once, at most.
LOOKS_AT_ONCE = 16
# Looks in a row (each with its retries) whose answers were broken before a job is let
# go (JobUnreadable).
BROKEN_LOOKS = 3


class JobVanished(ApiError):
    """The API kept answering 404 for a job past the grace period."""


class JobUnreadable(ApiError):
    """The API's answers about a job kept breaking (malformed, or larger than any answer
    may be): the job may run on and be paid, so its unit is left to the next run to
    watch again, not watched for ever."""


@dataclass(slots=True)
class _Waiter:
    job_id: str
    created_at: str
    done: anyio.Event = field(default_factory=anyio.Event)
    outcome: JobRecord | ApiError | None = None
    first_missing: float | None = None  # when the API first answered 404 for it
    broken: int = 0  # looks in a row whose answers were broken


class Poller:
    def __init__(
        self,
        api: Api,
        poll_interval: float,
        retry: RetrySettings,
        rng: random.Random,
        *,
        not_visible_grace: float = NOT_VISIBLE_GRACE,
    ) -> None:
        self._api = api
        self._settings = WatchSettings(poll_interval=poll_interval)
        self._retry = retry
        self._rng = rng
        self._grace = not_visible_grace
        self._watcher: Watcher | None = None
        self._watched: dict[str, _Waiter] = {}
        self._arrivals: list[_Waiter] = []
        self._left: set[str] = set()  # waits given up (the unit's deadline passed)
        self._wake = anyio.Event()
        self._unknown_statuses: set[str] = set()
        # List pages and single-job looks: what watching the jobs cost in requests.
        self.status_requests = 0

    def __len__(self) -> int:
        return len(self._watched) + len(self._arrivals)

    async def wait(self, job_id: str, created_at: str = "") -> JobRecord:
        """The job's final record, once it ends; :class:`JobVanished` (or another error of
        the API's for good) if it cannot end.  Cancelling the wait stops the watching."""
        waiter = _Waiter(job_id, created_at)
        self._arrivals.append(waiter)
        self._wake.set()
        try:
            await waiter.done.wait()
        finally:
            if waiter.outcome is None:
                self._left.add(job_id)
                self._wake.set()
        if isinstance(waiter.outcome, ApiError):
            raise waiter.outcome
        assert waiter.outcome is not None
        return waiter.outcome

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled (the engine cancels it when every unit is done)."""
        watcher = self._watcher = Watcher(self._settings, anyio.current_time())
        task_status.started()
        while True:
            now = anyio.current_time()
            self._take_in(watcher, now)
            wake_at = watcher.next_wakeup()
            if wake_at is None or wake_at > now:
                with anyio.move_on_after(math.inf if wake_at is None else wake_at - now):
                    await self._wake.wait()
                self._wake = anyio.Event()
                continue
            await self._poll_once(watcher, anyio.current_time())

    # ------------------------------------------------------------------ the loop

    def _take_in(self, watcher: Watcher, now: float) -> None:
        arrivals, self._arrivals = self._arrivals, []
        for waiter in arrivals:
            self._watched[waiter.job_id] = waiter
            sighted = watcher.add(waiter.job_id, waiter.created_at, now)
            if sighted is not None:
                self._end(waiter.job_id, sighted)
        for job_id in self._left:
            watcher.forget(job_id)
            self._watched.pop(job_id, None)
        self._left.clear()

    def _end(self, job_id: str, outcome: JobRecord | ApiError) -> None:
        waiter = self._watched.pop(job_id, None)
        if waiter is not None:
            waiter.outcome = outcome
            waiter.done.set()

    async def _poll_once(self, watcher: Watcher, now: float) -> None:
        """List changed jobs if a listing is due, and ask about single jobs that are due."""
        scan_at = watcher.next_scan_at()
        if scan_at is not None and scan_at <= now:
            await self._list(watcher, now)
        due = [job_id for job_id in watcher.due_for_a_look(now) if job_id in self._watched]
        if not due:
            return
        answers: dict[str, JobRecord | ApiError] = {}
        looks_at_once = anyio.CapacityLimiter(LOOKS_AT_ONCE)

        async def look(job_id: str) -> None:
            async with looks_at_once:
                try:
                    answers[job_id] = await with_retries(
                        Request.JOB_STATUS,
                        lambda: self._api.get_job(job_id),
                        self._retry,
                        self._rng,
                    )
                except ApiError as exc:
                    answers[job_id] = exc

        async with anyio.create_task_group() as tg:
            for job_id in due:
                tg.start_soon(look, job_id)
        self.status_requests += len(due)
        now = anyio.current_time()
        for job_id, answer in answers.items():
            waiter = self._watched.get(job_id)
            if waiter is None:
                continue  # ended meanwhile (a listing), or given up
            if isinstance(answer, PermanentApiError) and answer.status == 404:
                self._not_visible(watcher, waiter, answer, now)
            elif isinstance(answer, PermanentApiError):
                watcher.forget(job_id)
                self._end(job_id, answer)
            elif isinstance(answer, MalformedResponseError):
                self._broken(watcher, waiter, answer, now)
            elif isinstance(answer, ApiError):
                log.warning(
                    "job %s: status unknown for now (%s); still watching it", job_id, answer
                )
                watcher.look_failed(job_id, now)
            elif watcher.looked(answer, now):
                self._end(job_id, answer)
            else:
                waiter.first_missing = None
                waiter.broken = 0
                self._note_status(answer)

    async def _list(self, watcher: Watcher, now: float) -> None:
        cursor = watcher.cursor(now)
        assert cursor is not None
        try:
            listing = await with_retries(
                Request.JOB_LIST,
                lambda: self._api.jobs_updated_after(cursor),
                self._retry,
                self._rng,
            )
        except (PermanentApiError, MalformedResponseError) as exc:
            # Refused, or broken (read again, it would break again).
            log.warning("the job list is unusable (%s): asking about each job on its own", exc)
            watcher.list_refused(anyio.current_time())
        except ApiError as exc:
            log.warning("job list unavailable for now (%s)", exc)
            watcher.list_failed(anyio.current_time())
        else:
            self.status_requests += 1
            for job in watcher.listed(listing, anyio.current_time()):
                self._end(job.job_id, job)
            for job in listing:
                self._note_status(job)

    def _broken(self, watcher: Watcher, waiter: _Waiter, error: ApiError, now: float) -> None:
        waiter.broken += 1
        if waiter.broken < BROKEN_LOOKS:
            log.warning("job %s: a broken answer (%s); asking again later", waiter.job_id, error)
            watcher.look_failed(waiter.job_id, now)
            return
        watcher.forget(waiter.job_id)
        self._end(
            waiter.job_id,
            JobUnreadable(
                f"job {waiter.job_id}: the API's answers about it kept breaking "
                f"({BROKEN_LOOKS} looks in a row: {error.reason})",
                reason=error.reason,
            ),
        )

    def _not_visible(self, watcher: Watcher, waiter: _Waiter, error: ApiError, now: float) -> None:
        if waiter.first_missing is None:
            waiter.first_missing = now
        if now - waiter.first_missing < self._grace:
            watcher.look_failed(waiter.job_id, now)
            return
        watcher.forget(waiter.job_id)
        self._end(
            waiter.job_id,
            JobVanished(
                f"job {waiter.job_id}: the API has answered 404 for it for "
                f"{self._grace:g}s ({error.reason})",
                status=404,
                reason=error.reason,
            ),
        )

    def _note_status(self, job: JobRecord) -> None:
        if job.terminal or job.status in RUNNING_STATUSES | self._unknown_statuses:
            return
        self._unknown_statuses.add(job.status)
        log.warning("job %s: unknown status %r, taken as still running", job.job_id, job.status)
