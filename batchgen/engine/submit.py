"""A unit's submission: the budget, the journal's ``submitting``, the POST, and the
reconciliation of a lost answer.

What a failure means is the retry table's (:func:`.policy.decide`); this module does
what it says.  A POST is sent only once ``submitting`` is on disk with the request as
sent; a POST whose answer may have made a job is reconciled (:mod:`.reconcile`), never
sent again blindly.  A closed idle connection says nothing about the server: it does
not use up an attempt.
"""

from __future__ import annotations

import functools
import json
import logging
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, Protocol

import anyio

from ..config import RetrySettings
from ..errors import AmbiguousSubmitError, ApiError, RateLimitedError
from ..manifest import Unit
from ..retry import Action, Request, decide, describe, with_retries
from ..scenario.client import STALE_CONNECTION_RETRIES
from ..scenario.records import JobRecord, Submission
from ..store.journal import Journal
from .ports import Api
from .pressure import InFlightCap
from .purse import Purse
from .reconcile import Reconciler
from .summary import Summary

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Submitted:
    job_id: str
    created_at: str
    cost: float | None
    adopted: bool = False  # found by a reconciliation, its answer having been lost


class SubmitStopped(Exception):
    """Submitting has stopped (the budget, the credits): the unit is left as it was."""


class UnitFailed(Exception):
    """The unit cannot be submitted: its failure, for good or for now."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


SeedRange = tuple[int, int]


class Uploads(Protocol):
    """What the submitter needs of the uploader (:mod:`.uploads`)."""

    async def assets_for(self, unit: Unit) -> dict[str, list[str]]: ...


def request_for(
    unit: Unit,
    seeds: SeedRange | None,
    assets: Mapping[str, list[str]] | None = None,
    lists: Collection[str] = (),
    attempt: int = 0,
) -> dict[str, Any]:
    """The body a unit's POST sends.  Where the model takes a seed (``seeds`` is its
    range) and the manifest gives none, one is drawn from the unit's id: no two units
    ever send the same body, on this machine or any other, so a lost answer's job can
    only be its own unit's.  ``seed: random`` leaves the seed to the API.  Its images go
    by their asset ids (``assets``, by input; a list to the inputs in ``lists``, which
    take several); without them (a dry run, which uploads nothing) a one-pixel image
    stands in."""
    body = unit.request_body()
    if seeds is not None and "seed" not in body and "seed" not in unit.params:
        low, high = seeds
        body["seed"] = low + int(unit.id[:12], 16) % (high - low + 1)
    if attempt and seeds is not None and isinstance(body.get("seed"), int):
        # Made again after the quality gate rejected an image: a seed of its own for
        # each attempt (a body no earlier job of the unit was made by).
        low, high = seeds
        body["seed"] = low + (body["seed"] - low + attempt * SEED_STRIDE) % (high - low + 1)
    for name, images, _ in unit.inputs:
        ids = assets[name] if assets is not None else [STAND_IN_IMAGE] * len(images)
        body[name] = ids if name in lists else ids[0]
    return body


# How far apart the seeds of a unit's attempts are (a prime: they never come back).
SEED_STRIDE = 7919

# A one-pixel PNG as a data URL (which image inputs take as well as an asset id): what
# a dry run sends for an image, since the cost does not depend on it.
STAND_IN_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8"
    "z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _image_count(value: Any) -> str:
    return f"{len(value) if isinstance(value, list) else 1} image(s)"


def _is_image(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_image(one) for one in value)
    return isinstance(value, str) and value.startswith(("asset_", "data:image/"))


def server_time(value: str) -> datetime:
    """A moment the journal keeps (ISO 8601), as an aware time (earlier versions kept
    some without a zone: they are UTC)."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def request_key(model: str, body: dict[str, Any]) -> str:
    """A request as one string: the same for identical requests, and what the journal
    keeps as sent."""
    return json.dumps([model, body], sort_keys=True, ensure_ascii=False)


def cost_shape(model: str, body: dict[str, Any]) -> str:
    """What a job's cost depends on: everything in the request but prompt, seed and
    which images it is given."""
    rest = {
        k: _image_count(v) if _is_image(v) else v
        for k, v in body.items()
        if k not in ("prompt", "seed")
    }
    return json.dumps([model, rest], sort_keys=True)


