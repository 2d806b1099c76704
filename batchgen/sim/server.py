"""The simulator's state and its two aiohttp applications (API and CDN).

Jobs advance with time and are computed when asked (no background tasks):
``queued → warming-up → in-progress → finalizing → success | failure`` over a duration
of ``job_seconds`` with ``jitter``.  Everything random comes from one seeded
generator, so a run reproduces.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import hashlib
import hmac
import json
import math
import random
import secrets
import ssl
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from .models import DEFAULT_MODELS, SimModel, model_named, refusal
from .png import make_png

MAX_PAGE_SIZE = 100
PHASES = (("queued", 0.15), ("warming-up", 0.3), ("in-progress", 0.85), ("finalizing", 1.0))


@dataclass(frozen=True, slots=True)
class Network:
    """How answers travel, so that the client is tested the way bytes really arrive:
    late, in pieces, compressed, on connections that do not live for ever.  The default
    is loopback's kindness: every answer in one write, at once."""

    # Every body written in pieces of this many bytes (a TCP segment is ~1,400), with a
    # pause between them; the CDN's first piece can be smaller still.
    piece_bytes: int | None = None
    piece_pause: float = 0.0
    first_cdn_piece: int | None = None
    # gzip the API's answers when the client accepts it, as real gateways do.
    gzip: bool = False
    # Chunked transfer encoding instead of a Content-Length.
    chunked: bool = False
    # Seconds each request takes on the wire, drawn uniformly from this range: half
    # before the server sees it, half before the answer starts.
    latency: tuple[float, float] = (0.0, 0.0)
    # A kept-alive connection idle longer than this is dropped by the "load balancer"
    # when the next request arrives on it: the client sees the connection close with no
    # answer, and the request never reaches the API.
    idle_close: float | None = None

    @property
    def kind(self) -> bool:
        return self == Network()


