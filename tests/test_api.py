"""The thin HTTP adapter, against aioresponses: what it sends and how it converts errors."""

from __future__ import annotations

import base64
import hashlib
import inspect
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses

from batchgen.api import AssetDownloader, ScenarioClient, looks_like_an_image
from batchgen.config import ApiSettings, Credentials
from batchgen.errors import (
    AmbiguousSubmitError,
    BatchgenError,
    CredentialsError,
    MalformedResponseError,
    OutOfCreditsError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)

BASE = "https://api.example.test"
SECRET = "very-secret-value"
SUBMIT = f"{BASE}/v1/generate/custom/model_x"


class _NothingWritten:
    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 predates aiohttp 3.14's required ``stream_writer`` argument
    (pnuckowski/aioresponses#289, open); a finished request only reads its size."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NothingWritten())
        super().__init__(*args, **kwargs)


@pytest.fixture(autouse=True)
def _aioresponses_compat(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioresponses.core

    if "stream_writer" in inspect.signature(aiohttp.ClientResponse.__init__).parameters:
        monkeypatch.setattr(aioresponses.core, "ClientResponse", _CompatResponse)


@pytest.fixture
async def client() -> AsyncIterator[ScenarioClient]:
    settings = ApiSettings(base_url=BASE, credentials=Credentials("key", SECRET), project_id="proj")
    async with ScenarioClient.open(settings) as opened:
        yield opened


@pytest.mark.anyio
async def test_submit_sends_basic_auth_and_body_and_reads_either_job_shape(
    client: ScenarioClient,
) -> None:
    with aioresponses() as mocked:
        mocked.post(
            f"{SUBMIT}?projectId=proj",
            payload={"job": {"jobId": "job_1", "status": "queued"}, "creativeUnitsCost": 4},
        )
        mocked.post(
            f"{SUBMIT}?projectId=proj", payload={"job": {"id": "job_2", "status": "queued"}}
        )
        first = await client.submit("model_x", {"prompt": "p", "width": 512, "height": 512})
        second = await client.submit("model_x", {"prompt": "p"})
        ((call, *_),) = [v for k, v in mocked.requests.items() if k[0] == "POST"]
    assert (first.job.job_id, first.cost, second.job.job_id) == ("job_1", 4.0, "job_2")
    expected = "Basic " + base64.b64encode(f"key:{SECRET}".encode()).decode()
    assert call.kwargs["headers"]["Authorization"] == expected
    assert call.kwargs["json"] == {"prompt": "p", "width": 512, "height": 512}
    assert call.kwargs["allow_redirects"] is False


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "status", "body", "headers", "error_type", "check"),
    [
        (
            "POST",
            400,
            {"reason": "width must be a multiple of 16"},
            {},
            PermanentApiError,
            lambda e: e.reason == "width must be a multiple of 16",
        ),
        (
            "POST",
            403,
            {"reason": "no", "name": "ModelAccessRestrictedError"},
            {},
            PermanentApiError,
            lambda e: e.name == "ModelAccessRestrictedError",
        ),
        ("POST", 401, {"reason": "Unauthorized"}, {}, CredentialsError, lambda e: True),
        ("POST", 402, {"reason": "Payment required"}, {}, OutOfCreditsError, lambda e: True),
        (
            "POST",
            400,
            {"reason": "Not enough creative units"},
            {},
            OutOfCreditsError,
            lambda e: e.status == 400,
        ),
        (
            "POST",
            429,
            {"reason": "busy", "details": {"actionLimit": 5}},
            {"Retry-After": "7"},
            RateLimitedError,
            lambda e: (e.action_limit, e.retry_after) == (5, 7.0),
        ),
        (
            "POST",
            502,
            "<html>bad gateway</html>",
            {},
            AmbiguousSubmitError,
            lambda e: e.status == 502,
        ),
        ("POST", 200, "not json", {}, AmbiguousSubmitError, lambda e: True),
        ("POST", 200, {"job": {"status": "queued"}}, {}, AmbiguousSubmitError, lambda e: True),
        ("GET", 503, {"reason": "down"}, {}, TransientApiError, lambda e: e.status == 503),
        ("GET", 404, {"reason": "Job not found"}, {}, PermanentApiError, lambda e: e.status == 404),
        ("GET", 200, {"job": {"jobId": "j"}}, {}, MalformedResponseError, lambda e: True),
        (
            "GET",
            302,
            "",
            {"Location": "https://elsewhere.test/"},
            PermanentApiError,
            lambda e: True,
        ),
    ],
)
async def test_errors_are_converted_at_the_boundary(
    client: ScenarioClient,
    method: str,
    status: int,
    body: object,
    headers: dict[str, str],
    error_type: type[BatchgenError],
    check: object,
) -> None:
    with aioresponses() as mocked:
        kwargs = {"status": status, "headers": headers}
        kwargs.update({"payload": body} if isinstance(body, dict) else {"body": body})
        if method == "POST":
            mocked.post(f"{SUBMIT}?projectId=proj", **kwargs)
            call = client.submit("model_x", {"prompt": "p"})
        else:
            mocked.get(f"{BASE}/v1/jobs/j?projectId=proj", **kwargs)
            call = client.get_job("j")
        with pytest.raises(error_type) as caught:
            await call
    assert type(caught.value) is error_type
    assert check(caught.value)  # type: ignore[operator]
    assert SECRET not in str(caught.value)


