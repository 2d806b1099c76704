"""Outputs in a bucket, on virtual time: the simulator in memory, and obstore's own
in-memory store behind ``memory://`` (the same conditional writes S3 answers; the
slow tests in test_bucket_s3.py run the same against a real S3 server)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import obstore
import pytest

import batchgen
from batchgen.cli import main
from batchgen.errors import (
    ConfigError,
    JournalMissingError,
    ObjectStoreError,
    OutputLockedError,
)
from batchgen.output import bucket as outputs
from batchgen.output.bucket_files import CHECKPOINT_NAME
from batchgen.output.lease import LEASE_NAME, Lease, has_expired
from batchgen.store import bucket as bucket_module
from batchgen.store.bucket import (
    Bucket,
    BucketUrl,
    object_store_error,
    parse_storage_options,
    store_config,
)
from tests.helpers import World, quality_manifest

Write = Callable[[str, str], Path]
MANIFEST = (
    "model: model_sim-fast\nwidth: 32\nheight: 32\njobs:\n"
    "  - prompt: 'unit {n}'\n    vars: {n: [" + ", ".join(map(str, range(24))) + "]}\n"
)


@pytest.fixture
def url() -> Iterator[str]:
    """A bucket of its own for the test (memory stores live as long as the process)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield f"memory://{name}/datasets/run"
    bucket_module._memory_stores.pop(name, None)


def objects(url: str) -> dict[str, bytes]:
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    store = bucket_module._memory_stores[parsed.bucket]
    found: dict[str, bytes] = {}
    for page in obstore.list(store, parsed.prefix):
        for meta in page:
            key = meta["path"][len(parsed.prefix) + 1 :]
            found[key] = bytes(obstore.get(store, meta["path"]).bytes())
    return found


def attributes(url: str, relative: str) -> dict[str, Any]:
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    store = bucket_module._memory_stores[parsed.bucket]
    return dict(obstore.get(store, parsed.key(relative), options={"head": True}).attributes)


def results_in(url: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in objects(url)["results.jsonl"].decode().splitlines()]


def assert_bucket_holds_what_was_served(world: World, url: str) -> list[dict[str, Any]]:
    """Every unit succeeded, each image in the bucket once, byte for byte the CDN's,
    with its sha256 and unit as metadata; no image that no unit owns."""
    found = objects(url)
    results = results_in(url)
    assert {r["status"] for r in results} == {"success"}
    owned = set()
    for record in results:
        job = world.sim.jobs[record["job_id"]]
        for relative, digest, asset_id in zip(
            record["files"], record["sha256"], job.asset_ids, strict=True
        ):
            assert found[relative] == world.sim.assets[asset_id].content()
            assert hashlib.sha256(found[relative]).hexdigest() == digest
            meta = attributes(url, relative)
            assert meta["sha256"] == digest and meta["unit"] == record["id"]
            owned.add(relative)
    assert {k for k in found if k.startswith("images/")} == owned
    return results


def killed_run(
    world: World, monkeypatch: pytest.MonkeyPatch, manifest: Path, url: str, **options: Any
) -> Any:
    """A run stopped as SIGKILL stops one: nothing written at its end (no last
    checkpoint, no views), its lease not given back (and expired by the time the next
    run looks: the memory store's clock is real), no checkpoint after its first."""

    async def nothing(*args: Any) -> None:
        pass

    with monkeypatch.context() as patch:
        patch.setattr("batchgen.output.bucket.finish", nothing)
        patch.setattr(Lease, "release", nothing)
        return world.run(
            manifest,
            out=url,
            lease_seconds=0.001,
            checkpoint_interval=10_000,
            **options,
        )


def ours(world: World) -> int:
    return sum(1 for job in world.sim.jobs.values() if not job.by_other_client)


