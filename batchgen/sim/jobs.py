"""The simulator's jobs: a submission (and its dry run), a job read, cancelled, and
both job lists, served from indexes ordered by time."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Mapping
from typing import Any

from .core import SimCore
from .models import SimModel, refusal
from .records import CANCEL_REFUSED, MAX_PAGE_SIZE, SimAnswer, SimAsset, SimJob, _error, _parse_iso


class JobRoutes(SimCore):
    def _unknown_assets(self, model: SimModel, body: dict[str, Any]) -> str | None:
        for item in model.inputs:
            value = body.get(item["name"])
            if item["type"] not in ("file", "file_array") or value is None:
                continue
            for asset_id in value if isinstance(value, list) else [value]:
                if str(asset_id).startswith("data:"):
                    continue
                if asset_id not in self.uploads and asset_id not in self.assets:
                    return f"{item['name']}: asset {asset_id} not found"
        return None

    def _submit(self, model_id: str, body: Any, query: Mapping[str, str]) -> SimAnswer:
        model = self.model(model_id)
        if model is None:
            return _error(404, f"Model {model_id} not found")
        problem = refusal(model, body) or self._unknown_assets(model, body)
        if self.config.moderated_word and not problem:
            if self.config.moderated_word in body["prompt"]:
                problem = "The prompt was rejected by content moderation"
        if problem:
            self.refusals[problem] += 1
            return _error(400, problem)
        cost = self.cost_of(model, body)
        if query.get("dryRun") == "true":
            # The answer's shape is the SDK's GenerateRunModelResponse: a job that is
            # only described, never created, and the cost.
            preview = self._job(model, body, cost, created=False)
            return SimAnswer(269, self._submitted(preview, cost, at=-math.inf))
        if model_id in self.config.restricted_models:
            return _error(
                403,
                f"Your plan does not give access to {model_id}",
                name="ModelAccessRestrictedError",
            )
        credits = self.config.credits
        if credits is not None and self.spent + cost > credits + self.config.one_shot_credits:
            return _error(402, "Not enough creative units to run this job")
        limit = self.config.in_flight_limit
        if limit is not None and self.in_flight() >= limit:
            return _error(
                429,
                "Too many parallel jobs",
                details={"actionName": "parallelCustomJobs", "actionLimit": limit},
            )
        if self.config.other_clients and self._rng.random() < self.config.other_clients:
            # Someone else on the account sending the same prompt: a seed, where the
            # request has one, is theirs (one drawn from a unit id of ours is not).
            theirs = dict(body)
            if "seed" in theirs:
                theirs["seed"] = self._rng.randrange(2**31)
            other = self._job(model, theirs, cost, created=True)
            other.by_other_client = True
        job = self._job(model, body, cost, created=True)
        self.charged += cost
        self.max_in_flight = max(self.max_in_flight, self.in_flight())
        if self.on_job_created is not None:
            self.on_job_created(job)
        if self._rng.random() < self.config.lose_answer_rate:
            self.answers_lost += 1
            if self._rng.random() < 0.5:
                return SimAnswer(502, None, drop=True)
            return _error(502, "Bad Gateway")
        return SimAnswer(200, self._submitted(job, cost))

    def _submitted(self, job: SimJob, cost: float, at: float | None = None) -> dict[str, Any]:
        return {
            "job": self.job_json(job, at=at),
            "creativeUnitsCost": cost,
            "creativeUnitsDiscount": job.discount,
            # Per billing action, after discount: they sum to creativeUnitsCost.
            "costDetails": {"custom-generation": cost} if cost else {},
        }

    def _job(self, model: SimModel, body: dict[str, Any], cost: float, *, created: bool) -> SimJob:
        spread = self.config.jitter * self.config.job_seconds
        duration = max(self.config.job_seconds + self._rng.uniform(-spread, spread), 0.0)
        job = SimJob(
            job_id=self._new_id("job"),
            model=model.id,
            body=body,
            stored_input=self.stored_input(model, body),
            created_wall=self.server_wall(),
            start=self.clock() if created else math.inf,
            duration=duration,
            fails=self._rng.random() < self.config.failure_rate,
            cost=cost,
            discount=self.discount_of(model, body),
            refundable=model.id not in self.config.no_refund_models,
            asset_ids=[],
            stuck=self._rng.random() < self.config.stuck_rate,
            list_lag=self._rng.uniform(0, self.config.list_lag) if self.config.list_lag else 0.0,
        )
        if not created:
            return job
        outputs = int(body.get("numOutputs") or 1)
        seed = body.get("seed")
        width, height = model.pixels(body)
        for index in range(outputs):
            asset_id = self._new_id("asset")
            job.asset_ids.append(asset_id)
            self.assets[asset_id] = SimAsset(
                asset_id=asset_id,
                job_id=job.job_id,
                width=width,
                height=height,
                seed=(int(seed) if isinstance(seed, int) else self._rng.randrange(2**31)) + index,
                prompt=str(body["prompt"]),
                model=model.id,
                index=index,
                inputs=json.dumps(
                    {
                        item["name"]: body[item["name"]]
                        for item in model.inputs
                        if item["type"] in ("file", "file_array") and item["name"] in body
                    },
                    sort_keys=True,
                ),
            )
        self.jobs[job.job_id] = job
        if self.first_job_at is None:
            self.first_job_at = job.start
        self._running.add(job.job_id)
        self.jobs_created_per_body[json.dumps([model.id, body], sort_keys=True)] += 1
        self._index(job)
        self._keep(job)
        return job

    def _get_job(self, job_id: str) -> SimAnswer:
        job = self.jobs.get(job_id)
        if job is None or self.clock() - job.start < self.config.young_job_404:
            return _error(404, "Job not found")
        shown = self.job_json(job)
        if self.config.broken_job_answers == "huge":
            return SimAnswer(200, {"job": shown, "padding": " " * self.config.huge_answer_bytes})
        if self.config.broken_job_answers == "bad-status":
            shown["status"] = {"state": shown["status"]}
        return SimAnswer(200, {"job": shown})

    def _job_action(self, job_id: str, body: Any) -> SimAnswer:
        job = self.jobs.get(job_id)
        if job is None:
            return _error(404, "Job not found")
        if not isinstance(body, dict) or body.get("action") != "cancel":
            return _error(400, "Unknown action")
        if not self.config.cancel_accepted:
            self.cancels["refused"] += 1
            return _error(400, CANCEL_REFUSED)
        now = self.clock()
        if not self._is_terminal(job, now):
            job.canceled_at = now
            bisect.insort(self._changes, (now + job.list_lag, job.job_id))
        self.cancels["accepted"] += 1
        return SimAnswer(200, {"job": self.job_json(job)})

    def _list_jobs(self, query: Mapping[str, str]) -> SimAnswer:
        try:
            page_size = min(int(query.get("pageSize", "50")), MAX_PAGE_SIZE)
            updated_after = _parse_iso(query["updatedAfter"]) if "updatedAfter" in query else None
            created_after = _parse_iso(query["createdAfter"]) if "createdAfter" in query else None
        except ValueError:
            return _error(400, "Invalid query parameters")
        if page_size < 1:
            return _error(400, "Invalid query parameters")
        filtered = "status" in query or "type" in query or "types" in query
        if updated_after is not None and not filtered:
            return _error(400, "updatedAfter requires a status or type filter")
        if created_after is not None and filtered:
            return _error(400, "createdAfter cannot be combined with status or type filters")
        if self.config.list_down:
            return _error(503, "Service unavailable")
        if self.config.endless_lists:
            self.created_scans += "createdAfter" in query and not query.get("paginationToken")
            fresh = f"t{self._ids.getrandbits(64):016x}"
            return SimAnswer(200, {"jobs": [], "nextPaginationToken": fresh})
        job_types = set((query.get("types") or query.get("type") or "custom").split(","))
        if "custom" not in job_types:
            return SimAnswer(200, {"jobs": []})
        token = query.get("paginationToken", "")
        if updated_after is not None:
            if self.config.list_refused:
                return _error(403, "Listing jobs by update time is not allowed")
            return self._changed_jobs(updated_after, query.get("status"), page_size, token)
        if not token:
            self.created_scans += 1
        return self._created_jobs(created_after, query.get("status"), page_size, token)

    def _visible(self, job: SimJob, now: float) -> bool:
        return now - job.list_lag >= job.start

    def _created_jobs(
        self, created_after: float | None, status: str | None, page_size: int, token: str
    ) -> SimAnswer:
        """Jobs by creation, oldest first with a token that says where the next page
        starts; newest first by offset with ``unstable_paging``.  Jobs created before
        ``created_after`` (the server's clock) are left out: those pages may be empty
        while a token is still given."""
        now = self.clock()
        if self.config.unstable_paging:
            shown = [self.jobs[job_id] for _, job_id in reversed(self._created) if _ <= now]
            try:
                offset = int(token or "0")
            except ValueError:
                return _error(400, "Invalid pagination token")
            page_jobs = shown[offset : offset + page_size]
            payload: dict[str, Any] = {"jobs": self._rendered(page_jobs, created_after, status)}
            if offset + page_size < len(shown):
                payload["nextPaginationToken"] = str(offset + page_size)
            return SimAnswer(200, payload)
        try:
            position = int(token or "0")
        except ValueError:
            return _error(400, "Invalid pagination token")
        if not token and created_after is not None:
            # Where jobs created after the moment begin (an index on createdAt).
            wall_offset = self.server_wall() - now
            position = bisect.bisect_left(self._created, (created_after - wall_offset - 1.0, ""))
        visible_end = bisect.bisect_right(self._created, (now, "\uffff"))
        chosen = [self.jobs[job_id] for _, job_id in self._created[position : position + page_size]]
        chosen = [job for job in chosen if self._visible(job, now)]
        payload = {"jobs": self._rendered(chosen, created_after, status)}
        if position + page_size < visible_end:
            payload["nextPaginationToken"] = str(position + page_size)
        return SimAnswer(200, payload)

    def _rendered(
        self, jobs: list[SimJob], created_after: float | None, status: str | None
    ) -> list[dict[str, Any]]:
        now = self.clock()
        rendered = []
        for job in jobs:
            if created_after is not None and job.created_wall <= created_after:
                continue
            shown = self.job_json(job, at=now - job.list_lag)
            if status is None or shown["status"] == status:
                rendered.append(shown)
        return rendered

    def _changed_jobs(
        self, updated_after: float, status: str | None, page_size: int, token: str
    ) -> SimAnswer:
        """Jobs changed after a moment, as an index on (updatedAt, jobId) serves them:
        in that order, the token being the last key given, so a job that changes while
        the pages are followed moves to a later page instead of being skipped."""
        now = self.clock()
        after_ms = round(updated_after * 1000)
        # Changes shown by now since the moment asked: the server's clock back to ours
        # (with a second's slack: what is older is left out below, to the millisecond).
        since = updated_after - (self.server_wall() - now) - 1.0
        low = bisect.bisect_right(self._changes, (since, "\uffff"))
        high = bisect.bisect_right(self._changes, (now, "\uffff"))
        keyed = set()
        for _, job_id in self._changes[low:high]:
            job = self.jobs[job_id]
            seen = now - job.list_lag
            phase, began = job.phase(seen)
            changed_ms = math.floor(began * 1000)
            if changed_ms > after_ms and (status is None or phase == status):
                keyed.add((changed_ms, job_id))
        ordered = sorted(keyed)
        if token:
            last_ms, _, last_id = token.partition(":")
            try:
                start_key = (int(last_ms), last_id)
            except ValueError:
                return _error(400, "Invalid pagination token")
            ordered = [key for key in ordered if key > start_key]
        page = ordered[:page_size]
        payload: dict[str, Any] = {"jobs": []}
        if self.config.list_holes and self._rng.random() < self.config.list_holes:
            # An empty page that still hands on a token.
            payload["nextPaginationToken"] = token or f"{after_ms}:"
            return SimAnswer(200, payload)
        payload["jobs"] = [
            self.job_json(self.jobs[job_id], at=now - self.jobs[job_id].list_lag)
            for _, job_id in page
        ]
        if len(ordered) > page_size:
            end_ms, end_id = page[-1]
            payload["nextPaginationToken"] = f"{end_ms}:{end_id}"
        return SimAnswer(200, payload)
