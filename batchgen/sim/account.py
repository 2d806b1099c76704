"""The simulator's account: the team, its limits and use, and the models listed."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .core import SimCore
from .models import model_named
from .records import UNLIMITED_PARALLEL_JOBS, SimAnswer, _error, _iso, _parse_iso


class AccountRoutes(SimCore):
    # ------------------------------------------------------------------ the account

    TEAM_ID = "team_sim0000000000000000"
    PERIOD_DAYS = 30.0

    def _account(self, route: str, params: dict[str, str], query: Mapping[str, str]) -> SimAnswer:
        """The account's endpoints, in the SDK's shapes; 403 for a key without team access."""
        if not self.config.team_access:
            return _error(403, "This API key has no access to the team", name="ForbiddenError")
        if route == "GET /v1/teams":
            return SimAnswer(200, {"teams": [self._team_json()]})
        if route == "GET /v1/usages":
            return SimAnswer(200, self._usages(query))
        if params["team_id"] != self.TEAM_ID:
            return _error(404, "Team not found")
        return SimAnswer(200, self._limits_json())

    def _period(self) -> tuple[float, float]:
        """The billing period: 30 days from the simulator's birth (its wall clock)."""
        start = self.wall() - self.clock() - 15 * 86400
        return start, start + self.PERIOD_DAYS * 86400

    def _team_json(self) -> dict[str, Any]:
        made = _iso(self._period()[0])
        context = {"invitationsCount": 0, "keysCount": 1, "userRole": "key", "usersCount": 1}
        return {
            "id": self.TEAM_ID,
            "name": "Simulated team",
            "plan": "cu-pro",
            "type": "shared",
            "createdAt": made,
            "updatedAt": made,
            "projects": [],
            "context": context,
        }

    def _limits_json(self) -> dict[str, Any]:
        start, end = self._period()
        parallel = self.config.in_flight_limit or UNLIMITED_PARALLEL_JOBS
        allowance = self.config.credits if self.config.credits is not None else 1_000_000.0
        counts = ("apiKeys", "canvasAssets", "collections", "projects", "seats")
        limits: dict[str, Any] = {
            name: 100
            for name in (
                *counts, "canvasAssetLayers", "defaultSeats", "downloadAssets", "downloadModel",
                "inferenceBatchSize", "maxTrainingDatasets", "models", "OTPSessions",
                "parallelInferences", "parallelTraining", "parallelWorkflowRuns",
                "premiumGenerationSamples", "scalingFactor", "snapshotsRetention", "upload",
            )
        }  # fmt: skip
        limits |= {
            "parallelCustomJobs": parallel,
            "minCooldown": 1,
            "maxCooldown": 4,
            "creativeUnits": allowance,
        }
        now = self.server_wall()
        one_shots = [
            {"amount": 100, "remaining": 100, "expiration": _iso(now - 86400)},  # expired
        ]
        if self.config.one_shot_credits:
            amount = self.config.one_shot_credits
            # Spent from the period's allowance first, then from these.
            over = max(self.spent - allowance, 0.0)
            one_shots.append(
                {"amount": amount, "remaining": max(amount - over, 0.0),
                 "expiration": _iso(now + 30 * 86400)}
            )  # fmt: skip
        for one in one_shots:
            one |= {"createdAt": _iso(start), "updatedAt": _iso(start)}
        return {
            "limits": limits,
            "values": {
                **{name: 1 for name in counts},
                "creativeUnits": min(self.spent, allowance),
            },
            "period": {"start": _iso(start), "end": _iso(end)},
            "oneShotCreativeUnits": one_shots,
            "plan": "cu-pro",
        }

    def _usages(self, query: Mapping[str, str]) -> dict[str, Any]:
        """Use by model over the window asked, one point for all of it."""
        start = _parse_iso(query["startDate"]) if "startDate" in query else -math.inf
        end = _parse_iso(query["endDate"]) if "endDate" in query else math.inf
        now = self.clock()
        by_model: dict[str, list[float]] = {}
        for job in self.jobs.values():
            if job.by_other_client or not start <= job.created_wall <= end:
                continue
            spent = by_model.setdefault(job.model, [0.0, 0.0])
            spent[0] += job.net_charge(now)
            spent[1] += 1
        return {
            "modelUsages": [
                {
                    "modelId": model,
                    "points": [
                        {
                            "time": _iso(self.server_wall()),
                            "cost": cost,
                            "discount": 0,
                            "jobs": jobs,
                            "apiKeyCost": cost,
                            "apiKeyDiscount": 0,
                        }
                    ],
                }  # fmt: skip
                for model, (cost, jobs) in sorted(by_model.items())
            ]
        }

    def _list_models(self, query: Mapping[str, str]) -> SimAnswer:
        """The team's own models, or with ``privacy=public`` Scenario's: private is the
        default, as the real API's is."""
        privacy = query.get("privacy", "private")
        if privacy not in ("private", "public"):
            return _error(400, "privacy must be private or public")
        try:
            page_size = min(int(query.get("pageSize", "50")), 500)
            offset = int(query.get("paginationToken", "0"))
        except ValueError:
            return _error(400, "Invalid query parameters")
        listed = [m for m in map(model_named, self.config.models) if m.privacy == privacy]
        page = listed[offset : offset + page_size]
        payload: dict[str, Any] = {
            "models": [{k: v for k, v in m.to_json().items() if k != "inputs"} for m in page]
        }
        if offset + page_size < len(listed):
            payload["nextPaginationToken"] = str(offset + page_size)
        return SimAnswer(200, payload)
