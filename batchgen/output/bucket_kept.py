"""A bucket between runs (see :mod:`batchgen.output.kept`): each output's (or shard's)
journal restored from its checkpoint into a local directory of its own; a change made
under the output's lease and written back with its views and a new checkpoint."""

from __future__ import annotations

import asyncio
import contextlib
import io
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..config import RetrySettings
from ..engine.ports import inline
from ..errors import ConfigError, ObjectStoreError
from ..store.bucket import (
    BLOCKING_RETRIES,
    SHA256_ATTRIBUTE,
    Bucket,
    BucketUrl,
    parse_storage_options,
)
from ..store.dataset import METADATA_NAME
from ..store.files import IMAGES_DIR
from ..store.gallery import THUMBS, Gallery, write_gallery
from ..store.journal import Journal
from ..store.results import RESULTS_NAME
from ..store.views import update_views
from .base import FileCheck, Place, opened_journals
from .bucket import BucketOutput, Checkpointed, checkpointed, leased, retrying_with
from .bucket_files import BucketImages, checkpoint, flush_spilled, put_files, restore_checkpoint
from .lease import Lease

if TYPE_CHECKING:
    from ..backend import Backend
    from ..store.files import Stamp


@dataclass(slots=True)
class KeptBucket:
    url: BucketUrl
    found: dict[Path, Checkpointed]
    places: list[Place]
    # The whole output's prefix, read without an event loop (an export's rows).
    root: Bucket
    staging: Path
    retry: RetrySettings

    @classmethod
    @asynccontextmanager
    async def at(
        cls,
        out: str,
        storage_options: list[str] | dict[str, str] | None,
        *,
        blocking: bool | None = None,
    ) -> AsyncIterator[KeptBucket]:
        """The bucket at ``out`` (a URL: an unknown scheme is refused in one line).
        ``blocking``: the store called with the calling thread (by default, unless the
        event loop is asyncio's: obstore's own calls need it)."""
        url = BucketUrl.parse(out)
        if url is None:
            raise ConfigError(f"{out}: not a bucket URL (s3://BUCKET/PREFIX, gs://…)")
        if blocking is None:
            blocking = not _on_asyncio()
        with tempfile.TemporaryDirectory() as temporary:
            staging = Path(temporary)
            found = await checkpointed(url, storage_options, staging, blocking=blocking)
            places = [
                Place(c.place, c.shard, f"{c.shard.directory}/" if c.shard else "") for c in found
            ]
            options = parse_storage_options(storage_options)
            # Read and written with the calling thread (an export's rows, the gallery):
            # the store retries by itself.
            root = Bucket.open(url, options, blocking=True, store_retries=BLOCKING_RETRIES)
            yield cls(url, {c.place: c for c in found}, places, root, staging, RetrySettings())

    @property
    def shown(self) -> str:
        return str(self.url)

    @property
    def name(self) -> str:
        return self.url.prefix.rsplit("/", 1)[-1] or self.url.bucket

    @property
    def sharded(self) -> bool:
        return self.places[0].shard is not None

    def running(self) -> bool:
        return any(c.lease_held for c in self.found.values())

    def file_check(self, place: Place) -> FileCheck:
        return self.found[place.journal_dir].present.problems

    @asynccontextmanager
    async def reading(self, place: Place) -> AsyncIterator[Journal]:
        journal = Journal(place.journal_dir)  # the checkpoint's copy: nothing to lock
        try:
            yield journal
        finally:
            journal.close()

    @asynccontextmanager
    async def holding(self, place: Place) -> AsyncIterator[Journal]:
        bucket = self.found[place.journal_dir].bucket
        retrying = retrying_with(self.retry)
        lease = Lease(bucket, retrying=retrying)
        async with leased(BucketOutput(bucket, place.journal_dir, lease, retrying)):
            # Read again under the lease: a run may have ended since.
            await restore_checkpoint(bucket, place.journal_dir, inline)
            journal = Journal(place.journal_dir)
            try:
                yield journal
            finally:
                journal.close()

    async def saved(self, place: Place, journal: Journal) -> None:
        bucket = self.found[place.journal_dir].bucket
        update_views(journal, place.journal_dir, metadata=True)
        names = (RESULTS_NAME, METADATA_NAME)
        await put_files(bucket, place.journal_dir, names, self.retry, inline)
        await checkpoint(bucket, journal, None, self.retry, inline)

    async def problem(self, place: Place, relative: str, sha256: str) -> str | None:
        # An object replaced by another hand has other metadata, or none.
        there = await self.found[place.journal_dir].bucket.head(relative)
        if there is None:
            return "missing"
        return "altered" if there.attributes.get(SHA256_ATTRIBUTE) != sha256 else None

    def name_of(self, place: Place, relative: str) -> str:
        return place.prefix + relative

    async def delete_image(self, place: Place, relative: str) -> bool:
        if not relative.startswith(f"{IMAGES_DIR}/"):
            return False
        await self.found[place.journal_dir].bucket.delete(relative)
        return True

    def reader(self) -> Callable[[str], bytes | None] | None:
        return self.root.read_now

    def root_dir(self) -> Path:
        return self.staging

    def refetch(self, place: Place, backend: Backend) -> BucketRefetch:
        bucket = self.found[place.journal_dir].bucket
        images = BucketImages(
            backend.downloader, bucket, place.journal_dir, self.retry, backend.offload
        )
        return BucketRefetch(images, place.journal_dir)

    def gallery(self) -> Gallery:
        with opened_journals(self.places) as journals:
            return write_gallery(journals, BucketGallery(self.root), self.name)


@dataclass(frozen=True, slots=True)
class BucketRefetch:
    """Images fetched again into a bucket, as a run writes them: straight to it (a
    write the store keeps refusing waits in the spill directory, written before the
    journal is saved: else the fix fails, and nothing is recorded)."""

    images: BucketImages
    root: Path

    @property
    def fetcher(self) -> BucketImages:
        return self.images

    async def rewrite(self, relative: str, change: Callable[[bytes], bytes]) -> str:
        return await self.images.rewrite(relative, change)

    def stamp(self, relative: str) -> Stamp | None:
        return self.images.stamp(self.root, relative)

    async def finish(self) -> None:
        images = self.images
        flushed = await flush_spilled(images.bucket, self.root, images.retry, images.offload)
        if flushed.kept:
            raise ObjectStoreError(
                f"{images.bucket.url}: {flushed.kept} images fetched again could not be "
                "written; nothing was recorded (run verify --fix again)",
                transient=True,
            )


@dataclass(frozen=True, slots=True)
class BucketGallery:
    """A gallery's files in a bucket: the page links the images by the paths a folder
    has, so it is read where the bucket is served (or from a copy of it)."""

    bucket: Bucket

    @contextlib.contextmanager
    def open_image(self, relative: str) -> Iterator[BinaryIO]:
        data = self.bucket.read_now(relative)
        if data is None:
            raise FileNotFoundError(self.bucket.location(relative))
        yield io.BytesIO(data)

    def thumbnails(self) -> set[str]:
        return self.bucket.names_now(THUMBS)

    def write(self, relative: str, data: bytes) -> None:
        self.bucket.put_now(relative, data)

    def remove(self, relative: str) -> None:
        self.bucket.delete_now(relative)

    def where(self, relative: str) -> str:
        return self.bucket.location(relative)

    def local(self, relative: str) -> Path | None:
        return None


def _on_asyncio() -> bool:
    """Whether the calling task runs on asyncio's loop (not trio's)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
