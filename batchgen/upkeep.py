"""Looking after an output directory between runs: ``prune`` forgets the units that
left the manifest, ``verify`` hashes every image against the journal and, asked to,
fetches the missing and altered ones again from their jobs, and ``export`` writes the
images as WebDataset shards, Parquet or a clean imagefolder.  None ever buys a job.

::

    import batchgen
    batchgen.prune("output/jobs", "jobs.yaml", delete_files=True)
    found = batchgen.verify("output/jobs", fix=True)
    found.missing, found.altered, found.fixed
    batchgen.export("output/jobs", "exports/jobs-wds", "webdataset", shard_size=1000)
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from .backend import open_backend, run_sync
from .config import RetrySettings
from .engine.download import fresh_each_time
from .engine.ports import inline
from .errors import ApiError, ConfigError, DownloadError
from .manifest import iter_units
from .manifest.shard import SHARD_DIRECTORY, Shard, shard_directories
from .options import RunOptions, from_keywords
from .output.bucket import BucketOutput, checkpointed, leased, retrying_with
from .output.bucket_files import checkpoint, put_files, restore_checkpoint
from .output.lease import Lease
from .rerun import MANIFEST_KEY, load
from .retry import Request, with_retries
from .store.bucket import (
    SHA256_ATTRIBUTE,
    Bucket,
    BucketUrl,
    is_bucket_url,
    parse_storage_options,
)
from .store.dataset import METADATA_NAME
from .store.embed import embed
from .store.export import DEFAULT_SHARD_SIZE, Exported, Source
from .store.export import export as write_export
from .store.faults import storage_faults
from .store.files import (
    IMAGES_DIR,
    open_regular,
    sha256_of,
    stamp_of,
    write_bytes_atomically,
)
from .store.gallery import GALLERY_DIR, Gallery, write_gallery
from .store.journal import JOURNAL_NAME, Journal
from .store.lock import OutputLock
from .store.results import RESULTS_NAME
from .store.select import Selection
from .store.views import update_views

log = logging.getLogger(__name__)


def _local_only(out: str | Path, command: str) -> None:
    if isinstance(out, str) and is_bucket_url(out):
        raise ConfigError(
            f"{out}: batchgen {command} works on a local directory (status, verify, "
            "prune and export also work on a bucket)"
        )


def places(out: Path) -> list[tuple[Path, Shard | None]]:
    """The output directories under ``out`` that have a journal, each with its shard."""
    if (out / JOURNAL_NAME).is_file():
        match = SHARD_DIRECTORY.match(out.name)
        return [(out, Shard(int(match[1]), int(match[2])) if match else None)]
    found: list[tuple[Path, Shard | None]] = [
        (place, Shard.parse(f"{m[1]}/{m[2]}"))
        for place in shard_directories(out)
        if (place / JOURNAL_NAME).is_file() and (m := SHARD_DIRECTORY.match(place.name))
    ]
    if not found:
        raise ConfigError(f"{out}: no batchgen journal here (is it a run's output directory?)")
    return found


# ---------------------------------------------------------------------- prune


@dataclass(frozen=True, slots=True)
class Pruned:
    units: int
    files_deleted: int

    def to_json(self) -> dict[str, Any]:
        return {"units": self.units, "files_deleted": self.files_deleted}


def prune(
    out: str | Path,
    manifest: str | Path | None = None,
    *,
    delete_files: bool = False,
    storage_options: list[str] | dict[str, str] | None = None,
) -> Pruned:
    """Forget every unit the manifest (by default the one the last run used) no longer
    has: its journal row and its lines in the views go; with ``delete_files`` its
    images too.  The jobs it had stay recorded as its own, so no lost answer can ever
    adopt one."""
    if isinstance(out, str) and is_bucket_url(out):
        url = BucketUrl.parse(out)
        assert url is not None
        return run_sync(lambda: _prune_bucket(url, manifest, delete_files, storage_options))
    units = files = 0
    for place, shard in places(Path(out)):
        with OutputLock(place), storage_faults(place):
            journal = Journal(place)
            try:
                loaded = load(manifest or _last_manifest(journal, place))
                ids = (u.id for u in iter_units(loaded) if shard is None or shard.holds(u.id))
                for _, recorded in journal.departed(ids):
                    if delete_files:
                        files += _delete(place, recorded)
                units += journal.forget_departed()
                update_views(journal, place, metadata=shard is None)
            finally:
                journal.close()
    return Pruned(units, files)


async def _prune_bucket(
    url: BucketUrl,
    manifest: str | Path | None,
    delete_files: bool,
    storage_options: list[str] | dict[str, str] | None,
) -> Pruned:
    """``prune`` of a bucket, shard by shard: under the shard's lease (no run writes
    meanwhile), on its checkpoint, which is written back with the views.  A machine
    whose local journal predates it sets that journal aside (see outputs.start)."""
    units = files = 0
    retry = RetrySettings()
    with tempfile.TemporaryDirectory() as temporary:
        found = await checkpointed(url, storage_options, Path(temporary), blocking=False)
        for output in found:
            bucket = output.bucket
            retrying = retrying_with(retry)
            lease = Lease(bucket, retrying=retrying)
            async with leased(BucketOutput(bucket, output.place, lease, retrying)):
                # Read again under the lease: a run may have ended since.
                await restore_checkpoint(bucket, output.place, inline)
                journal = Journal(output.place)
                try:
                    loaded = load(manifest or _last_manifest(journal, output.place))
                    ids = (
                        u.id
                        for u in iter_units(loaded)
                        if output.shard is None or output.shard.holds(u.id)
                    )
                    departed = [recorded for _, recorded in journal.departed(ids)]
                    if delete_files:
                        for recorded in departed:
                            for entry in json.loads(recorded or "[]"):
                                if entry[0].startswith(f"{IMAGES_DIR}/"):
                                    await bucket.delete(entry[0])
                                    files += 1
                    units += journal.forget_departed()
                    update_views(journal, output.place, metadata=True)
                    await put_files(
                        bucket, output.place, (RESULTS_NAME, METADATA_NAME), retry, inline
                    )
                    await checkpoint(bucket, journal, None, retry, inline)
                finally:
                    journal.close()
    return Pruned(units, files)


def _last_manifest(journal: Journal, place: Path) -> Path:
    recorded = journal.recall(MANIFEST_KEY).get("")
    if not recorded:
        raise ConfigError(f"{place}: no run has recorded its manifest here; name the manifest")
    return Path(recorded)


def _delete(place: Path, recorded: str | None) -> int:
    deleted = 0
    for entry in json.loads(recorded or "[]"):
        path = place / entry[0]
        # Only ever an image below images/, as the journal recorded it.
        if path.parent.resolve().is_relative_to((place / IMAGES_DIR).resolve()):
            try:
                path.unlink()
                deleted += 1
            except FileNotFoundError:
                pass
    return deleted


# ---------------------------------------------------------------------- verify


@dataclass(slots=True)
class Verification:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    fixed: int = 0
    not_fixed: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        broken = len(self.missing) + len(self.altered)
        return broken == self.fixed

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "missing": self.missing,
            "altered": self.altered,
            "fixed": self.fixed,
            "not_fixed": self.not_fixed,
        }


def verify(out: str | Path, *, fix: bool = False, **options: Any) -> Verification:
    """Hash every image the journal records against its sha256.  With ``fix``, fetch
    each missing or altered one again from its job (fresh signed URLs): never a new
    job.  ``options`` are ``run``'s connection options (``api_url``, ``simulate``, …)."""
    return run_sync(lambda: averify(out, fix=fix, **options))


