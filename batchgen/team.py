"""Knowing the account: how many jobs it may run at once, what its credits allow, and
what it has spent (``batchgen account``).

A run with no ``concurrency`` takes the team's ``parallelCustomJobs`` less its custom
jobs already running (one listing), each shard its share, so N machines together never
pass the account's limit; a ``concurrency`` above the limit is capped, said once.  Its
cooldowns (``minCooldown``/``maxCooldown``) pace the retries after a 429 that gives no
``Retry-After``.  A batch the credits left cannot finish is refused before anything is
spent (``--allow-partial`` runs what they allow).  Limits that cannot be read (a key
without team access, an API without the endpoint) leave all this as it was, said in one
line.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .backend import Backend
from .errors import EXIT_STOPPED, ApiError, BatchgenError
from .ledger import plural
from .manifest.shard import Shard
from .retry import Request, with_retries
from .scenario.account import Limits, ModelUse, Team, shard_share, the_team

log = logging.getLogger(__name__)

# Jobs changed this long ago or later are looked at for those still running.
RUNNING_WINDOW = timedelta(hours=2)


class NotEnoughCreditsError(BatchgenError):
    """The batch needs more creative units than the account has left: refused before
    anything is spent."""

    exit_code = EXIT_STOPPED


async def read_limits(backend: Backend) -> Limits | None:
    """The team's limits, or None (said in one line) when they cannot be read."""
    try:
        teams = await with_retries(Request.OTHER_READ, backend.client.teams, backend.settings.retry)
        team = the_team(teams)
        if team is None:
            raise ApiError("the credentials belong to no team")
        return await with_retries(
            Request.OTHER_READ,
            lambda: backend.client.team_limits(team),
            backend.settings.retry,
        )
    except ApiError as exc:
        log.info(
            "the account's limits cannot be read (%s): concurrency and credits are not "
            "checked against them",
            exc,
        )
        return None


def concurrency_for(
    limit: int, running: int, shard: Shard | None, given: int | None
) -> tuple[int, str]:
    """How many jobs a run keeps in flight, and why (pure).  ``given``: the manifest's or
    the command line's, capped at the limit."""
    if given is not None:
        if given > limit:
            return limit, (
                f"concurrency {given} is above the team's parallelCustomJobs {limit}: "
                f"capped at {limit}"
            )
        return given, ""
    available = max(limit - running, 1)
    index, count = (shard.index, shard.count) if shard is not None else (1, 1)
    share = shard_share(available, index, count)
    why = f"concurrency {share}: the team's parallelCustomJobs {limit}, {running} running"
    if count > 1:
        why += f", shard {index}/{count}'s share"
    return share, why


async def account_concurrency(
    backend: Backend, limits: Limits, shard: Shard | None, given: int | None
) -> int:
    """The run's concurrency from the account (see :func:`concurrency_for`)."""
    assert limits.parallel_custom_jobs is not None
    running = 0
    if given is None:
        since = backend.client.server_now() - RUNNING_WINDOW
        try:
            running = await with_retries(
                Request.JOB_LIST,
                lambda: backend.client.running_custom_jobs(since),
                backend.settings.retry,
            )
        except ApiError as exc:
            log.info("the account's running jobs cannot be listed (%s): taken as none", exc)
    chosen, why = concurrency_for(limits.parallel_custom_jobs, running, shard, given)
    if why and given is not None:
        log.warning("%s", why)
    elif why:
        log.info("%s", why)
    return chosen


def credits_refusal(needed: float, limits: Limits, now: datetime) -> str | None:
    """Why a batch estimated at ``needed`` cannot start, or None (pure)."""
    left = limits.left(now)
    if left is None or needed <= left:
        return None
    until = f" until {limits.period_end.date().isoformat()}" if limits.period_end else ""
    return (
        f"this batch needs about {needed:,.0f} CU (estimated); the team has {left:,.0f} left"
        f"{until} (plan {limits.plan}); --allow-partial to run what the credits allow"
    )


