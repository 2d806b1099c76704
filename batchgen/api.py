"""The HTTP edge: the Scenario API client and the asset downloader.

Everything aiohttp raises is converted here into :mod:`batchgen.errors`.  The API
client sends the Basic credentials on each request it makes to the API origin and
follows no redirects; the downloader has its own session with no credentials at all,
so a signed CDN URL (another origin) never sees them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import anyio
from yarl import URL

from .config import MAX_API_BODY_BYTES, MAX_ASSET_BYTES, ApiSettings
from .errors import (
    AmbiguousSubmitError,
    ApiError,
    CredentialsError,
    DownloadError,
    MalformedResponseError,
    OutOfCreditsError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)
from .inputs import ModelSpec, parse_model
from .records import Asset, JobRecord, Submission, parse_asset, parse_job, parse_submission
from .results import sha256_of

BULK_ASSET_LIMIT = 200
# A job list that never ends is a server bug; stop following it somewhere.
MAX_LIST_PAGES = 10_000
DRY_RUN_STATUS = 269
LIST_PAGE_SIZE = 100  # the most GET /v1/jobs gives in one page
USER_AGENT = "batchgen/0.1"
DOWNLOAD_CHUNK = 256 * 1024
# Bytes gathered before a trip to a worker thread to write them: most images fit, so
# a download costs one trip (open, write, rename) instead of one per chunk.
WRITE_BUFFER = 4 * 1024 * 1024


IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
# Bytes an image's first bytes must reach before they are judged (WebP's is 12 long):
# a CDN's first piece may be a handful of bytes.
SIGNATURE_BYTES = 12
# A keep-alive connection that the server or a load balancer closed while it sat idle
# fails the next request sent on it.  Nothing is wrong with the server: the request is
# sent again at once on a fresh connection, this many times at most in a row, and it
# does not count as a failed attempt.
STALE_CONNECTION_RETRIES = 3


def looks_like_an_image(head: bytes) -> bool:
    """Whether a file starts like a PNG, JPEG, GIF or WebP: an HTML error page served
    with status 200 must not become an image file."""
    if head.startswith(IMAGE_SIGNATURES):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def tls_context() -> ssl.SSLContext:
    """A verifying TLS context made now, so it honours the environment's CA bundle
    (``SSL_CERT_FILE``, ``SSL_CERT_DIR``) as the official SDK does; aiohttp's default
    one is made when aiohttp is imported.  Blocking (it reads the bundle)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


async def open_session(**options: Any) -> aiohttp.ClientSession:
    """An aiohttp session with a TLS context that honours the environment's CA bundle.
    Not ``trust_env``: that would also send ``~/.netrc`` credentials to any host it
    names (a signed CDN URL must get none) and cost a thread trip per request;
    proxies come from :class:`Proxies` instead."""
    context = await anyio.to_thread.run_sync(tls_context)
    limit = options.pop("limit", 100)
    connector = aiohttp.TCPConnector(limit=limit, ssl=context)
    return aiohttp.ClientSession(connector=connector, **options)


class Proxies:
    """The proxy for each URL, from ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` (either
    case), as the official SDK (httpx) and curl read them; worked out once per origin."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        if environ is None:
            self._proxies = urllib.request.getproxies_environment()
        else:
            self._proxies = {
                name[: -len("_proxy")].lower(): value
                for name, value in environ.items()
                if name.lower().endswith("_proxy") and value
            }
        self._known: dict[tuple[str, str], Proxy | None] = {}

    def for_url(self, url: URL) -> Proxy | None:
        origin = (url.scheme, url.host or "")
        if origin not in self._known:
            given = self._proxies.get(url.scheme)
            bypass = _no_proxy(url, self._proxies.get("no", ""))
            self._known[origin] = Proxy.parse(given) if given and not bypass else None
        return self._known[origin]


def _no_proxy(url: URL, rules: str) -> bool:
    """Whether ``NO_PROXY`` exempts the URL: ``*``, or a host, domain (``example.com`` and
    ``.example.com`` both cover ``a.example.com``) or IP address, optionally with a port."""
    host = (url.host or "").lower()
    for rule in (part.strip().lower() for part in rules.split(",")):
        if rule == "*":
            return True
        name, _, port = rule.rpartition(":") if rule.count(":") == 1 else (rule, "", "")
        if port and port != str(url.port):
            continue
        name = name.strip("[]").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy's URL, and its credentials apart (never part of a message)."""

    url: URL
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> Proxy:
        url = URL(text if "://" in text else f"http://{text}")
        authorization = None
        if url.user:
            token = f"{url.user}:{url.password or ''}".encode()
            authorization = "Basic " + base64.b64encode(token).decode("ascii")
        return cls(url.with_user(None), authorization)

    def options(self) -> dict[str, Any]:
        headers = {"Proxy-Authorization": self.authorization} if self.authorization else None
        return {"proxy": self.url, "proxy_headers": headers}


