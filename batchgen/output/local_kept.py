"""A folder between runs (see :mod:`batchgen.output.kept`): its journal and its shards'
on disk, held by their output lock."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import ConfigError
from ..manifest.shard import SHARD_DIRECTORY, Shard, shard_directories
from ..store.faults import storage_faults
from ..store.files import (
    IMAGES_DIR,
    Stamp,
    files_not_as_written,
    open_regular,
    real_directory,
    sha256_of,
    stamp_of,
    write_bytes_atomically,
)
from ..store.gallery import GALLERY_DIR, THUMBS, Gallery, folder_path, write_gallery
from ..store.journal import JOURNAL_NAME, Journal
from ..store.lock import OutputLock, run_in_progress
from ..store.results import rewrite_file
from ..store.views import update_views
from .base import FileCheck, Place, opened_journals

if TYPE_CHECKING:
    from ..backend import Backend
    from ..engine.ports import Fetcher, Offload


def journal_places(root: Path) -> list[Place]:
    """The output directories at ``root`` that have a journal: itself, or its shards."""
    if (root / JOURNAL_NAME).is_file():
        match = SHARD_DIRECTORY.match(root.name)
        shard = Shard(int(match[1]), int(match[2])) if match else None
        return [Place(root, shard, "")]
    found = [
        Place(place, Shard(int(m[1]), int(m[2])), f"{place.name}/")
        for place in shard_directories(root)
        if (place / JOURNAL_NAME).is_file() and (m := SHARD_DIRECTORY.match(place.name))
    ]
    if not found:
        raise ConfigError(f"{root}: no batchgen journal here (is it a run's output directory?)")
    return found


@dataclass(slots=True)
class KeptFolder:
    root: Path
    places: list[Place]

    @classmethod
    def at(cls, root: Path) -> KeptFolder:
        return cls(root, journal_places(root))

    @property
    def shown(self) -> str:
        return str(self.root)

    @property
    def name(self) -> str:
        return self.root.resolve().name

    @property
    def sharded(self) -> bool:
        return [place.journal_dir for place in self.places] != [self.root]

    def running(self) -> bool:
        return any(run_in_progress(place.journal_dir) for place in self.places)

    def file_check(self, place: Place) -> FileCheck:
        return functools.partial(files_not_as_written, place.journal_dir)

    @asynccontextmanager
    async def reading(self, place: Place) -> AsyncIterator[Journal]:
        async with self.holding(place) as journal:
            yield journal

    @asynccontextmanager
    async def holding(self, place: Place) -> AsyncIterator[Journal]:
        with OutputLock(place.journal_dir), storage_faults(place.journal_dir):
            journal = Journal(place.journal_dir)
            try:
                yield journal
            finally:
                journal.close()

    async def saved(self, place: Place, journal: Journal) -> None:
        update_views(journal, place.journal_dir, metadata=place.shard is None)

    async def problem(self, place: Place, relative: str, sha256: str) -> str | None:
        path = place.journal_dir / relative
        if not path.is_file():
            return "missing"
        return "altered" if sha256_of(path) != sha256 else None

    def name_of(self, place: Place, relative: str) -> str:
        return (place.journal_dir / relative).relative_to(place.journal_dir.parent).as_posix()

    async def delete_image(self, place: Place, relative: str) -> bool:
        path = place.journal_dir / relative
        # Only ever an image below images/, as the journal recorded it.
        images = (place.journal_dir / IMAGES_DIR).resolve()
        if not path.parent.resolve().is_relative_to(images):
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def reader(self) -> Callable[[str], bytes | None] | None:
        return None

    def root_dir(self) -> Path:
        return self.root

    def refetch(self, place: Place, backend: Backend) -> FolderRefetch:
        return FolderRefetch(place.journal_dir, backend.downloader, backend.offload)

    def gallery(self) -> Gallery:
        with storage_faults(self.root / GALLERY_DIR), opened_journals(self.places) as journals:
            real_directory(self.root, THUMBS)  # the output's own, no link
            return write_gallery(journals, FolderGallery(self.root), self.name)


@dataclass(frozen=True, slots=True)
class FolderRefetch:
    """Images fetched again into a folder: written where the run writes them."""

    place: Path
    fetcher: Fetcher
    offload: Offload

    async def rewrite(self, relative: str, change: Callable[[bytes], bytes]) -> str:
        rewritten: str = await self.offload(rewrite_file, self.place / relative, change)
        return rewritten

    def stamp(self, relative: str) -> Stamp | None:
        return stamp_of(self.place / relative)

    async def finish(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class FolderGallery:
    """A gallery's files in a folder: images read, thumbnails and the page written,
    never through a link."""

    root: Path

    @contextlib.contextmanager
    def open_image(self, relative: str) -> Iterator[BinaryIO]:
        with open_regular(self.root / folder_path(relative)) as image:
            yield image

    def thumbnails(self) -> set[str]:
        return set(os.listdir(self.root / THUMBS))

    def write(self, relative: str, data: bytes) -> None:
        write_bytes_atomically(self.root / folder_path(relative), data)

    def remove(self, relative: str) -> None:
        (self.root / folder_path(relative)).unlink(missing_ok=True)

    def where(self, relative: str) -> str:
        return str(self.root / relative)

    def local(self, relative: str) -> Path | None:
        return self.root / relative
