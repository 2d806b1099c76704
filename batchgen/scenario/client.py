"""The Scenario API as typed calls: the one choke point every request goes through.

:meth:`ScenarioClient.request` sends a request through a transport (``transport.py``:
aiohttp, or a function in tests) and turns whatever comes back into a parsed answer or
an error of :mod:`batchgen.errors`, sorting failures into the two kinds the engine must
tell apart: *safe to retry* (nothing reached the server, or the request creates
nothing) and *may have created a job* (:class:`AmbiguousSubmitError`: a submission sent
whose answer was lost, which is reconciled, never sent again blindly).  The client sends
the Basic credentials to the API origin only and follows no redirects.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from yarl import URL

from ..config import MAX_API_BODY_BYTES, ApiSettings, is_api_id
from ..errors import (
    AmbiguousSubmitError,
    ApiError,
    ApiUnreachableError,
    BrokenListError,
    CredentialsError,
    MalformedResponseError,
    ModelRestrictedError,
    OutOfCreditsError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)
from ..redact import clean
from .account import Limits, ModelUse, Team, parse_limits, parse_model_usages, parse_teams
from .inputs import ModelSpec, parse_model
from .records import (
    Asset,
    JobRecord,
    Submission,
    Verdict,
    parse_asset,
    parse_job,
    parse_submission,
    parse_verdict,
    stored_verdict,
)
from .transport import (
    USER_AGENT,
    AiohttpTransport,
    AnswerTooLarge,
    CannotConnect,
    ConnectionDropped,
    NoAnswer,
    Outgoing,
    Transport,
    open_session,
)

UPLOAD_PATH = "/v1/assets"
GATE_PATH = "/v1/generate/quality-gate"
BULK_ASSET_LIMIT = 200
# A list that never ends is a server bug: stop following it somewhere, in pages, in
# items kept and in time (a token on every page, each page full or empty, forever).
MAX_LIST_PAGES = 500
MAX_LIST_ITEMS = 50_000
MAX_LIST_SECONDS = 300.0
DRY_RUN_STATUS = 269
LIST_PAGE_SIZE = 100  # the most GET /v1/jobs gives in one page
# A keep-alive connection that the server or a load balancer closed while it sat idle
# fails the next request sent on it.  Nothing is wrong with the server: a read is sent
# again at once on a fresh connection, this many times at most in a row, and it does
# not count as a failed attempt.
STALE_CONNECTION_RETRIES = 3


def _reason(body: bytes) -> tuple[str, str, Any]:
    """(reason, name, details) from an error body, tolerating anything: the server's
    words as batchgen may show them (one line, no secret, no control character)."""
    try:
        payload = json.loads(body)
    except ValueError:
        return clean(body[:200].decode("utf-8", "replace").strip()), "", None
    if not isinstance(payload, dict):
        return "", "", None
    reason = payload.get("reason") or payload.get("message") or ""
    return (
        clean(str(reason)[:500]),
        clean(str(payload.get("name") or "")[:100]),
        payload.get("details"),
    )


def _id(value: str, kind: str) -> str:
    """An id as it goes into a request's path: one of the API's ids, nothing else (an id
    from a server or a manifest holding "../" would reach other paths of the origin)."""
    if not is_api_id(value):
        raise MalformedResponseError(f"{clean(repr(value)[:80])} is not a {kind} id")
    return value


def _api_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def refusal(
    what: str, status: int, raw: bytes, retry_after: float | None, *, creates: bool
) -> ApiError | CredentialsError:
    """The error an answer other than a success is (pure): by its status and the
    server's words, the kinds the retry table tells apart.  ``creates``: the request
    may have made something (a submission), so a server error leaves it ambiguous."""
    reason, name, details = _reason(raw)
    message = f"{what}: HTTP {status}" + (f": {reason}" if reason else "")
    if status == 401:
        return CredentialsError(
            "the API refused the credentials (HTTP 401): check SCENARIO_API_KEY and "
            "SCENARIO_API_SECRET"
        )
    if status == 429:
        limit = details.get("actionLimit") if isinstance(details, dict) else None
        return RateLimitedError(
            message,
            reason=reason,
            retry_after=retry_after,
            action_limit=limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
        )
    if status >= 500 or status in (408, 409):
        # 408 and 409 are the server's "not now" (a timeout, a conflict in flight):
        # like a 5xx, a read is tried again and a submission reconciled.
        server_error: type[ApiError] = AmbiguousSubmitError if creates else TransientApiError
        return server_error(message, status=status, reason=reason)
    if status == 402 or (400 <= status < 500 and "creative unit" in reason.lower()):
        # Not documented; Scenario's own plugins read these as an exhausted quota.
        return OutOfCreditsError(message, status=status, reason=reason or f"HTTP {status}")
    if 300 <= status < 400:
        return PermanentApiError(f"{what}: unexpected redirect (HTTP {status})", status=status)
    if status == 403 and name == "ModelAccessRestrictedError":
        return ModelRestrictedError(message, status=status, reason=reason, name=name)
    return PermanentApiError(message, status=status, reason=reason or f"HTTP {status}", name=name)


class ScenarioClient:
    """A thin, typed adapter over the Scenario REST API."""

    def __init__(self, settings: ApiSettings, transport: Transport) -> None:
        self._settings = settings
        self._transport = transport
        self._base = URL(settings.base_url.rstrip("/"))
        self._headers = {
            "Authorization": settings.credentials.authorization_header(),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        # The server's clock as its last answer gave it, and when (ours) that was.
        self._server_date: tuple[float, str] | None = None

    @property
    def settings(self) -> ApiSettings:
        return self._settings

    def server_now(self) -> datetime:
        """The server's time now, as near as its answers tell (their Date header, to
        the second): times the API compares with its own (``createdAfter``) are given
        in its clock, so a skewed local clock cannot hide a job."""
        known = self._server_date
        if known is not None:
            received, date = known
            try:
                then = parsedate_to_datetime(date)
            except (TypeError, ValueError):
                pass
            else:
                if then.tzinfo is None:
                    then = then.replace(tzinfo=UTC)
                return then + timedelta(seconds=max(time.time() - received, 0.0))
        return datetime.now(UTC)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: ApiSettings) -> AsyncIterator[ScenarioClient]:
        async with await open_session() as session:
            yield cls(settings, AiohttpTransport(session, settings.request_timeout))

    def _url(self, path: str, query: dict[str, str] | None, project: bool = True) -> URL:
        merged = dict(query or {})
        if self._settings.project_id and project:
            merged.setdefault("projectId", self._settings.project_id)
        url = self._base.with_path(self._base.path.rstrip("/") + path)
        return url.with_query(merged) if merged else url

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        project: bool = True,
    ) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON) for a success, raises ours otherwise.
        ``project``: whether the project id goes with it (the account's endpoints take
        none)."""
        # A POST that makes something (a job, an uploaded asset) may have made it even
        # when its answer is lost: that is for the caller to find out, not to retry.
        creates = (
            method == "POST"
            and not query
            and (path.startswith("/v1/generate/") or path == UPLOAD_PATH)
        )
        what = f"{method} {path}"
        outgoing = Outgoing(method, self._url(path, query, project), self._headers, body)
        for stale in range(STALE_CONNECTION_RETRIES + 1):
            try:
                answer = await self._transport.send(outgoing, limit=MAX_API_BODY_BYTES)
                break
            except CannotConnect as exc:
                # Nothing reached the server: safe to retry, even a submission.
                raise ApiUnreachableError(f"{what}: {exc}") from exc
            except ConnectionDropped as exc:
                # Most often a kept-alive connection closed while idle.  A read goes again
                # at once; a submission may have created its job and is reconciled.
                if creates:
                    raise AmbiguousSubmitError(f"{what}: {exc}", connection_dropped=True) from exc
                if stale == STALE_CONNECTION_RETRIES:
                    raise TransientApiError(f"{what}: {exc}") from exc
            except NoAnswer as exc:
                if creates:
                    raise AmbiguousSubmitError(f"{what}: {exc}") from exc
                if isinstance(exc, AnswerTooLarge):  # a broken server, not the network
                    raise MalformedResponseError(f"{what}: {exc}") from exc
                raise TransientApiError(f"{what}: {exc}") from exc
        status, raw, retry_after = answer.status, answer.body, answer.retry_after
        if answer.date:
            self._server_date = (time.time(), answer.date)
        if 200 <= status < 300:
            try:
                return status, json.loads(raw) if raw else None
            except ValueError as exc:
                error_type: type[ApiError] = (
                    AmbiguousSubmitError if creates else MalformedResponseError
                )
                raise error_type(f"{what}: answered {status} with a body that is not JSON") from exc
        raise refusal(what, status, raw, retry_after, creates=creates)

    async def submit(self, model: str, body: dict[str, Any]) -> Submission:
        path = f"/v1/generate/custom/{_id(model, 'model')}"
        status, payload = await self.request("POST", path, body=body)
        try:
            return parse_submission(payload)
        except MalformedResponseError as exc:
            raise AmbiguousSubmitError(f"POST /v1/generate/custom/{model}: {exc}") from exc

    async def upload_image(self, name: str, content: bytes) -> str:
        """Upload an image (``POST /v1/assets``, base64): the new asset's id.  Every call
        makes an asset; one whose answer is lost may have (:meth:`uploads_created_after`
        finds it by ``name``)."""
        body = {"name": name, "image": base64.b64encode(content).decode("ascii")}
        _, payload = await self.request("POST", UPLOAD_PATH, body=body)
        asset = payload.get("asset") if isinstance(payload, dict) else None
        asset_id = asset.get("id") if isinstance(asset, dict) else None
        if not isinstance(asset_id, str) or not asset_id:
            raise AmbiguousSubmitError(f"POST {UPLOAD_PATH}: the answer names no asset")
        return asset_id

    async def uploads_created_after(self, since: datetime) -> dict[str, str]:
        """The images uploaded after ``since`` (the server's clock): asset id by the name
        each was given."""
        # createdAfter is taken only with sortBy=createdAt (the SDK's AssetListParams).
        query = {
            "type": "uploaded",
            "sortBy": "createdAt",
            "createdAfter": _api_time(since),
            "pageSize": str(LIST_PAGE_SIZE),
        }
        found: dict[str, str] = {}
        for item in await self._pages(UPLOAD_PATH, "assets", query):
            metadata = item.get("metadata") if isinstance(item, dict) else None
            name = metadata.get("name") if isinstance(metadata, dict) else None
            if isinstance(name, str) and isinstance(item.get("id"), str):
                found.setdefault(name, item["id"])
        return found

    async def estimate(self, model: str, body: dict[str, Any]) -> float | None:
        """Ask the dry run (HTTP 269) for the cost of one job; creates nothing."""
        _, payload = await self.request(
            "POST",
            f"/v1/generate/custom/{_id(model, 'model')}",
            query={"dryRun": "true"},
            body=body,
        )
        cost = payload.get("creativeUnitsCost") if isinstance(payload, dict) else None
        return float(cost) if isinstance(cost, int | float) else None

    async def get_job(self, job_id: str) -> JobRecord:
        _, payload = await self.request("GET", f"/v1/jobs/{_id(job_id, 'job')}")
        return parse_job(payload)

    async def cancel_job(self, job_id: str) -> None:
        """Ask the API to cancel a job; custom generation jobs usually refuse (400)."""
        await self.request(
            "POST", f"/v1/jobs/{_id(job_id, 'job')}/action", body={"action": "cancel"}
        )

    async def get_assets(self, asset_ids: Sequence[str]) -> list[Asset]:
        """Fresh signed URLs for these assets, in the order asked."""
        found = await self.lookup_assets(asset_ids)
        missing = [a for a in asset_ids if a not in found]
        if missing:
            raise MalformedResponseError(f"asset lookup did not return {len(missing)} asset(s)")
        return [found[a] for a in asset_ids]

    async def lookup_assets(self, asset_ids: Sequence[str]) -> dict[str, Asset]:
        """The assets the API returns for these ids, by id: one request for each
        ``BULK_ASSET_LIMIT`` of them."""
        if len(asset_ids) == 1:
            _, payload = await self.request("GET", f"/v1/assets/{_id(asset_ids[0], 'asset')}")
            asset = parse_asset(payload)
            return {asset.id: asset}
        found: dict[str, Asset] = {}
        for start in range(0, len(asset_ids), BULK_ASSET_LIMIT):
            chunk = list(asset_ids[start : start + BULK_ASSET_LIMIT])
            _, payload = await self.request("POST", "/v1/assets/get-bulk", body={"assetIds": chunk})
            items = payload.get("assets") if isinstance(payload, dict) else None
            if not isinstance(items, list):
                raise MalformedResponseError("POST /v1/assets/get-bulk: no assets list")
            for item in items:
                asset = parse_asset(item)
                found[asset.id] = asset
        return found

    async def jobs_created_after(self, since: datetime) -> list[JobRecord]:
        """Every job created after ``since``, following pagination tokens through pages
        that may be empty while a token is still given."""
        return await self._list_jobs({"createdAfter": _api_time(since)})

    async def jobs_updated_after(self, since: datetime) -> list[JobRecord]:
        """Every custom-generation job the server changed after ``since`` (its clock)."""
        return await self._list_jobs({"type": "custom", "updatedAfter": _api_time(since)})

    async def _list_jobs(self, filters: dict[str, str]) -> list[JobRecord]:
        query = filters | {"pageSize": str(LIST_PAGE_SIZE)}
        return [parse_job(item) for item in await self._pages("/v1/jobs", "jobs", query)]

    async def list_models(self, privacy: str = "private") -> list[dict[str, Any]]:
        """Every model of one privacy (all pages): ``private``, the team's own (the API's
        default), or ``public``, Scenario's."""
        query = {"pageSize": "100", "privacy": privacy}
        return [m for m in await self._pages("/v1/models", "models", query) if isinstance(m, dict)]

    async def _pages(self, path: str, key: str, query: dict[str, str]) -> list[Any]:
        """Every item of a paged list, following tokens through pages that may be empty
        while a token is still given.  A token that comes back, or a list longer than
        ``MAX_LIST_PAGES`` pages, is a broken list: it ends in an error, not in memory
        and requests without end."""
        items: list[Any] = []
        seen: set[str] = set()
        token: str | None = None
        deadline = time.monotonic() + MAX_LIST_SECONDS
        for _ in range(MAX_LIST_PAGES):
            paged = query | ({"paginationToken": token} if token else {})
            _, payload = await self.request("GET", path, query=paged)
            if not isinstance(payload, dict) or not isinstance(payload.get(key) or [], list):
                raise MalformedResponseError(f"GET {path}: no {key} list")
            items.extend(payload.get(key) or [])
            if len(items) > MAX_LIST_ITEMS:
                raise BrokenListError(f"GET {path}: more than {MAX_LIST_ITEMS} items")
            token = payload.get("nextPaginationToken") or None
            if not token:
                return items
            if not isinstance(token, str) or token in seen:
                raise BrokenListError(f"GET {path}: the pagination token came back")
            if time.monotonic() > deadline:
                raise BrokenListError(f"GET {path}: still paging after {MAX_LIST_SECONDS:g}s")
            seen.add(token)
        raise BrokenListError(f"GET {path}: more than {MAX_LIST_PAGES} pages")

    async def quality_gate(self, asset_id: str, sensitivity: str | None) -> Verdict:
        """Score an image (``POST /v1/generate/quality-gate``): paid, and a lost answer
        may have scored it (:class:`AmbiguousSubmitError`; the asset keeps the verdict,
        :meth:`stored_verdict`)."""
        body = {"image": _id(asset_id, "asset")} | (
            {"sensitivity": sensitivity} if sensitivity else {}
        )
        _, payload = await self.request("POST", GATE_PATH, body=body)
        try:
            return parse_verdict(payload)
        except MalformedResponseError as exc:
            raise AmbiguousSubmitError(f"POST {GATE_PATH}: {exc}") from exc

    async def gate_price(self, asset_id: str, sensitivity: str | None) -> float | None:
        """What one gate call costs (the dry run, 269): scores nothing."""
        body = {"image": asset_id} | ({"sensitivity": sensitivity} if sensitivity else {})
        _, payload = await self.request("POST", GATE_PATH, query={"dryRun": "true"}, body=body)
        cost = payload.get("creativeUnitsCost") if isinstance(payload, dict) else None
        return float(cost) if isinstance(cost, int | float) else None

    async def stored_verdict(self, asset_id: str) -> Verdict | None:
        """The verdict an asset keeps, if it was scored (``asset.qualityGate``)."""
        _, payload = await self.request("GET", f"/v1/assets/{_id(asset_id, 'asset')}")
        return stored_verdict(payload)

    async def teams(self) -> list[Team]:
        """The teams of the credentials (``GET /v1/teams``)."""
        _, payload = await self.request("GET", "/v1/teams", project=False)
        return parse_teams(payload)

    async def team_limits(self, team: Team) -> Limits:
        """A team's limits and its creative units (``GET /v1/teams/{id}/limits``)."""
        path = f"/v1/teams/{_id(team.id, 'team')}/limits"
        _, payload = await self.request("GET", path, project=False)
        return parse_limits(team, payload)

    async def model_usages(self, team: Team, start: datetime, end: datetime) -> list[ModelUse]:
        """Use by model between two moments (``GET /v1/usages?type=model-usages``)."""
        query = {
            "type": "model-usages",
            "startDate": _api_time(start),
            "endDate": _api_time(end),
            "teamId": team.id,
            "dropZeroPoints": "true",
        }
        _, payload = await self.request("GET", "/v1/usages", query=query, project=False)
        return parse_model_usages(payload)

    async def running_custom_jobs(self, since: datetime) -> int:
        """The account's custom jobs not ended, among those changed since ``since``
        (one listing): what takes up its parallel jobs besides a new run's."""
        jobs = await self.jobs_updated_after(since)
        return len({job.job_id for job in jobs if not job.terminal})

    async def get_model(self, model_id: str) -> ModelSpec:
        """A model and its inputs (``GET /v1/models/{id}``)."""
        _, payload = await self.request("GET", f"/v1/models/{_id(model_id, 'model')}")
        return parse_model(payload)