def _proxy_options(proxy: Proxy | None) -> dict[str, Any]:
    return proxy.options() if proxy is not None else {}


class BodyTooLargeError(Exception):
    """An answer's body went past the bound it is read under."""


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decoded from its ``Content-Encoding``, however many pieces it
    arrives in; :class:`BodyTooLargeError` as soon as it passes ``limit`` bytes, without
    reading further.  (``content.read(n)`` would return only what has arrived so far.)"""
    pieces: list[bytes] = []
    size = 0
    while piece := await response.content.readany():
        size += len(piece)
        if size > limit:
            raise BodyTooLargeError
        pieces.append(piece)
    return b"".join(pieces)


def _reason(body: bytes) -> tuple[str, str, Any]:
    """(reason, name, details) from an error body, tolerating anything."""
    try:
        payload = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip(), "", None
    if not isinstance(payload, dict):
        return "", "", None
    reason = payload.get("reason") or payload.get("message") or ""
    return str(reason)[:500], str(payload.get("name") or ""), payload.get("details")


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """How long the server asks us to wait: ``retry-after-ms``, or ``Retry-After`` in
    seconds or as an HTTP date (as the official SDK reads them); None if it does not say.
    The caller caps it."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def _api_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ScenarioClient:
    """A thin, typed adapter over the Scenario REST API."""

    def __init__(self, settings: ApiSettings, session: aiohttp.ClientSession) -> None:
        self._settings = settings
        self._session = session
        self._base = URL(settings.base_url.rstrip("/"))
        self._headers = {
            "Authorization": settings.credentials.authorization_header(),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._proxy = _proxy_options(Proxies().for_url(self._base))

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: ApiSettings) -> AsyncIterator[ScenarioClient]:
        async with await open_session() as session:
            yield cls(settings, session)

    def _url(self, path: str, query: dict[str, str] | None) -> URL:
        merged = dict(query or {})
        if self._settings.project_id:
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
    ) -> tuple[int, Any]:
        """One request; returns (status, parsed JSON) for a success, raises ours otherwise."""
        url = self._url(path, query)
        creates = method == "POST" and path.startswith("/v1/generate/")
        what = f"{method} {path}"
        for stale in range(STALE_CONNECTION_RETRIES + 1):
            try:
                async with self._session.request(
                    method,
                    url,
                    json=body,
                    headers=self._headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                    **self._proxy,
                ) as response:
                    status = response.status
                    retry_after = retry_after_seconds(response.headers)
                    try:
                        raw = await read_body(response, MAX_API_BODY_BYTES)
                    except BodyTooLargeError:
                        raise (AmbiguousSubmitError if creates else MalformedResponseError)(
                            f"{what}: response larger than {MAX_API_BODY_BYTES} bytes"
                        ) from None
                break
            except aiohttp.ClientConnectorError as exc:
                # Nothing reached the server: safe to retry, even a submission.
                raise TransientApiError(f"{what}: cannot connect to {url.host}:{url.port}") from exc
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # Most often a kept-alive connection closed while idle.  A read goes again
                # at once; a submission may have created its job and is reconciled.
                message = f"{what}: the connection was closed ({type(exc).__name__})"
                if creates:
                    raise AmbiguousSubmitError(message, connection_dropped=True) from exc
                if stale == STALE_CONNECTION_RETRIES:
                    raise TransientApiError(message) from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                message = f"{what}: {type(exc).__name__} before the answer arrived"
                if creates:
                    raise AmbiguousSubmitError(message) from exc
                raise TransientApiError(message) from exc

        if 200 <= status < 300:
            try:
                return status, json.loads(raw) if raw else None
            except ValueError as exc:
                error_type: type[ApiError] = (
                    AmbiguousSubmitError if creates else MalformedResponseError
                )
                raise error_type(f"{what}: answered {status} with a body that is not JSON") from exc
        reason, name, details = _reason(raw)
        message = f"{what}: HTTP {status}" + (f": {reason}" if reason else "")
        if status == 401:
            raise CredentialsError(
                "the API refused the credentials (HTTP 401): check SCENARIO_API_KEY and "
                "SCENARIO_API_SECRET"
            )
        if status == 429:
            limit = details.get("actionLimit") if isinstance(details, dict) else None
            raise RateLimitedError(
                message,
                reason=reason,
                retry_after=retry_after,
                action_limit=limit
                if isinstance(limit, int) and not isinstance(limit, bool)
                else None,
            )
        if status >= 500 or status in (408, 409):
            # 408 and 409 are the server's "not now" (a timeout, a conflict in flight):
            # like a 5xx, a read is tried again and a submission reconciled.
            server_error: type[ApiError] = AmbiguousSubmitError if creates else TransientApiError
            raise server_error(message, status=status, reason=reason)
        if status == 402 or (400 <= status < 500 and "creative unit" in reason.lower()):
            # Not documented; Scenario's own plugins read these as an exhausted quota.
            raise OutOfCreditsError(message, status=status, reason=reason or f"HTTP {status}")
        if 300 <= status < 400:
            raise PermanentApiError(f"{what}: unexpected redirect (HTTP {status})", status=status)
        raise PermanentApiError(
            message, status=status, reason=reason or f"HTTP {status}", name=name
        )

    async def submit(self, model: str, body: dict[str, Any]) -> Submission:
        status, payload = await self.request("POST", f"/v1/generate/custom/{model}", body=body)
        try:
            return parse_submission(payload)
        except MalformedResponseError as exc:
            raise AmbiguousSubmitError(f"POST /v1/generate/custom/{model}: {exc}") from exc

    async def estimate(self, model: str, body: dict[str, Any]) -> float | None:
        """Ask the dry run (HTTP 269) for the cost of one job; creates nothing."""
        _, payload = await self.request(
            "POST", f"/v1/generate/custom/{model}", query={"dryRun": "true"}, body=body
        )
        cost = payload.get("creativeUnitsCost") if isinstance(payload, dict) else None
        return float(cost) if isinstance(cost, int | float) else None

    async def get_job(self, job_id: str) -> JobRecord:
        _, payload = await self.request("GET", f"/v1/jobs/{job_id}")
        return parse_job(payload)

    async def cancel_job(self, job_id: str) -> None:
        """Ask the API to cancel a job; custom generation jobs usually refuse (400)."""
        await self.request("POST", f"/v1/jobs/{job_id}/action", body={"action": "cancel"})

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
            _, payload = await self.request("GET", f"/v1/assets/{asset_ids[0]}")
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
        found: list[JobRecord] = []
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            query = filters | {"pageSize": str(LIST_PAGE_SIZE)}
            if token:
                query["paginationToken"] = token
            _, payload = await self.request("GET", "/v1/jobs", query=query)
            if not isinstance(payload, dict) or not isinstance(payload.get("jobs", []), list):
                raise MalformedResponseError("GET /v1/jobs: no jobs list")
            found.extend(parse_job(item) for item in payload.get("jobs") or [])
            token = payload.get("nextPaginationToken") or None
            if not token:
                return found
        raise MalformedResponseError(f"GET /v1/jobs: more than {MAX_LIST_PAGES} pages")

    async def list_models(self, privacy: str = "private") -> list[dict[str, Any]]:
        """Every model of one privacy (all pages): ``private``, the team's own (the API's
        default), or ``public``, Scenario's."""
        models: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            query = {"pageSize": "100", "privacy": privacy}
            if token:
                query["paginationToken"] = token
            _, payload = await self.request("GET", "/v1/models", query=query)
            if not isinstance(payload, dict):
                raise MalformedResponseError("GET /v1/models: not an object")
            models.extend(m for m in payload.get("models") or [] if isinstance(m, dict))
            token = payload.get("nextPaginationToken") or None
            if not token:
                return models
        raise MalformedResponseError(f"GET /v1/models: more than {MAX_LIST_PAGES} pages")

    async def get_model(self, model_id: str) -> ModelSpec:
        """A model and its inputs (``GET /v1/models/{id}``)."""
        _, payload = await self.request("GET", f"/v1/models/{model_id}")
        return parse_model(payload)


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    # The image's width and height, read from its header, when it could be.
    dimensions: tuple[int, int] | None = None


