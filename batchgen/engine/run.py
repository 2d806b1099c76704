"""The engine: one task per unit, from submission to its files.

::

    plan (a thread, a chunk ahead)          journal lookups and file checks, per chunk
      └─► a task per unit, at most C + 2 D alive (back pressure: a slow CDN stops submitting)
            async with a job slot (C of them, adaptive):     submit.py: budget, journal, POST,
                submit, or adopt a lost answer's job         reconcile.py: lost answers
                wait for the job to end                      poll.py: the one shared poller
            async with a download slot (D of them):          download.py: bulk URL lookups
                download, verify, name                       just before, batched
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

import dataclasses
import functools
import itertools
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from .. import config as defaults
from ..config import RetrySettings
from ..errors import ApiError, DownloadError, PermanentApiError
from ..manifest import Unit
from ..manifest.naming import DEFAULT_FILENAME, FileNameTemplate
from ..retry import describe
from ..scenario.inputs import MAX_OUTPUTS_PER_JOB, OUTPUTS_INPUT
from ..scenario.records import JobRecord
from ..store.commits import GroupCommit
from ..store.faults import storage_faults
from ..store.files import (
    IMAGES_DIR,
    INPUTS_DIR,
    Stamp,
    files_intact,
    keep_copy,
    real_directory,
    stamp_of,
)
from ..store.journal import Journal, Resume, Row, resume_action
from ..store.results import UnitResult, embed_into_files
from .download import AssetResolver, download_job
from .gate import Gate, GateFailed, GateStopped, set_aside
from .poll import JobUnreadable, JobVanished, Poller
from .ports import Api, Fetcher, Offload
from .purse import Purse
from .reconcile import Reconciler, StillUncertain
from .submit import (
    SeedRange,
    SubmitStopped,
    Submitter,
    UnitFailed,
    cost_shape,
    server_time,
)
from .summary import FAILURES_KEPT, Summary
from .uploads import Uploader

log = logging.getLogger(__name__)

# Failed units logged each in a warning of its own; after that, at info level.
FAILURES_LOGGED = FAILURES_KEPT

# Units looked up in the journal together when deciding what to do with them.
PLAN_CHUNK = 500
# A cancel of a job past its deadline gets this long; custom jobs usually refuse.
CANCEL_TIMEOUT = 10.0

__all__ = ["Engine", "EngineSettings", "Summary", "cost_shape"]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How a run goes: its output directory and the knobs of the command line."""

    output_dir: Path
    concurrency: int = defaults.DEFAULT_CONCURRENCY
    poll_interval: float = defaults.DEFAULT_POLL_INTERVAL
    job_timeout: float = defaults.DEFAULT_JOB_TIMEOUT
    job_attempts: int = defaults.DEFAULT_JOB_ATTEMPTS
    download_workers: int = defaults.DEFAULT_DOWNLOAD_WORKERS
    filename: FileNameTemplate = DEFAULT_FILENAME
    reconcile_grace: float = defaults.DEFAULT_RECONCILE_GRACE
    # Each model's seed range, for the models that take a seed: a unit the manifest
    # gives no seed gets one drawn from its id (see submit.request_for).
    seeds: Mapping[str, SeedRange | None] = field(default_factory=dict)
    # Each model's image inputs that take several (type file_array): they get a list.
    image_lists: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Each model's images per job when a unit does not say (numOutputs): a job that
    # lists more is kept to that many.
    outputs: Mapping[str, int] = field(default_factory=dict)
    # The journals of the other shards of the same output root (for their uploads).
    sibling_journals: tuple[Path, ...] = ()
    # Write each image's prompt and settings into its file (see store.embed).
    embed_metadata: bool = False
    # For an output in a bucket (see batchgen.output.bucket_files): whether a done unit's files are
    # still there, and what the journal records of a file written.  None: local files.
    files_intact: Callable[[Iterable[tuple[str, str]], Iterable[Stamp | None]], bool] | None = None
    stamp: Callable[[Path, str], Stamp | None] | None = None
    # Called with how many units (in the manifest's order) will have been taken once
    # the next chunk is: an output in a bucket records it there first, so that a run
    # that starts from its checkpoint knows no unit past it was ever submitted.
    reserve: Callable[[int], Awaitable[None]] | None = None
    # Keeps a copy of an input image (its path, its name below the output) elsewhere
    # than the output directory (a bucket).  None: copied into the output directory.
    keep_input: Callable[[Path, str], Awaitable[None]] | None = None
    # Moves the images the quality gate rejected aside, elsewhere than the output
    # directory (a bucket); gives their new names.  None: moved in the output directory.
    set_aside: Callable[[list[str], int], Awaitable[list[str]]] | None = None


