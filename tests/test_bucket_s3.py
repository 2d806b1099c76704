"""Outputs in a real S3 server: moto's server mode on loopback (it speaks the S3
protocol over HTTP, conditional writes included), behind a front door of the test's
that throttles PUTs as S3 does (503 SlowDown) and refuses unknown access keys (moto
itself takes any).  batchgen runs as the real command, killed with SIGKILL, resumed
on an empty state directory as on a new machine.  Marked slow."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from anyio.from_thread import start_blocking_portal

from batchgen.sim import Simulator
from tests.helpers import fast_run, start_batchgen

pytestmark = pytest.mark.slow

ACCESS_KEY = "AKIATESTBATCHGEN0001"
SECRET_KEY = "s3-secret-NEVER-LOGGED-9f3e"
BUCKET = "datasets"
MANIFEST = (
    "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
    "  - prompt: 'item {n}'\n    vars: {n: [" + ", ".join(map(str, range(30))) + "]}\n"
    "  - prompt: two outputs\n    count: 6\n    params: {numOutputs: 2}\n"
)
UNITS = 36


@dataclass
class Front:
    """Forwards to moto; fails ``put_failure_rate`` of object PUTs (and
    ``get_failure_rate`` of object GETs) with 503 SlowDown;
    refuses requests signed with another access key (403 InvalidAccessKeyId).  Asked
    as a proxy (a request for an absolute URL), it forwards there: to moto, checked as
    above, or anywhere else (the API) as it is."""

    upstream: str
    put_failure_rate: float = 0.0
    get_failure_rate: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    url: str = ""
    puts: int = 0
    failed_puts: int = 0
    failed_gets: int = 0
    heads: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        self.heads.append(f"{request.method} {request.path_qs} {dict(request.headers)}")
        target = self.upstream + request.path_qs
        if request.raw_path.startswith("http://"):  # asked as a proxy
            target = request.raw_path
            if not target.startswith(self.upstream):
                return await self._forward(request, target, await request.read())
        if f"Credential={ACCESS_KEY}/" not in authorization:
            return _s3_error(403, "InvalidAccessKeyId")
        body = await request.read()
        object_put = request.method == "PUT" and request.path.count("/") >= 2
        if object_put:
            self.puts += 1
            if self.rng.random() < self.put_failure_rate:
                self.failed_puts += 1
                return _s3_error(503, "SlowDown")
        object_get = request.method == "GET" and request.path.count("/") >= 2
        if object_get and self.rng.random() < self.get_failure_rate:
            self.failed_gets += 1
            return _s3_error(503, "SlowDown")
        return await self._forward(request, target, body)

    async def _forward(self, request: web.Request, target: str, body: bytes) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(request.method, target, data=body, headers=headers) as answer,
        ):
            content = await answer.read()
            dropped = ("transfer-encoding", "connection")
            if request.method != "HEAD":  # a HEAD answer announces the object's length
                dropped += ("content-length",)
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in dropped}
            if request.method == "HEAD":
                return web.Response(status=answer.status, headers=kept)
            return web.Response(status=answer.status, body=content, headers=kept)


def _s3_error(status: int, code: str) -> web.Response:
    body = f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>no</Message></Error>"
    return web.Response(status=status, body=body.encode(), content_type="application/xml")


@asynccontextmanager
async def serve_front(front: Front) -> AsyncIterator[Front]:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", front.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    front.url = f"http://127.0.0.1:{port}"
    try:
        yield front
    finally:
        await runner.cleanup()


@dataclass
class S3:
    endpoint: str
    front: Front
    client: Any

    def objects(self, prefix: str) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix + "/"
        ):
            for item in page.get("Contents", []):
                key = item["Key"]
                body = self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
                found[key[len(prefix) + 1 :]] = body
        return found

    def metadata(self, key: str) -> dict[str, str]:
        return dict(self.client.head_object(Bucket=BUCKET, Key=key)["Metadata"])


@pytest.fixture
def s3() -> Iterator[S3]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        upstream = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=upstream,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        with ExitStack() as stack:
            portal = stack.enter_context(start_blocking_portal())
            front = stack.enter_context(
                portal.wrap_async_context_manager(serve_front(Front(upstream)))
            )
            yield S3(front.url, front, client)
    finally:
        server.stop()


def run_command(
    manifest: Path,
    out: str,
    state: Path,
    sim: Simulator,
    s3: S3,
    *extra: str,
    secret: str = SECRET_KEY,
    access_key: str = ACCESS_KEY,
    aws: dict[str, str] | None = None,
    endpoint: str | None = None,
) -> subprocess.Popen[str]:
    """The command, with the bucket's keys in the environment (or, given ``aws``,
    those variables instead)."""
    keys = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret}
    bucket = [
        "--storage-option",
        f"endpoint_url={endpoint or s3.endpoint}",
        "--storage-option",
        "region_name=us-east-1",
        "--state-dir",
        str(state),
        "--lease-seconds",
        "2",
    ]
    return start_batchgen(
        fast_run(manifest, out, sim, *bucket, *extra), aws if aws is not None else keys
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def assert_every_image_once_as_served(s3: S3, prefix: str, sim: Simulator) -> None:
    found = s3.objects(prefix)
    results = [json.loads(line) for line in found["results.jsonl"].decode().splitlines()]
    assert len(results) == UNITS and {r["status"] for r in results} == {"success"}
    owned: set[str] = set()
    for record in results:
        job = sim.jobs[record["job_id"]]
        for relative, digest, asset_id in zip(
            record["files"], record["sha256"], job.asset_ids, strict=True
        ):
            assert found[relative] == sim.assets[asset_id].content()
            assert hashlib.sha256(found[relative]).hexdigest() == digest
            meta = s3.metadata(f"{prefix}/{relative}")
            assert meta["sha256"] == digest and meta["unit"] == record["id"]
            owned.add(relative)
    assert {k for k in found if k.startswith("images/")} == owned
    metadata = [json.loads(line) for line in found["metadata.jsonl"].decode().splitlines()]
    assert {m["file_name"] for m in metadata} == owned


def test_killed_mid_run_and_resumed_on_an_empty_state_dir_every_image_once_paid_once(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    s3: S3,
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    sim = start_simulator(job_seconds=0.3, jitter=0.5, lose_answer_rate=0.1, seed=3)
    out = f"s3://{BUCKET}/nightly/run"
    first = run_command(manifest, out, tmp_path / "machine-a", sim, s3)
    killed = {"count": 0}

    def kill_at_twelfth_job(job: object) -> None:
        killed["count"] += 1
        if killed["count"] == 12:
            os.kill(first.pid, signal.SIGKILL)

    sim.on_job_created = kill_at_twelfth_job
    code, _ = finish(first)
    sim.on_job_created = None
    assert code == -signal.SIGKILL
    assert "_batchgen/lease.json" in s3.objects("nightly/run")  # a killed run's lease stays
    # A new machine: no state directory.  Refused while the lease lasts, then takes over.
    for _ in range(30):
        code, stderr = finish(run_command(manifest, out, tmp_path / "machine-b", sim, s3))
        if code != 3:
            break
        assert "another run holds it (pid" in stderr.splitlines()[-1]
    assert code == 0, stderr
    assert "started from the bucket's checkpoint" in stderr
    assert sim.jobs_created == UNITS  # jobs created equal units
    assert_every_image_once_as_served(s3, "nightly/run", sim)
    assert SECRET_KEY not in stderr


def test_a_second_run_on_the_same_prefix_is_refused_while_the_first_runs(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    s3: S3,
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    sim = start_simulator(job_seconds=0.5, jitter=0.2)
    out = f"s3://{BUCKET}/shared"
    # A lease far longer than the test: the first holds it however slowly it runs.
    first = run_command(manifest, out, tmp_path / "a", sim, s3, "--lease-seconds", "300")
    assert first.stderr is not None
    for line in first.stderr:
        if "submitted unit" in line:
            break
    second = run_command(manifest, out, tmp_path / "b", sim, s3, "--lease-seconds", "300")
    code, stderr = finish(second)
    assert code == 3
    last = stderr.strip().splitlines()[-1]
    assert re.search(r"another run holds it \(pid \d+ on .+\); its lease expires at", last)
    code, _ = finish(first)
    assert code == 0 and sim.jobs_created == UNITS


def test_a_store_failing_a_fifth_of_its_puts_with_503_loses_nothing_and_pays_once(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    s3: S3,
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    sim = start_simulator(job_seconds=0.2, jitter=0.5)
    s3.front.put_failure_rate = 0.2
    code, stderr = finish(run_command(manifest, f"s3://{BUCKET}/flaky", tmp_path / "s", sim, s3))
    assert code == 0, stderr
    assert s3.front.failed_puts > 0
    s3.front.put_failure_rate = 0.0
    assert sim.jobs_created == UNITS
    assert_every_image_once_as_served(s3, "flaky", sim)


def test_wrong_bucket_credentials_stop_the_run_in_one_line_before_anything_is_sent(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    s3: S3,
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    sim = start_simulator(job_seconds=0.2)
    process = run_command(
        manifest,
        f"s3://{BUCKET}/denied",
        tmp_path / "s",
        sim,
        s3,
        access_key="AKIAWRONGWRONGWRONG0",
        secret="wrong-secret-NEVER-LOGGED",
    )
    code, stderr = finish(process)
    assert code == 5
    last = stderr.strip().splitlines()[-1]
    assert "refused the credentials (InvalidAccessKeyId)" in last
    assert "wrong-secret-NEVER-LOGGED" not in stderr
    assert sim.jobs_created == 0


def test_an_aws_profile_gives_the_bucket_credentials(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    s3: S3,
) -> None:
    """AWS_PROFILE and a shared credentials file, no keys in the environment (as on a
    workstation or a SLURM login node)."""
    manifest = write("jobs.yaml", MANIFEST)
    sim = start_simulator(job_seconds=0.2)
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(
        f"[batchgen-test]\naws_access_key_id = {ACCESS_KEY}\n"
        f"aws_secret_access_key = {SECRET_KEY}\n",
        encoding="utf-8",
    )
    profile = {
        "AWS_PROFILE": "batchgen-test",
        "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
    }
    out = f"s3://{BUCKET}/profiled"
    code, stderr = finish(run_command(manifest, out, tmp_path / "s", sim, s3, aws=profile))
    assert code == 0, stderr
    assert_every_image_once_as_served(s3, "profiled", sim)
    missing = profile | {"AWS_PROFILE": "no-such-profile"}
    code, stderr = finish(run_command(manifest, out, tmp_path / "t", sim, s3, aws=missing))
    assert code == 2
    assert "AWS profile 'no-such-profile'" in stderr.strip().splitlines()[-1]


def test_the_buckets_requests_go_through_the_proxy_the_environment_names(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    s3: S3,
) -> None:
    """A cluster whose egress is a proxy: HTTP_PROXY names it, and the store's requests
    go through it (the front here, taking proxy-form requests to moto)."""
    manifest = write("jobs.yaml", MANIFEST)
    sim = start_simulator(job_seconds=0.2)
    keys = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    proxied = keys | {"HTTP_PROXY": s3.front.url}
    process = run_command(
        manifest,
        f"s3://{BUCKET}/proxied",
        tmp_path / "s",
        sim,
        s3,
        aws=proxied,
        endpoint=s3.front.upstream,  # moto itself: only the proxy makes it the front
    )
    code, stderr = finish(process)
    assert code == 0, stderr
    assert any(f"/{BUCKET}/proxied/images/" in head for head in s3.front.heads)
    assert_every_image_once_as_served(s3, "proxied", sim)


def test_a_run_on_s3_embeds_each_images_story_and_writes_its_gallery_into_the_bucket(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    s3: S3,
) -> None:
    """--embed-metadata and --gallery on a real S3 server: each object rewritten with
    its story and its sha256 metadata; the page and a thumbnail of each image under the
    prefix's gallery/, linking the images by their paths; made again by the command,
    nothing is made twice."""
    manifest = write("jobs.yaml", MANIFEST)
    sim = start_simulator(job_seconds=0.2)
    out = f"s3://{BUCKET}/shared/run"
    first = run_command(manifest, out, tmp_path / "state", sim, s3, "--embed-metadata", "--gallery")
    code, stderr = finish(first)
    assert code == 0, stderr
    found = s3.objects("shared/run")
    results = [json.loads(line) for line in found["results.jsonl"].decode().splitlines()]
    assert len(results) == UNITS
    page = found["gallery/index.html"].decode()
    images = 0
    for record in results:
        digests = [hashlib.sha256(found[relative]).hexdigest() for relative in record["files"]]
        assert digests == record["sha256"] and not set(digests) & set(record["served_sha256"])
        for relative, digest in zip(record["files"], digests, strict=True):
            assert b"parameters\x00" in found[relative]
            assert s3.metadata(f"shared/run/{relative}")["sha256"] == digest
            assert f'"../{relative}"' in page
            images += 1
    thumbs = [k for k in found if k.startswith("gallery/thumbs/")]
    assert len(thumbs) == images and all(found[k][:4] == b"RIFF" for k in thumbs)
    store = ["--storage-option", f"endpoint_url={s3.endpoint}"]
    store += ["--storage-option", "region_name=us-east-1"]
    keys = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    again = start_batchgen(["gallery", out, "--json", *store], keys)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    made = json.loads(stdout)
    assert made["page"] == f"{out}/gallery/index.html" and made["thumbnails_made"] == 0

    # Made anew while the store answers a fifth of its reads and writes with 503.
    for key in thumbs:
        s3.client.delete_object(Bucket=BUCKET, Key=f"shared/run/{key}")
    s3.front.put_failure_rate = s3.front.get_failure_rate = 0.2
    anew = start_batchgen(["gallery", out, "--json", *store], keys)
    stdout, stderr = anew.communicate(timeout=120)
    s3.front.put_failure_rate = s3.front.get_failure_rate = 0.0
    assert anew.returncode == 0, stderr
    assert json.loads(stdout)["thumbnails_made"] == images
    assert s3.front.failed_puts > 0 and s3.front.failed_gets > 0

    # An image deleted: verify --fix fetches it again from its job, its story in.
    lost = results[0]["files"][0]
    s3.client.delete_object(Bucket=BUCKET, Key=f"shared/run/{lost}")
    jobs = sim.jobs_created
    fix = start_batchgen(["verify", out, "--fix", "--api-url", sim.api_url, *store], keys)
    _, stderr = fix.communicate(timeout=120)
    assert fix.returncode == 0, stderr
    assert s3.objects("shared/run")[lost] == found[lost] and sim.jobs_created == jobs


def test_a_copy_within_s3_keeps_the_images_metadata(s3: S3) -> None:
    """How a rejected image is set aside in a bucket: S3's CopyObject, metadata and all."""
    import anyio

    from batchgen.store.bucket import Bucket, BucketUrl

    url = BucketUrl.parse(f"s3://{BUCKET}/copied")
    assert url is not None
    options = {
        "endpoint_url": s3.endpoint,
        "region_name": "us-east-1",
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
    }
    bucket = Bucket.open(url, options, blocking=True)
    anyio.run(bucket.put, "images/a.png", b"bytes of a", {"sha256": "s", "unit": "u"})
    assert anyio.run(bucket.copy, "images/a.png", "images/_rejected/a.attempt-1.png")
    assert s3.objects("copied")["images/_rejected/a.attempt-1.png"] == b"bytes of a"
    assert s3.metadata("copied/images/_rejected/a.attempt-1.png") == {"sha256": "s", "unit": "u"}
    assert not anyio.run(bucket.copy, "images/gone.png", "images/_rejected/gone.png")
