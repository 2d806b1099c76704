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
from .engine.download import fresh_each_time
from .errors import ApiError, ConfigError, DownloadError
from .manifest import iter_units
from .options import RunOptions, from_keywords
from .output import Kept, Place, make_gallery, open_kept
from .rerun import MANIFEST_KEY, load
from .retry import Request, with_retries
from .store.bucket import (
    BLOCKING_RETRIES,
    Bucket,
    BucketUrl,
    is_bucket_url,
    parse_storage_options,
)
from .store.export import DEFAULT_SHARD_SIZE, Exported, Source
from .store.export import export as write_export
from .store.faults import storage_faults
from .store.gallery import Gallery
from .store.journal import Journal
from .store.results import story_of
from .store.select import Selection

log = logging.getLogger(__name__)


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
    adopt one.  Each place under its lock (a bucket's: its lease, and its checkpoint
    written back with the views)."""
    return run_sync(lambda: _prune(out, manifest, delete_files, storage_options))


async def _prune(
    out: str | Path,
    manifest: str | Path | None,
    delete_files: bool,
    storage_options: list[str] | dict[str, str] | None,
) -> Pruned:
    units = files = 0
    async with open_kept(out, storage_options) as kept:
        for place in kept.places:
            async with kept.holding(place) as journal:
                loaded = load(manifest or _last_manifest(journal, place.journal_dir))
                shard = place.shard
                ids = (u.id for u in iter_units(loaded) if shard is None or shard.holds(u.id))
                for _, recorded in journal.departed(ids):
                    if delete_files:
                        for entry in json.loads(recorded or "[]"):
                            files += await kept.delete_image(place, entry[0])
                units += journal.forget_departed()
                await kept.saved(place, journal)
    return Pruned(units, files)


def _last_manifest(journal: Journal, place: Path) -> Path:
    recorded = journal.recall(MANIFEST_KEY).get("")
    if not recorded:
        raise ConfigError(f"{place}: no run has recorded its manifest here; name the manifest")
    return Path(recorded)


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
    found = Verification()
    storage_options = options.get("storage_options")
    async with open_kept(out, storage_options) as kept:
        for place in kept.places:
            # Fixing changes the place: held (its lock, or its lease), then saved.
            async with (kept.holding if fix else kept.reading)(place) as journal:
                broken = await _check(kept, place, journal, found)
                if fix and broken:
                    await _fix(kept, place, journal, broken, from_keywords(options), found)
                    await kept.saved(place, journal)
    return found


# Files checked at once by ``verify`` (a bucket's are HEAD requests).
CHECKS_AT_ONCE = 64
# (unit id, job id, files as recorded, results line, how many of the files are bad)
Broken = list[tuple[str, str, list[list[Any]], dict[str, Any], int]]


async def _check(kept: Kept, place: Place, journal: Journal, found: Verification) -> Broken:
    """The downloaded units with a file missing or altered, a chunk of units at a time
    (tasks for a million files at once would hold them all)."""
    broken: Broken = []
    limiter = anyio.CapacityLimiter(CHECKS_AT_ONCE)

    async def check_unit(unit: tuple[str, str | None, str, str | None]) -> None:
        unit_id, job_id, recorded, result = unit
        files = json.loads(recorded or "[]")
        bad = 0
        for entry in files:
            found.checked += 1
            async with limiter:
                problem = await kept.problem(place, entry[0], entry[1])
            if problem is not None:
                shown = kept.name_of(place, entry[0])
                (found.missing if problem == "missing" else found.altered).append(shown)
                bad += 1
        if bad and job_id and result:
            broken.append((unit_id, job_id, files, json.loads(result), bad))

    units = journal.downloaded_units()
    while chunk := list(itertools.islice(units, 1000)):
        async with anyio.create_task_group() as checks:
            for unit in chunk:
                checks.start_soon(check_unit, unit)
    return broken


async def _fix(
    kept: Kept,
    place: Place,
    journal: Journal,
    broken: Broken,
    options: RunOptions,
    found: Verification,
) -> None:
    async with open_backend(options, place.journal_dir) as backend:
        retry = backend.settings.retry
        refetch = kept.refetch(place, backend)
        fixed: list[tuple[str, list[tuple[str, str]], dict[str, Any], int]] = []
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
                    destination = place.journal_dir / entry[0]
                    got = await with_retries(
                        Request.DOWNLOAD,
                        fresh_each_time(
                            backend.client,
                            refetch.fetcher,
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
                        digest = await refetch.rewrite(entry[0], story_of(result))
                    else:
                        digest = got.sha256
                    if digest != entry[1]:
                        raise DownloadError("the job's image is not the one recorded")
                    fetched.append((entry[0], digest))
            except (DownloadError, ApiError) as exc:  # reported per unit; the rest go on
                found.not_fixed.append(f"{unit_id}: {exc}")
                continue
            fixed.append((unit_id, fetched, result, bad))
        await refetch.finish()  # before anything is recorded: it may still fail
        for unit_id, fetched, result, bad in fixed:
            found_stamps = [refetch.stamp(path) for path, _ in fetched]
            stamps = None if None in found_stamps else [s for s in found_stamps if s is not None]
            journal.downloaded(unit_id, fetched, result, stamps)
            found.fixed += bad


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
        done = run_sync(lambda: _export(out, local, how, storage_options))
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
    options = parse_storage_options(storage_options)
    bucket = Bucket.open(url, options, blocking=True, store_retries=BLOCKING_RETRIES)
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


async def _export(
    out: str | Path,
    dest: Path,
    how: Writing,
    storage_options: list[str] | dict[str, str] | None,
) -> Exported:
    """Every place's results, each journal held for the read, written out in a worker
    thread (the formats' writers block)."""
    async with open_kept(out, storage_options) as kept, contextlib.AsyncExitStack() as held:
        journals = [
            (place, await held.enter_async_context(kept.reading(place))) for place in kept.places
        ]
        root, read = kept.root_dir(), kept.reader()

        def sources() -> list[Source]:
            return [
                Source(place.journal_dir, place.prefix, journal.results(), root, read)
                for place, journal in journals
            ]

        return await anyio.to_thread.run_sync(how.write, sources, dest, kept.name)


# ---------------------------------------------------------------------- gallery


def gallery(
    out: str | Path, *, storage_options: list[str] | dict[str, str] | None = None
) -> Gallery:
    """Write ``OUT/gallery/index.html``, a page to review the run (every shard's, from
    an output root), with a thumbnail of each image (see :mod:`batchgen.store.gallery`).
    Also while a run goes on: it reads the journal as it stands.  In a bucket, the page
    and its thumbnails are written into it, beside the images they link."""
    return run_sync(lambda: make_gallery(out, storage_options))
