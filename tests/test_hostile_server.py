"""A hostile server, and secrets typed where they should not be: nothing secret echoed,
nothing a terminal would act on.

Some gateways reflect the request's headers in their error text: the API secret would
then be in every error batchgen shows and keeps.  The simulator plants it (with
terminal escapes and a line that forges a log entry) in the 400 it answers; it must be
found in none of batchgen's outputs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen import redact
from batchgen.cli import main
from batchgen.errors import ConfigError
from batchgen.sim import Simulator
from batchgen.store.bucket import BucketUrl, parse_storage_options, store_config
from tests.helpers import SIM_KEY, SIM_SECRET

Write = Callable[[str, str], Path]

MANIFEST = (
    "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
    "  - {prompt: fine, count: 2}\n  - {prompt: a forbidden one}\n"
)
TOKEN = base64.b64encode(f"{SIM_KEY}:{SIM_SECRET}".encode()).decode()


def outputs_of(out: Path, log: Path, captured: pytest.CaptureFixture[str]) -> dict[str, str]:
    said = captured.readouterr()
    found = {"stdout": said.out, "stderr": said.err, "log": log.read_text("utf-8")}
    for name in ("results.jsonl", "metadata.jsonl", "journal.sqlite3", "journal.sqlite3-wal"):
        if (out / name).is_file():
            found[name] = (out / name).read_bytes().decode("utf-8", "replace")
    return found


@pytest.mark.parametrize("form", ["text", "json"])
def test_a_secret_the_server_reflects_is_in_none_of_batchgens_outputs(
    write: Write,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
    form: str,
) -> None:
    sim = start_simulator(job_seconds=0.05, reflect_headers=True)
    manifest = write("jobs.yaml", MANIFEST)
    out, log = tmp_path / "out", tmp_path / "run.log"
    extra = ["--json"] if form == "json" else []
    code = main(
        ["run", str(manifest), "--out", str(out), "--api-url", sim.api_url,
         "--poll-interval", "0.02", "--log-file", str(log), "--log-format", form, *extra]
    )  # fmt: skip
    assert code == 1  # the refused prompt failed
    found = outputs_of(out, log, capsys)
    assert "results.jsonl" in found and "journal.sqlite3" in found
    for where, text in found.items():
        assert SIM_SECRET not in text, where
        assert TOKEN not in text, where
        if not where.startswith("journal"):  # SQLite's own bytes hold any byte
            assert "\x1b" not in text and "\r" not in text, where
    # The server's words are shown, escaped: the forged entry is not a line of its own.
    assert "rejected by content moderation" in found["log"]
    assert not any(line.startswith("2027-01-15T08:00:00Z") for line in found["log"].splitlines())
    failed = [json.loads(line) for line in found["results.jsonl"].splitlines()]
    (refused,) = [r for r in failed if r["status"] == "failure"]
    assert "***" in refused["error"] and "\\x1b" in refused["error"]


def test_redact_takes_out_each_form_of_a_secret() -> None:
    redact.register_credentials("key-1234", "hunter2-secret/+=")
    text = (
        "Authorization: Basic a2V5LTEyMzQ6aHVudGVyMi1zZWNyZXQvKz0= then hunter2-secret/+= "
        "and hunter2-secret%2F%2B%3D"
    )
    assert redact.redact(text) == "Authorization: Basic *** then *** and ***"
    assert redact.printable("a\x1b[31mb\rc\nd\x07") == "a\\x1b[31mb\\rc\\nd\\x07"


def test_a_storage_option_typed_wrong_never_shows_its_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_storage_options(["secret_access_key:AKIAVERYSECRETVALUE"])
    assert "AKIAVERYSECRETVALUE" not in str(caught.value)
    assert str(caught.value) == "--storage-option: secret_access_key…: expected KEY=VALUE"
    parse_storage_options(["secret_access_key=AnotherSecretValue9"])
    assert redact.redact("the store said: AnotherSecretValue9") == "the store said: ***"


def test_a_bucket_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as caught:
        BucketUrl.parse("s3://AKIDEXAMPLE:wJalrXUtnFEMIK7MDENG@bucket/prefix")
    said = str(caught.value)
    assert "wJalrXUtnFEMIK7MDENG" not in said and "--storage-option" in said
    assert redact.redact("wJalrXUtnFEMIK7MDENG") == "***"


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("virtual_hosted_style_request=maybe", "true or false"),
        ("endpoint=not a url", "not an http"),
        ("endpoint_url=ftp://host", "not an http"),
    ],
)
def test_storage_options_are_checked_in_one_line(option: str, message: str) -> None:
    url = BucketUrl.parse("s3://bucket/prefix")
    assert url is not None
    with pytest.raises(ConfigError, match=message) as caught:
        store_config(url, parse_storage_options([option]))
    assert "\n" not in str(caught.value)


def test_an_endpoints_password_is_kept_out_of_what_is_shown() -> None:
    parse_storage_options(["endpoint_url=http://minio:Pa55word-Minio@127.0.0.1:9"])
    assert "Pa55word-Minio" not in redact.redact("error for http://minio:Pa55word-Minio@x")


# ---------------------------------------------------------------------- bounds


@pytest.mark.parametrize("broken", ["huge", "bad-status"])
def test_a_job_whose_answers_keep_breaking_is_let_go_not_watched_for_ever(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """Answers larger than any answer may be (an endless body, a bomb), or with a
    status that is not a string: after a few looks the unit is left to the next run
    (its job may run on and be paid: never bought again), and the run ends."""
    from batchgen.scenario import client as client_module
    from tests.helpers import World

    monkeypatch.setattr(client_module, "MAX_API_BODY_BYTES", 32 * 1024)
    manifest = write(
        "jobs.yaml", "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p}\n"
    )
    world = World(tmp_path, broken_job_answers=broken, list_refused=True, job_seconds=1)
    report = world.run(manifest, poll_interval=1, job_timeout=100_000)
    assert report.abandoned == 1 and report.exit_code == 1
    (record,) = world.results()
    assert record["status"] == "abandoned" and "kept breaking" in record["error"]
    looks = world.sim.requests["GET /v1/jobs/{job_id}"]
    assert 3 <= looks <= 3 * 6  # three looks, each with its retries, no more
    # The next run watches the same job again; once the server mends, it is fetched.
    world.configure(broken_job_answers="")
    again = world.run(manifest)
    assert again.exit_code == 0 and world.sim.jobs_created == 1


def test_a_job_list_that_never_ends_is_given_up_and_nothing_is_sent_twice(
    write: Write, tmp_path: Path
) -> None:
    from batchgen.scenario.client import MAX_LIST_PAGES
    from tests.helpers import World

    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 3}\n",
    )
    world = World(tmp_path, endless_lists=True, lose_answer_rate=1.0, seed=3)
    report = world.run(manifest)
    assert report.not_finished == 3 and world.sim.jobs_created == 3
    # One scan of the lost answers' jobs, given up at its bound: not one per loss, not
    # one every few seconds until the grace ends.
    assert world.sim.created_scans == 1
    assert world.sim.requests["GET /v1/jobs"] <= 2 * MAX_LIST_PAGES
    assert batchgen_status_states(world) == {"submitting": 3}


def batchgen_status_states(world: object) -> dict[str, int]:
    import batchgen

    return batchgen.status(world.out).states  # type: ignore[attr-defined]


def test_a_job_listing_thousands_of_assets_keeps_what_the_unit_asked_for(
    write: Write, tmp_path: Path
) -> None:
    from tests.helpers import World

    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - {prompt: one}\n  - {prompt: two, params: {numOutputs: 2}}\n",
    )
    world = World(tmp_path, extra_assets=10_000)
    assert world.run(manifest).exit_code == 0
    by_prompt = {r["prompt"]: r for r in world.results()}
    assert len(by_prompt["one"]["files"]) == 1 and by_prompt["one"]["images_not_kept"] == 10_000
    assert len(by_prompt["two"]["files"]) == 2 and by_prompt["two"]["images_not_kept"] == 10_000
    assert world.sim.requests["GET cdn"] == 3


# ---------------------------------------------------------------------- the CDN


@pytest.fixture
def origins() -> object:
    """Loopback origins a test defines the handlers of: each started on its own port."""
    import contextlib

    from aiohttp import web

    @contextlib.asynccontextmanager
    async def start(*handlers: object) -> object:
        runners = []
        urls = []
        try:
            for handler in handlers:
                app = web.Application()
                app.router.add_get("/{tail:.*}", handler)  # type: ignore[arg-type]
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                runners.append(runner)
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                host, port = runner.addresses[0][:2]
                urls.append(f"http://{host}:{port}")
            yield urls
        finally:
            for runner in runners:
                await runner.cleanup()

    return start


@pytest.mark.anyio
async def test_a_trickling_cdn_is_given_up_below_the_minimum_rate(
    origins: object, tmp_path: Path
) -> None:
    import anyio
    from aiohttp import web

    from batchgen.errors import DownloadError
    from batchgen.scenario.download import AssetDownloader, RateFloor
    from batchgen.sim.png import make_png

    image = make_png(64, 64, "slow")

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(image)
        await response.prepare(request)
        for byte in image:
            await response.write(bytes([byte]))
            await anyio.sleep(0.05)
        return response

    async with origins(trickle) as (url,):  # type: ignore[operator]
        async with AssetDownloader.open(60, RateFloor(min_rate=1024, after=0.3)) as fetcher:
            (tmp_path / "images").mkdir()
            with pytest.raises(DownloadError, match="too slow") as caught:
                await fetcher.fetch(f"{url}/a.png", tmp_path / "images" / "a.png")
    assert caught.value.transient  # tried again, with a fresh URL
    assert not list((tmp_path / "images").iterdir())  # noqa: ASYNC240


@pytest.mark.anyio
async def test_a_cdn_redirect_to_another_local_origin_is_refused(
    origins: object, tmp_path: Path
) -> None:
    from aiohttp import web

    from batchgen.errors import DownloadError
    from batchgen.scenario.download import AssetDownloader
    from batchgen.sim.png import make_png

    image = make_png(16, 16, "here")
    reached: list[str] = []

    async def inside(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(body=image, content_type="image/png")

    async with origins(inside) as (internal,):  # type: ignore[operator]

        async def cdn(request: web.Request) -> web.Response:
            if request.path == "/same.png":  # on the CDN's own origin: followed
                raise web.HTTPFound("/final.png")
            if request.path == "/final.png":
                return web.Response(body=image, content_type="image/png")
            raise web.HTTPFound(f"{internal}/admin.png")

        async with origins(cdn) as (url,):  # type: ignore[operator]
            (tmp_path / "images").mkdir()
            async with AssetDownloader.open(10) as fetcher:
                got = await fetcher.fetch(f"{url}/same.png", tmp_path / "images" / "a.png")
                with pytest.raises(DownloadError, match="local address, refused") as caught:
                    await fetcher.fetch(f"{url}/elsewhere.png", tmp_path / "images" / "b.png")
    assert got.size == len(image) and not caught.value.transient
    assert reached == []  # the other origin never heard of it


def test_a_png_cut_short_inside_its_image_data_is_not_whole() -> None:
    import struct
    import zlib

    from batchgen.errors import DownloadError
    from batchgen.scenario.download import ImageCheck
    from batchgen.sim.png import make_png

    whole = make_png(32, 32, "cut me")
    check = ImageCheck("cdn", len(whole))
    for at in range(0, len(whole), 7):  # in small pieces, as a network gives them
        check.feed(whole[at : at + 7])
    assert check.finish(len(whole))
    # Cut inside IDAT, then a valid end chunk appended: the length walk sees it.
    idat = whole.index(b"IDAT") - 4
    cut = whole[: idat + 8 + 10]
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    forged = cut + end
    check = ImageCheck("cdn", len(forged))
    check.feed(forged)
    with pytest.raises(DownloadError, match="not a whole PNG"):
        check.finish(len(forged))


# ---------------------------------------------------------------------- ids


def test_ids_never_reach_a_path_unless_they_are_the_apis(write: Write, tmp_path: Path) -> None:
    import anyio

    from batchgen.errors import MalformedResponseError, ManifestError
    from batchgen.manifest import load_manifest
    from batchgen.sim import SimConfig
    from batchgen.sim.fake import client_for

    sim = Simulator(SimConfig(api_key=SIM_KEY, api_secret=SIM_SECRET))
    client = client_for(sim)
    for call in (
        lambda: client.get_job("../_evil/job_1"),
        lambda: client.get_model("_admin?delete=1"),
        lambda: client.cancel_job("job_1/../../x"),
    ):
        with pytest.raises(MalformedResponseError, match="is not a"):
            anyio.run(call)
    assert not sim.requests  # nothing was sent
    manifest = write(
        "jobs.yaml", "model: ../_evil\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p}\n"
    )
    with pytest.raises(ManifestError, match=r"jobs.yaml:1: model: '../_evil' is not a model id"):
        load_manifest(manifest)