@dataclass(frozen=True, slots=True)
class Account:
    """What ``batchgen account`` shows: the team, its plan and period, its creative
    units (allowed, used, left, one-shot ones with their expiry), its parallel jobs and
    those running now, and this period's use by model."""

    team: str = ""
    team_id: str = ""
    plan: str = ""
    period_start: str | None = None
    period_end: str | None = None
    allowed: float | None = None
    used: float | None = None
    left: float | None = None
    one_shots: list[dict[str, Any]] = field(default_factory=list)
    parallel_custom_jobs: int | None = None
    running_custom_jobs: int | None = None
    by_model: list[dict[str, Any]] = field(default_factory=list)
    # What could not be seen, and why (a key without team access, say).
    not_seen: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


async def account_of(backend: Backend) -> Account:
    try:
        teams = await with_retries(Request.OTHER_READ, backend.client.teams, backend.settings.retry)
        team = the_team(teams)
        if team is None:
            return Account(not_seen="the credentials belong to no team")
        limits = await backend.client.team_limits(team)
    except ApiError as exc:
        return Account(not_seen=f"the team and its limits: {exc}")
    now = backend.client.server_now()
    running: int | None = None
    used: list[ModelUse] = []
    not_seen = ""
    try:
        running = await backend.client.running_custom_jobs(now - RUNNING_WINDOW)
    except ApiError as exc:
        not_seen = f"the jobs running: {exc}"
    try:
        start = limits.period_start or now.replace(day=1)
        # To the period's end: a job made this second is this period's too (the
        # server's clock is known to the second only).
        end = limits.period_end or now + timedelta(days=1)
        used = await backend.client.model_usages(team, start, end)
    except ApiError as exc:
        not_seen = (not_seen + "; " if not_seen else "") + f"the use by model: {exc}"
    return _account(team, limits, running, used, now, not_seen)


def _account(
    team: Team,
    limits: Limits,
    running: int | None,
    used: list[ModelUse],
    now: datetime,
    not_seen: str,
) -> Account:
    def iso(moment: datetime | None) -> str | None:
        return moment.astimezone(UTC).isoformat() if moment else None

    return Account(
        team=team.name,
        team_id=team.id,
        plan=limits.plan,
        period_start=iso(limits.period_start),
        period_end=iso(limits.period_end),
        allowed=limits.allowance,
        used=limits.used,
        left=limits.left(now),
        one_shots=[
            {
                "remaining": one.remaining,
                "expiration": iso(one.expiration),
                "expired": one.expiration is not None and one.expiration <= now,
            }
            for one in limits.one_shots
        ],
        parallel_custom_jobs=limits.parallel_custom_jobs,
        running_custom_jobs=running,
        by_model=[{"model": u.model, "cost": u.cost, "jobs": u.jobs} for u in used],
        not_seen=not_seen,
    )


def account_lines(found: Account) -> list[str]:
    """``batchgen account`` in words."""
    if not found.team_id:
        return [f"the account cannot be seen with these credentials: {found.not_seen}"]

    def cu(value: float | None) -> str:
        return "?" if value is None else f"{value:,.0f}"

    lines = [
        f"team {found.team} ({found.team_id}), plan {found.plan}",
        f"period {(found.period_start or '?')[:10]} to {(found.period_end or '?')[:10]}: "
        f"{cu(found.allowed)} CU allowed, {cu(found.used)} used; {cu(found.left)} left "
        "(with the one-shot units not expired)",
    ]
    for one in found.one_shots:
        state = "expired" if one["expired"] else "expires"
        lines.append(f"  one-shot: {cu(one['remaining'])} CU left, {state} {one['expiration']}")
    lines.append(
        f"parallel custom jobs: {found.parallel_custom_jobs}; running now: "
        f"{found.running_custom_jobs}"
    )
    for use in found.by_model:
        jobs = plural(use["jobs"], "job")
        lines.append(f"  {use['model']}: {cu(use['cost'])} CU this period, {jobs}")
    if found.not_seen:
        lines.append(f"not seen: {found.not_seen}")
    return lines