async def averify(out: str | Path, *, fix: bool = False, **options: Any) -> Verification:
    if isinstance(out, str) and is_bucket_url(out):
        if fix:
            raise ConfigError(
                f"{out}: --fix works on a local directory; for a bucket, run batchgen run "
                "with an empty --state-dir: it fetches again from their jobs the images "
                "the bucket does not list"
            )
        return await _verify_bucket(out, options.get("storage_options"))
    found = Verification()
    opts = from_keywords(options)
    for place, _ in places(Path(out)):
        with OutputLock(place), storage_faults(place):
            journal = Journal(place)
            try:
                broken = _check(journal, place, found)
                if fix and broken:
                    await _fix(journal, place, broken, opts, found)
            finally:
                journal.close()
    return found


# Objects checked at once by ``verify`` of a bucket.
HEADS_AT_ONCE = 64


async def _verify_bucket(
    out: str, storage_options: list[str] | dict[str, str] | None
) -> Verification:
    """Each image the checkpoints record, against its object's sha256 metadata (written
    with it; an object replaced by another hand has other metadata, or none)."""
    url = BucketUrl.parse(out)
    assert url is not None
    found = Verification()
    limiter = anyio.CapacityLimiter(HEADS_AT_ONCE)

    async def check(bucket: Bucket, shown: str, relative: str, digest: str) -> None:
        async with limiter:
            there = await bucket.head(relative)
        if there is None:
            found.missing.append(shown)
        elif there.attributes.get(SHA256_ATTRIBUTE) != digest:
            found.altered.append(shown)

    with tempfile.TemporaryDirectory() as temporary:
        for output in await checkpointed(url, storage_options, Path(temporary), blocking=False):
            journal = Journal(output.place)
            try:
                prefix = f"{output.shard.directory}/" if output.shard is not None else ""
                files = (
                    entry
                    for _, _, recorded, _ in journal.downloaded_units()
                    for entry in json.loads(recorded or "[]")
                )
                # A chunk at a time: tasks for a million files at once would hold them all.
                while chunk := list(itertools.islice(files, 1000)):
                    found.checked += len(chunk)
                    async with anyio.create_task_group() as checks:
                        for entry in chunk:
                            checks.start_soon(
                                check, output.bucket, prefix + entry[0], entry[0], entry[1]
                            )
            finally:
                journal.close()
    return found