# Bytes of an image's start kept to read its width and height from (a JPEG's frame
# header comes after its EXIF and colour profile, within this in practice).
HEADER_BYTES = 64 * 1024


def image_dimensions(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of a PNG, GIF, WebP or JPEG file; None if the
    bytes given do not say."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":
            return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(
                head[28:30], "little"
            ) & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(
                head[27:30], "little"
            ) + 1
        return None
    if head.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(head)
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # padding
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        # Start-of-frame markers: C0-CF but DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if offset + 9 > len(data):
                return None
            height = int.from_bytes(data[offset + 5 : offset + 7], "big")
            width = int.from_bytes(data[offset + 7 : offset + 9], "big")
            return width, height
        offset += 2 + length
    return None


class AssetDownloader:
    """Fetches signed URLs with a session that has no credentials, into files that
    appear under their final name only once complete and verified."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_read=min(timeout, 60.0))
        self._proxies = Proxies()

    @classmethod
    @asynccontextmanager
    async def open(cls, seconds: float) -> AsyncIterator[AssetDownloader]:
        async with await open_session(headers={"User-Agent": USER_AGENT}) as session:
            yield cls(session, seconds)

    async def fetch(
        self,
        url: str,
        destination: Path,
        expected_size: int | None = None,
        *,
        fallback: Path | None = None,
    ) -> Downloaded:
        """Download ``url`` to ``destination``.  With a ``fallback``, a destination that
        already holds other bytes is left alone and the download goes to the fallback
        instead; without one it is replaced."""
        part = _PartFile(destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part"))
        digest = hashlib.sha256()
        received = 0
        pending = bytearray()
        head = bytearray()
        host = URL(url).host
        try:
            where = URL(url)
            proxy = _proxy_options(self._proxies.for_url(where))
            async with self._session.get(where, timeout=self._timeout, **proxy) as response:
                if response.status != 200:
                    # 403 from a CDN usually means the signature expired: a fresh URL helps.
                    transient = response.status in (403, 408, 429) or response.status >= 500
                    raise DownloadError(
                        f"asset host {host} answered HTTP {response.status}", transient=transient
                    )
                # An encoded body's length is not the image's (aiohttp decodes it).
                encoded = response.headers.get("Content-Encoding", "identity") != "identity"
                announced = None if encoded else response.content_length
                limit = min(x for x in (announced, expected_size, MAX_ASSET_BYTES) if x is not None)
                judged = False
                async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                    received += len(chunk)
                    if not judged and received >= SIGNATURE_BYTES:
                        # Judged once enough has arrived, however small the first piece.
                        _check_signature(host, bytes(pending) + chunk[:SIGNATURE_BYTES])
                        judged = True
                    if received > limit:
                        raise DownloadError(f"asset from {host} is longer than announced")
                    digest.update(chunk)
                    pending += chunk
                    if len(head) < HEADER_BYTES:
                        head += chunk[: HEADER_BYTES - len(head)]
                    if len(pending) >= WRITE_BUFFER:
                        await anyio.to_thread.run_sync(part.write, bytes(pending))
                        pending.clear()
            for wanted in (announced, expected_size):
                if wanted is not None and received != wanted:
                    raise DownloadError(
                        f"asset from {host} was cut short: {received} of {wanted} bytes"
                    )
            if received == 0:
                raise DownloadError(f"asset from {host} is empty")
            if not judged:
                _check_signature(host, bytes(pending))
            sha256 = digest.hexdigest()
            placed = await anyio.to_thread.run_sync(
                part.finish, bytes(pending), destination, fallback, sha256
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DownloadError(f"download from {host} failed: {type(exc).__name__}") from exc
        finally:
            part.discard()  # quick, and done even when cancelled
        dimensions = image_dimensions(bytes(head))
        return Downloaded(path=placed, size=received, sha256=sha256, dimensions=dimensions)


def _check_signature(host: str | None, head: bytes) -> None:
    if not looks_like_an_image(head):
        raise DownloadError(f"what {host} sent is not an image")


class _PartFile:
    """A download's bytes under a hidden name, renamed into place only when complete.
    Blocking: its calls run in a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            try:
                self._file = self.path.open("wb")
            except FileNotFoundError:  # the first file in one of the template's folders
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("wb")
        self._file.write(data)

    def finish(self, data: bytes, destination: Path, fallback: Path | None, sha256: str) -> Path:
        """Put the bytes in place; where they went (see :meth:`AssetDownloader.fetch`)."""
        self.write(data)
        assert self._file is not None
        self._file.close()
        if fallback is None:
            os.replace(self.path, destination)
            return destination
        if _create_from(self.path, destination):
            return destination
        if sha256_of(destination) == sha256:
            return destination  # these very bytes, put there by a run killed before it noted them
        os.replace(self.path, fallback)
        return fallback

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self.path.unlink(missing_ok=True)


def _create_from(part: Path, destination: Path) -> bool:
    """Give ``part``'s bytes the name ``destination`` unless that name exists: one
    atomic step, so two writers can never both believe they own the name."""
    try:
        os.link(part, destination)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    # A file system without hard links: claim the name, then move the bytes in.
    try:
        os.close(os.open(destination, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    os.replace(part, destination)
    return True


__all__ = ["ApiError", "AssetDownloader", "Downloaded", "ScenarioClient"]