@pytest.mark.anyio
async def test_connection_errors_before_and_after_sending(client: ScenarioClient) -> None:
    with aioresponses() as mocked:
        refused = aiohttp.ClientConnectorError(
            aiohttp.client_reqrep.ConnectionKey(
                "api.example.test", 443, True, None, None, None, None
            ),
            OSError(111, "refused"),
        )
        mocked.post(f"{SUBMIT}?projectId=proj", exception=refused)
        mocked.post(f"{SUBMIT}?projectId=proj", exception=aiohttp.ServerDisconnectedError())
        mocked.get(f"{BASE}/v1/jobs/j?projectId=proj", exception=TimeoutError())
        with pytest.raises(TransientApiError) as not_sent:
            await client.submit("model_x", {"prompt": "p"})
        assert type(not_sent.value) is TransientApiError  # nothing was sent: safe to retry
        with pytest.raises(AmbiguousSubmitError):
            await client.submit("model_x", {"prompt": "p"})
        with pytest.raises(TransientApiError):
            await client.get_job("j")


@pytest.mark.anyio
async def test_assets_by_one_and_in_bulk_keep_the_order_asked(client: ScenarioClient) -> None:
    with aioresponses() as mocked:
        mocked.get(
            f"{BASE}/v1/assets/a1?projectId=proj",
            payload={"asset": {"id": "a1", "url": "https://cdn/a1", "mimeType": "image/jpeg"}},
        )
        mocked.post(
            f"{BASE}/v1/assets/get-bulk?projectId=proj",
            payload={
                "assets": [
                    {"id": "a3", "url": "https://cdn/a3", "properties": {"size": 10}},
                    {"id": "a2", "url": "https://cdn/a2"},
                ]
            },
        )
        (single,) = await client.get_assets(["a1"])
        bulk = await client.get_assets(["a2", "a3"])
    assert (single.id, single.suffix) == ("a1", ".jpg")
    assert [a.id for a in bulk] == ["a2", "a3"] and bulk[1].size == 10


@pytest.mark.anyio
async def test_job_records_read_both_shapes(client: ScenarioClient) -> None:
    with aioresponses() as mocked:
        mocked.get(
            f"{BASE}/v1/jobs/j1?projectId=proj",
            payload={
                "job": {
                    "jobId": "j1",
                    "status": "success",
                    "billing": {"cuCost": 3},
                    "metadata": {"assetIds": ["a", "b"]},
                }
            },
        )
        mocked.get(
            f"{BASE}/v1/jobs/j2?projectId=proj",
            payload={
                "job": {
                    "id": "j2",
                    "status": "success",
                    "result": {"images": [{"url": "https://media/x.png"}]},
                }
            },
        )
        mocked.get(
            f"{BASE}/v1/jobs/j3?projectId=proj",
            payload={
                "job": {"jobId": "j3", "status": "failure", "metadata": {"error": "NSFW content"}}
            },
        )
        one, two, three = [await client.get_job(j) for j in ("j1", "j2", "j3")]
    assert (one.asset_ids, one.cost, one.terminal) == (("a", "b"), 3.0, True)
    assert two.image_urls == ("https://media/x.png",)
    assert three.error == "NSFW content"


@pytest.mark.anyio
async def test_jobs_created_after_follows_tokens_through_empty_pages(
    client: ScenarioClient,
) -> None:
    from datetime import UTC, datetime

    since = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    url = f"{BASE}/v1/jobs"
    base_query = "createdAfter=2026-01-02T03:04:05.600Z&pageSize=100&projectId=proj"
    job = {"jobId": "j1", "status": "queued", "metadata": {"input": {"prompt": "p"}}}
    with aioresponses() as mocked:
        mocked.get(f"{url}?{base_query}", payload={"jobs": [], "nextPaginationToken": "t1"})
        mocked.get(
            f"{url}?{base_query}&paginationToken=t1",
            payload={"jobs": [job], "nextPaginationToken": "t2"},
        )
        mocked.get(f"{url}?{base_query}&paginationToken=t2", payload={"jobs": []})
        found = await client.jobs_created_after(since)
    assert [(j.job_id, j.request) for j in found] == [("j1", {"prompt": "p"})]


