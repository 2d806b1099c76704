"""The simulator itself: Scenario's API as state and one function, :meth:`Simulator.handle`.

Its state and what every resource uses are :class:`~batchgen.sim.core.SimCore`; each
resource's routes a module of their own (``jobs.py``, ``assets.py`` with uploads, the
quality gate and the CDN, ``account.py`` with the models), its records ``records.py``.

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
import hmac
import json
from datetime import UTC, datetime
from email.utils import format_datetime

from . import contract
from .account import AccountRoutes
from .assets import AssetRoutes
from .jobs import JobRoutes
from .records import SimAnswer, SimRequest, _error


class Simulator(JobRoutes, AssetRoutes, AccountRoutes):
    """The API: its state (:class:`SimCore`), each resource's routes, and one function."""

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