# What a client meets across the internet; tests use shorter latencies.
INTERNET = Network(
    piece_bytes=1400,
    piece_pause=0.002,
    first_cdn_piece=4,
    gzip=True,
    chunked=True,
    latency=(0.05, 0.15),
    idle_close=2.0,
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    api_key: str = "sim-key"
    api_secret: str = "sim-secret"
    job_seconds: float = 1.0
    jitter: float = 0.3
    failure_rate: float = 0.0
    in_flight_limit: int | None = None
    url_lifetime: float = 600.0
    # Fraction of submissions that create their job and then lose the answer: half of
    # them drop the connection, half answer 502 as a gateway would.
    lose_answer_rate: float = 0.0
    # Fraction of API requests refused before doing anything: a 429 (half of them with
    # Retry-After) or a 500/502/503, as a busy gateway would.
    error_rate: float = 0.0
    # Fraction of downloads cut off half-way, after a full Content-Length was announced.
    truncate_rate: float = 0.0
    # Fraction of jobs that stay "in-progress" for ever.
    stuck_rate: float = 0.0
    # Creative units the account has; None: unlimited.  Past them, submissions get 402.
    credits: float | None = None
    # Models the plan does not cover: 403 ModelAccessRestrictedError.
    restricted_models: tuple[str, ...] = ()
    # The changed-jobs list (GET /v1/jobs?updatedAfter=): up to how many seconds a job's
    # changes take to show in it (an eventually consistent index; each job its own lag),
    # the fraction of its pages answered empty while a token is still given, and whether
    # it is refused outright (403).
    list_lag: float = 0.0
    list_holes: float = 0.0
    list_refused: bool = False
    seed: int = 0
    # The models the account can use (see batchgen.sim.models: ids outside the catalog
    # take what model_sim-fast takes).
    models: tuple[str, ...] = DEFAULT_MODELS
    network: Network = Network()
    # Store each job's metadata.input as the real API may: the model's defaults filled
    # in, the seed as a string, and modelId added.
    normalise_input: bool = False
    # A prompt holding this word is refused (400), as content moderation does: a
    # refusal no check of the model's inputs can foresee.
    moderated_word: str = "forbidden"


@dataclass(slots=True)
class SimJob:
    job_id: str
    model: str
    body: dict[str, Any]  # as sent
    stored_input: dict[str, Any]  # as metadata.input gives it
    created_wall: float
    start: float
    duration: float
    fails: bool
    cost: float
    asset_ids: list[str]
    stuck: bool = False
    list_lag: float = 0.0  # how late its changes show in the changed-jobs list

    def phase(self, now: float) -> tuple[str, float]:
        """(status, wall-clock time it began)."""
        fraction = (now - self.start) / self.duration if self.duration > 0 else 1.0
        if self.stuck:
            fraction = min(fraction, 0.5)
        begun = 0.0
        for status, end in PHASES:
            if fraction < end:
                return status, self.created_wall + begun * self.duration
            begun = end
        return ("failure" if self.fails else "success"), self.created_wall + self.duration


@dataclass(slots=True)
class SimAsset:
    asset_id: str
    job_id: str
    width: int
    height: int
    seed: int
    prompt: str
    model: str
    index: int
    _bytes: bytes | None = None

    def content(self) -> bytes:
        if self._bytes is None:
            self._bytes = make_png(
                self.width, self.height, f"{self.asset_id}:{self.prompt}:{self.seed}"
            )
        return self._bytes


def _iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


_IS_CDN = web.AppKey("is_cdn", bool)
# An idle connection's mark once the "load balancer" has dropped it.
DROPPED = -math.inf


def _route(request: web.Request) -> str:
    """``GET /v1/jobs/{job_id}``: a request's method and route, for the counters."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else request.path}"


def _error(status: int, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"reason": reason, **extra}, status=status)


@dataclass
class Simulator:
    """Shared state of both origins, and the counters tests read."""

    config: SimConfig
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    api_url: str = ""
    cdn_url: str = ""
    jobs: dict[str, SimJob] = field(default_factory=dict)
    assets: dict[str, SimAsset] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    jobs_created_per_body: Counter[str] = field(default_factory=Counter)
    cdn_authorization_headers: int = 0
    answers_lost: int = 0
    # Submissions refused with a 400, by reason: a body the model does not take.
    refusals: Counter[str] = field(default_factory=Counter)
    faults_injected: int = 0
    spent: float = 0.0
    # Called with each new job after it is created and before it is answered: tests use
    # it to kill a client exactly in that window.
    on_job_created: Callable[[SimJob], None] | None = None
    # Called with the route of each request that arrives on a kept-alive connection:
    # True drops the connection unanswered, as a load balancer that closed it meanwhile.
    drop_reused: Callable[[str], bool] | None = None
    served_sha256: dict[str, str] = field(default_factory=dict)
    # When the first job was created and the last download served (the clock's time):
    # a client's makespan as the server saw it.
    first_job_at: float | None = None
    last_download_at: float | None = None
    # Requests that arrived on a connection the network had dropped (Network.idle_close,
    # drop_idle_connections), by route: they never reached the API.
    connections_dropped: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.config.seed)
        # Its own generator, so a network setting does not change which faults happen.
        self._network_rng = random.Random(self.config.seed + 1)
        self._idle_since: weakref.WeakKeyDictionary[asyncio.BaseTransport, float] = (
            weakref.WeakKeyDictionary()
        )
        self._signing_key = secrets.token_bytes(32)
        token = base64.b64encode(f"{self.config.api_key}:{self.config.api_secret}".encode())
        self._expected_auth = b"Basic " + token
        self._running: set[str] = set()

    # ------------------------------------------------------------------ bookkeeping

    @property
    def jobs_created(self) -> int:
        return len(self.jobs)

    def in_flight(self) -> int:
        now = self.clock()
        self._running = {j for j in self._running if not self._is_terminal(self.jobs[j], now)}
        return len(self._running)

    @staticmethod
    def _is_terminal(job: SimJob, now: float) -> bool:
        return job.phase(now)[0] in ("success", "failure")

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode()
        return hmac.compare_digest(given, self._expected_auth)

    def _sign(self, asset_id: str, expires: int) -> str:
        message = f"{asset_id}:{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def signed_url(self, asset_id: str) -> str:
        expires = int(self.wall() + self.config.url_lifetime)
        signature = self._sign(asset_id, expires)
        return f"{self.cdn_url}/assets/{asset_id}.png?Expires={expires}&Signature={signature}"

    def model(self, model_id: str) -> SimModel | None:
        return model_named(model_id) if model_id in self.config.models else None

    def cost_of(self, model: SimModel, body: dict[str, Any]) -> float:
        width, height = model.pixels(body)
        outputs = int(body.get("numOutputs") or 1)
        return float(math.ceil(width * height / (1024 * 1024) * 4) * outputs)

    def stored_input(self, model: SimModel, body: dict[str, Any]) -> dict[str, Any]:
        if not self.config.normalise_input:
            return body
        stored: dict[str, Any] = {**model.defaults(), **body, "modelId": model.id}
        if isinstance(stored.get("seed"), int):
            stored["seed"] = str(stored["seed"])
        return stored

    # ------------------------------------------------------------------ rendering

    def job_json(self, job: SimJob, at: float | None = None) -> dict[str, Any]:
        now = self.clock() if at is None else at
        status, since = job.phase(now)
        history = []
        begun = 0.0
        for name, end in PHASES:
            history.append({"date": _iso(job.created_wall + begun * job.duration), "status": name})
            if name == status:
                break
            begun = end
        if status in ("success", "failure"):
            history.append({"date": _iso(since), "status": status})
        metadata: dict[str, Any] = {"input": job.stored_input, "modelId": job.model}
        if status == "success":
            metadata["assetIds"] = list(job.asset_ids)
        elif status == "failure":
            metadata["error"] = "Simulated generation failure"
        fraction = min(max((now - job.start) / job.duration, 0.0), 1.0) if job.duration else 1.0
        return {
            "jobId": job.job_id,
            "jobType": "custom",
            "status": status,
            "progress": round(fraction, 3),
            "createdAt": _iso(job.created_wall),
            "updatedAt": _iso(since),
            "statusHistory": history,
            "authorId": "sim-user",
            "ownerId": "sim-team",
            "billing": {"cuCost": job.cost, "cuDiscount": 0},
            "metadata": metadata,
        }

    def asset_json(self, asset: SimAsset) -> dict[str, Any]:
        """An asset as the API gives it, every field the SDK requires."""
        made = _iso(self.jobs[asset.job_id].created_wall + self.jobs[asset.job_id].duration)
        return {
            "id": asset.asset_id,
            "url": self.signed_url(asset.asset_id),
            "mimeType": "image/png",
            "kind": "image",
            "status": "success",
            "source": "inference-txt",
            "privacy": "private",
            "authorId": "sim-user",
            "ownerId": "sim-team",
            "collectionIds": [],
            "editCapabilities": [],
            "tags": [],
            "createdAt": made,
            "updatedAt": made,
            "properties": {
                "width": asset.width,
                "height": asset.height,
                "size": len(asset.content()),
            },
            "metadata": {
                "kind": "image",
                "type": "inference-txt2img",
                "prompt": asset.prompt,
                "seed": str(asset.seed),
                "modelId": asset.model,
                "parentJobId": asset.job_id,
                "outputIndex": asset.index,
            },
        }

    # ------------------------------------------------------------------ the network

    @web.middleware
    async def _network(self, request: web.Request, handler: Any) -> web.StreamResponse:
        net = self.config.network
        transport = request.transport
        if transport is not None:
            idle_from = self._idle_since.pop(transport, None)
            if idle_from is not None and (
                idle_from == DROPPED
                or (net.idle_close is not None and time.monotonic() - idle_from >= net.idle_close)
                or (self.drop_reused is not None and self.drop_reused(_route(request)))
            ):
                self.connections_dropped[_route(request)] += 1
                transport.abort()
                return web.Response(status=502)  # never reaches the client
        low, high = net.latency
        delay = self._network_rng.uniform(low, high) if high > 0 else 0.0
        if delay:
            await asyncio.sleep(delay / 2)
        response: web.StreamResponse = await handler(request)
        if delay:
            await asyncio.sleep(delay / 2)
        if isinstance(response, web.Response) and not response.prepared and not net.kind:
            response = await self._send_in_pieces(request, response, net)
        if transport is not None and not transport.is_closing():
            self._idle_since[transport] = time.monotonic()
        return response

    def drop_idle_connections(self) -> int:
        """Drop every kept-alive connection now idle, as a load balancer does after its
        idle timeout, without telling the client: the next request sent on one of them
        gets no answer.  Returns how many there were."""
        idle = [t for t in self._idle_since if not t.is_closing()]
        for transport in idle:
            self._idle_since[transport] = DROPPED
        return len(idle)

    async def _send_in_pieces(
        self, request: web.Request, response: web.Response, net: Network
    ) -> web.StreamResponse:
        body = response.body if isinstance(response.body, bytes) else b""
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in ("content-length", "transfer-encoding", "content-encoding")
        }
        api = request.app.get(_IS_CDN) is None
        if api and net.gzip and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        stream = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
        if net.chunked:
            stream.enable_chunked_encoding()
        else:
            stream.content_length = len(body)
        await stream.prepare(request)
        first = net.first_cdn_piece if not api and net.first_cdn_piece else net.piece_bytes
        size = net.piece_bytes or len(body) or 1
        offset = 0
        while offset < len(body):
            step = first if offset == 0 and first else size
            await stream.write(body[offset : offset + step])
            offset += step
            if offset < len(body) and net.piece_pause:
                await asyncio.sleep(net.piece_pause)
        await stream.write_eof()
        return stream

    # ------------------------------------------------------------------ API handlers

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests[_route(request)] += 1
        if not self._authorized(request):
            return _error(401, "Unauthorized")
        if self.config.error_rate and self._rng.random() < self.config.error_rate:
            self.faults_injected += 1
            if self._rng.random() < 0.5:
                headers = {"Retry-After": "0"} if self._rng.random() < 0.5 else {}
                return web.json_response(
                    {"reason": "Too many requests"}, status=429, headers=headers
                )
            return _error(self._rng.choice((500, 502, 503)), "Service unavailable")
        response: web.StreamResponse = await handler(request)
        return response

    async def _submit(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model"]
        found = self.model(model_id)
        if found is None:
            return _error(404, f"Model {model_id} not found")
        model = found
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Body is not valid JSON")
        problem = refusal(model, body)
        if self.config.moderated_word and not problem:
            if self.config.moderated_word in body["prompt"]:
                problem = "The prompt was rejected by content moderation"
        if problem:
            self.refusals[problem] += 1
            return _error(400, problem)
        cost = self.cost_of(model, body)
        if request.query.get("dryRun") == "true":
            # The answer's shape is the SDK's GenerateRunModelResponse: a job that is
            # only described, never created, and the cost.
            preview = SimJob(
                job_id=f"job_{secrets.token_hex(12)}",
                model=model_id,
                body=body,
                stored_input=self.stored_input(model, body),
                created_wall=self.wall(),
                start=math.inf,
                duration=1.0,
                fails=False,
                cost=cost,
                asset_ids=[],
            )
            return web.json_response(
                {
                    "job": self.job_json(preview, at=-math.inf),
                    "creativeUnitsCost": cost,
                    "creativeUnitsDiscount": 0,
                    "costDetails": {},
                },
                status=269,
            )
        model_id = model.id
        if model_id in self.config.restricted_models:
            return _error(
                403,
                f"Your plan does not give access to {model_id}",
                name="ModelAccessRestrictedError",
            )
        if self.config.credits is not None and self.spent + cost > self.config.credits:
            return _error(402, "Not enough creative units to run this job")
        limit = self.config.in_flight_limit
        if limit is not None and self.in_flight() >= limit:
            return _error(
                429,
                "Too many parallel jobs",
                details={"actionName": "parallelCustomJobs", "actionLimit": limit},
            )
        job = self._create_job(model, body, cost)
        self.spent += cost
        if self.on_job_created is not None:
            self.on_job_created(job)
        if self._rng.random() < self.config.lose_answer_rate:
            self.answers_lost += 1
            if self._rng.random() < 0.5 and request.transport is not None:
                request.transport.abort()
            return _error(502, "Bad Gateway")
        return web.json_response(
            {
                "job": self.job_json(job),
                "creativeUnitsCost": cost,
                "creativeUnitsDiscount": 0,
                "costDetails": {},
            }
        )

    def _create_job(self, model: SimModel, body: dict[str, Any], cost: float) -> SimJob:
        job_id = f"job_{secrets.token_hex(12)}"
        spread = self.config.jitter * self.config.job_seconds
        duration = max(self.config.job_seconds + self._rng.uniform(-spread, spread), 0.0)
        outputs = int(body.get("numOutputs") or 1)
        seed = body.get("seed")
        width, height = model.pixels(body)
        job = SimJob(
            job_id=job_id,
            model=model.id,
            body=body,
            stored_input=self.stored_input(model, body),
            created_wall=self.wall(),
            start=self.clock(),
            duration=duration,
            fails=self._rng.random() < self.config.failure_rate,
            cost=cost,
            asset_ids=[],
            stuck=self._rng.random() < self.config.stuck_rate,
            list_lag=self._rng.uniform(0, self.config.list_lag) if self.config.list_lag else 0.0,
        )
        for index in range(outputs):
            asset_id = f"asset_{secrets.token_hex(12)}"
            job.asset_ids.append(asset_id)
            self.assets[asset_id] = SimAsset(
                asset_id=asset_id,
                job_id=job_id,
                width=width,
                height=height,
                seed=(int(seed) if isinstance(seed, int) else self._rng.randrange(2**31)) + index,
                prompt=str(body["prompt"]),
                model=model.id,
                index=index,
            )
        self.jobs[job_id] = job
        if self.first_job_at is None:
            self.first_job_at = job.start
        self._running.add(job_id)
        self.jobs_created_per_body[json.dumps([model.id, body], sort_keys=True)] += 1
        return job

    def _finished_asset(self, asset_id: str) -> SimAsset | None:
        asset = self.assets.get(asset_id)
        if asset is None or self.jobs[asset.job_id].phase(self.clock())[0] != "success":
            return None
        return asset

    async def _get_job(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return _error(404, "Job not found")
        return web.json_response({"job": self.job_json(job)})

    async def _job_action(self, request: web.Request) -> web.Response:
        if request.match_info["job_id"] not in self.jobs:
            return _error(404, "Job not found")
        return _error(400, "Cannot cancel this type of job. Action not permitted.")

    async def _list_jobs(self, request: web.Request) -> web.Response:
        query = request.query
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
        job_types = set((query.get("types") or query.get("type") or "custom").split(","))
        if "custom" not in job_types:
            return web.json_response({"jobs": []})
        token = query.get("paginationToken", "")
        if updated_after is not None:
            if self.config.list_refused:
                return _error(403, "Listing jobs by update time is not allowed")
            return self._changed_jobs(updated_after, query.get("status"), page_size, token)
        # Other listings walk every job in creation order and filter each page after
        # taking it, so a page may be empty while a token is still given.
        try:
            offset = int(token or "0")
        except ValueError:
            return _error(400, "Invalid pagination token")
        page = []
        for job in list(self.jobs.values())[offset : offset + page_size]:
            rendered = self.job_json(job)
            if "status" in query and rendered["status"] != query["status"]:
                continue
            if created_after is not None and job.created_wall <= created_after:
                continue
            page.append(rendered)
        payload: dict[str, Any] = {"jobs": page}
        if offset + page_size < len(self.jobs):
            payload["nextPaginationToken"] = str(offset + page_size)
        return web.json_response(payload)

    def _changed_jobs(
        self, updated_after: float, status: str | None, page_size: int, token: str
    ) -> web.Response:
        """Jobs changed after a moment, as an index on (updatedAt, jobId) serves them:
        in that order, the token being the last key given, so a job that changes while
        the pages are followed moves to a later page instead of being skipped."""
        now = self.clock()
        after_ms = round(updated_after * 1000)
        keyed = []
        for job in self.jobs.values():
            seen = now - job.list_lag
            if seen < job.start:
                continue
            phase, since = job.phase(seen)
            changed_ms = math.floor(since * 1000)
            if changed_ms > after_ms and (status is None or phase == status):
                keyed.append((changed_ms, job.job_id))
        keyed.sort()
        if token:
            last_ms, _, last_id = token.partition(":")
            try:
                start_key = (int(last_ms), last_id)
            except ValueError:
                return _error(400, "Invalid pagination token")
            keyed = [key for key in keyed if key > start_key]
        page = keyed[:page_size]
        payload: dict[str, Any] = {"jobs": []}
        if self.config.list_holes and self._rng.random() < self.config.list_holes:
            # An empty page that still hands on a token.
            payload["nextPaginationToken"] = token or f"{after_ms}:"
            return web.json_response(payload)
        payload["jobs"] = [
            self.job_json(self.jobs[job_id], at=now - self.jobs[job_id].list_lag)
            for _, job_id in page
        ]
        if len(keyed) > page_size:
            end_ms, end_id = page[-1]
            payload["nextPaginationToken"] = f"{end_ms}:{end_id}"
        return web.json_response(payload)

    async def _get_asset(self, request: web.Request) -> web.Response:
        asset = self._finished_asset(request.match_info["asset_id"])
        if asset is None:
            return _error(404, "Asset not found")
        return web.json_response({"asset": self.asset_json(asset)})

    async def _bulk_assets(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Body is not valid JSON")
        ids = body.get("assetIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or len(ids) > 200:
            return _error(400, "assetIds must list 1 to 200 ids")
        found = [self._finished_asset(str(i)) for i in ids]
        return web.json_response({"assets": [self.asset_json(a) for a in found if a is not None]})

    async def _list_models(self, request: web.Request) -> web.Response:
        """The team's own models, or with ``privacy=public`` Scenario's: private is the
        default, as the real API's is."""
        privacy = request.query.get("privacy", "private")
        if privacy not in ("private", "public"):
            return _error(400, "privacy must be private or public")
        try:
            page_size = min(int(request.query.get("pageSize", "50")), 500)
            offset = int(request.query.get("paginationToken", "0"))
        except ValueError:
            return _error(400, "Invalid query parameters")
        listed = [m for m in map(model_named, self.config.models) if m.privacy == privacy]
        page = listed[offset : offset + page_size]
        payload: dict[str, Any] = {
            "models": [{k: v for k, v in m.to_json().items() if k != "inputs"} for m in page]
        }
        if offset + page_size < len(listed):
            payload["nextPaginationToken"] = str(offset + page_size)
        return web.json_response(payload)

    async def _get_model(self, request: web.Request) -> web.Response:
        model = self.model(request.match_info["model"])
        if model is None:
            return _error(404, f"Model {request.match_info['model']} not found")
        return web.json_response({"model": model.to_json()})

    def api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._network, self._auth])
        app.router.add_post("/v1/generate/custom/{model}", self._submit)
        app.router.add_get("/v1/jobs", self._list_jobs)
        app.router.add_get("/v1/jobs/{job_id}", self._get_job)
        app.router.add_post("/v1/jobs/{job_id}/action", self._job_action)
        app.router.add_post("/v1/assets/get-bulk", self._bulk_assets)
        app.router.add_get("/v1/assets/{asset_id}", self._get_asset)
        app.router.add_get("/v1/models", self._list_models)
        app.router.add_get("/v1/models/{model}", self._get_model)
        return app

    # ------------------------------------------------------------------ CDN

    async def _cdn_get(self, request: web.Request) -> web.StreamResponse:
        self.requests["GET cdn"] += 1
        if "Authorization" in request.headers:
            self.cdn_authorization_headers += 1
        asset_id = request.match_info["asset_id"]
        try:
            expires = int(request.query.get("Expires", ""))
        except ValueError:
            return web.Response(status=403, text="AccessDenied")
        signature = request.query.get("Signature", "")
        valid = hmac.compare_digest(signature, self._sign(asset_id, expires))
        if not valid or expires < self.wall() or asset_id not in self.assets:
            return web.Response(status=403, text="AccessDenied: Request has expired")
        content = self.assets[asset_id].content()
        if self.config.truncate_rate and self._rng.random() < self.config.truncate_rate:
            self.faults_injected += 1
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.content_length = len(content)
            await response.prepare(request)
            await response.write(content[: len(content) // 2])
            if request.transport is not None:
                request.transport.abort()
            return response
        self.served_sha256[asset_id] = hashlib.sha256(content).hexdigest()
        self.last_download_at = self.clock()
        return web.Response(body=content, content_type="image/png")

    def cdn_app(self) -> web.Application:
        app = web.Application(middlewares=[self._network])
        app[_IS_CDN] = True
        app.router.add_get("/assets/{asset_id}.png", self._cdn_get)
        return app


def decode_basic(header: str) -> tuple[str, str] | None:
    """The (key, secret) of a Basic header, for tests that check what was sent."""
    if not header.startswith("Basic "):
        return None
    try:
        key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return key, secret


@asynccontextmanager
async def serve(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    cdn_port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Simulator]:
    """Run the API and CDN origins on loopback for the duration of the block; over
    HTTPS with ``ssl_context`` (a server context)."""
    simulator = Simulator(config or SimConfig())
    scheme = "https" if ssl_context is not None else "http"
    runners: list[web.AppRunner] = []
    try:
        urls = []
        for app, wanted in ((simulator.api_app(), port), (simulator.cdn_app(), cdn_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, host, wanted, ssl_context=ssl_context)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            urls.append(f"{scheme}://{bound_host}:{bound_port}")
        simulator.api_url, simulator.cdn_url = urls
        yield simulator
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