# (unit id, job id, files as recorded, results line, how many of the files are bad)
Broken = list[tuple[str, str, list[list[Any]], dict[str, Any], int]]


def _check(journal: Journal, place: Path, found: Verification) -> Broken:
    """The downloaded units with a file missing or altered (hashing every file)."""
    broken: Broken = []
    for unit_id, job_id, recorded, result in journal.downloaded_units():
        files = json.loads(recorded or "[]")
        bad = 0
        for entry in files:
            found.checked += 1
            path = place / entry[0]
            shown = path.relative_to(place.parent).as_posix()
            if not path.is_file():
                found.missing.append(shown)
                bad += 1
            elif sha256_of(path) != entry[1]:
                found.altered.append(shown)
                bad += 1
        if bad and job_id and result:
            broken.append((unit_id, job_id, files, json.loads(result), bad))
    return broken


async def _fix(
    journal: Journal, place: Path, broken: Broken, options: RunOptions, found: Verification
) -> None:
    async with open_backend(options, place) as backend:
        retry = backend.settings.retry
        for unit_id, job_id, files, result, bad in broken:
            try:
                job = await with_retries(
                    Request.OTHER_READ, functools.partial(backend.client.get_job, job_id), retry
                )
                assets = await with_retries(
                    Request.OTHER_READ,
                    functools.partial(backend.client.get_assets, job.asset_ids),
                    retry,
                )
                if len(assets) != len(files):
                    raise DownloadError("the job lists other images now", transient=False)
                fetched: list[tuple[str, str]] = []
                served = result.get("served_sha256") or []
                for index, (asset, entry) in enumerate(zip(assets, files, strict=True)):
                    destination = place / entry[0]
                    got = await with_retries(
                        Request.DOWNLOAD,
                        fresh_each_time(
                            backend.client,
                            backend.downloader,
                            asset,
                            destination,
                            None,
                            True,
                            unit_id,
                        ),
                        retry,
                    )
                    if served:  # the file had its story written in: written in again
                        if got.sha256 != served[index]:
                            raise DownloadError("the job's image is not the one recorded")
                        digest = await anyio.to_thread.run_sync(_embed_again, destination, result)
                    else:
                        digest = got.sha256
                    if digest != entry[1]:
                        raise DownloadError("the job's image is not the one recorded")
                    fetched.append((entry[0], digest))
            except (DownloadError, ApiError) as exc:  # reported per unit; the rest go on
                found.not_fixed.append(f"{unit_id}: {exc}")
                continue
            stamps = [stamp_of(place / path) for path, _ in fetched]
            journal.downloaded(unit_id, fetched, result, stamps)
            found.fixed += bad


def _embed_again(path: Path, result: dict[str, Any]) -> str:
    """Write a fetched image's story in again, as the run did; its new sha256."""
    size = next((s for s in result.get("sizes") or [] if s), None)
    row = {**result, **({"width": size[0], "height": size[1]} if size else {})}
    with open_regular(path) as image:
        written = embed(image.read(), row)
    write_bytes_atomically(path, written)
    return hashlib.sha256(written).hexdigest()


# ---------------------------------------------------------------------- export