class Plan(NamedTuple):
    """A chunk of units with their journal rows, what to do with each, and which of
    the done ones still have their files."""

    units: list[Unit]
    rows: dict[str, Row]
    actions: dict[str, Resume]
    intact: set[str]


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
        # Spend at which to warn once (a fraction of the budget), if asked.
        self._warn_at = warn_at * budget if warn_at is not None and budget is not None else None
        self._started = 0.0
        # Job slots: one from a unit's POST until its job ends (adaptive, see pressure).
        self._slots = anyio.CapacityLimiter(settings.concurrency)
        self._downloads = anyio.CapacityLimiter(settings.download_workers)
        # Room for unit tasks: C in jobs, D downloading, D more waiting to download.  A
        # slow CDN fills it, and the planner stops taking units: no batch-sized backlog.
        self._room = anyio.Semaphore(settings.concurrency + 2 * settings.download_workers)
        # Job ids given to a unit and not yet in the journal for good (until the unit's
        # task has recorded its end; the journal owns them from then on): a lost answer
        # never adopts a job that is already someone's.  Bounded by the units in progress.
        self._claimed: set[str] = set()
        self.poller = Poller(api, settings.poll_interval, retry, self._rng)
        self.resolver = AssetResolver(api, retry, self._rng)
        self.reconciler = Reconciler(
            api,
            journal,
            self._commits,
            self._claimed,
            retry,
            self._rng,
            grace=settings.reconcile_grace,
        )
        purse = Purse(self.summary, journal, budget)
        self.gate = Gate(api, journal, self._commits, retry, self._rng, purse)
        self.uploader = Uploader(
            api,
            journal,
            self._commits,
            retry,
            self._rng,
            self._offload,
            grace=settings.reconcile_grace,
            summary=self.summary,
            siblings=settings.sibling_journals,
        )
        self._submitter = Submitter(
            api,
            journal,
            self._commits,
            self.reconciler,
            self.summary,
            self._slots,
            retry,
            self._rng,
            purse=purse,
            claimed=self._claimed,
            seeds=settings.seeds,
            uploads=self.uploader,
            image_lists=settings.image_lists,
        )

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
                        await services.start(self.resolver.run)
                        await services.start(self.reconciler.run)
                        await self._reconcile_uncertain()
                        # Plans are made one chunk ahead, in a worker thread, while
                        # units are taken.
                        plans, receive = anyio.create_memory_object_stream[Plan](1)
                        async with anyio.create_task_group() as work:
                            work.start_soon(self._plan_ahead, iter(units), plans)
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

    # ---------------------------------------------------------------- planning

    async def _plan_ahead(self, units: Iterator[Unit], plans: MemoryObjectSendStream[Plan]) -> None:
        async with plans:
            while plan := await self._offload(self._next_plan, units):
                await plans.send(plan)

    def _next_plan(self, units: Iterator[Unit]) -> Plan | None:
        """The next chunk of units and what to do with each (blocking).

        One journal query and one pass of file checks per chunk, not per unit: a resume
        walks past every unit already done before its first new submission."""
        chunk = list(itertools.islice(units, PLAN_CHUNK))
        if not chunk:
            return None
        rows = self._journal.get_many([unit.id for unit in chunk])
        actions = {
            unit_id: resume_action(
                row,
                retry_failed=self._retry_failed,
                resubmit_abandoned=self._resubmit_abandoned,
            )
            for unit_id, row in rows.items()
        }
        out = self._settings.output_dir
        check = self._settings.files_intact or functools.partial(files_intact, out)
        intact = {
            unit_id
            for unit_id, action in actions.items()
            if action is Resume.VERIFY and check(rows[unit_id].files, rows[unit_id].stamps)
        }
        return Plan(chunk, rows, actions, intact)

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

    async def _reconcile_uncertain(self) -> None:
        """Before anything is sent: every unit whose POST may have made a job (the
        journal has what it sent) gets its job adopted, or is found to have none."""
        uncertain = await self._offload(self._journal.uncertain)
        pending = [(u, s, sent, own) for u, s, sent, own in uncertain if s and sent]
        if not pending:
            return
        log.info("%d units may have jobs from an earlier run's lost answers", len(pending))

        async def one(unit_id: str, since: str, sent: str, own: str | None) -> None:
            _, body = _json_loads(sent)
            try:
                job = await self.reconciler.find(unit_id, sent, body, server_time(since), own)
            except StillUncertain as exc:
                log.warning("unit %s: %s", unit_id, exc)
                return
            if job is not None:
                log.info("unit %s: adopted job %s whose answer was lost", unit_id, job.job_id)
                await self._commits(
                    functools.partial(
                        self._journal.submitted,
                        unit_id,
                        job.job_id,
                        job.cost,
                        job.status,
                        job.refundable,
                    )
                )
            else:
                await self._commits(
                    functools.partial(
                        self._journal.nothing_made, unit_id, "its answer was lost; no job was made"
                    )
                )

        async with anyio.create_task_group() as tg:
            for unit_id, since, sent, own in pending:
                tg.start_soon(one, unit_id, since, sent, own)

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
                outcome = await self._watch(unit, job_id, created_at)
            if isinstance(outcome, UnitResult) or outcome is None:
                return outcome
            job = outcome
            cost = job.cost if job.cost is not None else cost
            if job.status == "success":
                result = await self._download(unit, job, cost, own_files)
                if unit.quality is None or result.status != "success":
                    return result
                try:
                    result, again = await self._gated(unit, job, result, attempt)
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
                await self._commits(functools.partial(self._journal_result, failure))
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

    async def _gated(
        self, unit: Unit, job: JobRecord, result: UnitResult, attempt: int
    ) -> tuple[UnitResult, bool]:
        """The gate's verdict on the unit's images (the worst of them), and whether the
        unit makes another job: then its images are set aside, never deleted."""
        rule = unit.quality
        assert rule is not None
        asset_ids = job.asset_ids[: self._asked(unit)]
        if not asset_ids:
            log.warning("unit %s: its job names no asset: its images are not gated", unit.id)
            return result, False
        verdicts = [await self.gate.verdict(unit.id, a, attempt, rule) for a in asset_ids]
        worst = min(verdicts, key=lambda v: (RANK[rule.judged(v.verdict, v.score)], v.score))
        judged = rule.judged(worst.verdict, worst.score)
        mark = {"verdict": judged, "score": worst.score, "reasons": list(worst.reasons)}
        result = dataclasses.replace(result, quality={**mark, "attempt": attempt})
        if not rule.again(worst.verdict, worst.score, attempt):
            return result, False
        files = [path for path, _ in result.files]
        if self._settings.set_aside is not None:  # an output in a bucket
            aside = await self._settings.set_aside(files, attempt)
        else:
            aside = await self._offload(set_aside, self._settings.output_dir, files, attempt)
        why = f"quality gate: {judged} (score {worst.score:g}); made again, attempt {attempt + 1}"
        await self._commits(
            functools.partial(self._journal.regenerating, unit.id, attempt + 1, why)
        )
        self.summary.regenerating += 1
        log.info("unit %s: %s; its images kept in %s", unit.id, why, ", ".join(aside))
        return result, True

    async def _watch(
        self, unit: Unit, job_id: str, created_at: str
    ) -> JobRecord | UnitResult | None:
        """Wait for the job to end, up to its deadline."""
        self.summary.in_flight += 1
        try:
            with anyio.move_on_after(self._settings.job_timeout):
                return await self.poller.wait(job_id, created_at)
        except JobVanished as exc:
            log.warning("unit %s: %s; it is reconciled by the next run", unit.id, exc)
            await self._commits(functools.partial(self._journal.vanished, unit.id))
            return None
        except JobUnreadable as exc:
            await self._abandon(unit, job_id, f"{exc}; the next run watches it again")
            return None
        except PermanentApiError as exc:
            return UnitResult.failure(unit, job_id=job_id, error=describe(exc))
        finally:
            self.summary.in_flight -= 1
        return await self._past_deadline(unit, job_id)

    async def _past_deadline(self, unit: Unit, job_id: str) -> UnitResult | None:
        """A job still running at its deadline: ask for a cancel, off the poller's path and
        briefly.  A cancel accepted frees the unit; otherwise the job runs on and is paid,
        so it is abandoned, not failed: the next run watches it again."""
        timeout = self._settings.job_timeout
        with anyio.move_on_after(CANCEL_TIMEOUT):
            try:
                await self._api.cancel_job(job_id)
            except ApiError as exc:
                log.info("job %s: cancel refused (%s)", job_id, describe(exc))
            else:
                return UnitResult.failure(
                    unit, job_id=job_id, error=f"timed out after {timeout:g}s; cancelled"
                )
        await self._abandon(
            unit, job_id, f"still running after {timeout:g}s; the next run watches it again"
        )
        return None

    async def _abandon(self, unit: Unit, job_id: str, error: str) -> None:
        """The job runs on, and is paid, but this run stops watching it: the unit is
        left to the next run, which watches the same job again (never buys another)."""
        result = UnitResult(unit, "abandoned", job_id=job_id, error=error)
        abandon = functools.partial(
            self._journal.abandoned, unit.id, job_id, error, result.to_json()
        )
        await self._commits(abandon)
        log.warning("unit %s: job %s: %s", unit.id, job_id, error)
        self.summary.abandoned += 1
        return None

    def _another_job_allowed(self, failed_jobs: int) -> bool:
        if self.summary.submitting_stopped:
            return False
        return failed_jobs + 1 < self._settings.job_attempts

    async def _download(
        self, unit: Unit, job: JobRecord, cost: float | None, own_files: frozenset[str]
    ) -> UnitResult:
        self.summary.downloading += 1
        try:
            async with self._downloads:
                got = await download_job(
                    unit,
                    job,
                    api=self._api,
                    resolver=self.resolver,
                    fetcher=self._fetcher,
                    output_dir=self._settings.output_dir,
                    filename=self._settings.filename,
                    own_files=own_files,
                    retry=self._retry,
                    rng=self._rng,
                    asked=self._asked(unit),
                )
        except (ApiError, DownloadError) as exc:
            return UnitResult.failure(
                unit, job_id=job.job_id, error=describe(exc), cost=cost, job_status=job.status
            )
        finally:
            self.summary.downloading -= 1
        asked = unit.params.get("seed")
        seed = asked if isinstance(asked, int) and not isinstance(asked, bool) else got.seed
        inputs = await self._keep_inputs(unit) if unit.inputs else None
        result = UnitResult.success(
            unit,
            job_id=job.job_id,
            files=got.files,
            cost=cost,
            seed=seed,
            sizes=got.sizes,
            inputs=inputs,
        )
        if got.not_kept:
            result = dataclasses.replace(result, not_kept=got.not_kept)
        if self._settings.embed_metadata:
            result = await self._offload(embed_into_files, result, self._settings.output_dir)
        return result

    def _asked(self, unit: Unit) -> int:
        return images_asked(unit, self._settings.outputs)

    async def _keep_inputs(self, unit: Unit) -> dict[str, list[dict[str, Any]]]:
        """A copy of each image the unit was made from, in ``inputs/`` (of the output
        directory, or of the bucket), so that the dataset holds its pairs; and what
        each was."""
        copy_here = self._settings.keep_input is None
        kept: dict[str, list[dict[str, Any]]]
        kept, copies = await self._offload(self._input_records, unit, copy_here)
        if self._settings.keep_input is not None:
            for source, relative in copies:
                await self._settings.keep_input(source, relative)
        return kept

    def _input_records(
        self, unit: Unit, copy_here: bool
    ) -> tuple[dict[str, list[dict[str, Any]]], list[tuple[Path, str]]]:
        out = self._settings.output_dir
        kept: dict[str, list[dict[str, Any]]] = {}
        copies: list[tuple[Path, str]] = []
        for name, images, _ in unit.inputs:
            kept[name] = []
            for image in images:
                relative = f"{INPUTS_DIR}/{image.sha256}{image.path.suffix.lower()}"
                copies.append((image.path, relative))
                if copy_here:
                    with storage_faults(out / INPUTS_DIR):
                        keep_copy(image.path, real_directory(out, INPUTS_DIR) / Path(relative).name)
                kept[name].append(
                    {
                        "path": image.source or str(image.path),
                        "sha256": image.sha256,
                        "asset_id": self.uploader.asset_of(image.sha256)
                        or (self._journal.upload(image.sha256) or ("", None, None))[1],
                        "file": relative,
                    }
                )
        return kept, copies

    # ---------------------------------------------------------------- recording

    async def _finish(self, result: UnitResult) -> None:
        await self._commits(functools.partial(self._journal_result, result))
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
        if self._warn_at is not None and self.summary.spent >= self._warn_at:
            self._warn_at = None
            log.warning(
                "budget: %g CU spent, %.0f%% of %s %g (--warn-at)",
                self.summary.spent,
                100 * self.summary.spent / (self.summary.budget or 1),
                self.summary.budget_option,
                self.summary.budget,
            )

    def _journal_result(self, result: UnitResult) -> None:
        if result.status == "success":
            out = self._settings.output_dir
            # Runs where the journal's commits run: the stat calls stay off the loop.
            stamps: list[tuple[int, int]] | None
            if self._settings.stamp is not None:
                found = [self._settings.stamp(out, path) for path, _ in result.files]
                stamps = None if None in found else [s for s in found if s is not None]
            else:
                try:
                    stamps = [stamp_of(out / path) for path, _ in result.files]
                except OSError:
                    stamps = None  # gone already: the next run finds out and fetches it again
            self._journal.downloaded(
                result.unit.id,
                list(result.files),
                result.to_json(),
                stamps,
                refundable=result.refundable,
            )
        else:
            self._journal.failed(
                result.unit.id,
                error=result.error or "",
                permanent=result.permanent,
                job_id=result.job_id,
                job_status=result.job_status,
                result=result.to_json(),
                refundable=result.refundable,
            )


def images_asked(unit: Unit, outputs: Mapping[str, int]) -> int:
    """The images a unit's job is to make: its numOutputs, else its model's."""
    given = unit.params.get(OUTPUTS_INPUT)
    if isinstance(given, int | float) and not isinstance(given, bool) and given >= 1:
        return int(given)
    return outputs.get(unit.model, MAX_OUTPUTS_PER_JOB)


# The quality gate's verdicts, worst first.
RANK = {"fail": 0, "warn": 1, "pass": 2}


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


def _json_loads(sent: str) -> tuple[str, dict[str, Any]]:
    model, body = json.loads(sent)
    return str(model), dict(body)
