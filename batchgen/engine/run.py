"""The pipeline: submitter → one shared poller → downloader pool → recorder.

One anyio task group owns every stage; memory object streams join them, and each
stage closes what it sends on so the next one ends cleanly.  A slot of the
``CapacityLimiter`` is held from a unit's POST until its job reaches a terminal status,
so at most ``concurrency`` jobs are ever running at the server on our behalf.

The API and the downloader are reached through the small protocols below, so tests
can drive the engine with a scripted fake.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from anyio.streams.memory import MemoryObjectReceiveStream

from ..config import EngineSettings, RetrySettings
from ..errors import (
    AmbiguousSubmitError,
    ApiError,
    DownloadError,
    OutOfCreditsError,
    PermanentApiError,
    RateLimitedError,
)
from ..manifest import Unit
from ..scenario.client import BULK_ASSET_LIMIT, STALE_CONNECTION_RETRIES
from ..scenario.download import Downloaded
from ..scenario.records import RUNNING_STATUSES, Asset, JobRecord, Submission, made_for
from ..store.commits import GroupCommit
from ..store.files import files_intact, stamp_of
from ..store.journal import Journal, Resume, Row, resume_action
from ..store.results import UnitResult
from ..ui.progress import Snapshot
from .policy import Request, with_retries
from .pressure import InFlightCap
from .watch import Watcher, WatchSettings

log = logging.getLogger("batchgen")
T = TypeVar("T")

IMAGES_DIR = "images"
# Jobs created this long before a lost POST are still candidates: clocks differ.
RECONCILE_CLOCK_MARGIN = timedelta(seconds=60)
# Units looked up in the journal together when deciding what to do with them.
RESUME_LOOKUP_CHUNK = 500
# How many failure reasons the summary keeps to show; the results file has them all.
SUMMARY_FAILURES_SHOWN = 10


class Api(Protocol):
    async def submit(self, model: str, body: dict[str, Any]) -> Submission: ...

    async def get_job(self, job_id: str) -> JobRecord: ...

    async def get_assets(self, asset_ids: Sequence[str]) -> list[Asset]: ...

    async def lookup_assets(self, asset_ids: Sequence[str]) -> dict[str, Asset]: ...

    async def jobs_created_after(self, since: datetime) -> list[JobRecord]: ...

    async def jobs_updated_after(self, since: datetime) -> list[JobRecord]: ...

    async def cancel_job(self, job_id: str) -> None: ...

    async def estimate(self, model: str, body: dict[str, Any]) -> float | None: ...


class Fetcher(Protocol):
    async def fetch(
        self,
        url: str,
        destination: Path,
        expected_size: int | None = None,
        *,
        fallback: Path | None = None,
    ) -> Downloaded: ...


@dataclass(slots=True)
class InFlight:
    unit: Unit
    job_id: str
    slot: object
    cost: float | None
    created_at: str = ""  # the server's createdAt, when known
    since: float = field(default_factory=time.monotonic)
    # Files the journal has for this unit already (relative to the output directory):
    # downloading again may replace them, and nothing else.
    own_files: frozenset[str] = frozenset()


class Plan(NamedTuple):
    """A chunk of units with their journal rows, what to do with each, and which of
    the done ones still have their files."""

    units: list[Unit]
    rows: dict[str, Row]
    actions: dict[str, Resume]
    intact: set[str]


class Ready(NamedTuple):
    """A finished job on its way to the downloaders, with its assets when looked up."""

    item: InFlight
    job: JobRecord
    assets: list[Asset] | None


@dataclass(slots=True)
class Summary:
    total: int = 0
    skipped: int = 0
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)
    failures: list[tuple[str, str]] = field(default_factory=list)
    left_failed: int = 0
    interrupted: bool = False
    out_of_time: bool = False
    out_of_credits: bool = False
    over_budget: bool = False

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [
            f"{self.succeeded} succeeded",
            f"{self.failed} failed",
            f"{self.skipped} already done",
        ]
        if self.left_failed:
            parts.append(
                f"{self.left_failed} failed for good earlier (--retry-failed retries them)"
            )
        if self.out_of_credits:
            parts.append("submitting stopped: out of creative units")
        if self.over_budget:
            parts.append("submitting stopped: the next job would pass --budget")
        if self.not_finished > 0:
            parts.append(f"{self.not_finished} not finished")
        return f"{', '.join(parts)}; cost {self.cost:g} CU; {elapsed:.1f}s"

    @property
    def not_finished(self) -> int:
        return max(0, self.total - self.skipped - self.left_failed - self.done)

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

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "already_done": self.skipped,
            "failed_earlier": self.left_failed,
            "not_finished": self.not_finished,
            "submitted": self.submitted,
            "cost": self.cost,
            "elapsed_seconds": round(time.monotonic() - self.started, 3),
            "stopped": self.stopped,
            "failures": [{"id": unit_id, "error": error} for unit_id, error in self.failures],
        }


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
        budget: float | None = None,
        spent_before: float = 0.0,
    ) -> None:
        self._api = api
        self._fetcher = fetcher
        self._journal = journal
        # Every journal call goes through it, in order, batched (see batchgen.commits).
        self._commits = GroupCommit(journal)
        self._settings = settings
        self._retry = retry
        self._rng = rng or random.Random()
        self._retry_failed = retry_failed
        self._budget = budget
        # Creative units spent, by earlier runs and this one, plus those reserved by
        # submissions under way: a job is paid for before its POST is sent.
        self._spent = spent_before
        self._spent_before = spent_before
        self._shape_costs: dict[str, float] = {}
        self._slots = anyio.CapacityLimiter(settings.concurrency)
        self._cap = InFlightCap(settings.concurrency)
        # Models the plan does not cover (403 ModelAccessRestrictedError): their other
        # units fail at once instead of each paying a request to learn the same thing.
        self._refused_models: dict[str, str] = {}
        self._images = settings.output_dir / IMAGES_DIR
        self.summary = Summary()
        self.in_flight = 0
        # Job list pages and single-job looks: what watching the jobs cost in requests.
        self.status_requests = 0
        self._unknown_statuses: set[str] = set()
        # Job ids this run gave to a unit; earlier runs' are in the journal.  A lost
        # answer never adopts a job that is already someone's.
        self._claimed: set[str] = set()
        self._posting: Counter[str] = Counter()
        self._posting_changed = anyio.Condition()
        # Units handed to the poller whose final result is still to come, and submissions
        # under way: while either is non-zero a unit may still come back for another job,
        # so the submitter keeps its stream open.
        self._open_units = 0
        self._pending_submits = 0
        self._settled = anyio.Condition()
        self._submit_group: anyio.abc.TaskGroup | None = None
        self._jobs_out: ObjectSendStream[InFlight] | None = None
        self._results_out: ObjectSendStream[UnitResult] | None = None

    def snapshot(self) -> Snapshot:
        """Where the run stands now, for the progress display."""
        summary = self.summary
        return Snapshot(
            total=summary.total,
            skipped=summary.skipped,
            left_failed=summary.left_failed,
            succeeded=summary.succeeded,
            failed=summary.failed,
            in_flight=self.in_flight,
            downloading=max(0, self._open_units - self.in_flight),
            cost=summary.cost,
            spent=self._spent_before + summary.cost,
            elapsed=time.monotonic() - summary.started,
            budget=self._budget,
            submitting_stopped=self._submitting_stopped(),
        )

    async def _record(self, call: Callable[[], T], *, durable: bool = False) -> T:
        """Run a journal call off the event loop, committed with the others made
        meanwhile.  A commit that has begun completes, so the journal stays consistent."""
        return await self._commits(call, durable=durable)

    async def run(self, units: Iterable[Unit], total: int) -> Summary:
        self.summary.total = total
        self._images.mkdir(parents=True, exist_ok=True)
        # Downloads a killed run left half-written; the output lock says none is ours.
        for leftover in self._images.rglob(".*.part"):
            leftover.unlink()
        jobs_send, jobs_receive = anyio.create_memory_object_stream[InFlight](math.inf)
        finished_send, finished_receive = anyio.create_memory_object_stream[
            list[tuple[InFlight, JobRecord]]
        ](math.inf)
        ready_send, ready_receive = anyio.create_memory_object_stream[Ready](math.inf)
        results_send, results_receive = anyio.create_memory_object_stream[UnitResult](math.inf)
        async with anyio.create_task_group() as writer:
            await writer.start(self._commits.run)
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._recorder, results_receive)
                    tg.start_soon(self._submitter, units, jobs_send, results_send.clone())
                    tg.start_soon(self._poller, jobs_receive, finished_send, results_send.clone())
                    tg.start_soon(self._resolver, finished_receive, ready_send)
                    for _ in range(self._settings.download_workers):
                        tg.start_soon(self._downloader, ready_receive.clone(), results_send.clone())
                    ready_receive.close()
                    results_send.close()
            finally:
                self._commits.close()
        return self.summary

    # ---------------------------------------------------------------- submitter

    async def _submitter(
        self,
        units: Iterable[Unit],
        jobs: ObjectSendStream[InFlight],
        results: ObjectSendStream[UnitResult],
    ) -> None:
        # Plans are made one chunk ahead, in a worker thread, while this task submits.
        plans_send, plans_receive = anyio.create_memory_object_stream[Plan](1)
        async with jobs, results, anyio.create_task_group() as tg:
            self._submit_group, self._jobs_out, self._results_out = tg, jobs, results
            tg.start_soon(self._plan_ahead, iter(units), plans_send)
            async with plans_receive:
                async for plan in plans_receive:
                    if not await self._take_all(plan):
                        break
            async with self._settled:
                while self._open_units or self._pending_submits:
                    await self._settled.wait()

    async def _plan_ahead(self, units: Iterator[Unit], plans: ObjectSendStream[Plan]) -> None:
        async with plans:
            while plan := await anyio.to_thread.run_sync(self._next_plan, units):
                try:
                    await plans.send(plan)
                except anyio.BrokenResourceError:
                    return  # submitting stopped: no more plans wanted

    def _next_plan(self, units: Iterator[Unit]) -> Plan | None:
        """The next chunk of units and what to do with each (blocking: a worker thread).

        One journal query and one pass of file checks per chunk, not per unit, and off
        the event loop: a resume walks past every unit already done before its first
        new submission, and reading the manifest is work too."""
        chunk = list(itertools.islice(units, RESUME_LOOKUP_CHUNK))
        if not chunk:
            return None
        rows = self._journal.get_many([unit.id for unit in chunk])
        actions = {
            unit_id: resume_action(row, retry_failed=self._retry_failed)
            for unit_id, row in rows.items()
        }
        out = self._settings.output_dir
        intact = {
            unit_id
            for unit_id, action in actions.items()
            if action is Resume.VERIFY
            and files_intact(out, rows[unit_id].files, rows[unit_id].stamps)
        }
        return Plan(chunk, rows, actions, intact)

    async def _take_all(self, plan: Plan) -> bool:
        for unit in plan.units:
            if not await self._take(unit, plan.rows.get(unit.id), plan.actions, plan.intact):
                return False
        return True

    async def _take(
        self, unit: Unit, row: Row | None, actions: dict[str, Resume], intact: set[str]
    ) -> bool:
        """Skip, watch again or submit one unit; False once submitting has stopped."""
        if self._submitting_stopped():
            return False
        action = actions.get(unit.id, Resume.SUBMIT)
        if action is Resume.VERIFY:
            if unit.id in intact:
                self.summary.skipped += 1
                return True
            log.info("unit %s: a file is missing or changed; downloading it again", unit.id)
            action = Resume.REATTACH
        if action is Resume.SKIP_FAILED:
            self.summary.left_failed += 1
            return True
        slot = object()
        await self._slots.acquire_on_behalf_of(slot)
        if self._submitting_stopped():  # it may have happened while we waited
            self._slots.release_on_behalf_of(slot)
            return False
        if action is Resume.REATTACH and row is not None and row.job_id is not None:
            log.debug("unit %s: watching its job %s again", unit.id, row.job_id)
            self._claimed.add(row.job_id)
            own = frozenset(path for path, _ in row.files)
            await self._hand_to_poller(InFlight(unit, row.job_id, slot, row.cost, own_files=own))
            return True
        lost = row.submit_started if action is Resume.RECONCILE and row else None
        self._spawn_submit(unit, slot, lost)
        return True

    def _spawn_submit(self, unit: Unit, slot: object | None, lost_attempt: str | None) -> None:
        """Start a submission in the submitter's task group (also for a unit coming back
        for another job); with no slot in hand, it waits for one."""
        assert self._submit_group is not None
        self._pending_submits += 1
        self._submit_group.start_soon(self._submit_task, unit, slot, lost_attempt)

    async def _submit_task(self, unit: Unit, slot: object | None, lost_attempt: str | None) -> None:
        assert self._jobs_out is not None and self._results_out is not None
        try:
            if slot is None:
                slot = object()
                await self._slots.acquire_on_behalf_of(slot)
            await self._submit_one(unit, slot, lost_attempt, self._jobs_out, self._results_out)
        finally:
            self._pending_submits -= 1
            await self._notify_settled()

    async def _hand_to_poller(self, item: InFlight) -> None:
        assert self._jobs_out is not None
        self.in_flight += 1
        self._open_units += 1
        await self._jobs_out.send(item)

    async def _unit_settled(self) -> None:
        self._open_units -= 1
        await self._notify_settled()

    async def _notify_settled(self) -> None:
        async with self._settled:
            self._settled.notify_all()

    async def _submit_one(
        self,
        unit: Unit,
        slot: object,
        lost_attempt: str | None,
        jobs: ObjectSendStream[InFlight],
        results: ObjectSendStream[UnitResult],
    ) -> None:
        """Submit a unit once: adopt the job an earlier lost POST created if there is one,
        else POST, and reconcile again whenever the answer is lost."""
        if unit.model in self._refused_models:
            self._slots.release_on_behalf_of(slot)
            reason = self._refused_models[unit.model]
            await results.send(UnitResult.failure(unit, error=reason, permanent=True))
            return
        body = unit.request_body()
        key = json.dumps([unit.model, body], sort_keys=True)
        error: ApiError | None = None

        async def post() -> Submission:
            try:
                submission = await self._api.submit(unit.model, body)
            except RateLimitedError as exc:
                self._set_cap(self._cap.rate_limited(exc.action_limit))
                raise
            self._set_cap(self._cap.submitted())
            return submission

        reconcile_since = datetime.fromisoformat(lost_attempt) if lost_attempt else None
        reserved = 0.0
        attempts = dropped = 0
        while attempts < self._retry.max_attempts:
            attempts += 1
            if reconcile_since is not None:
                try:
                    adopted = await self._reconcile(key, body, reconcile_since)
                except ApiError as list_error:
                    log.warning(
                        "unit %s: cannot list jobs (%s); not resubmitting", unit.id, list_error
                    )
                    error = list_error
                    break
                if adopted is not None:
                    log.info(
                        "unit %s: adopted job %s whose answer was lost", unit.id, adopted.job_id
                    )
                    await self._submitted(
                        unit, adopted.job_id, slot, adopted.cost, jobs, adopted.created_at
                    )
                    return
            self._spent -= reserved  # a lost POST that created nothing costs nothing
            reserved = 0.0
            cost = await self._within_budget(unit, body)
            if cost is None:
                self._slots.release_on_behalf_of(slot)
                return  # left as it was: a later run with more budget takes it
            reserved = cost
            self._spent += reserved
            started = datetime.now(UTC)
            await self._record(
                functools.partial(self._journal.submitting, unit.id, started.isoformat()),
                durable=True,
            )
            self._posting[key] += 1
            try:
                submission = await with_retries(Request.SUBMIT, post, self._retry, self._rng)
            except AmbiguousSubmitError as exc:
                await self._post_ended(key)
                log.warning("unit %s: %s; looking for the job it may have created", unit.id, exc)
                error, reconcile_since = exc, started
                # A closed idle connection is not the server failing: no attempt used up.
                dropped = dropped + 1 if exc.connection_dropped else 0
                if 0 < dropped <= STALE_CONNECTION_RETRIES:
                    attempts -= 1
                continue
            except ApiError as exc:
                await self._post_ended(key)
                self._spent -= reserved
                error = exc
                if isinstance(exc, OutOfCreditsError) and not self.summary.out_of_credits:
                    self.summary.out_of_credits = True
                    log.warning(
                        "out of creative units (%s): no more submissions; "
                        "the jobs in flight finish",
                        _describe(exc),
                    )
                if isinstance(exc, PermanentApiError) and exc.name == "ModelAccessRestrictedError":
                    self._refused_models[unit.model] = _describe(exc)
                break
            self._claimed.add(submission.job.job_id)
            if submission.cost is not None:
                self._spent += submission.cost - reserved
            await self._post_ended(key)
            await self._submitted(
                unit, submission.job.job_id, slot, submission.cost, jobs, submission.job.created_at
            )
            return
        self._slots.release_on_behalf_of(slot)
        reason = _describe(error) if error else "not submitted"
        # Running out of credits says nothing about the unit: it is tried again later.
        permanent = isinstance(error, PermanentApiError) and not isinstance(
            error, OutOfCreditsError
        )
        await results.send(UnitResult.failure(unit, error=reason, permanent=permanent))

    async def _submitted(
        self,
        unit: Unit,
        job_id: str,
        slot: object,
        cost: float | None,
        jobs: ObjectSendStream[InFlight],
        created_at: str,
    ) -> None:
        await self._record(functools.partial(self._journal.submitted, unit.id, job_id, cost))
        self.summary.submitted += 1
        log.debug("submitted unit %s as job %s", unit.id, job_id)
        await self._hand_to_poller(InFlight(unit, job_id, slot, cost, created_at))

    def _submitting_stopped(self) -> bool:
        return self.summary.out_of_credits or self.summary.over_budget

    async def _within_budget(self, unit: Unit, body: dict[str, Any]) -> float | None:
        """The cost to reserve for this unit's next job, or None if it would pass the
        budget (and submitting stops).  Without a budget nothing is reserved."""
        if self._budget is None:
            return 0.0
        cost = await self._cost_of(unit, body)
        # No await from here on: checking and reserving are one step.
        if self._spent + cost > self._budget:
            if not self.summary.over_budget:
                self.summary.over_budget = True
                log.warning(
                    "budget: %g CU spent or reserved, the next job costs %g, --budget is %g: "
                    "no more submissions; the jobs in flight finish",
                    self._spent,
                    cost,
                    self._budget,
                )
            return None
        return cost

    async def _cost_of(self, unit: Unit, body: dict[str, Any]) -> float:
        key = cost_shape(unit.model, body)
        if key not in self._shape_costs:
            cost = await with_retries(
                Request.OTHER_READ,
                lambda: self._api.estimate(unit.model, body),
                self._retry,
                self._rng,
            )
            self._shape_costs[key] = cost or 0.0
        return self._shape_costs[key]

    def _set_cap(self, cap: int) -> None:
        if cap != self._slots.total_tokens:
            log.info("jobs in flight: at most %d now (--concurrency %d)", cap, self._cap.ceiling)
            self._slots.total_tokens = cap

    async def _post_ended(self, key: str) -> None:
        async with self._posting_changed:
            self._posting[key] -= 1
            self._posting_changed.notify_all()

    async def _reconcile(
        self, key: str, body: dict[str, Any], started: datetime
    ) -> JobRecord | None:
        """The unclaimed job created by an identical request since ``started``, if any.

        Waits first until no identical request is still being answered, so a job whose
        answer is merely late is claimed by its own unit, not adopted by this one."""
        async with self._posting_changed:
            while self._posting[key]:
                await self._posting_changed.wait()
        since = started - RECONCILE_CLOCK_MARGIN
        found = await with_retries(
            Request.JOB_LIST, lambda: self._api.jobs_created_after(since), self._retry, self._rng
        )
        for job in sorted(found, key=lambda j: j.created_at):
            if job.job_id in self._claimed or not made_for(job, body):
                continue
            # Claim before the journal look-up awaits, so no other reconciliation can
            # take the same job meanwhile; a job the journal owns stays unadoptable.
            self._claimed.add(job.job_id)
            if not await self._record(functools.partial(self._journal.owns_job, job.job_id)):
                return job
        return None

    # ---------------------------------------------------------------- poller

    async def _poller(
        self,
        jobs: ObjectReceiveStream[InFlight],
        finished: ObjectSendStream[list[tuple[InFlight, JobRecord]]],
        results: ObjectSendStream[UnitResult],
    ) -> None:
        """One task watches every job in flight: it lists the jobs the server changed
        (see :mod:`batchgen.watch`) and asks about single jobs only when it must."""
        watch = Watcher(
            WatchSettings(poll_interval=self._settings.poll_interval), anyio.current_time()
        )
        watched: dict[str, InFlight] = {}
        arrivals: list[InFlight] = []
        state = {"more_coming": True}
        woken = anyio.Event()

        async def take_in() -> None:
            # Its own task, so that waiting for the next listing never cancels a receive.
            nonlocal woken
            async with jobs:
                async for item in jobs:
                    arrivals.append(item)
                    woken.set()
            state["more_coming"] = False
            woken.set()

        async with finished, results, anyio.create_task_group() as tg:
            tg.start_soon(take_in)
            while state["more_coming"] or watched or arrivals:
                ended: list[tuple[InFlight, JobRecord]] = []
                now = anyio.current_time()
                for item in arrivals:
                    watched[item.job_id] = item
                    sighted = watch.add(item.job_id, item.created_at, now)
                    if sighted is not None:
                        ended.append((watched.pop(item.job_id), sighted))
                arrivals.clear()
                wake_at = watch.next_wakeup()
                if not ended and (wake_at is None or wake_at > now):
                    with anyio.move_on_after(math.inf if wake_at is None else wake_at - now):
                        await woken.wait()
                    woken = anyio.Event()
                    if arrivals:
                        continue
                now = anyio.current_time()
                gone = await self._poll_once(watch, watched, now, ended, results)
                for item in gone:
                    self._job_ended(item)
                if ended:
                    await self._jobs_finished(ended, finished)
                await self._time_out(watch, watched, results)

    async def _poll_once(
        self,
        watch: Watcher,
        watched: dict[str, InFlight],
        now: float,
        ended: list[tuple[InFlight, JobRecord]],
        results: ObjectSendStream[UnitResult],
    ) -> list[InFlight]:
        """List changed jobs if a listing is due, and ask about single jobs that are due.
        Jobs found ended go to ``ended``; returns the jobs that failed for good."""
        scan_at = watch.next_scan_at()
        if scan_at is not None and scan_at <= now:
            cursor = watch.cursor(now)
            assert cursor is not None
            try:
                listing = await with_retries(
                    Request.JOB_LIST,
                    lambda: self._api.jobs_updated_after(cursor),
                    self._retry,
                    self._rng,
                )
            except PermanentApiError as exc:
                log.warning(
                    "the job list is refused (%s): asking about each job on its own",
                    _describe(exc),
                )
                watch.list_refused(anyio.current_time())
            except ApiError as exc:
                log.warning("job list unavailable for now (%s)", exc)
                watch.list_failed(anyio.current_time())
            else:
                self.status_requests += 1
                for job in watch.listed(listing, anyio.current_time()):
                    self._note_status(job)
                    ended.append((watched.pop(job.job_id), job))
        gone: list[InFlight] = []
        due = watch.due_for_a_look(now)
        if not due:
            return gone
        answers: dict[str, JobRecord | ApiError] = {}
        requests_at_once = anyio.CapacityLimiter(self._settings.status_requests_at_once)

        async def look(job_id: str) -> None:
            async with requests_at_once:
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
            if job_id not in watched:
                continue  # the listing meanwhile showed it ended
            item = watched[job_id]
            if isinstance(answer, PermanentApiError):
                watch.forget(job_id)
                del watched[job_id]
                gone.append(item)
                await results.send(
                    UnitResult.failure(item.unit, job_id=job_id, error=_describe(answer))
                )
                await self._unit_settled()
            elif isinstance(answer, ApiError):
                log.warning(
                    "job %s: status unknown for now (%s); still watching it", job_id, answer
                )
                watch.look_failed(job_id, now)
            elif watch.looked(answer, now):
                ended.append((watched.pop(job_id), answer))
            else:
                self._note_status(answer)
        return gone

    def _note_status(self, job: JobRecord) -> None:
        if job.terminal or job.status in RUNNING_STATUSES | self._unknown_statuses:
            return
        self._unknown_statuses.add(job.status)
        log.warning("job %s: unknown status %r, taken as still running", job.job_id, job.status)

    async def _jobs_finished(
        self,
        ended: list[tuple[InFlight, JobRecord]],
        finished: ObjectSendStream[list[tuple[InFlight, JobRecord]]],
    ) -> None:
        """Free the slots at once (the submitter refills them while the assets are
        fetched), record the ends in one commit, and hand the jobs on together."""
        for item, _ in ended:
            self._job_ended(item)
        await self._record(
            functools.partial(
                self._journal.finished_many,
                [(item.unit.id, job.status, job.cost) for item, job in ended],
            )
        )
        await finished.send(ended)

    async def _time_out(
        self, watch: Watcher, watched: dict[str, InFlight], results: ObjectSendStream[UnitResult]
    ) -> None:
        now = time.monotonic()
        for job_id, item in list(watched.items()):
            if now - item.since < self._settings.job_timeout:
                continue
            del watched[job_id]
            watch.forget(job_id)
            await self._give_up(item)
            self._job_ended(item)
            error = f"timed out after {self._settings.job_timeout:g}s"
            await results.send(UnitResult.failure(item.unit, job_id=job_id, error=error))
            await self._unit_settled()

    async def _give_up(self, item: InFlight) -> None:
        """Try to cancel a job that ran past its deadline; custom jobs may refuse."""
        try:
            await self._api.cancel_job(item.job_id)
        except ApiError as exc:
            log.info("job %s: cancel refused (%s)", item.job_id, _describe(exc))

    def _job_ended(self, item: InFlight) -> None:
        self.in_flight -= 1
        self._slots.release_on_behalf_of(item.slot)

    # ---------------------------------------------------------------- downloader

    async def _resolver(
        self,
        finished: MemoryObjectReceiveStream[list[tuple[InFlight, JobRecord]]],
        ready: ObjectSendStream[Ready],
    ) -> None:
        """Fetch the signed URLs of finished jobs' assets in bulk, up to
        ``BULK_ASSET_LIMIT`` ids a request, across jobs, and pass the jobs on."""
        async with finished, ready:
            async for batch in finished:
                while True:  # and whatever else finished meanwhile
                    try:
                        batch = batch + finished.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                wanted = [a for _, job in batch if job.status == "success" for a in job.asset_ids]
                found: dict[str, Asset] = {}
                for start in range(0, len(wanted), BULK_ASSET_LIMIT):
                    chunk = wanted[start : start + BULK_ASSET_LIMIT]
                    try:
                        found |= await with_retries(
                            Request.ASSET_LOOKUP,
                            lambda chunk=chunk: self._api.lookup_assets(chunk),  # type: ignore[misc]
                            self._retry,
                            self._rng,
                        )
                    except ApiError as exc:
                        # Each job then looks its own assets up, and says why if it fails.
                        log.info("bulk asset lookup failed (%s)", _describe(exc))
                for item, job in batch:
                    assets = None
                    if job.asset_ids and all(a in found for a in job.asset_ids):
                        assets = [found[a] for a in job.asset_ids]
                    await ready.send(Ready(item, job, assets))

    async def _downloader(
        self,
        ready: ObjectReceiveStream[Ready],
        results: ObjectSendStream[UnitResult],
    ) -> None:
        async with ready, results:
            async for item, job, assets in ready:
                cost = job.cost if job.cost is not None else item.cost
                if job.status == "failure" and await self._another_job_allowed(item.unit):
                    error = job.error or "job failed"
                    await self._record(
                        functools.partial(
                            self._journal.failed,
                            item.unit.id,
                            error=error,
                            permanent=False,
                            job_id=job.job_id,
                            job_status=job.status,
                            result={},
                        )
                    )
                    log.info("unit %s: its job failed (%s); trying another", item.unit.id, error)
                    self._spawn_submit(item.unit, None, None)
                    await self._unit_settled()
                    continue
                result = await self._result_of(item, job, cost, assets)
                await results.send(result)
                await self._unit_settled()

    async def _another_job_allowed(self, unit: Unit) -> bool:
        if self._submitting_stopped():
            return False
        row = await self._record(functools.partial(self._journal.get, unit.id))
        failed_before = row.failed_jobs if row is not None else 0
        return failed_before + 1 < self._settings.job_attempts

    async def _result_of(
        self, item: InFlight, job: JobRecord, cost: float | None, assets: list[Asset] | None
    ) -> UnitResult:
        if job.status != "success":
            return UnitResult.failure(
                item.unit,
                job_id=job.job_id,
                error=job.error or f"job ended with status {job.status}",
                cost=cost,
                job_status=job.status,
            )
        try:
            files, reported_seed, sizes = await self._download_job(item, job, assets)
        except (ApiError, DownloadError) as exc:
            return UnitResult.failure(
                item.unit, job_id=job.job_id, error=_describe(exc), cost=cost, job_status=job.status
            )
        asked = item.unit.params.get("seed")
        seed = asked if isinstance(asked, int) and not isinstance(asked, bool) else reported_seed
        return UnitResult.success(
            item.unit, job_id=job.job_id, files=files, cost=cost, seed=seed, sizes=sizes
        )

    async def _download_job(
        self, item: InFlight, job: JobRecord, assets: list[Asset] | None
    ) -> tuple[list[tuple[str, str]], int | None, list[tuple[int, int] | None]]:
        """The unit's files as (path, sha256), the seed the first asset reports, and each
        image's own size (the asset's word for it, else its file's header)."""
        unit = item.unit
        if assets is None and job.asset_ids:
            assets = await with_retries(
                Request.ASSET_LOOKUP,
                lambda: self._api.get_assets(job.asset_ids),
                self._retry,
                self._rng,
            )
        elif assets is None and job.image_urls:
            assets = [
                Asset(id=f"{job.job_id}-{i}", url=url) for i, url in enumerate(job.image_urls)
            ]
        elif assets is None:
            raise DownloadError("the job succeeded but lists no assets", transient=False)
        files: list[tuple[str, str]] = []
        sizes: list[tuple[int, int] | None] = []
        out = self._settings.output_dir
        for index, asset in enumerate(assets):
            reported = (asset.width, asset.height) if asset.width and asset.height else None
            name = self._settings.filename.render(unit, index, asset.suffix, reported)
            destination = self._images / name
            fallback: Path | None = None
            if f"{IMAGES_DIR}/{name}" not in item.own_files:
                # Whatever else holds the name (an edited manifest's unit, a file of the
                # user's) is kept; this image then gets a name that only it can have.
                fallback = destination.with_name(
                    f"{destination.stem}~{unit.id}-{index}{destination.suffix}"
                )
            downloaded = await with_retries(
                Request.DOWNLOAD,
                self._fetch_fresh(asset, destination, fallback, refresh=bool(job.asset_ids)),
                self._retry,
                self._rng,
            )
            if downloaded.path != destination:
                log.warning(
                    "unit %s: %s holds another image; this one is %s",
                    unit.id,
                    destination.relative_to(out).as_posix(),
                    downloaded.path.relative_to(out).as_posix(),
                )
            relative = downloaded.path.relative_to(out).as_posix()
            files.append((relative, downloaded.sha256))
            sizes.append(reported or downloaded.dimensions)
        return files, assets[0].seed, sizes

    def _fetch_fresh(
        self, asset: Asset, destination: Path, fallback: Path | None, *, refresh: bool
    ) -> Callable[[], Awaitable[Downloaded]]:
        """An attempt function: the first try uses the URL in hand; later tries fetch a
        new signed URL first, since the likeliest cause of a failed download is expiry."""
        tries = 0

        async def attempt() -> Downloaded:
            nonlocal tries
            tries += 1
            current = asset
            if refresh and tries > 1:
                current = (await self._api.get_assets([asset.id]))[0]
            return await self._fetcher.fetch(
                current.url, destination, current.size, fallback=fallback
            )

        return attempt

    # ---------------------------------------------------------------- recorder

    async def _recorder(self, results: MemoryObjectReceiveStream[UnitResult]) -> None:
        async with results:
            async for first in results:
                batch = [first]
                while True:  # and whatever else arrived meanwhile: one commit for all
                    try:
                        batch.append(results.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._record(functools.partial(self._journal_results, batch))
                for result in batch:
                    self._count(result)

    def _count(self, result: UnitResult) -> None:
        if result.status == "success":
            self.summary.succeeded += 1
        else:
            self.summary.failed += 1
            if len(self.summary.failures) < SUMMARY_FAILURES_SHOWN:
                self.summary.failures.append((result.unit.id, result.error or ""))
            log.warning("unit %s failed: %s", result.unit.id, result.error)
        if result.cost:
            self.summary.cost += result.cost

    def _journal_results(self, results: list[UnitResult]) -> None:
        with self._journal.batch():
            for result in results:
                self._journal_result(result)

    def _journal_result(self, result: UnitResult) -> None:
        if result.status == "success":
            out = self._settings.output_dir
            # Runs in the journal's worker thread: the stat calls stay off the event loop.
            try:
                stamps: list[tuple[int, int]] | None = [
                    stamp_of(out / path) for path, _ in result.files
                ]
            except OSError:
                stamps = None  # gone already: the next run finds out and fetches it again
            self._journal.downloaded(result.unit.id, list(result.files), result.to_json(), stamps)
        else:
            self._journal.failed(
                result.unit.id,
                error=result.error or "",
                permanent=result.permanent,
                job_id=result.job_id,
                job_status=result.job_status,
                result=result.to_json(),
            )


def cost_shape(model: str, body: dict[str, Any]) -> str:
    """What a job's cost depends on: everything in the request but prompt and seed."""
    rest = {k: v for k, v in body.items() if k not in ("prompt", "seed")}
    return json.dumps([model, rest], sort_keys=True)


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiError) and error.reason:
        return f"HTTP {error.status}: {error.reason}" if error.status else error.reason
    return str(error)
