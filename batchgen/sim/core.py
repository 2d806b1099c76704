"""The simulator's state, shared by every resource (see :mod:`batchgen.sim.state`)."""

from __future__ import annotations

import base64
import bisect
import hashlib
import hmac
import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .models import SimModel, model_named
from .records import PHASES, SimAsset, SimConfig, SimJob, SimUpload, _iso


@dataclass
class SimCore:
    """Shared state of both origins, and the counters tests read; what every resource
    uses: persistence, bookkeeping, prices, rendering."""

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
            **self.asset_fields(asset.asset_id, "inference-txt", made),
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

    def asset_fields(self, asset_id: str, source: str, made: str) -> dict[str, Any]:
        """What every asset's record says, made or uploaded."""
        return {
            "id": asset_id,
            "url": self.signed_url(asset_id),
            "mimeType": "image/png",
            "kind": "image",
            "status": "success",
            "source": source,
            "privacy": "private",
            "authorId": "sim-user",
            "ownerId": "sim-team",
            "collectionIds": [],
            "editCapabilities": [],
            "tags": [],
            "createdAt": made,
            "updatedAt": made,
        }

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
