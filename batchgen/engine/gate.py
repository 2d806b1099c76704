"""The quality gate, a stage of its own: each image a unit downloads scored once by
Scenario's gate (``POST /v1/generate/quality-gate``), with bounded concurrency and the
retry table.

A gate call is paid, like a submission, and Scenario has no idempotency key for it
either: it is journaled (fsynced) before it is sent.  An image the journal says was sent
and never answered (a lost answer, a run killed) is looked up first: the API keeps the
verdict on the asset (``asset.qualityGate``), and it is read back from there before
anything is sent again.  So a SIGKILL anywhere never gates an image twice, unless the
API kept no verdict of it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePath
from typing import Any

import anyio

from ..config import RetrySettings
from ..errors import AmbiguousSubmitError, ApiError
from ..manifest.types import QualityRule
from ..retry import Action, Request, decide, describe, with_retries
from ..scenario.records import Verdict
from ..store.faults import storage_faults
from ..store.files import IMAGES_DIR, real_directory
from ..store.journal import Journal
from .ports import Api
from .purse import Purse

log = logging.getLogger(__name__)

# Gate calls at once, at most.
GATES_AT_ONCE = 8
# Sends of one image's gate call whose answers were all lost before it is given up.
LOST_ANSWERS_ALLOWED = 3

Record = Callable[..., Awaitable[Any]]


class GateFailed(ApiError):
    """The gate's verdict on an image could not be had: its unit is left to the next
    run (its image stays; nothing is paid again without reading the asset first)."""


class GateStopped(Exception):
    """Paying stopped (the budget, the credits) before this image was gated: its unit is
    left to a later run, its image kept."""


class Gate:
    def __init__(
        self,
        api: Api,
        journal: Journal,
        record: Record,
        retry: RetrySettings,
        rng: random.Random,
        purse: Purse,
    ) -> None:
        self._api = api
        self._purse = purse
        # A gate call's price by sensitivity (one dry run each), needed with a budget;
        # one no dry run gives is learnt from the first call's charge, and until then
        # its calls go one at a time (what a budget may be passed by: one call).
        self._prices: dict[str | None, float] = {}
        self._dry_run_asked: set[str | None] = set()
        self._learning: dict[str | None, anyio.Lock] = {}
        self._journal = journal
        self._record = record
        self._retry = retry
        self._rng = rng
        self._at_once = anyio.CapacityLimiter(GATES_AT_ONCE)
        # Gate calls sent by this run (for the summary and the tests).
        self.calls = 0

    async def verdict(
        self, unit_id: str, asset_id: str, attempt: int, rule: QualityRule
    ) -> Verdict:
        """The gate's verdict on one image, asked at most once."""
        known = await self._record(functools.partial(self._journal.gate_of, asset_id))
        if known is not None and known[0] is not None:
            verdict, score, reasons = known
            return Verdict(score or 0.0, verdict, tuple(json.loads(reasons or "[]")))
        async with self._at_once:
            for _ in range(LOST_ANSWERS_ALLOWED):
                if known is not None:  # sent before: its verdict may be on the asset
                    stored = await self._stored(asset_id)
                    if stored is not None:
                        price = await self._price(asset_id, rule)
                        return await self._noted(unit_id, asset_id, stored, price)
                reserved, learning = await self._budgeted(asset_id, rule)
                try:
                    await self._record(
                        functools.partial(self._journal.gating, unit_id, asset_id, attempt),
                        durable=True,
                    )
                    known = (None, None, None)
                    try:
                        self.calls += 1
                        found = await with_retries(
                            Request.GATE,
                            lambda: self._api.quality_gate(asset_id, rule.sensitivity),
                            self._retry,
                            self._rng,
                        )
                    except AmbiguousSubmitError as exc:
                        log.warning("image %s: the gate's answer was lost (%s)", asset_id, exc)
                        continue
                    except ApiError as exc:
                        if decide(Request.GATE, exc) is Action.STOP_SUBMITTING:
                            self._purse.out_of_credits(describe(exc))
                            raise GateStopped from exc
                        raise
                    if found.cost is not None:  # what it costs, if no dry run said
                        self._prices.setdefault(rule.sensitivity, found.cost)
                    return await self._noted(unit_id, asset_id, found, found.cost)
                finally:
                    self._purse.release(reserved)
                    if learning is not None:
                        learning.release()
        raise GateFailed(f"image {asset_id}: the gate's answers kept being lost")

    async def _noted(
        self, unit_id: str, asset_id: str, verdict: Verdict, cost: float | None
    ) -> Verdict:
        await self._record(
            functools.partial(
                self._journal.gated,
                unit_id,
                asset_id,
                verdict.verdict,
                verdict.score,
                list(verdict.reasons),
                cost,
            )
        )
        return verdict

    async def _budgeted(self, asset_id: str, rule: QualityRule) -> tuple[float, anyio.Lock | None]:
        """The price reserved for this gate call (nothing without a budget), and the
        lock held while its price is still to be learnt (released after the call); or
        :class:`GateStopped` if it would pass the budget."""
        price, learning = 0.0, None
        sensitivity = rule.sensitivity
        if self._purse.budget is not None:
            if sensitivity not in self._prices and sensitivity not in self._dry_run_asked:
                self._dry_run_asked.add(sensitivity)
                dry_run = await self._price(asset_id, rule)
                if dry_run is not None:
                    self._prices[sensitivity] = dry_run
            if sensitivity not in self._prices:
                learning = self._learning.setdefault(sensitivity, anyio.Lock())
                await learning.acquire()
                if sensitivity in self._prices:  # learnt while this call waited
                    learning.release()
                    learning = None
            price = self._prices.get(sensitivity, 0.0)
        if not self._purse.reserve(price, "quality-gate call", after_stop=True):
            if learning is not None:
                learning.release()
            raise GateStopped
        return price, learning

    async def _stored(self, asset_id: str) -> Verdict | None:
        return await with_retries(
            Request.OTHER_READ,
            lambda: self._api.stored_verdict(asset_id),
            self._retry,
            self._rng,
        )

    async def _price(self, asset_id: str, rule: QualityRule) -> float | None:
        """What a call whose answer was lost was charged: its price (the dry run's)."""
        try:
            return await with_retries(
                Request.OTHER_READ,
                lambda: self._api.gate_price(asset_id, rule.sensitivity),
                self._retry,
                self._rng,
            )
        except ApiError as exc:
            log.info("image %s: no price for its gate call: %s", asset_id, exc)
            return None


# Where images the quality gate rejected are kept, below images/.
REJECTED_DIR = "_rejected"


def rejected_name(relative: str, attempt: int) -> PurePath:
    """Where a rejected attempt's image is kept: ``images/_rejected/`` under its own
    path there, its attempt in its name."""
    inside = PurePath(relative).relative_to(IMAGES_DIR)
    name = f"{inside.stem}.attempt-{attempt}{inside.suffix}"
    return PurePath(IMAGES_DIR, REJECTED_DIR, inside.parent, name)


def set_aside(out_dir: Path, files: list[str], attempt: int) -> list[str]:
    """A rejected attempt's images moved to ``images/_rejected/`` (never deleted), and
    where each is kept now.  A file no longer at its place (moved by a run killed before
    it noted so, or deleted by another hand) has nothing to move: the unit goes on."""
    moved = []
    for relative in files:
        target = rejected_name(relative, attempt)
        with storage_faults(out_dir / target.parent):
            real_directory(out_dir, target.parent)
            try:
                os.replace(out_dir / relative, out_dir / target)
            except FileNotFoundError:
                log.info("%s: not there to set aside", relative)
        moved.append(target.as_posix())
    return moved
