"""The engine: one task per unit, from submission to its files.

::

    plan (a thread, a chunk ahead)          planner.py: journal lookups and file checks
      └─► a task per unit, at most C + 2 D alive (back pressure: a slow CDN stops submitting)
            async with a job slot (C of them, adaptive):     submit.py: journal, POST;
                submit, or adopt a lost answer's job         purse.py: the budget;
                                                             reconcile.py: lost answers
                wait for the job to end                      deadline.py, poll.py: the one
                                                             shared poller
            async with a download slot (D of them):          deliver.py; download.py: bulk
                download, verify, name                       URL lookups, batched
            the quality gate, where asked                    gate.py: scored once
            record                                           store/commits.py: group commit

Everything a unit goes through happens in its own task, in order, and every resource is
released by the task that took it (``async with``).  The services (the poller, the
asset resolver, the reconciler, the journal's group commit) are tasks of their own that
unit tasks call and wait on.  Another job attempt is a loop in the unit's task.

What is held in memory is proportional to the concurrency and the downloads, never to
the batch: the planner makes a chunk of units ahead, and a unit's task exists only from
the moment room is free for it.
"""

from __future__ import annotations

import functools
import logging
import os
import random
from collections.abc import Iterable
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ..config import RetrySettings
from ..manifest import Unit
from ..store.commits import GroupCommit
from ..store.faults import storage_faults
from ..store.files import (
    IMAGES_DIR,
    real_directory,
)
from ..store.journal import Journal, Resume, Row
from ..store.results import UnitResult
from .deadline import Deadlines
from .deliver import Delivery
from .gate import Gate, GateFailed, GateStopped
from .planner import Plan, Planner, reconcile_uncertain
from .poll import Poller
from .ports import Api, Fetcher, Offload
from .purse import Purse
from .reconcile import Reconciler, StillUncertain
from .settings import EngineSettings
from .submit import (
    SubmitStopped,
    Submitter,
    UnitFailed,
    cost_shape,
)
from .summary import FAILURES_KEPT, Summary
from .uploads import Uploader

log = logging.getLogger(__name__)

# Failed units logged each in a warning of its own; after that, at info level.
FAILURES_LOGGED = FAILURES_KEPT

# A cancel of a job past its deadline gets this long; custom jobs usually refuse.
CANCEL_TIMEOUT = 10.0

__all__ = ["Engine", "EngineSettings", "Summary", "cost_shape"]


