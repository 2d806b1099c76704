"""The simulator's records: its settings, its jobs, assets and uploads, a request and
its answer (no behaviour but what a record computes of itself)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .models import DEFAULT_MODELS
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
    # Whether the gate's dry run says its price (else a 269 with no creativeUnitsCost:
    # a client learns it from the first call's charge).
    gate_dry_run_priced: bool = True
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
