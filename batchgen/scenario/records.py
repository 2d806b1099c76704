"""Pure parsing of the API's JSON into records.  Accepts both the reference shape
(``job.jobId``, ``metadata.assetIds``) and the quick-start's (``job.id``,
``job.result.images[].url``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..config import is_api_id
from ..errors import MalformedResponseError
from ..redact import clean
from .inputs import same_value

RUNNING_STATUSES = frozenset({"pending", "queued", "warming-up", "in-progress", "finalizing"})
TERMINAL_STATUSES = frozenset({"success", "failure", "canceled"})
MIME_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
}


@dataclass(frozen=True, slots=True)
class JobRecord:
    job_id: str
    status: str
    asset_ids: tuple[str, ...] = ()
    image_urls: tuple[str, ...] = ()
    error: str | None = None
    # What the API charged for it (``billing``: the main action and its add-ons), None
    # where it does not say; and whether a failure is refunded (``disableRefund``).
    cost: float | None = None
    refundable: bool = True
    # What the job was asked to make (``metadata.input``) and when: used to recognise
    # a job whose creation answer was lost.
    request: dict[str, Any] | None = None
    created_at: str = ""
    # When the server last changed the job, in its own clock: the job list's cursor.
    updated_at: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class Submission:
    job: JobRecord
    cost: float | None


@dataclass(frozen=True, slots=True)
class Asset:
    id: str
    url: str
    mime_type: str | None = None
    size: int | None = None
    seed: int | None = None  # as the asset's metadata reports it
    # The image's own width and height (``properties``), when the API says.
    width: int | None = None
    height: int | None = None

    @property
    def suffix(self) -> str:
        return MIME_SUFFIXES.get((self.mime_type or "").lower(), ".png")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def parse_job(payload: Any) -> JobRecord:
    """``{"job": {...}}`` or a bare job object, as found in job lists."""
    job = payload.get("job", payload) if isinstance(payload, dict) else None
    if not isinstance(job, dict):
        raise MalformedResponseError("job response has no job object")
    job_id = job.get("jobId") or job.get("id")
    status = job.get("status")
    if not isinstance(job_id, str) or not job_id:
        raise MalformedResponseError("job response has no jobId")
    if not is_api_id(job_id):
        raise MalformedResponseError(f"job id {clean(repr(job_id)[:80])} is not an id of the API's")
    if not isinstance(status, str) or not status:
        raise MalformedResponseError(f"job {job_id} has no status")
    metadata = _mapping(job.get("metadata"))
    asset_ids = metadata.get("assetIds") or ()
    if not isinstance(asset_ids, list | tuple) or not all(is_api_id(a) for a in asset_ids):
        raise MalformedResponseError(f"job {job_id} has a malformed assetIds list")
    urls: list[str] = []
    result = job.get("result")
    if isinstance(result, dict) and isinstance(result.get("images"), list):
        urls = [
            i["url"]
            for i in result["images"]
            if isinstance(i, dict) and isinstance(i.get("url"), str)
        ]
    error = metadata.get("error")
    billing = _mapping(job.get("billing"))
    charged = _number(billing.get("cuCost"))
    if charged is not None:
        # cuCost is the main action alone; its add-ons (quality-gate, ...) are on top.
        details = _mapping(billing.get("cuCostDetails"))
        charged += sum(n for n in map(_number, details.values()) if n is not None)
    return JobRecord(
        job_id=job_id,
        status=status,
        asset_ids=tuple(asset_ids),
        image_urls=tuple(urls),
        error=clean(str(error)[:1000]) if error else None,
        cost=charged,
        refundable=billing.get("disableRefund") is not True,
        request=metadata.get("input") if isinstance(metadata.get("input"), dict) else None,
        created_at=str(job.get("createdAt") or ""),
        updated_at=str(job.get("updatedAt") or ""),
    )


def server_time(value: str) -> datetime | None:
    """A timestamp of the API's (``2026-11-24T10:00:00.123Z``) as an aware datetime;
    None when absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def made_for(job: JobRecord, body: dict[str, Any]) -> bool:
    """Whether ``job`` was created by a POST of ``body``, judged on its stored input
    (``metadata.input``) as the server may have normalised it: every field sent is there
    with the same value, where a number and its string are the same (``42``, ``"42"``,
    ``42.0``), and keys the server added (its defaults, ``modelId``) are ignored."""
    stored = job.request
    if stored is None:
        return False
    return all(key in stored and same_value(value, stored[key]) for key, value in body.items())


def parse_submission(payload: Any) -> Submission:
    job = parse_job(payload)
    cost = _number(payload.get("creativeUnitsCost")) if isinstance(payload, dict) else None
    return Submission(job=job, cost=cost if cost is not None else job.cost)


def parse_asset(payload: Any) -> Asset:
    asset = payload.get("asset", payload) if isinstance(payload, dict) else None
    if not isinstance(asset, dict):
        raise MalformedResponseError("asset response has no asset object")
    asset_id, url = asset.get("id"), asset.get("url")
    if not isinstance(asset_id, str) or not is_api_id(asset_id) or not isinstance(url, str):
        raise MalformedResponseError("asset response has no id (of the API's shape) or url")
    if not url:
        raise MalformedResponseError(f"asset {asset_id} has no url")
    properties = _mapping(asset.get("properties"))
    mime = asset.get("mimeType")
    return Asset(
        id=asset_id,
        url=url,
        mime_type=mime if isinstance(mime, str) else None,
        size=_count(properties.get("size")),
        seed=_seed(_mapping(asset.get("metadata")).get("seed")),
        width=_count(properties.get("width")) or None,
        height=_count(properties.get("height")) or None,
    )


def _count(value: Any) -> int | None:
    """A non-negative whole number (the SDK types sizes as floats: 1024.0 is 1024)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not value.is_integer():
        return None
    return int(value) if value >= 0 else None


def _seed(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The quality gate's word on an image: its score (0-100), pass/warn/fail, why,
    and what the call was charged (None: not said, or read back from the asset)."""

    score: float
    verdict: str
    reasons: tuple[str, ...] = ()
    cost: float | None = None


VERDICTS = ("pass", "warn", "fail")


def parse_verdict(payload: Any) -> Verdict:
    """``POST /v1/generate/quality-gate``'s answer."""
    if not isinstance(payload, dict):
        raise MalformedResponseError("quality gate: the answer is not an object")
    score, verdict = _number(payload.get("overallScore")), payload.get("verdict")
    if score is None or verdict not in VERDICTS:
        raise MalformedResponseError("quality gate: no score or verdict")
    quality = _mapping(payload.get("aiQuality"))
    given = quality.get("reasons")
    reasons: list[Any] = given if isinstance(given, list) else []
    return Verdict(
        score=score,
        verdict=str(verdict),
        reasons=tuple(clean(str(r))[:300] for r in reasons[:10]),
        cost=_number(payload.get("creativeUnitsCost")),
    )


def stored_verdict(payload: Any) -> Verdict | None:
    """The verdict the asset keeps (``asset.qualityGate``), if it was scored: what a
    gate call whose answer was lost left behind."""
    asset = payload.get("asset", payload) if isinstance(payload, dict) else None
    gate = _mapping(_mapping(asset).get("qualityGate"))
    score, verdict = _number(gate.get("overallScore")), gate.get("verdict")
    if gate.get("status") != "scored" or score is None or verdict not in VERDICTS:
        return None
    return Verdict(score=score, verdict=str(verdict))