def export(
    out: str | Path,
    dest: str | Path,
    format: str = "imagefolder",
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    embed_metadata: bool = False,
    storage_options: list[str] | dict[str, str] | None = None,
    only_passed: bool = False,
    where: Sequence[str] = (),
) -> Exported:
    """Write the images of an output directory (every shard's, from an output root) to
    ``dest``, a new directory, as ``webdataset``, ``parquet`` or ``imagefolder`` (see
    :mod:`batchgen.store.export`): those the quality gate passed with ``only_passed``,
    those whose columns meet every ``where`` condition (see :mod:`batchgen.store.select`).
    Runs on the directory wait: the lock is held.
    ``out`` may be a bucket URL: its checkpoints say what to export, and each image is
    read from the bucket as it is written out (checked against its sha256).  ``dest``
    may be one too (an empty prefix): each file goes there once complete, so that only
    a shard at a time is ever on local disk."""
    selection = Selection.of(where, only_passed=only_passed)
    with _destination(dest, storage_options) as (local, written, shown):
        how = Writing(format, shard_size, embed_metadata, written, selection)
        if isinstance(out, str) and is_bucket_url(out):
            url = BucketUrl.parse(out)
            assert url is not None
            done = _export_bucket(url, local, how, storage_options)
        else:
            done = _export_directory(Path(out), local, how)
        return Exported(done.format, done.images, [shown(path) for path in done.files])


@contextlib.contextmanager
def _destination(
    dest: str | Path, storage_options: list[str] | dict[str, str] | None
) -> Iterator[tuple[Path, Callable[[Path], None], Callable[[str], str]]]:
    """Where an export writes (DEST, or a staging directory for a bucket), what to do
    with each file once complete, and how to name it in the result."""
    if not (isinstance(dest, str) and is_bucket_url(dest)):
        yield Path(dest), lambda path: None, str
        return
    url = BucketUrl.parse(dest)
    assert url is not None
    bucket = Bucket.open(
        url, parse_storage_options(storage_options), blocking=True, store_retries=10
    )
    if not bucket.is_empty_now():
        raise ConfigError(f"{url}: not empty; export into a new prefix")
    with tempfile.TemporaryDirectory() as temporary:
        staging = Path(temporary) / "export"

        def send(path: Path) -> None:
            bucket.put_file_now(path.relative_to(staging).as_posix(), path)
            path.unlink()

        def shown(path: str) -> str:
            return bucket.location(Path(path).relative_to(staging).as_posix())

        yield staging, send, shown


@dataclass(frozen=True, slots=True)
class Writing:
    """How an export writes: its format, its shards, what it keeps."""

    format: str
    shard_size: int
    embed_metadata: bool
    written: Callable[[Path], None]
    selection: Selection

    def write(self, sources: Callable[[], list[Source]], dest: Path, name: str) -> Exported:
        with storage_faults(dest):
            return write_export(
                sources,
                dest,
                self.format,
                name=name,
                shard_size=self.shard_size,
                embed_metadata=self.embed_metadata,
                written=self.written,
                selection=self.selection,
            )


def _export_directory(root: Path, dest: Path, how: Writing) -> Exported:
    found = places(root)
    with contextlib.ExitStack() as stack:
        journals: list[tuple[Path, str, Journal]] = []
        for place, _ in found:
            stack.enter_context(OutputLock(place))
            journal = Journal(place)
            stack.callback(journal.close)
            prefix = "" if place == root else f"{place.relative_to(root).as_posix()}/"
            journals.append((place, prefix, journal))
        return how.write(
            lambda: [Source(place, prefix, j.results(), root) for place, prefix, j in journals],
            dest,
            root.resolve().name,
        )


def _export_bucket(
    url: BucketUrl,
    dest: Path,
    how: Writing,
    storage_options: list[str] | dict[str, str] | None,
) -> Exported:
    with tempfile.TemporaryDirectory() as temporary, contextlib.ExitStack() as stack:
        root = Path(temporary)
        found = run_sync(lambda: checkpointed(url, storage_options, root))
        bucket = Bucket.open(url, parse_storage_options(storage_options), blocking=True)
        sources: list[tuple[Path, str, Journal]] = []
        for output in found:
            journal = Journal(output.place)
            stack.callback(journal.close)
            prefix = f"{output.shard.directory}/" if output.shard is not None else ""
            sources.append((output.place, prefix, journal))
        return how.write(
            lambda: [
                Source(place, prefix, j.results(), root, bucket.read_now)
                for place, prefix, j in sources
            ],
            dest,
            url.prefix.rsplit("/", 1)[-1] or url.bucket,
        )


# ---------------------------------------------------------------------- gallery


def gallery(out: str | Path) -> Gallery:
    """Write ``OUT/gallery/index.html``, a page to review the run (every shard's, from
    an output root), with a thumbnail of each image (see :mod:`batchgen.store.gallery`).
    Also while a run goes on: it reads the journal as it stands."""
    _local_only(out, "gallery")
    root = Path(out)
    found = places(root)
    with contextlib.ExitStack() as stack:
        journals = []
        for place, _ in found:
            journal = Journal(place)
            stack.callback(journal.close)
            journals.append((place, journal))
        with storage_faults(root / GALLERY_DIR):
            return write_gallery(root, journals)