@pytest.mark.anyio
async def test_jobs_updated_after_lists_custom_jobs_through_empty_pages(
    client: ScenarioClient,
) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    # A cursor in any zone is sent in UTC, to the millisecond.
    since = datetime(2026, 1, 2, 4, 4, 5, 600000, tzinfo=timezone(timedelta(hours=1)))
    assert since.astimezone(UTC).hour == 3
    url = f"{BASE}/v1/jobs"
    base_query = "pageSize=100&projectId=proj&type=custom&updatedAfter=2026-01-02T03:04:05.600Z"
    done = {"jobId": "j2", "status": "success", "updatedAt": "2026-01-02T03:04:06.000Z"}
    with aioresponses() as mocked:
        mocked.get(f"{url}?{base_query}", payload={"jobs": [], "nextPaginationToken": "t1"})
        mocked.get(f"{url}?{base_query}&paginationToken=t1", payload={"jobs": [done]})
        found = await client.jobs_updated_after(since)
    assert [(j.job_id, j.terminal, j.updated_at) for j in found] == [
        ("j2", True, "2026-01-02T03:04:06.000Z")
    ]


@pytest.mark.anyio
async def test_asset_lookup_asks_for_at_most_200_ids_a_request(client: ScenarioClient) -> None:
    ids = [f"a{i}" for i in range(450)]
    asked: list[list[str]] = []

    def answer(url: object, **kwargs: object) -> CallbackResult:
        wanted = kwargs["json"]["assetIds"]  # type: ignore[index]
        asked.append(wanted)
        return CallbackResult(
            payload={"assets": [{"id": a, "url": f"https://cdn/{a}"} for a in wanted]}
        )

    with aioresponses() as mocked:
        mocked.post(f"{BASE}/v1/assets/get-bulk?projectId=proj", callback=answer, repeat=True)
        found = await client.lookup_assets(ids)
    assert [len(chunk) for chunk in asked] == [200, 200, 50]
    assert sorted(found) == sorted(ids) and found["a7"].url == "https://cdn/a7"


@pytest.mark.parametrize(
    ("head", "image"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", True),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", True),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", True),
        (b"GIF89a\x01\x00", True),
        (b"<html><body>Access denied</body></html>", False),
        (b'{"reason": "expired"}', False),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", False),
    ],
)
def test_only_image_bytes_pass_for_an_image(head: bytes, image: bool) -> None:
    assert looks_like_an_image(head) is image


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
CDN = "https://cdn.example.test/asset.png?signature=abc"


@pytest.mark.anyio
@pytest.mark.parametrize("hard_links", [True, False], ids=["links", "no-links"])
@pytest.mark.parametrize(
    ("already_there", "with_fallback", "lands_in", "destination_holds"),
    [
        # Nothing there: the name is taken, also in a folder that does not exist yet.
        (None, True, "destination", PNG),
        # Someone else's bytes: they are kept and the image goes to the fallback name.
        (b"the user's own file", True, "fallback", b"the user's own file"),
        # These very bytes (a run killed before it noted them): adopted as they are.
        (PNG, True, "destination", PNG),
        # No fallback: the unit's own earlier file, replaced.
        (b"a damaged earlier download", False, "destination", PNG),
    ],
)
async def test_a_download_never_replaces_a_file_it_was_not_given(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hard_links: bool,
    already_there: bytes | None,
    with_fallback: bool,
    lands_in: str,
    destination_holds: bytes,
) -> None:
    if not hard_links:  # as on file systems without them (FAT, some network mounts)

        def refuse(*_: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("batchgen.api.os.link", refuse)
    destination = tmp_path / "images" / "cats" / "0001.png"
    fallback = destination.with_name("0001~unit-0.png")
    if already_there is not None:
        destination.parent.mkdir(parents=True)
        destination.write_bytes(already_there)
    with aioresponses() as mocked:
        mocked.get(CDN, body=PNG, headers={"Content-Length": str(len(PNG))})
        async with AssetDownloader.open(10) as fetcher:
            downloaded = await fetcher.fetch(
                CDN, destination, len(PNG), fallback=fallback if with_fallback else None
            )
    expected = destination if lands_in == "destination" else fallback
    assert downloaded.path == expected
    assert downloaded.sha256 == hashlib.sha256(PNG).hexdigest()
    assert_files(tmp_path, {expected: PNG, destination: destination_holds})
    assert fallback.exists() == (lands_in == "fallback")


def assert_files(root: Path, contents: dict[Path, bytes]) -> None:
    for path, content in contents.items():
        assert path.read_bytes() == content
    assert not list(root.rglob("*.part"))