class Engine:
    def __init__(
        self,
        api: Api,
        fetcher: Fetcher,
        journal: Journal,
        settings: EngineSettings,
        retry: RetrySettings,
        rng: random.Random | None = None,
        *,
        retry_failed: bool = False,
        resubmit_abandoned: bool = False,
        budget: float | None = None,
        budget_option: str = "--budget",
        warn_at: float | None = None,
        spent_before: float = 0.0,
        offload: Offload | None = None,
    ) -> None:
        self._api = api
        self._fetcher = fetcher
        self._journal = journal
        self._settings = settings
        self._retry = retry
        self._rng = rng or random.Random()
        self._retry_failed = retry_failed
        self._resubmit_abandoned = resubmit_abandoned
        self._offload: Offload = offload or anyio.to_thread.run_sync
        # Every journal call goes through it, in order, batched (see store.commits).
        self._commits = GroupCommit(journal, self._offload)
        self.summary = Summary(
            budget=budget, budget_option=budget_option, spent_before=spent_before
        )
        self._started = 0.0
        # Job slots: one from a unit's POST until its job ends (adaptive, see pressure).
        self._slots = anyio.CapacityLimiter(settings.concurrency)
        # Room for unit tasks: C in jobs, D downloading, D more waiting to download.  A
        # slow CDN fills it, and the planner stops taking units: no batch-sized backlog.
        self._room = anyio.Semaphore(settings.concurrency + 2 * settings.download_workers)
        # Job ids given to a unit and not yet in the journal for good (until the unit's
        # task has recorded its end; the journal owns them from then on): a lost answer
        # never adopts a job that is already someone's.  Bounded by the units in progress.
        self._claimed: set[str] = set()
        self.poller = Poller(api, settings.poll_interval, retry, self._rng)
        self.reconciler = Reconciler(
            api,
            journal,
            self._commits,
            self._claimed,
            retry,
            self._rng,
            grace=settings.reconcile_grace,
        )
        purse = self._purse = Purse(self.summary, journal, budget, warn_at=warn_at)
        self.uploader, self._submitter = self._submission(purse)
        self.delivery = Delivery(
            api,
            fetcher,
            journal,
            self._commits,
            settings,
            retry,
            self._rng,
            self._offload,
            self.summary,
            gate=Gate(api, journal, self._commits, retry, self._rng, purse),
            uploader=self.uploader,
        )
        self._deadlines = Deadlines(
            api, self.poller, journal, self._commits, self.summary, settings
        )
        self._planner = Planner(
            journal,
            settings,
            self._offload,
            retry_failed=retry_failed,
            resubmit_abandoned=resubmit_abandoned,
        )

    def _submission(self, purse: Purse) -> tuple[Uploader, Submitter]:
        """The input images' uploader and the units' submitter, paying from ``purse``."""
        settings, retry = self._settings, self._retry
        uploader = Uploader(
            self._api,
            self._journal,
            self._commits,
            retry,
            self._rng,
            self._offload,
            grace=settings.reconcile_grace,
            summary=self.summary,
            siblings=settings.sibling_journals,
        )
        submitter = Submitter(
            self._api,
            self._journal,
            self._commits,
            self.reconciler,
            self.summary,
            self._slots,
            retry,
            self._rng,
            purse=purse,
            claimed=self._claimed,
            seeds=settings.seeds,
            uploads=uploader,
            image_lists=settings.image_lists,
        )
        return uploader, submitter

    @property
    def status_requests(self) -> int:
        return self.poller.status_requests

    def _count_spend(self) -> None:
        """This run's spend as the ledger has it (what it booked, committed)."""
        self.summary.cost = self._journal.run_spent

    def snapshot(self) -> Summary:
        """Where the run stands now, for the progress display (a copy)."""
        self._count_spend()
        snapshot = self.summary.copy()
        snapshot.elapsed = anyio.current_time() - self._started
        return snapshot

    async def run(self, units: Iterable[Unit], total: int) -> Summary:
        self.summary.total = total
        self._started = anyio.current_time()
        await self._offload(_clear_leftovers, self._settings.output_dir)
        try:
            async with anyio.create_task_group() as writer:
                await writer.start(self._commits.run)
                try:
                    async with anyio.create_task_group() as services:
                        await services.start(self.poller.run)
                        await services.start(self.delivery.resolver.run)
                        await services.start(self.reconciler.run)
                        await reconcile_uncertain(
                            self._journal, self.reconciler, self._commits, self._offload
                        )
                        # Plans are made one chunk ahead, in a worker thread, while
                        # units are taken.
                        plans, receive = anyio.create_memory_object_stream[Plan](1)
                        async with anyio.create_task_group() as work:
                            work.start_soon(self._planner.plan_ahead, iter(units), plans)
                            taken = 0
                            async with receive:
                                async for plan in receive:
                                    taken += len(plan.units)
                                    if self._settings.reserve is not None:
                                        await self._settings.reserve(taken)
                                    for unit in plan.units:
                                        await self._take(unit, plan, work)
                        services.cancel_scope.cancel()
                finally:
                    self._commits.close()
        finally:
            self.summary.elapsed = anyio.current_time() - self._started
            self._count_spend()
            self.summary.unpriced_jobs = await self._offload(self._journal.unpriced_jobs)
            self.summary.possibly_spent = await self._offload(self._journal.possibly_spent)
        return self.summary

    async def _take(self, unit: Unit, plan: Plan, work: TaskGroup) -> None:
        """Skip a unit, or start its task once there is room for one."""
        action = plan.actions.get(unit.id, Resume.SUBMIT)
        row = plan.rows.get(unit.id)
        if action is Resume.VERIFY:
            if unit.id in plan.intact:
                self.summary.skipped += 1
                return
            log.info("unit %s: a file is missing or changed; downloading it again", unit.id)
            action = Resume.REATTACH
        if action is Resume.SKIP_FAILED:
            self.summary.left_failed += 1
            return
        if self.summary.submitting_stopped and action is not Resume.REATTACH:
            return  # left as it is: a later run with more budget or credits takes it
        await self._room.acquire()
        work.start_soon(self._unit_task, unit, row, action)

    # ---------------------------------------------------------------- one unit

    async def _unit_task(self, unit: Unit, row: Row | None, action: Resume) -> None:
        mine: set[str] = set()
        try:
            result = await self._process(unit, row, action, mine)
            if result is not None:
                await self._finish(result)
        except SubmitStopped:
            return
        except StillUncertain as exc:
            log.warning("unit %s: %s; the next run reconciles it first", unit.id, exc)
            return
        finally:
            self._room.release()
            self._claimed.difference_update(mine)

    async def _process(
        self, unit: Unit, row: Row | None, action: Resume, mine: set[str]
    ) -> UnitResult | None:
        """Everything a unit goes through; its result, or None when it is left to the
        next run (its job abandoned past its deadline, or uncertain).  ``mine`` gathers
        the job ids it claims."""
        job_id = row.job_id if action is Resume.REATTACH and row is not None else None
        if job_id is not None:
            log.debug("unit %s: watching its job %s again", unit.id, job_id)
        lost_at = row.submit_started if action is Resume.RECONCILE and row is not None else None
        lost_sent = row.sent if lost_at is not None and row is not None else None
        cost = row.cost if row is not None and job_id is not None else None
        created_at = ""
        failed_jobs = row.failed_jobs if row is not None else 0
        own_files = frozenset(path for path, _ in row.files) if row is not None else frozenset()
        attempt = row.quality_attempt if row is not None else 0
        while True:
            async with self._slots:  # held from the POST until the job ends
                if job_id is None:
                    try:
                        submitted = await self._submitter.submit(unit, lost_at, lost_sent, attempt)
                    except UnitFailed as exc:
                        return UnitResult.failure(unit, error=exc.reason, permanent=exc.permanent)
                    job_id, cost = submitted.job_id, submitted.cost
                    created_at, lost_at = submitted.created_at, None
                    lost_sent = None
                    mine.add(job_id)
                outcome = await self._deadlines.watch(unit, job_id, created_at)
            if isinstance(outcome, UnitResult) or outcome is None:
                return outcome
            job = outcome
            cost = job.cost if job.cost is not None else cost
            if job.status == "success":
                result = await self.delivery.download(unit, job, cost, own_files)
                if unit.quality is None or result.status != "success":
                    return result
                try:
                    result, again = await self.delivery.gated(unit, job, result, attempt)
                except GateFailed as exc:
                    log.warning("unit %s: %s; the next run asks again", unit.id, exc)
                    return None
                except GateStopped:
                    return None  # the budget or the credits: a later run gates it
                if not again:
                    return result
                attempt += 1  # its images rejected and set aside: another job
                job_id, cost, own_files = None, None, frozenset()
                continue
            error = job.error or f"job ended with status {job.status}"
            if job.status == "failure" and self._another_job_allowed(failed_jobs):
                failed_jobs += 1
                failure = UnitResult.failure(
                    unit,
                    job_id=job.job_id,
                    error=error,
                    cost=cost,
                    job_status=job.status,
                    refundable=job.refundable,
                )
                await self._commits(functools.partial(self.delivery.record, failure))
                log.info("unit %s: its job failed (%s); trying another", unit.id, error)
                job_id, cost = None, None
                continue
            return UnitResult.failure(
                unit,
                job_id=job.job_id,
                error=error,
                cost=cost,
                job_status=job.status,
                refundable=job.refundable,
            )

    def _another_job_allowed(self, failed_jobs: int) -> bool:
        if self.summary.submitting_stopped:
            return False
        return failed_jobs + 1 < self._settings.job_attempts

    # ---------------------------------------------------------------- recording

    async def _finish(self, result: UnitResult) -> None:
        await self._commits(functools.partial(self.delivery.record, result))
        if result.status == "success":
            self.summary.succeeded += 1
            if result.quality:
                self.summary.verdicts[str(result.quality["verdict"])] += 1
        else:
            self.summary.note_failure(result.unit.id, result.error or "", result.permanent)
            # The first few each in a line; the rest are counted by reason in the summary.
            if self.summary.failed <= FAILURES_LOGGED:
                log.warning("unit %s failed: %s", result.unit.id, result.error)
            else:
                if self.summary.failed == FAILURES_LOGGED + 1:
                    log.warning("more units failed; the summary counts them by reason")
                log.info("unit %s failed: %s", result.unit.id, result.error)
        self._count_spend()
        self._purse.warn_if_near()


def _clear_leftovers(out_dir: Path) -> None:
    """Downloads a killed run left half-written; the output lock says none is ours.
    Only below the output's own ``images/``: a link there is refused, and none below it
    is followed."""
    images = out_dir / IMAGES_DIR
    with storage_faults(images):
        real_directory(out_dir, IMAGES_DIR)
        for folder, _, names in os.walk(images, followlinks=False):
            for name in names:
                if name.startswith(".") and name.endswith(".part"):
                    Path(folder, name).unlink(missing_ok=True)
