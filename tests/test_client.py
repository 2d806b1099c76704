"""The API client through a MockTransport: what it sends, and how every answer and every
failure becomes a record or an error of ours."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from batchgen.config import ApiSettings, Credentials
from batchgen.errors import (
    AmbiguousSubmitError,
    ApiUnreachableError,
    BatchgenError,
    CredentialsError,
    MalformedResponseError,
    ModelRestrictedError,
    OutOfCreditsError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)
from batchgen.scenario.client import ScenarioClient
from batchgen.scenario.transport import (
    Answer,
    CannotConnect,
    ConnectionDropped,
    MockTransport,
    NoAnswer,
    Outgoing,
)

BASE = "https://api.example.test"
SECRET = "very-secret-value"

pytestmark = pytest.mark.anyio


def answer(payload: Any = None, status: int = 200, retry_after: float | None = None) -> Answer:
    body = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    return Answer(status, b"" if payload is None else body, retry_after)


def client_for(handler: Callable[[Outgoing], Answer]) -> tuple[ScenarioClient, list[Outgoing]]:
    sent: list[Outgoing] = []

    def recording(request: Outgoing) -> Answer:
        sent.append(request)
        return handler(request)

    settings = ApiSettings(base_url=BASE, credentials=Credentials("key", SECRET), project_id="proj")
    return ScenarioClient(settings, MockTransport(recording)), sent


async def test_submit_sends_basic_auth_and_body_and_reads_either_job_shape() -> None:
    answers = iter(
        [
            answer({"job": {"jobId": "job_1", "status": "queued"}, "creativeUnitsCost": 4}),
            answer({"job": {"id": "job_2", "status": "queued"}}),
        ]
    )
    client, sent = client_for(lambda request: next(answers))
    first = await client.submit("model_x", {"prompt": "p", "width": 512, "height": 512})
    second = await client.submit("model_x", {"prompt": "p"})
    assert (first.job.job_id, first.cost, second.job.job_id) == ("job_1", 4.0, "job_2")
    call = sent[0]
    assert (call.method, str(call.url)) == (
        "POST",
        f"{BASE}/v1/generate/custom/model_x?projectId=proj",
    )
    expected = "Basic " + base64.b64encode(f"key:{SECRET}".encode()).decode()
    assert call.headers["Authorization"] == expected
    assert call.body == {"prompt": "p", "width": 512, "height": 512}


@pytest.mark.parametrize(
    ("method", "status", "body", "retry_after", "error_type", "check"),
    [
        ("POST", 400, {"reason": "width must be a multiple of 16"}, None, PermanentApiError,
         lambda e: e.reason == "width must be a multiple of 16"),
        ("POST", 403, {"reason": "no", "name": "ModelAccessRestrictedError"}, None,
         ModelRestrictedError, lambda e: e.name == "ModelAccessRestrictedError"),
        ("POST", 403, {"reason": "forbidden"}, None, PermanentApiError, lambda e: e.status == 403),
        ("POST", 401, {"reason": "Unauthorized"}, None, CredentialsError, lambda e: True),
        ("POST", 402, {"reason": "Payment required"}, None, OutOfCreditsError, lambda e: True),
        ("POST", 400, {"reason": "Not enough creative units"}, None, OutOfCreditsError,
         lambda e: e.status == 400),
        ("POST", 429, {"reason": "busy", "details": {"actionLimit": 5}}, 7.0, RateLimitedError,
         lambda e: (e.action_limit, e.retry_after) == (5, 7.0)),
        ("POST", 502, "<html>bad gateway</html>", None, AmbiguousSubmitError,
         lambda e: e.status == 502),
        ("POST", 408, {"reason": "timeout"}, None, AmbiguousSubmitError, lambda e: True),
        ("POST", 409, {"reason": "conflict"}, None, AmbiguousSubmitError, lambda e: True),
        ("POST", 200, "not json", None, AmbiguousSubmitError, lambda e: True),
        ("POST", 200, {"job": {"status": "queued"}}, None, AmbiguousSubmitError, lambda e: True),
        ("GET", 503, {"reason": "down"}, None, TransientApiError, lambda e: e.status == 503),
        ("GET", 408, {"reason": "timeout"}, None, TransientApiError, lambda e: e.status == 408),
        ("GET", 409, {"reason": "busy"}, None, TransientApiError, lambda e: e.status == 409),
        ("GET", 404, {"reason": "Job not found"}, None, PermanentApiError,
         lambda e: e.status == 404),
        ("GET", 200, {"job": {"jobId": "j"}}, None, MalformedResponseError, lambda e: True),
        ("GET", 200, {"job": {"jobId": "j", "status": 7}}, None, MalformedResponseError,
         lambda e: True),
        ("GET", 302, "", None, PermanentApiError, lambda e: True),
    ],
)  # fmt: skip
async def test_errors_are_converted_at_the_boundary(
    method: str,
    status: int,
    body: object,
    retry_after: float | None,
    error_type: type[BatchgenError],
    check: Callable[[Any], bool],
) -> None:
    client, _ = client_for(lambda request: answer(body, status, retry_after))
    call = client.submit("model_x", {"prompt": "p"}) if method == "POST" else client.get_job("j")
    with pytest.raises(error_type) as caught:
        await call
    assert type(caught.value) is error_type
    assert check(caught.value)
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("failure", "submit_error", "read_error"),
    [
        # Nothing was sent: safe to retry, even a submission.
        # (its own kind, and exit code, once it ends a run or a check).
        (CannotConnect("refused"), ApiUnreachableError, ApiUnreachableError),
        # Sent, no whole answer: a submission may have made its job.
        (NoAnswer("TimeoutError before the answer arrived"), AmbiguousSubmitError,
         TransientApiError),
    ],
)  # fmt: skip
async def test_connection_failures_before_and_after_sending(
    failure: Exception, submit_error: type[Exception], read_error: type[Exception]
) -> None:
    def fail(request: Outgoing) -> Answer:
        raise failure

    client, _ = client_for(fail)
    with pytest.raises(submit_error) as caught:
        await client.submit("model_x", {"prompt": "p"})
    assert type(caught.value) is submit_error
    with pytest.raises(read_error):
        await client.get_job("j")


async def test_a_connection_dropped_while_idle_is_read_again_at_once_but_reconciled() -> None:
    drops = {"left": 2}

    def flaky(request: Outgoing) -> Answer:
        if drops["left"]:
            drops["left"] -= 1
            raise ConnectionDropped("the connection was closed")
        return answer({"job": {"jobId": "j", "status": "queued"}})

    client, sent = client_for(flaky)
    assert (await client.get_job("j")).job_id == "j"
    assert len(sent) == 3  # two drops, gone again at once
    drops["left"] = 1
    with pytest.raises(AmbiguousSubmitError) as caught:
        await client.submit("model_x", {"prompt": "p"})
    assert caught.value.connection_dropped  # no attempt used up; the engine reconciles
    drops["left"] = 10
    with pytest.raises(TransientApiError):  # a read that keeps failing: after a bound
        await client.get_job("j")


async def test_a_dry_run_that_gets_no_answer_made_nothing() -> None:
    def lost(request: Outgoing) -> Answer:
        raise NoAnswer("cut")

    client, _ = client_for(lost)
    with pytest.raises(TransientApiError) as caught:
        await client.estimate("model_x", {"prompt": "p"})
    assert type(caught.value) is TransientApiError


async def test_assets_by_one_and_in_bulk_keep_the_order_asked() -> None:
    def assets(request: Outgoing) -> Answer:
        if request.method == "GET":
            return answer(
                {"asset": {"id": "a1", "url": "https://cdn/a1", "mimeType": "image/jpeg"}}
            )
        return answer(
            {
                "assets": [
                    {"id": "a3", "url": "https://cdn/a3", "properties": {"size": 10}},
                    {"id": "a2", "url": "https://cdn/a2", "properties": {"width": 64.0}},
                ]
            }
        )

    client, _ = client_for(assets)
    (single,) = await client.get_assets(["a1"])
    bulk = await client.get_assets(["a2", "a3"])
    assert (single.id, single.suffix) == ("a1", ".jpg")
    assert [a.id for a in bulk] == ["a2", "a3"] and bulk[1].size == 10 and bulk[0].width == 64


async def test_job_records_read_both_shapes() -> None:
    jobs = {
        "j1": {"jobId": "j1", "status": "success", "billing": {"cuCost": 3},
               "metadata": {"assetIds": ["a", "b"]}},
        "j2": {"id": "j2", "status": "success",
               "result": {"images": [{"url": "https://media/x.png"}]}},
        "j3": {"jobId": "j3", "status": "failure", "metadata": {"error": "NSFW content"}},
    }  # fmt: skip
    client, _ = client_for(lambda request: answer({"job": jobs[request.url.name]}))
    one, two, three = [await client.get_job(j) for j in ("j1", "j2", "j3")]
    assert (one.asset_ids, one.cost, one.terminal) == (("a", "b"), 3.0, True)
    assert two.image_urls == ("https://media/x.png",)
    assert three.error == "NSFW content"


async def test_jobs_created_after_follows_tokens_through_empty_pages() -> None:
    since = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    job = {"jobId": "j1", "status": "queued", "metadata": {"input": {"prompt": "p"}}}
    pages = {
        None: {"jobs": [], "nextPaginationToken": "t1"},
        "t1": {"jobs": [job], "nextPaginationToken": "t2"},
        "t2": {"jobs": []},
    }
    client, sent = client_for(
        lambda request: answer(pages[request.url.query.get("paginationToken")])
    )
    found = await client.jobs_created_after(since)
    assert [(j.job_id, j.request) for j in found] == [("j1", {"prompt": "p"})]
    assert sent[0].url.query["createdAfter"] == "2026-01-02T03:04:05.600Z"
    assert sent[0].url.query["pageSize"] == "100" and len(sent) == 3


async def test_jobs_updated_after_lists_custom_jobs_in_utc_to_the_millisecond() -> None:
    since = datetime(2026, 1, 2, 4, 4, 5, 600000, tzinfo=timezone(timedelta(hours=1)))
    done = {"jobId": "j2", "status": "success", "updatedAt": "2026-01-02T03:04:06.000Z"}
    client, sent = client_for(lambda request: answer({"jobs": [done]}))
    found = await client.jobs_updated_after(since)
    assert [(j.job_id, j.terminal, j.updated_at) for j in found] == [
        ("j2", True, "2026-01-02T03:04:06.000Z")
    ]
    query = sent[0].url.query
    assert (query["type"], query["updatedAfter"]) == ("custom", "2026-01-02T03:04:05.600Z")


async def test_a_pagination_token_that_comes_back_is_a_broken_list_not_an_endless_one() -> None:
    client, sent = client_for(lambda request: answer({"jobs": [], "nextPaginationToken": "same"}))
    with pytest.raises(MalformedResponseError, match="token"):
        await client.jobs_updated_after(datetime(2026, 1, 1, tzinfo=UTC))
    assert len(sent) == 2


async def test_asset_lookup_asks_for_at_most_200_ids_a_request() -> None:
    ids = [f"a{i}" for i in range(450)]
    asked: list[list[str]] = []

    def bulk(request: Outgoing) -> Answer:
        wanted = request.body["assetIds"]
        asked.append(wanted)
        return answer({"assets": [{"id": a, "url": f"https://cdn/{a}"} for a in wanted]})

    client, _ = client_for(bulk)
    found = await client.lookup_assets(ids)
    assert [len(chunk) for chunk in asked] == [200, 200, 50]
    assert sorted(found) == sorted(ids) and found["a7"].url == "https://cdn/a7"


@pytest.mark.parametrize("given", [BASE, f"{BASE}/", f"{BASE}/v1", f"{BASE}/v1/"])
async def test_the_base_url_with_or_without_the_sdks_v1_is_the_same_api(given: str) -> None:
    from batchgen.config import api_base_url

    settings = ApiSettings(base_url=api_base_url(given), credentials=Credentials("k", "s"))
    sent: list[Outgoing] = []
    client = ScenarioClient(
        settings, MockTransport(lambda r: sent.append(r) or answer({"models": []}))
    )
    await client.list_models()
    assert str(sent[0].url).startswith(f"{BASE}/v1/models?")


def test_the_base_url_comes_from_the_option_or_either_variable() -> None:
    from batchgen.config import api_base_url

    assert api_base_url(None, {}) == "https://api.cloud.scenario.com"
    assert api_base_url(None, {"SCENARIO_BASE_URL": "https://sdk.test/v1"}) == "https://sdk.test"
    both = {"SCENARIO_BASE_URL": "https://sdk.test/v1", "SCENARIO_API_URL": "https://own.test"}
    assert api_base_url(None, both) == "https://own.test"
    assert api_base_url("https://flag.test/v1/", both) == "https://flag.test"