def test_a_run_writes_each_image_to_the_bucket_once_and_keeps_none_locally(
    write: Write, tmp_path: Path, url: str
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    state = tmp_path / "state"
    report = world.run(manifest, out=url, state_dir=state, concurrency=8)
    assert report.exit_code == 0 and report.succeeded == 24
    assert report.output == url
    results = assert_bucket_holds_what_was_served(world, url)
    assert len(results) == 24 and ours(world) == 24
    found = objects(url)
    assert "_batchgen/journal.sqlite3" in found and LEASE_NAME not in found  # given back
    metadata = [json.loads(line) for line in found["metadata.jsonl"].decode().splitlines()]
    assert sorted(m["file_name"] for m in metadata) == sorted(r["files"][0] for r in results)
    assert not [p for p in (state / "images").rglob("*") if p.is_file()]  # nothing kept
    # A rerun has nothing to do, and buys nothing.
    again = world.run(manifest, out=url, state_dir=state)
    assert again.exit_code == 0 and again.already_done == 24 and ours(world) == 24


def files_put_in_parts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names written in parts from a file (``Bucket.put_file``), as they are."""
    put_files: list[str] = []
    original = Bucket.put_file

    async def counted(self: Bucket, relative: str, path: Path, attributes: Any = None) -> Any:
        put_files.append(relative)
        return await original(self, relative, path, attributes)

    monkeypatch.setattr(Bucket, "put_file", counted)
    return put_files


def test_images_larger_than_one_put_stream_from_the_spool_in_parts(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download to a bucket streams to the spool on disk, as a local one does, and an
    image past one PUT's size goes to the store in parts from the file: memory does not
    grow with an image.  Each is still written once, its name checked free first."""
    from batchgen.output import bucket_files as engine_bucket
    from batchgen.sim.fake import FakeFetcher

    monkeypatch.setattr(engine_bucket, "WHOLE_PUT_BYTES", 64)  # every image is "large"
    spooled: list[Path] = []
    fetch = FakeFetcher.fetch

    async def to_a_file(self: FakeFetcher, url: str, destination: Path, *a: Any, **k: Any) -> Any:
        spooled.append(destination)
        return await fetch(self, url, destination, *a, **k)

    monkeypatch.setattr(FakeFetcher, "fetch", to_a_file)
    put_files = files_put_in_parts(monkeypatch)
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path)
    state = tmp_path / "state"
    assert world.run(manifest, out=url, state_dir=state, concurrency=8).exit_code == 0
    results = assert_bucket_holds_what_was_served(world, url)
    assert sorted(r["files"][0] for r in results) == sorted(
        p for p in put_files if p.startswith("images/")
    )
    assert len(spooled) == 24 and {p.parent.name for p in spooled} == {".spool"}
    assert not list((state / ".spool").iterdir())  # each removed once in the store