class Submitter:
    def __init__(
        self,
        api: Api,
        journal: Journal,
        record: Any,
        reconciler: Reconciler,
        summary: Summary,
        slots: anyio.CapacityLimiter,
        retry: RetrySettings,
        rng: random.Random,
        *,
        purse: Purse,
        claimed: set[str],
        seeds: Mapping[str, SeedRange | None] | None = None,
        uploads: Uploads | None = None,
        image_lists: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self._uploads = uploads
        self._image_lists = image_lists or {}
        self._api = api
        # Each model's seed range, for a model that takes a seed (see request_for).
        self._seeds = seeds or {}
        self._journal = journal
        self._record = record
        self._reconciler = reconciler
        self._summary = summary
        self._slots = slots
        self._cap = InFlightCap(int(slots.total_tokens))
        self._retry = retry
        self._rng = rng
        self._purse = purse
        self._claimed = claimed
        self._shape_costs: dict[str, float] = {}
        # Models the plan does not cover: their other units fail at once instead of
        # each paying a request to learn the same thing.
        self._refused_models: dict[str, str] = {}

    async def submit(
        self,
        unit: Unit,
        lost_at: str | None = None,
        lost_sent: str | None = None,
        attempt: int = 0,
    ) -> Submitted:
        """Submit a unit: adopt the job an earlier lost POST made if there is one, else
        POST, and reconcile again whenever the answer is lost.  ``lost_at`` is when
        (the server's clock) a POST of this unit may have made a job, and ``lost_sent``
        what it sent (a journal of an earlier version did not keep it: then it sent what
        the manifest asks for)."""
        if unit.model in self._refused_models:
            raise UnitFailed(self._refused_models[unit.model], permanent=True)
        body, key, shape = await self._request_of(unit, attempt)
        if lost_at is not None:
            # The lost POST's own request is what recognises its job.
            lost_key = lost_sent or request_key(unit.model, unit.request_body())
            adopted = await self._adopt(unit, lost_key, server_time(lost_at))
            if adopted is not None:
                return adopted
        since: datetime | None = None
        reserved = 0.0
        attempts = dropped = 0
        last_error: ApiError | None = None
        while True:
            if since is not None:
                try:
                    adopted = await self._adopt(unit, key, since)
                finally:
                    self._purse.release(reserved)  # booked now, or nothing was made
                    reserved = 0.0
                if adopted is not None:
                    return adopted
                if attempts >= self._retry.max_attempts:
                    reason = describe(last_error) if last_error else "its answers were lost"
                    raise UnitFailed(f"{reason}; no job was made", permanent=False)
            attempts += 1
            cost = await self._within_budget(unit, body)
            if cost is None:
                raise SubmitStopped
            reserved = cost
            started = self._api.server_now()
            await self._record(
                functools.partial(
                    self._journal.submitting,
                    unit.id,
                    started.isoformat(),
                    key,
                    cost or None,
                    shape,
                ),
                durable=True,
            )
            try:
                submission = await self._post_counted(unit.model, key, body)
            except ApiError as exc:
                if decide(Request.SUBMIT, exc) is not Action.RECONCILE:
                    await self._refused(unit, exc, reserved)
                log.warning("unit %s: %s; looking for the job it may have made", unit.id, exc)
                last_error, since = exc, started
                if not reserved:
                    await self._note_possible_cost(unit, body)
                # A closed idle connection is not the server failing.
                dropped_now = isinstance(exc, AmbiguousSubmitError) and exc.connection_dropped
                dropped = dropped + 1 if dropped_now else 0
                if 0 < dropped <= STALE_CONNECTION_RETRIES:
                    attempts -= 1
                continue
            self._claimed.add(submission.job.job_id)
            try:
                return await self._submitted(unit, submission.job, submission.cost, False)
            finally:
                self._purse.release(reserved)  # the ledger has what was charged

    async def _request_of(self, unit: Unit, attempt: int) -> tuple[dict[str, Any], str, str]:
        """The body a unit's job ``attempt`` sends (its new input images uploaded first,
        each once), its key, and the shape its cost depends on (kept with it:
        --estimate counts the units done by shape, without making every unit again)."""
        assets = None
        if unit.inputs and self._uploads is not None:
            assets = await self._uploads.assets_for(unit)
        lists = self._image_lists.get(unit.model, frozenset())
        body = request_for(unit, self._seeds.get(unit.model), assets, lists, attempt)
        return body, request_key(unit.model, body), cost_shape(unit.model, body)

    async def _post_counted(self, model: str, key: str, body: dict[str, Any]) -> Submission:
        """The POST (retried where the table says so), its request counted as being
        posted meanwhile: the reconciler leaves a job of it to its own poster."""
        self._reconciler.posting[key] += 1
        try:
            return await with_retries(
                Request.SUBMIT, functools.partial(self._post, model, body), self._retry, self._rng
            )
        finally:
            # Gone once none is posting it: a key a unit left behind would be kept
            # for the whole run, a million of them in a million-unit run.
            self._reconciler.posting[key] -= 1
            if self._reconciler.posting[key] <= 0:
                del self._reconciler.posting[key]

    async def _refused(self, unit: Unit, exc: ApiError, reserved: float) -> NoReturn:
        """A POST that made no job, as the retry table reads its error (a lost answer
        aside, which the caller reconciles): the reservation released, and the unit
        failed, its model refused, or submitting stopped."""
        action = decide(Request.SUBMIT, exc)
        if action is Action.STOP_RUN:
            raise exc
        self._purse.release(reserved)
        match action:
            case Action.STOP_SUBMITTING:
                await self._nothing_made(unit, exc)
                self._purse.out_of_credits(describe(exc))
                raise SubmitStopped from exc
            case Action.FAIL_MODEL:
                self._refused_models[unit.model] = describe(exc)
                raise UnitFailed(describe(exc), permanent=True) from exc
            case Action.FAIL_FOR_GOOD:
                raise UnitFailed(describe(exc), permanent=True) from exc
            case _:  # FAIL_UNIT, or RETRY with its attempts used up
                raise UnitFailed(describe(exc), permanent=False) from exc

    async def _adopt(self, unit: Unit, key: str, since: datetime) -> Submitted | None:
        """The job a lost POST of ``key`` at ``since`` made, adopted, if it made one."""
        adopted = await self._reconciler.find(unit.id, key, json.loads(key)[1], since)
        if adopted is None:
            return None
        log.info("unit %s: adopted job %s (its answer was lost)", unit.id, adopted.job_id)
        return await self._submitted(unit, adopted, adopted.cost, True)

    async def _note_possible_cost(self, unit: Unit, body: dict[str, Any]) -> None:
        """Without a budget nothing was priced before the POST; once its answer is lost
        the job it may have made is priced (one dry run per shape), so that what the run
        reports spent hides nothing.  A dry run that fails leaves it unpriced."""
        try:
            cost = await self.cost_of(unit.model, body)
        except ApiError as exc:
            log.info("unit %s: no price for the job it may have made: %s", unit.id, exc)
            return
        if cost:
            await self._record(functools.partial(self._journal.may_have_cost, unit.id, cost))

    async def _post(self, model: str, body: dict[str, Any]) -> Submission:
        try:
            submission = await self._api.submit(model, body)
        except RateLimitedError as exc:
            self._set_cap(self._cap.rate_limited(exc.action_limit))
            raise
        self._set_cap(self._cap.submitted())
        return submission

    async def _submitted(
        self, unit: Unit, job: JobRecord, cost: float | None, adopted: bool
    ) -> Submitted:
        """The unit's job recorded, and what was charged for it booked (``cost``: the
        POST's answer's, or the adopted job's record's)."""
        await self._record(
            functools.partial(
                self._journal.submitted, unit.id, job.job_id, cost, job.status, job.refundable
            )
        )
        self._summary.submitted += 1
        log.debug("submitted unit %s as job %s", unit.id, job.job_id)
        return Submitted(job.job_id, job.created_at, cost, adopted)

    async def _nothing_made(self, unit: Unit, error: ApiError) -> None:
        await self._record(functools.partial(self._journal.nothing_made, unit.id, describe(error)))

    async def _within_budget(self, unit: Unit, body: dict[str, Any]) -> float | None:
        """The cost reserved for this unit's next job, or None if it would pass the
        budget (and submitting stops).  Without a budget nothing is priced."""
        if self._summary.submitting_stopped:
            return None
        cost = 0.0 if self._purse.budget is None else await self.cost_of(unit.model, body)
        return cost if self._purse.reserve(cost, "job") else None

    async def cost_of(self, model: str, body: dict[str, Any]) -> float:
        """What a job of this shape costs, from one dry run per shape."""
        key = cost_shape(model, body)
        if key not in self._shape_costs:
            cost = await with_retries(
                Request.OTHER_READ,
                lambda: self._api.estimate(model, body),
                self._retry,
                self._rng,
            )
            self._shape_costs[key] = cost or 0.0
        return self._shape_costs[key]

    def _set_cap(self, cap: int) -> None:
        if cap != self._slots.total_tokens:
            log.info("jobs in flight: at most %d now (--concurrency %d)", cap, self._cap.ceiling)
            self._slots.total_tokens = cap
