"""The account the credentials belong to, as the API tells it (pure parsing and sums).

``GET /v1/teams`` lists the teams of the credentials; ``GET /v1/teams/{id}/limits``
gives the plan's limits (``parallelCustomJobs``, the cooldowns after overuse, the
period's creative units), what was used this period, and the one-shot units bought
(each with what remains and when it expires); ``GET /v1/usages?type=model-usages`` the
use by model over a window.  Shapes from scenario-sdk 2.4.0's ``TeamListResponse``,
``TeamRetrieveLimitsResponse`` and ``UsageListResponse``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import MalformedResponseError


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Team:
    id: str
    name: str
    plan: str
    # The caller's role in it ("key" for an API key's own team).
    role: str = ""


def parse_teams(payload: Any) -> list[Team]:
    teams = payload.get("teams") if isinstance(payload, dict) else None
    if not isinstance(teams, list):
        raise MalformedResponseError("GET /v1/teams: no teams list")
    found = []
    for item in teams:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        context = item["context"] if isinstance(item.get("context"), dict) else {}
        found.append(
            Team(
                id=item["id"],
                name=str(item.get("name") or ""),
                plan=str(item.get("plan") or ""),
                role=str(context.get("userRole") or ""),
            )
        )
    return found


def the_team(teams: list[Team]) -> Team | None:
    """The team whose limits govern the credentials: an API key's own, else the first."""
    return next((team for team in teams if team.role == "key"), teams[0] if teams else None)


@dataclass(frozen=True, slots=True)
class OneShot:
    remaining: float
    expiration: datetime | None


@dataclass(frozen=True, slots=True)
class Limits:
    """A team's limits and what is left of its creative units."""

    team: Team
    plan: str
    parallel_custom_jobs: int | None
    # Seconds the API waits a client out after overuse (when it sends no Retry-After).
    min_cooldown: float | None
    max_cooldown: float | None
    allowance: float | None  # the period's creative units
    used: float | None  # used this period
    period_start: datetime | None
    period_end: datetime | None
    one_shots: tuple[OneShot, ...] = field(default_factory=tuple)

    def left(self, now: datetime) -> float | None:
        """What can still be spent: the period's allowance less its use, and the one-shot
        units not yet expired.  None when the API does not say."""
        if self.allowance is None or self.used is None:
            return None
        period = max(self.allowance - self.used, 0.0)
        return period + sum(
            one.remaining
            for one in self.one_shots
            if one.expiration is None or one.expiration > now
        )

    def cooldown(self) -> tuple[float, float] | None:
        if self.min_cooldown is None or self.max_cooldown is None:
            return None
        low, high = sorted((max(self.min_cooldown, 0.0), max(self.max_cooldown, 0.0)))
        return (low, high)


def parse_limits(team: Team, payload: Any) -> Limits:
    if not isinstance(payload, dict) or not isinstance(payload.get("limits"), dict):
        raise MalformedResponseError("GET /v1/teams/{id}/limits: no limits")
    limits, values = payload["limits"], payload.get("values") or {}
    period = payload["period"] if isinstance(payload.get("period"), dict) else {}
    parallel = _number(limits.get("parallelCustomJobs"))
    shots = payload.get("oneShotCreativeUnits")
    one_shots = tuple(
        OneShot(_number(one.get("remaining")) or 0.0, _moment(one.get("expiration")))
        for one in (shots if isinstance(shots, list) else [])
        if isinstance(one, dict)
    )
    return Limits(
        team=team,
        plan=str(payload.get("plan") or team.plan),
        parallel_custom_jobs=int(parallel) if parallel is not None and parallel >= 1 else None,
        min_cooldown=_number(limits.get("minCooldown")),
        max_cooldown=_number(limits.get("maxCooldown")),
        allowance=_number(limits.get("creativeUnits")),
        used=_number(values.get("creativeUnits")) if isinstance(values, dict) else None,
        period_start=_moment(period.get("start")),
        period_end=_moment(period.get("end")),
        one_shots=one_shots,
    )


@dataclass(frozen=True, slots=True)
class ModelUse:
    model: str
    cost: float
    jobs: int


def parse_model_usages(payload: Any) -> list[ModelUse]:
    """Use by model over the window asked (its points summed), most spent first."""
    usages = payload.get("modelUsages") if isinstance(payload, dict) else None
    found = []
    for item in usages if isinstance(usages, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("modelId"), str):
            continue
        points = [p for p in item.get("points") or [] if isinstance(p, dict)]
        cost = sum(_number(p.get("cost")) or 0.0 for p in points)
        jobs = sum(int(_number(p.get("jobs")) or 0) for p in points)
        found.append(ModelUse(item["modelId"], cost, jobs))
    return sorted(found, key=lambda use: (-use.cost, use.model))


def shard_share(available: int, index: int, count: int) -> int:
    """Shard ``index`` of ``count``'s share of ``available`` jobs in flight: the shares
    sum to ``available`` (each at least 1), so N machines never exceed the account."""
    base, extra = divmod(max(available, count), count)
    return base + (1 if index <= extra else 0)
