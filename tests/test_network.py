"""The client as bytes really travel: answers in pieces, gzip and chunked encoding,
kept-alive connections dropped while idle, TLS, and a proxy named by the environment."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal
from yarl import URL

from batchgen.cli import main
from batchgen.config import ApiSettings, Credentials
from batchgen.errors import AmbiguousSubmitError, DownloadError
from batchgen.scenario.client import ScenarioClient
from batchgen.scenario.download import AssetDownloader
from batchgen.scenario.transport import NoAnswer, Proxies, read_body, retry_after_seconds
from batchgen.sim import Network, SimConfig, Simulator, serve
from tests.conftest import SIM_KEY, SIM_SECRET, ConnectProxy

# A job-list page as the API writes it, with multi-byte UTF-8 in a prompt.
PAGE = {
    "jobs": [
        {
            "jobId": "job_first",
            "status": "success",
            "progress": 1,
            "billing": {"cuCost": 12345},
            "metadata": {"input": {"prompt": "café ☕ 日本の灯台", "seed": 987654321}},
        },
        {"jobId": "job_second", "status": "in-progress", "progress": 0.5},
    ],
    "nextPaginationToken": "tok",
}
BODY = json.dumps(PAGE, ensure_ascii=False).encode()


def _at(marker: str, offset: int) -> int:
    return BODY.index(marker.encode()) + offset


# Where an answer is cut in two: every kind of place a JSON text can be cut.
SPLITS = {
    "inside a string": _at("job_first", 4),
    "inside a number": _at("12345", 2),
    "inside a multi-byte character": _at("☕", 1),
    "between two objects": _at('}, {"jobId": "job_second"', 1),
    "after the first byte": 1,
    "before the last byte": len(BODY) - 1,
}


def _pieces_app(
    body: bytes, cuts: list[int], *, chunked: bool, encoding: str | None
) -> web.Application:
    async def answer(request: web.Request) -> web.StreamResponse:
        payload = gzip.compress(body) if encoding == "gzip" else body
        headers = {"Content-Type": "application/json"}
        if encoding:
            headers["Content-Encoding"] = encoding
        response = web.StreamResponse(headers=headers)
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = len(payload)
        await response.prepare(request)
        points = [0, *(c for c in cuts if 0 < c < len(payload)), len(payload)]
        for start, end in zip(points, points[1:], strict=False):
            await response.write(payload[start:end])
            # A pause lets each piece reach the client on its own, as across a network.
            await asyncio.sleep(0.005)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v1/answer", answer)
    return app


@pytest.fixture
async def serve_app() -> AsyncIterator[Callable[[web.Application], Any]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


def _client(base_url: str) -> Any:
    return ScenarioClient.open(ApiSettings(base_url=base_url, credentials=Credentials("k", "s")))


@pytest.mark.anyio
@pytest.mark.parametrize("where", sorted(SPLITS))
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_json_answer_cut_anywhere_is_read_whole(
    serve_app: Callable[[web.Application], Any], where: str, chunked: bool
) -> None:
    url = await serve_app(_pieces_app(BODY, [SPLITS[where]], chunked=chunked, encoding=None))
    async with _client(url) as client:
        status, payload = await client.request("GET", "/v1/answer")
    assert status == 200 and payload == PAGE


@pytest.mark.anyio
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_gzipped_answer_in_many_small_pieces_is_read_whole(
    serve_app: Callable[[web.Application], Any], chunked: bool
) -> None:
    size = len(gzip.compress(BODY))
    cuts = list(range(7, size, 7))  # pieces of 7 bytes: the gzip header itself is cut
    url = await serve_app(_pieces_app(BODY, cuts, chunked=chunked, encoding="gzip"))
    async with _client(url) as client:
        _, payload = await client.request("GET", "/v1/answer")
    assert payload == PAGE


@pytest.mark.anyio
async def test_an_answer_past_the_bound_is_refused_as_soon_as_it_passes(
    serve_app: Callable[[web.Application], Any],
) -> None:
    big = b"[" + b"0," * 50_000 + b"0]"
    url = await serve_app(
        _pieces_app(big, list(range(1000, len(big), 1000)), chunked=True, encoding="gzip")
    )
    async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/answer") as response:
        with pytest.raises(NoAnswer, match="larger than 10000 bytes"):
            await read_body(response, 10_000)
        # It stopped reading once past the bound: most of the answer was never read.
        assert not response.content.at_eof()


@pytest.mark.anyio
async def test_a_download_whose_first_piece_is_four_bytes_is_judged_on_enough_bytes(
    tmp_path: Path,
) -> None:
    network = Network(piece_bytes=512, piece_pause=0.001, first_cdn_piece=4, chunked=True)
    config = SimConfig(api_key=SIM_KEY, api_secret=SIM_SECRET, job_seconds=0, network=network)
    async with serve(config) as sim:
        model = sim.model("model_sim-fast")
        assert model is not None
        job = sim._job(model, {"prompt": "p", "width": 64, "height": 64}, 1, created=True)
        asset = sim.assets[job.asset_ids[0]]
        async with AssetDownloader.open(30) as downloader:
            got = await downloader.fetch(sim.signed_url(asset.asset_id), tmp_path / "a.png")
    assert got.path.read_bytes() == asset.content()


@pytest.mark.anyio
async def test_what_is_not_an_image_is_refused_however_it_is_cut(
    serve_app: Callable[[web.Application], Any], tmp_path: Path
) -> None:
    page = b"<html><body>Service temporarily unavailable</body></html>"
    app = _pieces_app(page, [2, 4, 6], chunked=True, encoding=None)
    url = await serve_app(app)
    async with AssetDownloader.open(30) as downloader:
        with pytest.raises(DownloadError, match="not an image"):
            await downloader.fetch(f"{url}/v1/answer", tmp_path / "a.png")
    assert not list(tmp_path.iterdir())  # noqa: ASYNC240 - the test's own look


async def _idle_then_dropped(sim: Simulator, client: ScenarioClient) -> None:
    """Leave one kept-alive connection idle in the pool, then have the network drop it."""
    await client.list_models()
    assert sim.drop_idle_connections() >= 1


@pytest.mark.anyio
async def test_reads_on_a_dropped_idle_connection_go_again_at_once() -> None:
    config = SimConfig(api_key=SIM_KEY, api_secret=SIM_SECRET, job_seconds=0)
    async with serve(config) as sim:
        settings = ApiSettings(base_url=sim.api_url, credentials=Credentials(SIM_KEY, SIM_SECRET))
        async with ScenarioClient.open(settings) as client:
            job = await client.submit("model_sim-fast", {"prompt": "p", "width": 64, "height": 64})
            for read in (
                lambda: client.get_job(job.job.job_id),  # a GET
                lambda: client.lookup_assets(["asset_a", "asset_b"]),  # a read sent as POST
            ):
                await _idle_then_dropped(sim, client)
                dropped = sim.connections_dropped.total()
                await read()
                assert sim.connections_dropped.total() == dropped + 1


@pytest.mark.anyio
async def test_a_submission_on_a_dropped_idle_connection_may_have_made_a_job() -> None:
    config = SimConfig(api_key=SIM_KEY, api_secret=SIM_SECRET, job_seconds=0)
    async with serve(config) as sim:
        settings = ApiSettings(base_url=sim.api_url, credentials=Credentials(SIM_KEY, SIM_SECRET))
        async with ScenarioClient.open(settings) as client:
            await _idle_then_dropped(sim, client)
            with pytest.raises(AmbiguousSubmitError) as caught:
                await client.submit("model_sim-fast", {"prompt": "p", "width": 64, "height": 64})
    assert caught.value.connection_dropped
    assert sim.jobs_created == 0  # here it never reached the API; the engine finds that out


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        ({}, "https://api.cloud.scenario.com/v1", None),
        (
            {"HTTPS_PROXY": "http://proxy:3128"},
            "https://api.cloud.scenario.com",
            "http://proxy:3128",
        ),
        ({"https_proxy": "proxy:3128"}, "https://cdn.cloud.scenario.com/a", "http://proxy:3128"),
        ({"HTTP_PROXY": "http://proxy:3128"}, "https://api.cloud.scenario.com", None),
        ({"HTTP_PROXY": "http://p:1"}, "http://127.0.0.1:8080", "http://p:1"),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "scenario.com"},
            "https://api.scenario.com",
            None,
        ),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".scenario.com"},
            "https://cdn.scenario.com",
            None,
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.com,*"}, "https://x.scenario.com", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "enario.com"},
            "https://sc.scenario.com",
            "http://p:1",
        ),
        (
            {"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1:9"},
            "http://127.0.0.1:8080",
            "http://p:1",
        ),
        ({"HTTP_PROXY": "http://p:1", "NO_PROXY": "127.0.0.1:8080"}, "http://127.0.0.1:8080", None),
    ],
)
def test_the_proxy_for_a_url_comes_from_the_environment(
    environ: dict[str, str], url: str, expected: str | None
) -> None:
    proxy = Proxies(environ).for_url(URL(url))
    assert (str(proxy.url) if proxy else None) == expected


def test_a_proxy_password_is_kept_apart_from_its_url() -> None:
    proxy = Proxies({"HTTPS_PROXY": "http://me:pa55@proxy:3128"}).for_url(URL("https://a.b"))
    assert proxy is not None and str(proxy.url) == "http://proxy:3128"
    assert proxy.authorization == "Basic " + base64.b64encode(b"me:pa55").decode()
    assert "pa55" not in repr(proxy)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),
        ({"Retry-After": "Wed, 02 Dec 2026 10:00:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 02 Dec 2026 09:59:00 GMT"}, 0.0),
        ({"Retry-After": "soon"}, None),
    ],
)
def test_retry_after_in_seconds_milliseconds_or_a_date(
    headers: dict[str, str], seconds: float | None
) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 2, 10, 0, 0, tzinfo=UTC)
    assert retry_after_seconds(headers, now) == seconds


def test_the_tls_context_trusts_the_bundle_the_environment_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trustme = pytest.importorskip("trustme")
    from batchgen.scenario.transport import tls_context

    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    context = tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert any("trustme" in str(subject) for subject in subjects)


@pytest.fixture
def start_proxy() -> Iterator[Callable[[], ConnectProxy]]:
    with ExitStack() as stack:

        def start() -> ConnectProxy:
            portal = stack.enter_context(start_blocking_portal())
            return stack.enter_context(portal.wrap_async_context_manager(ConnectProxy().serve()))

        yield start


@pytest.mark.slow  # real TLS over loopback, end to end
@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "through-a-proxy"])
def test_the_example_runs_over_tls_through_a_proxy_named_only_by_the_environment(
    through_proxy: bool,
    tls: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    start_simulator: Callable[..., Simulator],
    start_proxy: Callable[[], ConnectProxy],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca, server_context = tls
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    sim = start_simulator(ssl_context=server_context)
    assert sim.api_url.startswith("https://") and sim.cdn_url.startswith("https://")
    proxy = start_proxy()
    if through_proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    example = Path(__file__).resolve().parent.parent / "jobs.example.yaml"
    out = tmp_path / "out"
    options = ["--out", str(out), "--api-url", sim.api_url, "--poll-interval", "0.05", "-q"]
    code = main(["run", str(example), *options])
    assert code == 0, capsys.readouterr().err
    units = len((out / "results.jsonl").read_text().splitlines())
    assert units == sim.jobs_created == 9
    assert sim.cdn_authorization_headers == 0
    if not through_proxy:
        assert proxy.heads == []
        return
    api_origin, cdn_origin = (URL(u) for u in (sim.api_url, sim.cdn_url))
    connects = {head.split(b" ")[1].decode() for head in proxy.heads}
    assert connects == {f"127.0.0.1:{api_origin.port}", f"127.0.0.1:{cdn_origin.port}"}
    assert all(head.startswith(b"CONNECT ") for head in proxy.heads)
    # The proxy saw where, never what: the credentials crossed it inside TLS only.
    token = base64.b64encode(f"{SIM_KEY}:{SIM_SECRET}".encode())
    for secret in (SIM_SECRET.encode(), token):
        assert secret not in b"".join(proxy.heads)
        assert secret not in proxy.tunnelled
