"""A finished job's images into files: signed URLs looked up just before the download,
many jobs' at once, then each image fetched, verified and named.

Signed URLs expire, so they are asked for only once a download slot is free, never when
the job ends: a long queue of downloads cannot outlive them.  :class:`AssetResolver`
batches those lookups as :class:`~batchgen.store.commits.GroupCommit` batches journal
calls: everything asked while one bulk request (``POST /v1/assets/get-bulk``, up to 200
ids) is under way goes into the next.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import anyio
from anyio.abc import TaskStatus

from ..config import RetrySettings
from ..errors import ApiError, DownloadError
from ..manifest import Unit
from ..manifest.naming import FileNameTemplate
from ..retry import Request, with_retries
from ..scenario.client import BULK_ASSET_LIMIT
from ..scenario.download import Downloaded, Fetcher
from ..scenario.records import Asset, JobRecord
from ..store.faults import storage_faults
from ..store.files import IMAGES_DIR, real_directory
from .ports import Api

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Ask:
    asset_ids: list[str]
    done: anyio.Event = field(default_factory=anyio.Event)
    found: dict[str, Asset] = field(default_factory=dict)


class AssetResolver:
    def __init__(self, api: Api, retry: RetrySettings, rng: random.Random) -> None:
        self._api = api
        self._retry = retry
        self._rng = rng
        self._queue: list[_Ask] = []
        self._wake = anyio.Event()
        self.bulk_requests = 0

    async def assets(self, asset_ids: Sequence[str]) -> list[Asset]:
        """The assets of one job, in order, with fresh signed URLs.  A lookup the batch
        could not make is made again for this job alone, and its failure raised."""
        ask = _Ask(list(asset_ids))
        self._queue.append(ask)
        self._wake.set()
        await ask.done.wait()
        if all(asset_id in ask.found for asset_id in asset_ids):
            return [ask.found[asset_id] for asset_id in asset_ids]
        return await with_retries(
            Request.ASSET_LOOKUP, lambda: self._api.get_assets(asset_ids), self._retry, self._rng
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Look up what is asked, in batches, until cancelled."""
        task_status.started()
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            batch: list[_Ask] = []
            wanted: list[str] = []
            while self._queue and (
                not batch or len(wanted) + len(self._queue[0].asset_ids) <= BULK_ASSET_LIMIT
            ):
                ask = self._queue.pop(0)
                batch.append(ask)
                wanted += ask.asset_ids
            found: dict[str, Asset] = {}
            try:
                found = await with_retries(
                    Request.ASSET_LOOKUP,
                    functools.partial(self._api.lookup_assets, wanted),
                    self._retry,
                    self._rng,
                )
                self.bulk_requests += 1
            except ApiError as exc:
                # Each job then looks its own assets up, and says why if it fails.
                log.info("bulk asset lookup failed (%s)", exc)
            for ask in batch:
                ask.found = {a: found[a] for a in ask.asset_ids if a in found}
                ask.done.set()


@dataclass(frozen=True, slots=True)
class JobFiles:
    """A job's images on disk: (path relative to the output directory, sha256) each,
    each one's own size when known, and the seed the first asset reports."""

    files: list[tuple[str, str]]
    sizes: list[tuple[int, int] | None]
    seed: int | None
    # Assets the job listed beyond the images the unit asked for: not downloaded.
    not_kept: int = 0


async def download_job(
    unit: Unit,
    job: JobRecord,
    *,
    api: Api,
    resolver: AssetResolver,
    fetcher: Fetcher,
    output_dir: Path,
    filename: FileNameTemplate,
    own_files: frozenset[str],
    retry: RetrySettings,
    rng: random.Random,
    asked: int | None = None,
) -> JobFiles:
    """Fetch a successful job's images.  ``own_files`` are the unit's files the journal
    already has: downloading again may replace those, and nothing else.  ``asked``: the
    images the unit asked for; a job that lists more keeps that many (a server listing
    thousands must not fill the disk for one unit), the rest counted, not fetched."""
    listed = job.asset_ids or job.image_urls
    kept = listed[:asked] if asked is not None else listed
    if len(kept) < len(listed):
        log.warning(
            "unit %s: job %s lists %d images, %d asked for: the others are not downloaded",
            unit.id,
            job.job_id,
            len(listed),
            len(kept),
        )
    if job.asset_ids:
        assets = await resolver.assets(kept)
    elif job.image_urls:
        assets = [Asset(id=f"{job.job_id}-{i}", url=url) for i, url in enumerate(kept)]
    else:
        raise DownloadError("the job succeeded but lists no assets", transient=False)
    images = output_dir / IMAGES_DIR
    folders: set[str] = set()
    files: list[tuple[str, str]] = []
    sizes: list[tuple[int, int] | None] = []
    for index, asset in enumerate(assets):
        reported = (asset.width, asset.height) if asset.width and asset.height else None
        name = filename.render(unit, index, asset.suffix, reported)
        destination = images / name
        folder = str(PurePath(IMAGES_DIR, name).parent)
        if folder not in folders:  # made, or checked to be the output's own, never a link
            with storage_faults(destination.parent):
                real_directory(output_dir, folder)
            folders.add(folder)
        fallback: Path | None = None
        if f"{IMAGES_DIR}/{name}" not in own_files:
            # Whatever else holds the name (an edited manifest's unit, a file of the
            # user's) is kept; this image then gets a name that only it can have.
            fallback = destination.with_name(
                f"{destination.stem}~{unit.id}-{index}{destination.suffix}"
            )
        downloaded = await with_retries(
            Request.DOWNLOAD,
            fresh_each_time(
                api, fetcher, asset, destination, fallback, bool(job.asset_ids), unit.id
            ),
            retry,
            rng,
        )
        if downloaded.path != destination:
            log.warning(
                "unit %s: %s holds another image; this one is %s",
                unit.id,
                destination.relative_to(output_dir).as_posix(),
                downloaded.path.relative_to(output_dir).as_posix(),
            )
        files.append((downloaded.path.relative_to(output_dir).as_posix(), downloaded.sha256))
        sizes.append(reported or downloaded.dimensions)
    return JobFiles(files, sizes, assets[0].seed, len(listed) - len(kept))


def fresh_each_time(
    api: Api,
    fetcher: Fetcher,
    asset: Asset,
    destination: Path,
    fallback: Path | None,
    refresh: bool,
    unit_id: str,
) -> Callable[[], Awaitable[Downloaded]]:
    """An attempt function: the first try uses the URL in hand; later tries fetch a new
    signed URL first, since the likeliest cause of a failed download is its expiry."""
    tries = 0

    async def attempt() -> Downloaded:
        nonlocal tries
        tries += 1
        current = asset
        if refresh and tries > 1:
            current = (await api.get_assets([asset.id]))[0]
        return await fetcher.fetch(
            current.url, destination, current.size, fallback=fallback, unit_id=unit_id
        )

    return attempt