def test_large_spilled_images_go_to_the_store_in_parts_from_the_file(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What waited in the spill directory is written as a download is: an image past
    one PUT's size in parts from its file (never read whole), its name checked free."""
    from batchgen.output import bucket_files as engine_bucket

    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        patch.setattr(Bucket, "_put", FlakyWrites(1.0, seed=1, only_images=True).method())
        assert world.run(manifest, out=url, state_dir=state).exit_code == 0
    spilled = sorted(p.relative_to(state).as_posix() for p in (state / "images").rglob("*.png"))
    assert len(spilled) == 24
    monkeypatch.setattr(engine_bucket, "WHOLE_PUT_BYTES", 64)  # every image is "large"
    put_files = files_put_in_parts(monkeypatch)
    assert world.run(manifest, out=url, state_dir=state).exit_code == 0
    assert sorted(p for p in put_files if p.startswith("images/")) == spilled
    assert not list((state / "images").rglob("*.png"))
    assert_bucket_holds_what_was_served(world, url)


def test_the_manifests_output_may_be_a_bucket(write: Write, tmp_path: Path, url: str) -> None:
    manifest = write("jobs.yaml", f"output: {url}\n" + MANIFEST)
    world = World(tmp_path, job_seconds=5)
    report = world.run(manifest, out=None, state_dir=tmp_path / "state")
    assert report.exit_code == 0 and report.output == url
    assert len(results_in(url)) == 24


def test_killed_after_posting_and_resumed_with_no_local_state_pays_for_nothing_twice(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pod killed mid-run (no last checkpoint, no lease given back, answers lost)
    and rescheduled on a new machine: it starts from the bucket's checkpoint, written
    before its first POST, and proves the rest."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=8, jitter=0.5, seed=5, lose_answer_rate=0.15)
    state = tmp_path / "state"

    report = killed_run(
        world,
        monkeypatch,
        manifest,
        url,
        state_dir=state,
        concurrency=8,
        max_runtime=15,
    )
    assert 0 < report.succeeded < 24
    assert LEASE_NAME in objects(url)  # a killed run's lease stays
    made = ours(world)
    shutil.rmtree(state)  # the new machine's disk
    world.clock.jump(60)
    world.configure(lose_answer_rate=0.0)
    final = world.run(manifest, out=url, state_dir=state, concurrency=8)
    assert final.exit_code == 0, final
    assert ours(world) == 24 >= made  # jobs created equal units
    assert_bucket_holds_what_was_served(world, url)


def test_a_bucket_whose_checkpoint_is_lost_is_rebuilt_from_what_it_holds(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed run's bucket loses its ``_batchgen/`` (a lifecycle rule, a hand) and an
    image, and the machine its disk: a run refuses to start over it (it would pay for
    every unit again) and names --rebuild-journal, which rebuilds the journal from the
    bucket's results.jsonl and listing: the lines' units done, the missing image
    fetched again from its job, the others' jobs found in the account: not one bought
    twice.  With a checkpoint there, --rebuild-journal is refused."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=8, jitter=0.5, seed=5)
    state = tmp_path / "state"
    report = killed_run(
        world, monkeypatch, manifest, url, state_dir=state, concurrency=8, max_runtime=15
    )
    assert 0 < report.succeeded < 24
    world.clock.jump(60)
    assert world.run(manifest, out=url, state_dir=state, max_runtime=10).exit_code == 4
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    store = bucket_module._memory_stores[parsed.bucket]
    found = objects(url)
    assert "results.jsonl" in found
    for key in [k for k in found if k.startswith("_batchgen/")]:
        obstore.delete(store, parsed.key(key))
    lost = next(k for k in found if k.startswith("images/"))
    obstore.delete(store, parsed.key(lost))
    shutil.rmtree(state)
    made = ours(world)

    with pytest.raises(JournalMissingError, match="--rebuild-journal"):
        world.run(manifest, out=url, state_dir=state)
    final = world.run(manifest, out=url, state_dir=tmp_path / "new", rebuild_journal=True)
    assert final.exit_code == 0, final
    assert ours(world) == 24 >= made  # jobs created equal units
    assert_bucket_holds_what_was_served(world, url)
    with pytest.raises(ConfigError, match="has a checkpoint"):
        world.run(manifest, out=url, state_dir=tmp_path / "third", rebuild_journal=True)


def test_a_restore_looks_only_for_the_jobs_of_units_a_run_may_have_taken(
    write: Write,
    tmp_path: Path,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Runs record in the bucket how far into the manifest they may go before they go
    there: a restore reconciles the units before that mark, not every unit."""
    monkeypatch.setattr("batchgen.engine.planner.PLAN_CHUNK", 4)
    monkeypatch.setattr("batchgen.output.bucket.RESERVE_AHEAD", 2)
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=8, jitter=0.2, seed=2, lose_answer_rate=0.3)

    killed_run(
        world,
        monkeypatch,
        manifest,
        url,
        state_dir=tmp_path / "a",
        concurrency=3,
        downloads=1,
        max_runtime=12,
    )
    taken = json.loads(objects(url)["_batchgen/taken.json"])
    assert 0 < ours(world) and taken["upto"] < 24
    caplog.set_level("WARNING", logger="batchgen")
    assert world.run(manifest, out=url, state_dir=tmp_path / "b").exit_code == 0
    looked_for = re.search(r"(\d+) units it does not know", caplog.text)
    assert looked_for is not None and int(looked_for[1]) <= taken["upto"]
    assert ours(world) == 24
    assert_bucket_holds_what_was_served(world, url)


def test_a_machine_whose_state_is_older_than_the_buckets_starts_from_the_bucket(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Machine A is killed; B takes the output over and finishes it; A comes back with
    its old journal, which does not know what B did: it must not be trusted."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=8, jitter=0.5, seed=9)

    first = killed_run(
        world,
        monkeypatch,
        manifest,
        url,
        state_dir=tmp_path / "a",
        concurrency=6,
        max_runtime=10,
    )
    assert 0 < first.succeeded < 24
    assert world.run(manifest, out=url, state_dir=tmp_path / "b").exit_code == 0
    assert ours(world) == 24
    back = world.run(manifest, out=url, state_dir=tmp_path / "a")
    assert back.exit_code == 0 and back.already_done == 24
    assert ours(world) == 24  # nothing bought again
    assert list((tmp_path / "a").glob("journal.sqlite3.stale-*"))  # kept, not deleted
    assert_bucket_holds_what_was_served(world, url)


def test_an_object_deleted_from_the_bucket_is_fetched_again_from_its_job(
    write: Write, tmp_path: Path, url: str
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    world.run(manifest, out=url, state_dir=tmp_path / "a")
    gone = results_in(url)[3]["files"][0]
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    obstore.delete(bucket_module._memory_stores[parsed.bucket], parsed.key(gone))
    # Another machine (no local state) proves what it finds: the object is missing.
    report = world.run(manifest, out=url, state_dir=tmp_path / "b")
    assert report.exit_code == 0 and report.already_done == 23
    assert gone in objects(url) and ours(world) == 24
    assert_bucket_holds_what_was_served(world, url)


def test_a_second_run_on_the_same_prefix_is_refused_naming_the_holder(
    write: Write, tmp_path: Path, url: str
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    other = Lease(Bucket.open(parsed, blocking=True), seconds=600)
    world.call(other.acquire)
    with pytest.raises(OutputLockedError) as refused:
        world.run(manifest, out=url, state_dir=tmp_path / "state")
    message = str(refused.value)
    assert str(other.holder) in message and "expires at" in message
    assert refused.value.exit_code == 3
    assert ours(world) == 0  # refused before anything was sent
    world.call(other.release)
    assert world.run(manifest, out=url, state_dir=tmp_path / "state").exit_code == 0


def test_a_lease_whose_holder_stopped_renewing_is_taken_over_once_expired(
    write: Write, tmp_path: Path, url: str
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    dead = Lease(Bucket.open(parsed, blocking=True), seconds=0.001)
    world.call(dead.acquire)
    report = world.run(manifest, out=url, state_dir=tmp_path / "state")
    assert report.exit_code == 0
    # The dead holder, back, finds its lease gone at its next renewal.
    with pytest.raises(OutputLockedError, match="taken over"):
        world.call(dead.renew)


def test_a_run_whose_lease_is_taken_over_stops_and_writes_nothing_more(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when a run stalled past its lease (a frozen VM) and another took the prefix
    over: at its next renewal it finds out, stops, and leaves the new holder's
    checkpoint and views alone."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=8, jitter=0.5)
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    taken: dict[str, Any] = {}
    original = Bucket.replace

    async def taken_over(bucket: Bucket, relative: str, data: bytes, e_tag: str) -> str | None:
        if relative == LEASE_NAME and not taken:
            # Another machine's take-over lands just before this renewal.
            thief = Lease(Bucket.open(parsed, blocking=True))
            taken["holder"] = thief.holder
            await original(bucket, relative, thief.holder.to_bytes(120), e_tag)
            found = await bucket.head(CHECKPOINT_NAME)
            taken["checkpoint"] = found.e_tag if found else None
        return await original(bucket, relative, data, e_tag)

    monkeypatch.setattr(Bucket, "replace", taken_over)
    with pytest.raises(OutputLockedError, match="taken over by another run"):
        world.run(manifest, out=url, state_dir=tmp_path / "a", lease_seconds=4)
    store = bucket_module._memory_stores[parsed.bucket]
    lease = json.loads(bytes(obstore.get(store, parsed.key(LEASE_NAME)).bytes()))
    assert lease["run"] == taken["holder"].run  # the new holder's, not given back
    after = obstore.head(store, parsed.key(CHECKPOINT_NAME))
    assert after["e_tag"] == taken["checkpoint"]  # not overwritten after the loss


@pytest.mark.parametrize(
    ("age_seconds", "length", "expired"),
    [(0, 120, False), (119, 120, False), (120, 120, True), (500, 120, True), (-30, 10, False)],
)
def test_a_lease_expires_by_the_stores_clock(
    age_seconds: int, length: float, expired: bool
) -> None:
    written = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
    assert has_expired(written, written + timedelta(seconds=age_seconds), length) is expired


class FlakyWrites:
    """Fails a share of the bucket's writes as S3 does when it throttles (503 SlowDown)
    or, with ``after``, once the write is done (its answer lost on the way back)."""

    def __init__(
        self, rate: float, seed: int, only_images: bool = False, after: bool = False
    ) -> None:
        self.rate = rate
        self.rng = random.Random(seed)
        self.only_images = only_images
        self.after = after
        self.failed = 0
        self.original = Bucket._put

    def method(self) -> Callable[..., Any]:
        async def put(bucket: Bucket, relative: str, data: Any, **options: Any) -> Any:
            if (not self.only_images or relative.startswith("images/")) and (
                self.rng.random() < self.rate
            ):
                self.failed += 1
                if self.after:
                    await self.original(bucket, relative, data, **options)
                raise ObjectStoreError(
                    f"{bucket.location(relative)}: write failed (503 SlowDown)", transient=True
                )
            return await self.original(bucket, relative, data, **options)

        return put


@pytest.mark.parametrize(("seed", "after"), [(3, False), (4, False), (5, True), (6, True)])
def test_a_store_failing_a_fifth_of_its_writes_loses_nothing_and_pays_nothing_twice(
    write: Write,
    tmp_path: Path,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    after: bool,
) -> None:
    """Every kind of write fails now and then: images, views, checkpoints and the
    lease's create, renewals and release; before the write or after it."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    flaky = FlakyWrites(0.2, seed=seed, after=after)
    monkeypatch.setattr(Bucket, "_put", flaky.method())
    report = world.run(
        manifest, out=url, state_dir=tmp_path / "state", concurrency=8, lease_seconds=4
    )
    assert report.exit_code == 0 and flaky.failed >= 3
    assert ours(world) == 24
    assert_bucket_holds_what_was_served(world, url)


def test_an_image_the_store_keeps_refusing_waits_in_the_spill_directory_for_the_next_run(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        patch.setattr(Bucket, "_put", FlakyWrites(1.0, seed=1, only_images=True).method())
        report = world.run(manifest, out=url, state_dir=state)
    assert report.exit_code == 0 and report.succeeded == 24  # paid for, so kept
    spilled = sorted(p.name for p in (state / "images").rglob("*.png"))
    assert len(spilled) == 24
    assert not [k for k in objects(url) if k.startswith("images/")]
    again = world.run(manifest, out=url, state_dir=state)
    assert again.exit_code == 0 and ours(world) == 24
    assert not list((state / "images").rglob("*.png"))
    assert_bucket_holds_what_was_served(world, url)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("s3://bucket/a/b/", BucketUrl("s3", "bucket", "a/b")),
        ("gcs://bucket", BucketUrl("gs", "bucket", "")),
        ("output/jobs", None),
        ("/abs/path", None),
    ],
)
def test_an_output_url_is_told_from_a_path(text: str, parsed: BucketUrl | None) -> None:
    assert BucketUrl.parse(text) == parsed


def test_an_unknown_scheme_or_storage_option_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="ftp://x/y: batchgen writes to s3://"):
        BucketUrl.parse("ftp://x/y")
    with pytest.raises(ConfigError, match="did you mean endpoint_url"):
        store_config(BucketUrl("s3", "b", ""), parse_storage_options(["endpoint_ur=http://x"]))
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_storage_options(["endpoint_url"])
    config = store_config(
        BucketUrl("s3", "b", ""),
        {"endpoint_url": "http://x", "key": "AK", "secret": "SK", "region_name": "r"},
    )
    assert config == {
        "endpoint": "http://x",
        "access_key_id": "AK",
        "secret_access_key": "SK",
        "region": "r",
    }


class _Kinds:
    class PermissionDeniedError(Exception):
        pass

    class UnauthenticatedError(Exception):
        pass


@pytest.mark.parametrize(
    ("text", "transient", "says"),
    [
        (
            "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>",
            True,
            "503 SlowDown",
        ),
        ("Server returned non-2xx status code: 429 Too Many Requests", True, "429"),
        ("Server returned non-2xx status code: 500 Internal", True, "500"),
        ("error sending request for url: connection refused", True, "connection"),
        (
            "Server returned non-2xx status code: 403 Forbidden: <Code>InvalidAccessKeyId</Code>",
            False,
            "refused the credentials (InvalidAccessKeyId)",
        ),
        (
            "Server returned non-2xx status code: 404 Not Found: <Code>NoSuchBucket</Code>",
            False,
            "NoSuchBucket",
        ),
    ],
)
def test_a_store_error_is_one_line_saying_whether_trying_again_may_help(
    text: str, transient: bool, says: str
) -> None:
    error = object_store_error(RuntimeError(text), "s3://b/p/x.png", "write", _Kinds)
    assert error.transient is transient
    assert says in str(error) and "\n" not in str(error)


def test_bucket_only_options_are_refused_with_a_reason() -> None:
    from batchgen.options import from_keywords
    from batchgen.running import output_target

    with pytest.raises(ConfigError, match="--fresh moves a local"):
        outputs.refuse_local_only(output_target(from_keywords({"fresh": True})))


@pytest.mark.parametrize("spilled", [False, True])
def test_a_bucket_run_writes_the_story_into_each_image_and_records_what_it_wrote(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch, spilled: bool
) -> None:
    """--embed-metadata on a bucket: each object rewritten with its story and its
    sha256 attribute; an image the store refused is changed where it waits, and
    written so by the next run.  verify finds each as recorded; nothing is redone."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        if spilled:
            patch.setattr(Bucket, "_put", FlakyWrites(1.0, seed=1, only_images=True).method())
        report = world.run(manifest, out=url, state_dir=state, embed_metadata=True)
    assert report.exit_code == 0 and report.succeeded == 24
    if spilled:
        assert len(list((state / "images").rglob("*.png"))) == 24
        assert world.run(manifest, out=url, state_dir=state).exit_code == 0
    found = objects(url)
    results = results_in(url)
    for result in results:
        (relative,) = result["files"]
        data = found[relative]
        assert b"parameters\x00" in data and result["prompt"].encode() in data
        assert [hashlib.sha256(data).hexdigest()] == result["sha256"]
        assert attributes(url, relative)["sha256"] == result["sha256"][0]
        asset_id = world.sim.jobs[result["job_id"]].asset_ids[0]
        assert result["served_sha256"] == [world.sim.served_sha256[asset_id]]
        assert result["served_sha256"] != result["sha256"]
    checked = batchgen.verify(url)
    assert checked.checked == 24 and checked.intact
    assert world.run(manifest, out=url, state_dir=state, embed_metadata=True).already_done == 24


def test_status_and_verify_read_a_bucket_and_every_shard_under_it(
    write: Write, tmp_path: Path, url: str
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    for index in range(2):
        report = world.run(manifest, out=url, shard=f"{index + 1}/2", state_dir=tmp_path / "s")
        assert report.exit_code == 0
    assert ours(world) == 24
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    store = bucket_module._memory_stores[parsed.bucket]
    shard_results = [
        json.loads(line)
        for index in range(2)
        for line in objects(url)[f"shard-{index + 1}-of-2/results.jsonl"].decode().splitlines()
    ]
    gone, replaced = (
        f"{s}/{r['files'][0]}"
        for s, r in zip(
            ("shard-1-of-2", "shard-2-of-2"), (shard_results[0], shard_results[-1]), strict=True
        )
    )
    obstore.delete(store, parsed.key(gone))
    obstore.put(store, parsed.key(replaced), b"\x89PNG\r\n\x1a\nnot the image written")

    found = batchgen.status(url, manifest)
    assert found.units == 24 and found.states == {"downloaded": 24}
    assert found.running is False
    assert found.shards == ["shard-1-of-2", "shard-2-of-2"]
    assert (found.missing_files, found.changed_files) == (1, 1)
    assert found.left == 0 and found.running is False and found.spend.in_all == 24

    checked = batchgen.verify(url)
    assert checked.checked == 24
    assert checked.missing == [gone] and checked.altered == [replaced]


def test_verify_fix_fetches_a_buckets_missing_and_altered_images_again_under_its_lease(
    write: Write, tmp_path: Path, url: str
) -> None:
    """Each shard's broken images fetched again from their jobs (no job bought) and
    written to the bucket with their sha256; the checkpoint and views saved, so that
    status and a new machine see them; a fix while a run holds the lease is refused."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    for index in range(2):
        report = world.run(manifest, out=url, shard=f"{index + 1}/2", state_dir=tmp_path / "s")
        assert report.exit_code == 0
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    store = bucket_module._memory_stores[parsed.bucket]
    found = objects(url)
    gone, replaced = (
        "shard-1-of-2/"
        + next(k.split("/", 1)[1] for k in found if k.startswith("shard-1-of-2/images/")),
        next(k for k in found if k.startswith("shard-2-of-2/images/")),
    )
    original = found[replaced]
    obstore.delete(store, parsed.key(gone))
    obstore.put(store, parsed.key(replaced), b"\x89PNG\r\n\x1a\nnot the image written")
    jobs = world.sim.jobs_created
    running = Lease(Bucket.open(parsed.child("shard-1-of-2"), blocking=True), seconds=600)
    world.call(running.acquire)
    with pytest.raises(OutputLockedError):
        world.call(lambda: batchgen.averify(url, fix=True, backend=world.backend))
    world.call(running.release)

    fixed = world.call(lambda: batchgen.averify(url, fix=True, backend=world.backend))
    assert fixed.fixed == 2 and fixed.intact and not fixed.not_fixed
    assert world.sim.jobs_created == jobs  # fetched again, never bought
    assert objects(url)[replaced] == original
    for relative in (gone, replaced):
        assert (
            attributes(url, relative)["sha256"]
            == hashlib.sha256(objects(url)[relative]).hexdigest()
        )
    assert batchgen.verify(url).intact
    status = batchgen.status(url, manifest)
    assert (status.missing_files, status.changed_files, status.running) == (0, 0, False)
    # A new machine (no state directory) has nothing to do: the checkpoint has it all.
    again = world.run(manifest, out=url, shard="1/2", state_dir=tmp_path / "new")
    assert again.exit_code == 0 and again.already_done == again.total > 0
    assert world.sim.jobs_created == jobs


def test_the_gallery_of_a_bucket_is_written_into_it_beside_the_images_it_links(
    write: Write,
    tmp_path: Path,
    url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every shard's units on one page at the root, linking each image and its
    thumbnail by the paths a folder has; an image gone has no thumbnail; made again,
    nothing is made twice."""
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    for index in range(2):
        report = world.run(
            manifest, out=url, shard=f"{index + 1}/2", state_dir=tmp_path / "s", gallery=True
        )
        assert report.exit_code == 0
    found = objects(url)
    page = found["gallery/index.html"].decode()
    data = json.loads(
        re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1]
    )  # type: ignore[index]
    assert data["summary"]["units"] == 24 and data["summary"]["done"] == 24
    linked = [image for unit in data["units"] for image in unit["images"]]
    assert len(linked) == 24
    for image in linked:
        assert image["file"].startswith("../shard-")
        assert image["file"][3:] in found  # the link resolves from gallery/
    try:
        import PIL  # noqa: F401
    except ImportError:
        return
    for image in linked:
        assert found[f"gallery/{image['thumb']}"][:4] == b"RIFF"  # WebP
    gone = linked[0]["file"][3:]
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    obstore.delete(bucket_module._memory_stores[parsed.bucket], parsed.key(gone))
    obstore.delete(
        bucket_module._memory_stores[parsed.bucket], parsed.key(f"gallery/{linked[0]['thumb']}")
    )
    again = batchgen.gallery(url)
    assert again.page == f"{url}/gallery/index.html" and again.file is None
    assert (again.units, again.images, again.thumbnails_made) == (24, 24, 0)
    assert f"gallery/{linked[0]['thumb']}" not in objects(url)
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", opened.append)
    capsys.readouterr()
    assert main(["gallery", url, "--open"]) == 0
    said = capsys.readouterr()
    assert said.out.strip() == again.page and "the page is in a bucket" in said.err
    assert opened == []


@pytest.mark.parametrize("kind", ["webdataset", "imagefolder"])
def test_export_of_a_bucket_reads_each_image_from_it_checked(
    write: Write, tmp_path: Path, url: str, kind: str
) -> None:
    import tarfile

    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    for index in range(2):
        assert world.run(manifest, out=url, shard=f"{index + 1}/2").exit_code == 0
    served = {
        f"{shard}/{r['files'][0]}": objects(url)[f"{shard}/{r['files'][0]}"]
        for shard in ("shard-1-of-2", "shard-2-of-2")
        for r in (
            json.loads(line)
            for line in objects(url)[f"{shard}/results.jsonl"].decode().splitlines()
        )
    }
    done = batchgen.export(url, tmp_path / kind, kind, shard_size=10)
    assert done.images == 24
    if kind == "imagefolder":
        rows = [
            json.loads(line)
            for line in (tmp_path / kind / "metadata.jsonl").read_text().splitlines()
        ]
        got = {row["file_name"]: (tmp_path / kind / row["file_name"]).read_bytes() for row in rows}
    else:
        got = {}
        for shard in sorted((tmp_path / kind).glob("*.tar")):
            with tarfile.open(shard) as archive:
                members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
            for name, content in members.items():
                if name.endswith(".json"):
                    row = json.loads(content)
                    got[row["file_name"]] = members[name[: -len(".json")] + ".png"]
    assert got == served
    # An object replaced behind the journal's back stops the export.
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    first = sorted(served)[0]
    obstore.put(bucket_module._memory_stores[parsed.bucket], parsed.key(first), b"other bytes")
    with pytest.raises(ConfigError, match="not the image recorded"):
        batchgen.export(url, tmp_path / f"{kind}-again", kind)


def test_status_says_a_run_holds_the_bucket_only_while_its_lease_lives(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    killed_run(world, monkeypatch, manifest, url, state_dir=tmp_path / "a", max_runtime=8)
    assert LEASE_NAME in objects(url)  # left by the killed run
    assert batchgen.status(url).running is False  # expired: nobody renews it
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    holder = Lease(Bucket.open(parsed, blocking=True), seconds=600)
    world.call(holder.acquire)  # takes the expired one over
    assert batchgen.status(url).running is True


def test_prune_of_a_bucket_forgets_departed_units_and_deletes_their_objects(
    write: Write, tmp_path: Path, url: str
) -> None:
    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    assert world.run(manifest, out=url, state_dir=tmp_path / "a").exit_code == 0
    before = {r["prompt"]: r["files"][0] for r in results_in(url)}
    fewer = write("jobs.yaml", MANIFEST.replace(", 20, 21, 22, 23]", "]"))  # the same path
    pruned = batchgen.prune(url, fewer, delete_files=True)
    assert (pruned.units, pruned.files_deleted) == (4, 4)
    found = objects(url)
    left = {r["prompt"] for r in results_in(url)}
    assert left == {f"unit {n}" for n in range(20)}
    for prompt, relative in before.items():
        assert (relative in found) is (prompt in left)
    assert batchgen.status(url).units == 20
    # The machine that ran it, back: its journal predates the prune, so it is set
    # aside and the bucket's taken; nothing is bought, nothing comes back.
    again = world.run(fewer, out=url, state_dir=tmp_path / "a")
    assert again.exit_code == 0 and again.already_done == 20 and ours(world) == 24
    assert list((tmp_path / "a").glob("journal.sqlite3.stale-*"))
    assert len(results_in(url)) == 20


def test_an_export_to_a_bucket_sends_each_shard_on_once_complete(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io
    import tarfile

    manifest = write("jobs.yaml", MANIFEST)
    world = World(tmp_path, job_seconds=5)
    assert world.run(manifest, out=url, state_dir=tmp_path / "s").exit_code == 0
    served = {r["files"][0]: objects(url)[r["files"][0]] for r in results_in(url)}
    dest = url.replace("/run", "/exported")
    on_disk: list[int] = []
    send = Bucket.put_file_now

    def watched(bucket: Bucket, relative: str, path: Path) -> None:
        on_disk.append(sum(1 for p in path.parent.iterdir() if p.is_file()))
        send(bucket, relative, path)

    monkeypatch.setattr(Bucket, "put_file_now", watched)
    done = batchgen.export(url, dest, "webdataset", shard_size=10)
    assert done.images == 24 and len(done.files) == 3
    assert all(name.startswith(dest + "/") for name in done.files)
    assert max(on_disk) == 1  # a shard at a time on local disk
    got = {}
    for _, content in sorted(objects(dest).items()):
        with tarfile.open(fileobj=io.BytesIO(content)) as archive:
            members = {m.name: archive.extractfile(m).read() for m in archive.getmembers()}  # type: ignore[union-attr]
        for member, data in members.items():
            if member.endswith(".json"):
                got[json.loads(data)["file_name"]] = members[member[: -len(".json")] + ".png"]
    assert got == served
    with pytest.raises(ConfigError, match="not empty; export into a new prefix"):
        batchgen.export(url, dest, "webdataset")


def test_the_images_a_batch_starts_from_go_to_the_bucket_as_the_run_goes(
    write: Write, tmp_path: Path, url: str
) -> None:
    """An image-to-image batch: each input image written to the bucket's inputs/ once,
    as its first unit finishes, never gathered on local disk until the run ends."""
    from batchgen.sim.png import make_png

    (tmp_path / "sketches").mkdir()
    for n in range(3):
        (tmp_path / "sketches" / f"s{n}.png").write_bytes(make_png(32, 32, f"sketch {n}"))
    manifest = write(
        "jobs.yaml",
        "model: model_sim-img2img\nwidth: 64\nheight: 64\njobs:\n"
        "  - images: sketches/*.png\n    prompt: '{style} version'\n"
        "    vars: {style: [ink, paint]}\n",
    )
    world = World(tmp_path, job_seconds=5)
    state = tmp_path / "state"
    seen_locally: list[str] = []
    original = Bucket.create

    async def watched(bucket: Bucket, relative: str, data: Any, attributes: Any = None) -> Any:
        seen_locally.extend(p.name for p in (state / "inputs").rglob("*.png"))
        return await original(bucket, relative, data, attributes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Bucket, "create", watched)
        report = world.run(manifest, out=url, state_dir=state)
    assert report.exit_code == 0 and report.succeeded == 6
    found = objects(url)
    for record in results_in(url):
        (image,) = record["inputs"]["image"]
        assert found[image["file"]] == Path(image["path"]).read_bytes()
        assert attributes(url, image["file"])["sha256"] == image["sha256"]
    assert len([k for k in found if k.startswith("inputs/")]) == 3
    assert seen_locally == []  # straight to the bucket


def test_a_long_checkpoint_never_delays_a_renewal_and_spaces_out_the_next() -> None:
    """A journal of millions of units takes a while to copy: the lease is renewed on
    its rhythm meanwhile, and the next copy waits ten times as long as this one took."""
    import trio.testing

    clock = trio.testing.MockClock(autojump_threshold=0)
    renewed: list[float] = []
    saved: list[tuple[float, float]] = []

    class FakeLease:
        seconds = 120.0

        async def renew(self) -> None:
            renewed.append(anyio.current_time())

    async def slow_save() -> None:
        started = anyio.current_time()
        await anyio.sleep(100)  # the copy of a large journal
        saved.append((started, anyio.current_time()))

    output = outputs.BucketOutput(None, Path("."), FakeLease(), None)  # type: ignore[arg-type]

    async def main() -> None:
        with anyio.move_on_after(1500):
            await outputs.keep(output, slow_save, interval=60)

    anyio.run(main, backend="trio", backend_options={"clock": clock})
    gaps = [b - a for a, b in zip(renewed, renewed[1:], strict=False)]
    assert gaps and max(gaps) == 30  # every 30 s, also while a copy goes on
    assert saved[0][0] == 60
    assert saved[1][0] - saved[0][1] == 1000  # ten times the 100 s the first took


def test_the_quality_gate_sets_rejected_images_aside_in_the_bucket(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed as a regeneration's job is made, then run to the end: each rejected image
    is under images/_rejected/ in the bucket (written there, then taken from its place,
    never lost), each kept one where results.jsonl says, each image gated once."""
    units = 40
    rule = "{on_fail: regenerate, attempts: 2, sensitivity: high}"
    manifest = write("jobs.yaml", quality_manifest(units, rule))
    world = World(tmp_path, job_seconds=5)
    state = tmp_path / "state"

    class Killed(BaseException):
        pass

    def die(job: Any) -> None:
        if world.sim.jobs_created == units + 3:
            raise Killed

    world.sim.on_job_created = die
    with pytest.raises((Killed, BaseExceptionGroup)):
        killed_run(world, monkeypatch, manifest, url, state_dir=state, concurrency=8)
    world.sim.on_job_created = None
    report = world.run(manifest, out=url, state_dir=state, concurrency=8)
    assert report.exit_code == 0
    found = objects(url)
    results = results_in(url)
    assert len(results) == units
    regenerated = sum(r["quality_attempt"] for r in results)
    assert regenerated >= 3 and ours(world) == units + regenerated
    rejected = {k for k in found if k.startswith("images/_rejected/")}
    assert len(rejected) == regenerated
    kept = {f for r in results for f in r["files"]}
    assert {k for k in found if k.startswith("images/")} == kept | rejected
    for record in results:
        job = world.sim.jobs[record["job_id"]]
        assert found[record["files"][0]] == world.sim.assets[job.asset_ids[0]].content()
    served = {a.content() for a in world.sim.assets.values()}
    assert all(found[k] in served for k in rejected)
    assert max(world.sim.gate_calls.values()) == 1


def test_rejected_images_still_in_the_spill_directory_go_aside_there_and_on_to_the_bucket(
    write: Write, tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rule = "{on_fail: regenerate, attempts: 1, sensitivity: high}"
    manifest = write("jobs.yaml", quality_manifest(30, rule))
    world = World(tmp_path, job_seconds=5)
    state = tmp_path / "state"
    with monkeypatch.context() as patch:
        patch.setattr(Bucket, "_put", FlakyWrites(1.0, seed=1, only_images=True).method())
        report = world.run(manifest, out=url, state_dir=state)
    assert report.exit_code == 0 and report.regenerated > 0
    waiting = list((state / "images" / "_rejected").rglob("*.png"))
    assert len(waiting) == report.regenerated
    assert all(p.with_name(f".{p.name}.attributes.json").is_file() for p in waiting)
    again = world.run(manifest, out=url, state_dir=state)
    assert again.exit_code == 0
    assert not list((state / "images").rglob("*.png"))
    found = objects(url)
    rejected = [k for k in found if k.startswith("images/_rejected/")]
    assert len(rejected) == report.regenerated
    assert all(
        attributes(url, k)["sha256"] == hashlib.sha256(found[k]).hexdigest() for k in rejected
    )


def test_a_copy_within_the_store_keeps_the_metadata_and_says_when_there_is_nothing(
    url: str,
) -> None:
    parsed = BucketUrl.parse(url)
    assert parsed is not None
    bucket = Bucket.open(parsed, blocking=True)
    anyio.run(bucket.put, "images/a.png", b"bytes of a", {"sha256": "s", "unit": "u"})
    assert anyio.run(bucket.copy, "images/a.png", "images/_rejected/a.attempt-1.png")
    assert objects(url)["images/_rejected/a.attempt-1.png"] == b"bytes of a"
    assert attributes(url, "images/_rejected/a.attempt-1.png") == {"sha256": "s", "unit": "u"}
    assert not anyio.run(bucket.copy, "images/gone.png", "images/_rejected/gone.png")
