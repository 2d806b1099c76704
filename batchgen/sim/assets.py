"""The simulator's assets: uploads, bulk reads, the quality gate, and the CDN that
serves them by signed URL."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .core import SimCore
from .records import (
    DATA_URL,
    QUALITY_FAIL_BELOW,
    QUALITY_WARN_BELOW,
    CdnAnswer,
    SimAnswer,
    SimUpload,
    _error,
    _iso,
    _parse_iso,
)


class AssetRoutes(SimCore):
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
            **self.asset_fields(upload.asset_id, "uploaded", made),
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
        dry_run = SimAnswer(269, priced if self.config.gate_dry_run_priced else {})
        if isinstance(image, str) and image.startswith("data:"):
            # To score one, the API uploads it as an asset first; the simulator only
            # prices one (a batch's estimate, before any image of it exists).
            if not DATA_URL.fullmatch(image):
                return _error(400, "image is not a base64 data URL")
            if query.get("dryRun"):
                return dry_run
            return _error(400, "the simulator scores assets only, not data URLs")
        asset = self.assets.get(str(image))
        if asset is None or self.jobs[asset.job_id].phase(self.clock())[0] != "success":
            return _error(404, f"Asset {image} not found")
        if query.get("dryRun"):
            return dry_run
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
