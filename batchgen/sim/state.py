"""The simulator itself: Scenario's API as state and one function, :meth:`Simulator.handle`.

No I/O here.  The aiohttp servers (``server.py``) and the in-memory API the engine's
tests use (``fake.py``) are two ways of carrying requests to :meth:`Simulator.handle` and
answers back, so both see the very same API.

Jobs advance with time and are computed when asked (no background tasks):
``queued → warming-up → in-progress → finalizing → success | failure`` over a duration
of ``job_seconds`` with ``jitter``.  Time is what ``clock`` says (real or virtual), and
the server's wall clock is ``wall() + clock_skew``.  Everything random comes from seeded
generators, so a run reproduces.

The API is as unkind as the real one can be, each unkindness an option of
:class:`SimConfig`: lost answers, a busy gateway, cut downloads, stuck jobs, a job list
that shows changes late, has holes, is refused or is down, a job that answers 404 while
young, another client on the account sending the same bodies, a skewed clock, a list
that changes while it is paged, cancels that are refused.

Both job lists are served from indexes ordered by time, so a submission and a listing
cost O(log n + jobs returned): a benchmark of 100,000 jobs measures the client.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import hmac
import json
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from . import contract
from .models import DEFAULT_MODELS, SimModel, model_named, refusal
from .png import make_png

MAX_PAGE_SIZE = 100
# The simulated quality gate's thresholds, by sensitivity (see Simulator.quality_of).
DATA_URL = re.compile(r"data:image/[a-z.+-]+;base64,[A-Za-z0-9+/]+=*")
QUALITY_FAIL_BELOW = {"low": 10, "medium": 20, "high": 35}
QUALITY_WARN_BELOW = {"low": 20, "medium": 35, "high": 55}
# What the limits say of parallel jobs when the simulator enforces none.
UNLIMITED_PARALLEL_JOBS = 1000  # batchgen's own most (config.MAX_CONCURRENCY)
PHASES = (("queued", 0.15), ("warming-up", 0.3), ("in-progress", 0.85), ("finalizing", 1.0))
CANCEL_REFUSED = "Cannot cancel this type of job. Action not permitted."


@dataclass(frozen=True, slots=True)
class Network:
    """How answers travel, so that the client is tested the way bytes really arrive:
    late, in pieces, compressed, on connections that do not live for ever.  The default
    is loopback's kindness: every answer in one write, at once.  (Only the HTTP servers
    have a network; the in-memory API has none.)"""

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
    # The account: whether the key may read its team (else 403 on the account's
    # endpoints, as for a key without team access), and one-shot creative units bought
    # on top of the period's (credits), expiring 30 days on.  The team's parallel jobs
    # are in_flight_limit's (UNLIMITED_PARALLEL_JOBS when it enforces none).
    team_access: bool = True
    one_shot_credits: float = 0.0
    # Models whose failed jobs are not refunded (their billing says disableRefund); a
    # failed or cancelled job of any other model is refunded when it ends.
    no_refund_models: tuple[str, ...] = ()
    # The share of each job's list price the account is given as a discount: the charge
    # (creativeUnitsCost, cuCost) is the list price less it (creativeUnitsDiscount).
    discount: float = 0.0
    # Models the plan does not cover: 403 ModelAccessRestrictedError.
    restricted_models: tuple[str, ...] = ()
    # The job lists: up to how many seconds a job (its creation, each change) takes to
    # show in them (an eventually consistent index; each job its own lag), the fraction
    # of changed-jobs pages answered empty while a token is still given, whether that
    # list is refused outright (403), and whether the lists are down for now (503).
    list_lag: float = 0.0
    list_holes: float = 0.0
    list_refused: bool = False
    list_down: bool = False
    # Pages of the created-jobs list newest first, by offset: a job created while a
    # reader follows the pages pushes the others down, one of them past the reader.
    unstable_paging: bool = False
    # GET /v1/jobs/{id} answers 404 for a job younger than this (not replicated yet).
    young_job_404: float = 0.0
    # Another client on the same account: this fraction of submissions is also sent,
    # by someone else (the same prompt and parameters, a seed of their own), whose job
    # is created just before ours.
    other_clients: float = 0.0
    # Seconds the server's clock is ahead of the client's (negative: behind).
    clock_skew: float = 0.0
    # Whether a cancel is accepted (the job ends "canceled"); custom jobs refuse it.
    cancel_accepted: bool = False
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
    # A gateway that echoes the request in its errors: the 400 of a refused prompt and
    # a failed job's error carry the request's Authorization header and the decoded
    # key:secret, with terminal escapes and a line that forges a log entry.
    reflect_headers: bool = False
    # A job that lists this many more assets than it made (ids of nothing): what a
    # broken or hostile server might send.
    extra_assets: int = 0
    # The quality gate: what a call costs, and its verdicts, drawn from the image's
    # bytes (so a test knows which images fail): a score of 0-100 from their sha256,
    # failing below QUALITY_FAIL_BELOW[sensitivity], warning below QUALITY_WARN_BELOW.
    gate_cost: float = 1.0
    # Broken answers about single jobs (GET /v1/jobs/{id}), as a broken or hostile
    # server gives them: "huge" pads each with this many bytes of nothing; "bad-status"
    # gives a status that is not a string.
    broken_job_answers: str = ""
    huge_answer_bytes: int = 64 * 1024
    # Job lists that never end: every page hands on a new token.
    endless_lists: bool = False
    # Where the jobs it creates are kept, a line each, so that a simulator started
    # again (the embedded one of a `--simulate` run killed and run again) knows them:
    # None keeps them in memory only.
    state_file: Path | None = None


@dataclass(slots=True)
class SimJob:
    job_id: str
    model: str
    body: dict[str, Any]  # as sent
    stored_input: dict[str, Any]  # as metadata.input gives it
    created_wall: float  # in the server's clock
    start: float  # in the simulator's clock
    duration: float
    fails: bool
    cost: float  # what was charged: the list price less the discount
    asset_ids: list[str]
    stuck: bool = False
    list_lag: float = 0.0  # how late it shows in the job lists
    canceled_at: float | None = None
    by_other_client: bool = False
    discount: float = 0.0
    refundable: bool = True

    def net_charge(self, now: float) -> float:
        """What the job costs the account at ``now``: refunded once it has failed or
        been cancelled, unless its model does not refund."""
        ended = self.phase(now)[0]
        return 0.0 if self.refundable and ended in ("failure", "canceled") else self.cost

    def phase(self, now: float) -> tuple[str, float]:
        """(status, server time it began)."""
        if self.canceled_at is not None and now >= self.canceled_at:
            return "canceled", self.created_wall + (self.canceled_at - self.start)
        fraction = (now - self.start) / self.duration if self.duration > 0 else 1.0
        if self.stuck:
            fraction = min(fraction, 0.5)
        begun = 0.0
        for status, end in PHASES:
            if fraction < end:
                return status, self.created_wall + begun * self.duration
            begun = end
        return ("failure" if self.fails else "success"), self.created_wall + self.duration

    def changes(self) -> list[float]:
        """The moments (the simulator's clock) its status changes, creation included."""
        ends = [0.0, *(end for _, end in PHASES)]
        if self.stuck:
            ends = [end for end in ends if end <= 0.5]
        return [self.start + end * self.duration for end in ends]


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
    # The asset ids of the images it was made from, by input (JSON): the picture
    # depends on them, so a test can tell which input made which output.
    inputs: str = ""
    # The quality gate's verdict, once it was asked (asset.qualityGate).
    quality: dict[str, Any] | None = None
    _bytes: bytes | None = None

    def content(self) -> bytes:
        if self._bytes is None:
            self._bytes = make_png(
                self.width, self.height, f"{self.asset_id}:{self.prompt}:{self.seed}:{self.inputs}"
            )
        return self._bytes


@dataclass(slots=True)
class SimUpload:
    asset_id: str
    name: str
    content: bytes
    created_wall: float


@dataclass(frozen=True, slots=True)
class SimRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class SimAnswer:
    status: int
    payload: Any = None  # JSON
    headers: Mapping[str, str] = field(default_factory=dict)
    # The connection is to be dropped with no answer (a lost answer): the job exists.
    drop: bool = False

    @property
    def body(self) -> bytes:
        return b"" if self.payload is None else json.dumps(self.payload).encode()


@dataclass(frozen=True, slots=True)
class CdnAnswer:
    status: int
    content: bytes = b""
    # Bytes announced (Content-Length): more than sent when the download is cut.
    announced: int = 0


def _error(status: int, reason: str, **extra: Any) -> SimAnswer:
    return SimAnswer(status, {"reason": reason, **extra})


def _iso(wall: float) -> str:
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Simulator:
    """Shared state of both origins, and the counters tests read."""

    config: SimConfig
    clock: Callable[[], float] = field(default=lambda: 0.0)
    wall: Callable[[], float] = field(default=lambda: 0.0)
    api_url: str = "http://api.sim"
    cdn_url: str = "http://cdn.sim"
    jobs: dict[str, SimJob] = field(default_factory=dict)
    assets: dict[str, SimAsset] = field(default_factory=dict)
    uploads: dict[str, SimUpload] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    jobs_created_per_body: Counter[str] = field(default_factory=Counter)
    cdn_authorization_headers: int = 0
    answers_lost: int = 0
    faults_injected: int = 0
    # Submissions refused with a 400, by reason: a body the model does not take.
    refusals: Counter[str] = field(default_factory=Counter)
    # Requests refused with a 400 because the API's contract forbids them (an unknown
    # parameter, a value out of range, a rule between parameters), by reason.
    contract_refusals: Counter[str] = field(default_factory=Counter)
    cancels: Counter[str] = field(default_factory=Counter)  # "refused" / "accepted"
    # Creative units charged for our jobs when they were created (before refunds).
    charged: float = 0.0
    # What each quality gate call cost (answered or lost), and the calls by asset.
    gate_charges: list[float] = field(default_factory=list)
    gate_calls: Counter[str] = field(default_factory=Counter)
    # The most of our jobs running at once, as the server saw it.
    max_in_flight: int = 0
    # Listings of the jobs created since a moment (reconciliations), first pages only.
    created_scans: int = 0
    # Called with each new job (upload) after it is created and before it is answered:
    # tests use it to kill a client exactly in that window.
    on_job_created: Callable[[SimJob], None] | None = None
    on_upload_created: Callable[[SimUpload], None] | None = None
    # Called with each image the gate scored (and charged), before it is answered.
    on_gate_called: Callable[[SimAsset], None] | None = None
    # Called with the route of each request that arrives on a kept-alive connection:
    # True drops the connection unanswered, as a load balancer that closed it meanwhile.
    drop_reused: Callable[[str], bool] | None = None
    served_sha256: dict[str, str] = field(default_factory=dict)
    # When the first job was created and the last download served (the clock's time):
    # a client's makespan as the server saw it.
    first_job_at: float | None = None
    last_download_at: float | None = None
    # Requests that arrived on a connection the network had dropped, by route.
    connections_dropped: Counter[str] = field(default_factory=Counter)
    # Drops every kept-alive connection now idle (set by the HTTP server; see there).
    drop_idle_connections: Callable[[], int] = field(default=lambda: 0)

    def __post_init__(self) -> None:
        seed = self.config.seed
        self._rng = random.Random(seed)
        # Their own generators, so a network setting or an id does not change which
        # faults happen.
        self._network_rng = random.Random(seed + 1)
        self._ids = random.Random(seed + 2)
        self._signing_key = hashlib.sha256(f"sim-signing-{seed}".encode()).digest()
        token = base64.b64encode(f"{self.config.api_key}:{self.config.api_secret}".encode())
        self._expected_auth = b"Basic " + token
        self._running: set[str] = set()
        # The indexes: (when it shows in the lists, job id) of every change, and of every
        # creation, each kept sorted.
        self._changes: list[tuple[float, str]] = []
        self._created: list[tuple[float, str]] = []
        self._kept: IO[str] | None = None
        if self.config.state_file is not None:
            self._reload(self.config.state_file)

    def close(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None

    def _reload(self, path: Path) -> None:
        """The jobs an earlier simulator kept: each goes on from where it would be now
        (its times are the server's wall clock), as a real job outlives its client."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:  # none yet (or no directory there: the run will say so)
            return
        for line in lines:
            try:
                kept = json.loads(line)
            except ValueError:
                continue  # a line a kill cut short: its answer was never sent either
            if "upload" in kept:
                upload = kept["upload"]
                upload["content"] = base64.b64decode(upload["content"])
                self.uploads[upload["asset_id"]] = SimUpload(**upload)
                continue
            job = SimJob(**{**kept["job"], "start": 0.0})
            job.start = self.clock() - (self.server_wall() - job.created_wall)
            for asset in kept["assets"]:
                self.assets[asset["asset_id"]] = SimAsset(**asset)
            self.jobs[job.job_id] = job
            self._running.add(job.job_id)
            if not job.by_other_client:
                self.charged += job.cost
            self._index(job)
        # Ids unlike the earlier simulator's, which drew them from the same seed.
        self._ids = random.Random(f"{self.config.seed}:{len(self.jobs)}:{self.wall()}")

    def _keep(self, job: SimJob) -> None:
        if self.config.state_file is None:
            return
        record = {
            "job": {name: getattr(job, name) for name in SimJob.__slots__ if name != "start"},
            "assets": [
                {
                    name: getattr(self.assets[asset_id], name)
                    for name in SimAsset.__slots__
                    if name != "_bytes"
                }
                for asset_id in job.asset_ids
            ],
        }
        self._keep_record(record)

    def _keep_record(self, record: dict[str, Any]) -> None:
        path = self.config.state_file
        assert path is not None
        if self._kept is None:  # opened with the first record: after a --fresh moved on
            path.parent.mkdir(parents=True, exist_ok=True)
            # Appended to, never through a link at its name.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            self._kept = os.fdopen(os.open(path, flags, 0o644), "a", encoding="utf-8")
        # Flushed at once: a process killed right after keeps what it answered for.
        self._kept.write(json.dumps(record) + "\n")
        self._kept.flush()

    # ------------------------------------------------------------------ bookkeeping

    @property
    def jobs_created(self) -> int:
        return len(self.jobs)

    @property
    def spent(self) -> float:
        """What the account has been charged for our jobs, net of the refunds made so
        far: the simulator's own count, which batchgen's ledger must agree with."""
        now = self.clock()
        jobs = sum(job.net_charge(now) for job in self.jobs.values() if not job.by_other_client)
        return jobs + sum(self.gate_charges)

    @property
    def refunded(self) -> float:
        return self.charged - self.spent

    def server_wall(self) -> float:
        return self.wall() + self.config.clock_skew

    def in_flight(self) -> int:
        now = self.clock()
        self._running = {j for j in self._running if not self._is_terminal(self.jobs[j], now)}
        return len(self._running)

    @staticmethod
    def _is_terminal(job: SimJob, now: float) -> bool:
        return job.phase(now)[0] in ("success", "failure", "canceled")

    def _new_id(self, kind: str) -> str:
        return f"{kind}_{self._ids.getrandbits(96):024x}"

    def _sign(self, asset_id: str, expires: int) -> str:
        message = f"{asset_id}:{expires}".encode()
        return hmac.new(self._signing_key, message, hashlib.sha256).hexdigest()

    def signed_url(self, asset_id: str) -> str:
        expires = int(self.wall() + self.config.url_lifetime)
        signature = self._sign(asset_id, expires)
        return f"{self.cdn_url}/assets/{asset_id}.png?Expires={expires}&Signature={signature}"

    def model(self, model_id: str) -> SimModel | None:
        return model_named(model_id) if model_id in self.config.models else None

    def list_price(self, model: SimModel, body: dict[str, Any]) -> float:
        width, height = model.pixels(body)
        outputs = int(body.get("numOutputs") or 1)
        return float(math.ceil(width * height / (1024 * 1024) * 4) * outputs)

    def discount_of(self, model: SimModel, body: dict[str, Any]) -> float:
        """The discount on a job, to the half unit."""
        return math.floor(self.list_price(model, body) * self.config.discount * 2) / 2

    def cost_of(self, model: SimModel, body: dict[str, Any]) -> float:
        """What a job is charged: its list price less the discount."""
        return self.list_price(model, body) - self.discount_of(model, body)

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
            if status == "canceled" and job.created_wall + begun * job.duration > since:
                break
            history.append({"date": _iso(job.created_wall + begun * job.duration), "status": name})
            if name == status:
                break
            begun = end
        if status in ("success", "failure", "canceled"):
            history.append({"date": _iso(since), "status": status})
        metadata: dict[str, Any] = {"input": job.stored_input, "modelId": job.model}
        if status == "success":
            extra = [f"asset_extra{n:08d}" for n in range(self.config.extra_assets)]
            metadata["assetIds"] = [*job.asset_ids, *extra]
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
            "billing": {
                "cuCost": job.cost,
                "cuDiscount": job.discount,
                **({} if job.refundable else {"disableRefund": True}),
            },
            "metadata": metadata,
        }

    def asset_json(self, asset: SimAsset) -> dict[str, Any]:
        """An asset as the API gives it, every field the SDK requires."""
        job = self.jobs[asset.job_id]
        made = _iso(job.created_wall + job.duration)
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
            **({"qualityGate": asset.quality} if asset.quality else {}),
        }

    # ------------------------------------------------------------------ the API

    def handle(self, request: SimRequest) -> SimAnswer:
        """Answer one API request, as the real API would (and as unkindly as the config
        says).  Every answer carries the server's clock in a ``Date`` header."""
        route, params = _route(request.method, request.path)
        # A dry run prices and makes nothing: counted apart from the submissions.
        dry = " (dry run)" if request.query.get("dryRun") else ""
        self.requests[route + dry] += 1
        answer = self._answer(request, route, params)
        if self.config.reflect_headers and answer.status == 400:
            answer = _error(400, f"{answer.payload['reason']}{self._echo(request)}")
        headers = {"Date": format_datetime(datetime.fromtimestamp(self.server_wall(), UTC), True)}
        return SimAnswer(answer.status, answer.payload, {**headers, **answer.headers}, answer.drop)

    def _echo(self, request: SimRequest) -> str:
        """What a gateway that reflects the request says of it: its credentials, and
        text that acts on a terminal or forges a log line."""
        header = request.headers.get("Authorization", "")
        decoded = decode_basic(header) or ("", "")
        return (
            f" [echo: Authorization: {header}; credentials {decoded[0]}:{decoded[1]}]"
            "\x1b]0;owned\x07\x1b[31mred\x1b[0m\r\n2027-01-15T08:00:00Z INFO forged: all good"
        )

    def _answer(self, request: SimRequest, route: str, params: dict[str, str]) -> SimAnswer:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._expected_auth):
            return _error(401, "Unauthorized")
        if self.config.error_rate and self._rng.random() < self.config.error_rate:
            self.faults_injected += 1
            if self._rng.random() < 0.5:
                headers = {"Retry-After": "0"} if self._rng.random() < 0.5 else {}
                return SimAnswer(429, {"reason": "Too many requests"}, headers)
            return _error(self._rng.choice((500, 502, 503)), "Service unavailable")
        try:
            body = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            return _error(400, "Body is not valid JSON")
        query = request.query
        for observe in contract.observers:
            observe(request.method, request.path, query, body)
        endpoint = contract.find(contract.simulated(), request.method, request.path)
        problem = endpoint and contract.violation(endpoint, query, body)
        if problem:
            self.contract_refusals[problem] += 1
            return _error(400, problem)
        if route == "POST /v1/generate/custom/{model}":
            return self._submit(params["model"], body, query)
        if route == "GET /v1/jobs":
            return self._list_jobs(query)
        if route == "GET /v1/jobs/{job_id}":
            return self._get_job(params["job_id"])
        if route == "POST /v1/jobs/{job_id}/action":
            return self._job_action(params["job_id"], body)
        if route == "POST /v1/assets/get-bulk":
            return self._bulk_assets(body)
        if route == "POST /v1/assets":
            return self._upload(body)
        if route == "GET /v1/assets":
            return self._list_uploads(query)
        if route == "GET /v1/assets/{asset_id}":
            asset = self._finished_asset(params["asset_id"])
            if asset is None:
                return _error(404, "Asset not found")
            return SimAnswer(200, {"asset": self.asset_json(asset)})
        if route == "GET /v1/models":
            return self._list_models(query)
        if route == "POST /v1/generate/quality-gate":
            return self._quality_gate(body, query)
        if route in ("GET /v1/teams", "GET /v1/teams/{team_id}/limits", "GET /v1/usages"):
            return self._account(route, params, query)
        if route == "GET /v1/models/{model}":
            model = self.model(params["model"])
            if model is None:
                return _error(404, f"Model {params['model']} not found")
            return SimAnswer(200, {"model": model.to_json()})
        return _error(404, "Not found")

    # ------------------------------------------------------------------ uploads

    def _upload(self, body: Any) -> SimAnswer:
        """``POST /v1/assets``: an image given in base64 becomes an asset.  Every POST
        makes a new one (nothing deduplicates by content), and a lost answer may have
        made one, as with jobs."""
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return _error(400, "name is required")
        try:
            content = base64.b64decode(str(body.get("image", "")), validate=True)
        except (binascii.Error, ValueError):
            return _error(400, "image must be a base64 string")
        if not content.startswith((b"\x89PNG", b"\xff\xd8\xff", b"RIFF", b"GIF8")):
            return _error(400, "image is not an image")
        upload = SimUpload(self._new_id("asset"), body["name"], content, self.server_wall())
        self.uploads[upload.asset_id] = upload
        self._keep_upload(upload)
        if self.on_upload_created is not None:
            self.on_upload_created(upload)
        if self._rng.random() < self.config.lose_answer_rate:
            self.answers_lost += 1
            return SimAnswer(502, None, drop=True)
        return SimAnswer(200, {"asset": self.upload_json(upload)})

    def upload_json(self, upload: SimUpload) -> dict[str, Any]:
        made = _iso(upload.created_wall)
        return {
            "id": upload.asset_id,
            "url": self.signed_url(upload.asset_id),
            "mimeType": "image/png",
            "kind": "image",
            "status": "success",
            "source": "uploaded",
            "privacy": "private",
            "authorId": "sim-user",
            "ownerId": "sim-team",
            "collectionIds": [],
            "editCapabilities": [],
            "tags": [],
            "createdAt": made,
            "updatedAt": made,
            "properties": {"size": len(upload.content)},
            "metadata": {"kind": "image", "type": "uploaded", "name": upload.name},
        }

    def _list_uploads(self, query: Mapping[str, str]) -> SimAnswer:
        """``GET /v1/assets?type=uploaded&sortBy=createdAt&createdAfter=...``, newest
        first unless ``sortDirection=asc``, paged.  (The contract has already refused a
        ``createdAfter`` without ``sortBy=createdAt``.)"""
        if query.get("type") != "uploaded":
            return _error(400, "this simulator lists uploaded assets only (type=uploaded)")
        after = _parse_iso(query["createdAfter"]) if query.get("createdAfter") else -math.inf
        found = sorted(
            (u for u in self.uploads.values() if u.created_wall > after),
            key=lambda u: u.created_wall,
            reverse=query.get("sortDirection", "desc") != "asc",
        )
        size = min(int(query.get("pageSize", 100)), 100)
        start = int(query.get("paginationToken") or 0)
        page = found[start : start + size]
        answer: dict[str, Any] = {"assets": [self.upload_json(u) for u in page]}
        if start + size < len(found):
            answer["nextPaginationToken"] = str(start + size)
        return SimAnswer(200, answer)

    def _keep_upload(self, upload: SimUpload) -> None:
        if self.config.state_file is None:
            return
        self._keep_record(
            {
                "upload": {
                    "asset_id": upload.asset_id,
                    "name": upload.name,
                    "content": base64.b64encode(upload.content).decode(),
                    "created_wall": upload.created_wall,
                }
            }
        )

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

    def _index(self, job: SimJob) -> None:
        self._created.append((job.start + job.list_lag, job.job_id))
        if len(self._created) > 1 and self._created[-1] < self._created[-2]:
            self._created.sort()  # lags differ: rarely out of order, and then only at the end
        for moment in job.changes():
            bisect.insort(self._changes, (moment + job.list_lag, job.job_id))

    def _finished_asset(self, asset_id: str) -> SimAsset | None:
        asset = self.assets.get(asset_id)
        if asset is None or self.jobs[asset.job_id].phase(self.clock())[0] != "success":
            return None
        return asset

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

    def _bulk_assets(self, body: Any) -> SimAnswer:
        ids = body.get("assetIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or len(ids) > 200:
            return _error(400, "assetIds must list 1 to 200 ids")
        found = [self._finished_asset(str(i)) for i in ids]
        return SimAnswer(200, {"assets": [self.asset_json(a) for a in found if a is not None]})

    # ------------------------------------------------------------------ quality gate

    def quality_of(self, content: bytes, sensitivity: str) -> tuple[int, str]:
        """(score, verdict) of an image: a score drawn from its bytes, read against the
        sensitivity's thresholds."""
        score = int(hashlib.sha256(content).hexdigest()[:8], 16) % 101
        if score < QUALITY_FAIL_BELOW[sensitivity]:
            return score, "fail"
        return score, "warn" if score < QUALITY_WARN_BELOW[sensitivity] else "pass"

    def _quality_gate(self, body: Any, query: Mapping[str, str]) -> SimAnswer:
        """``POST /v1/generate/quality-gate``: the image scored, the verdict stored on
        the asset; a dry run prices it (269).  Its answer may be lost, as any POST's."""
        image = body.get("image") if isinstance(body, dict) else None
        cost = self.config.gate_cost
        priced = {"creativeUnitsCost": cost, "costDetails": {"quality-gate": cost}}
        if isinstance(image, str) and image.startswith("data:"):
            # To score one, the API uploads it as an asset first; the simulator only
            # prices one (a batch's estimate, before any image of it exists).
            if not DATA_URL.fullmatch(image):
                return _error(400, "image is not a base64 data URL")
            if query.get("dryRun"):
                return SimAnswer(269, priced)
            return _error(400, "the simulator scores assets only, not data URLs")
        asset = self.assets.get(str(image))
        if asset is None or self.jobs[asset.job_id].phase(self.clock())[0] != "success":
            return _error(404, f"Asset {image} not found")
        if query.get("dryRun"):
            return SimAnswer(269, priced)
        credits = self.config.credits
        if credits is not None and self.spent + cost > credits + self.config.one_shot_credits:
            return _error(402, "Not enough creative units to run the quality gate")
        sensitivity = str(body.get("sensitivity") or "medium")
        score, verdict = self.quality_of(asset.content(), sensitivity)
        reasons = {"fail": ["the anatomy is wrong"], "warn": ["slight artefacts"]}
        asset.quality = {
            "computedAt": _iso(self.server_wall()),
            "status": "scored",
            "version": "sim-1",
            "overallScore": score,
            "aiQualityScore": score,
            "verdict": verdict,
            "sensitivity": sensitivity,
        }
        self.gate_calls[asset.asset_id] += 1
        self.gate_charges.append(cost)
        if self.on_gate_called is not None:
            self.on_gate_called(asset)
        if self._rng.random() < self.config.lose_answer_rate:
            self.answers_lost += 1
            return SimAnswer(502, None, drop=True)
        answer = {
            "overallScore": score,
            "verdict": verdict,
            "aiQuality": {
                "score": score,
                "reasons": reasons.get(verdict, []),
                "suggestions": ["generate it again"] if verdict == "fail" else [],
            },
            "appliedBriefs": [],
            "asset": self.asset_json(asset),
            "sensitivity": sensitivity,
            **priced,
        }
        return SimAnswer(200, answer)

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

    # ------------------------------------------------------------------ the CDN

    def cdn_get(self, url: str, headers: Mapping[str, str]) -> CdnAnswer:
        """A signed asset URL fetched from the CDN origin."""
        self.requests["GET cdn"] += 1
        if "Authorization" in headers:
            self.cdn_authorization_headers += 1
        parts = urlsplit(url)
        asset_id = parts.path.rsplit("/", 1)[-1].removesuffix(".png")
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        try:
            expires = int(query.get("Expires", ""))
        except ValueError:
            return CdnAnswer(403, b"AccessDenied")
        signature = query.get("Signature", "")
        valid = hmac.compare_digest(signature, self._sign(asset_id, expires))
        known = asset_id in self.assets or asset_id in self.uploads
        if not valid or expires < self.wall() or not known:
            return CdnAnswer(403, b"AccessDenied: Request has expired")
        if asset_id in self.uploads:  # an image uploaded is served as it was given
            return CdnAnswer(
                200, self.uploads[asset_id].content, len(self.uploads[asset_id].content)
            )
        content = self.assets[asset_id].content()
        if self.config.truncate_rate and self._rng.random() < self.config.truncate_rate:
            self.faults_injected += 1
            return CdnAnswer(200, content[: len(content) // 2], len(content))
        self.served_sha256[asset_id] = hashlib.sha256(content).hexdigest()
        self.last_download_at = self.clock()
        return CdnAnswer(200, content, len(content))


ROUTES = (
    ("POST", ("v1", "generate", "custom", "{model}")),
    ("GET", ("v1", "jobs")),
    ("GET", ("v1", "jobs", "{job_id}")),
    ("POST", ("v1", "jobs", "{job_id}", "action")),
    ("POST", ("v1", "assets", "get-bulk")),
    ("POST", ("v1", "assets")),
    ("GET", ("v1", "assets")),
    ("GET", ("v1", "assets", "{asset_id}")),
    ("GET", ("v1", "models")),
    ("GET", ("v1", "models", "{model}")),
    ("POST", ("v1", "generate", "quality-gate")),
    ("GET", ("v1", "teams")),
    ("GET", ("v1", "teams", "{team_id}", "limits")),
    ("GET", ("v1", "usages")),
)


def _route(method: str, path: str) -> tuple[str, dict[str, str]]:
    """``("GET /v1/jobs/{job_id}", {"job_id": ...})`` for a request, as counters name it."""
    parts = tuple(part for part in path.split("/") if part)
    for wanted_method, pattern in ROUTES:
        if method != wanted_method or len(pattern) != len(parts):
            continue
        params: dict[str, str] = {}
        for want, got in zip(pattern, parts, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want != got:
                break
        else:
            return f"{method} /{'/'.join(pattern)}", params
    return f"{method} {path}", {}


def decode_basic(header: str) -> tuple[str, str] | None:
    """The (key, secret) of a Basic header, for tests that check what was sent."""
    if not header.startswith("Basic "):
        return None
    try:
        key, _, secret = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return key, secret
