"""A batch whose output is a bucket: images written straight to it, the journal kept
in a local state directory and checkpointed to the bucket, and what could not be
written kept in a spill directory until it can.

::

    CDN ──streamed──▶ STATE/.spool/… (verified) ──create, with sha256 + unit──▶ bucket
                                   │ the store keeps failing (after the retry table)
                                   ▼
                    STATE/images/…  (spill) ──next run, or the end of this one──▶ bucket

    STATE/journal.sqlite3 ──online backup, every interval and at exit──▶ _batchgen/journal.sqlite3

An image is recorded done only once the store confirmed its write (or it is in the
spill directory, from which it is written before the run ends or by the next run).
Each is written once: with ``If-None-Match: *``, so a name already holding other bytes
(another unit's image, a file of the user's) is never overwritten; an object already
holding these very bytes (written by a run killed before it recorded them) is taken as
written.  A download streams to the spool on disk, as a local one does, so memory does
not grow with an image: one past :data:`WHOLE_PUT_BYTES` is written in parts from the
file (a store takes ``If-None-Match`` on a single PUT only; the name is checked free
first, and the lease says no other run writes here).  What a run needs of the
journal's rows and files is in :mod:`batchgen.store.journal`; this module only moves
bytes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import random
import sqlite3
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, TypeVar

import anyio

from ..config import RetrySettings
from ..engine.gate import rejected_name, set_aside
from ..engine.pressure import InFlightCap
from ..errors import ObjectStoreError
from ..retry import Request, with_retries
from ..scenario.download import Downloaded, Fetcher
from ..store.bucket import MAX_WRITES, SHA256_ATTRIBUTE, STATE_PREFIX, Bucket, image_attributes
from ..store.faults import storage_error, storage_faults
from ..store.files import (
    IMAGES_DIR,
    INPUTS_DIR,
    PartFile,
    Stamp,
    parsed,
    real_directory,
    sha256_of,
    write_lines_atomically,
)
from ..store.journal import JOURNAL_NAME, Journal
from ..store.results import rewrite_file

log = logging.getLogger(__name__)
T = TypeVar("T")

# An image up to this size is written in one conditional PUT (read from the spool into
# memory); a larger one in parts, from the file.
WHOLE_PUT_BYTES = 16 * 1024 * 1024
# Where downloads wait, in the state directory, until the store has them.
SPOOL_DIR = ".spool"

CHECKPOINT_NAME = f"{STATE_PREFIX}/{JOURNAL_NAME}"
# When the journal was copied, by the API's clock (kept in the copy).
CHECKPOINT_KEY = "checkpoint_at"
# The ETag of the last copy this journal wrote (kept in the local journal): a bucket
# whose checkpoint has another was written by another machine since.
CHECKPOINT_ETAG_KEY = "checkpoint_etag"
# The stamp of a file written to the bucket: its size, and no local time.
OBJECT_MTIME = 0

Offload = Callable[..., Awaitable[Any]]


class WriteSlots:
    """How many writes go to the store at once: an :class:`InFlightCap` (halved when
    the store throttles, back up by one after as many successes) over a limiter."""

    def __init__(self, ceiling: int = MAX_WRITES) -> None:
        self.cap = InFlightCap(ceiling)
        self.limiter = anyio.CapacityLimiter(ceiling)

    def throttled(self) -> None:
        self.limiter.total_tokens = self.cap.rate_limited(None)

    def succeeded(self) -> None:
        self.limiter.total_tokens = self.cap.submitted()


@dataclass(slots=True)
class BucketImages:
    """The engine's :class:`~batchgen.scenario.download.Fetcher` for a bucket: fetches
    into the spool, writes to the bucket, and names what it wrote relative to ``root``
    (the local state directory, which stands in for the output in the journal)."""

    source: Fetcher
    bucket: Bucket
    root: Path
    retry: RetrySettings
    offload: Offload
    rng: random.Random = field(default_factory=random.Random)
    written: dict[str, int] = field(default_factory=dict)
    spilled: int = 0
    # Input images written (or found) in the bucket: each once a run.
    inputs_kept: set[str] = field(default_factory=set)

    async def fetch(
        self,
        url: str,
        destination: Path,
        expected_size: int | None = None,
        *,
        fallback: Path | None = None,
        unit_id: str | None = None,
    ) -> Downloaded:
        relative = destination.relative_to(self.root).as_posix()
        other = fallback.relative_to(self.root).as_posix() if fallback is not None else None
        spool = await self.offload(_spool_file, self.root)
        try:
            got = await self.source.fetch(url, spool, expected_size, unit_id=unit_id)
            attributes = image_attributes(relative, got.sha256, unit_id)
            try:
                placed = await with_retries(
                    Request.STORE_WRITE,
                    lambda: self._place(relative, other, spool, got, attributes),
                    self.retry,
                    self.rng,
                )
            except ObjectStoreError as exc:
                if not exc.transient:
                    raise
                placed = await self._spill(relative, spool, attributes, exc)
            else:
                self.written[placed] = got.size
        finally:
            await self.offload(functools.partial(spool.unlink, missing_ok=True))
        return Downloaded(self.root / placed, got.size, got.sha256, got.dimensions)

    async def _place(
        self,
        relative: str,
        fallback: str | None,
        spool: Path,
        got: Downloaded,
        attributes: dict[str, str],
    ) -> str:
        if fallback is None:  # the unit's own file: a download again replaces it
            await self._write(relative, spool, got, attributes, replace=True)
            return relative
        if await self._write(relative, spool, got, attributes, replace=False):
            return relative
        there = await self.bucket.head(relative)
        if there is not None and there.attributes.get(SHA256_ATTRIBUTE) == got.sha256:
            return relative  # these very bytes, written by a run killed before it noted them
        log.warning(
            "%s holds another image; this one is %s",
            self.bucket.location(relative),
            self.bucket.location(fallback),
        )
        await self._write(fallback, spool, got, attributes, replace=True)
        return fallback

    async def _write(
        self,
        relative: str,
        spool: Path,
        got: Downloaded,
        attributes: dict[str, str],
        *,
        replace: bool,
    ) -> bool:
        """The spooled image written as ``relative``; False if ``replace`` is not given
        and the name is taken.  Small: one PUT (conditional unless replacing); large:
        in parts from the file, the name checked free first."""
        if got.size <= WHOLE_PUT_BYTES:
            data = await self.offload(spool.read_bytes)
            if replace:
                await self.bucket.put(relative, data, attributes)
                return True
            return await self.bucket.create(relative, data, attributes) is not None
        if not replace and await self.bucket.head(relative) is not None:
            return False
        await self.bucket.put_file(relative, spool, attributes)
        return True

    async def _spill(
        self, relative: str, spool: Path, attributes: dict[str, str], exc: ObjectStoreError
    ) -> str:
        destination = self.root / relative
        await self.offload(_spill_file, self.root, relative, spool, attributes)
        self.spilled += 1
        log.warning("%s; kept in %s until it can be written", exc, destination)
        return relative

    async def keep_input(self, source: Path, relative: str) -> None:
        """An input image in the bucket's ``inputs/``, once (named by its content's
        hash, a name taken holds the same bytes); kept in the spill directory if the
        store keeps refusing it."""
        if relative in self.inputs_kept:
            return
        data = await self.offload(source.read_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            await with_retries(
                Request.STORE_WRITE,
                functools.partial(
                    self.bucket.create, relative, data, image_attributes(relative, sha256, None)
                ),
                self.retry,
                self.rng,
            )
        except ObjectStoreError as exc:
            if not exc.transient:
                raise
            attributes = {SHA256_ATTRIBUTE: sha256}
            await self.offload(_write_file, self.root, relative, data, sha256, attributes)
            self.spilled += 1
            log.warning("%s; kept in %s until it can be written", exc, self.root / relative)
        self.inputs_kept.add(relative)

    async def set_aside(self, files: list[str], attempt: int) -> list[str]:
        """Images the quality gate rejected moved to ``images/_rejected/`` in the bucket
        (copied there within the store, metadata and all, then deleted from their place:
        never lost, and never downloaded; again after a kill, copied over the same
        image).  An image still in the spill directory is moved there, and written to
        the bucket with the rest."""
        moved = []
        for relative in files:
            target = rejected_name(relative, attempt).as_posix()
            if await self.offload((self.root / relative).is_file):
                await self.offload(set_aside, self.root, [relative], attempt)
                await self.offload(_move_sidecar, self.root, relative, target)
                moved.append(target)
                continue
            if await self._retrying(self.bucket.copy, relative, target):
                await self._retrying(self.bucket.delete, relative)
            moved.append(target)
        return moved

    async def rewrite(self, relative: str, change: Callable[[bytes], bytes]) -> str:
        """An image written this run replaced by ``change`` of its bytes (its story
        written in), its sha256 attribute with it; its new sha256.  One still in the
        spill directory is changed there; one the store keeps refusing goes there."""
        if await self.offload((self.root / relative).is_file):
            rewritten: str = await self.offload(_rewrite_spilled, self.root, relative, change)
            return rewritten
        found = await self._retrying(self.bucket.read, relative)
        if found is None:  # the next run fetches it again: it was not recorded
            where = self.bucket.location(relative)
            raise ObjectStoreError(f"{where}: gone since it was written", transient=False)
        data, described = found
        written = await self.offload(change, data)
        sha256 = hashlib.sha256(written).hexdigest()
        attributes = {**described.attributes, SHA256_ATTRIBUTE: sha256}
        try:
            await self._retrying(self.bucket.put, relative, written, attributes)
        except ObjectStoreError as exc:
            if not exc.transient:
                raise
            self.written.pop(relative, None)
            await self.offload(_write_file, self.root, relative, written, sha256, attributes)
            self.spilled += 1
            log.warning("%s; kept in %s until it can be written", exc, self.root / relative)
        else:
            self.written[relative] = len(written)
        return sha256

    async def _retrying(self, call: Callable[..., Awaitable[T]], *args: Any) -> T:
        return await with_retries(
            Request.STORE_WRITE, functools.partial(call, *args), self.retry, self.rng
        )

    def stamp(self, out_dir: Path, relative: str) -> Stamp | None:
        """What the journal records of a file: an object's size (no local time), or a
        spilled file's local stamp."""
        size = self.written.pop(relative, None)
        if size is not None:
            return size, OBJECT_MTIME
        try:
            status = (out_dir / relative).stat()
        except OSError:
            return None
        return status.st_size, status.st_mtime_ns


def _rewrite_spilled(root: Path, relative: str, change: Callable[[bytes], bytes]) -> str:
    """A spilled image changed where it waits, its attributes with it."""
    try:
        sha256 = rewrite_file(root / relative, change)
        sidecar = _sidecar(root / relative)
        attributes = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        attributes[SHA256_ATTRIBUTE] = sha256
        write_lines_atomically(sidecar, [json.dumps(attributes)])
    except OSError as exc:
        raise storage_error(exc, root / relative) from exc
    return sha256


def _move_sidecar(root: Path, relative: str, target: str) -> None:
    """A spilled image's attributes follow it aside."""
    sidecar = _sidecar(root / relative)
    if sidecar.is_file():
        os.replace(sidecar, _sidecar(root / target))


def _sidecar(path: Path) -> Path:
    """Where a spilled file's object metadata waits with it (hidden: not a file to write)."""
    return path.with_name(f".{path.name}.attributes.json")


def _spool_file(root: Path) -> Path:
    """A new name in the spool (the state directory's own, no link), for one download."""
    with storage_faults(root / SPOOL_DIR):
        return real_directory(root, SPOOL_DIR) / f"{os.getpid()}-{next(_SPOOLED)}.image"


_SPOOLED = itertools.count()


def _spill_file(root: Path, relative: str, spool: Path, attributes: dict[str, str]) -> None:
    """A spooled image moved into the spill directory, its attributes beside it."""
    destination = root / relative
    try:
        real_directory(root, PurePath(relative).parent)
        os.replace(spool, destination)
        write_lines_atomically(_sidecar(destination), [json.dumps(attributes)])
    except OSError as exc:
        raise storage_error(exc, destination) from exc


def _write_file(
    root: Path, relative: str, data: bytes, sha256: str, attributes: dict[str, str]
) -> None:
    destination = root / relative
    try:
        real_directory(root, PurePath(relative).parent)
    except OSError as exc:
        raise storage_error(exc, destination) from exc
    part = PartFile(destination)
    try:
        part.finish(data, destination, None, sha256)
        write_lines_atomically(_sidecar(destination), [json.dumps(attributes)])
    except OSError as exc:
        raise storage_error(exc, destination) from exc
    finally:
        part.discard()


@dataclass(frozen=True, slots=True)
class Flushed:
    written: int
    kept: int


async def flush_spilled(
    bucket: Bucket, root: Path, retry: RetrySettings, offload: Offload
) -> Flushed:
    """Write every file waiting in the state directory's ``images/`` and ``inputs/`` to
    the bucket, each removed locally once the store confirmed it.  One the store still
    refuses stays for the next run."""
    written = kept = 0
    await offload(_clear_spool, root)  # downloads a killed run left half-way
    for relative in await offload(_waiting, root):
        path = root / relative
        size, sha256, attributes = await offload(_spilled, path)
        attributes = {**attributes, **image_attributes(relative, sha256, None)}
        try:
            done = await with_retries(
                Request.STORE_WRITE,
                functools.partial(_write_once, bucket, relative, (path, size), attributes, offload),
                retry,
            )
        except ObjectStoreError as exc:
            if not exc.transient:
                raise
            log.warning("%s; kept in %s for the next run", exc, path)
            kept += 1
            continue
        if not done:
            log.warning(
                "%s holds other bytes than %s; the local file is kept",
                bucket.location(relative),
                path,
            )
            kept += 1
            continue
        await offload(_remove_spilled, path)
        written += 1
    if written:
        log.info("%s: %d files written from %s", bucket.url, written, root)
    return Flushed(written, kept)


def _spilled(path: Path) -> tuple[int, str, dict[str, str]]:
    """A spilled file's size, sha256 (read in chunks: a large one is never held
    whole) and attributes."""
    try:
        attributes = json.loads(_sidecar(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        attributes = {}  # a file put there by hand: written with what can be known
    size = path.stat().st_size
    return size, sha256_of(path), {str(k): str(v) for k, v in dict(attributes).items()}


def _remove_spilled(path: Path) -> None:
    path.unlink()
    _sidecar(path).unlink(missing_ok=True)


async def _write_once(
    bucket: Bucket,
    relative: str,
    file: tuple[Path, int],
    attributes: dict[str, str],
    offload: Offload,
) -> bool:
    """Whether the bucket holds the file's bytes under ``relative`` now (written by
    this call, or already there); False if it holds other bytes.  Small: one
    conditional PUT; large: in parts from the file, the name checked free first (the
    lease says no other run writes here)."""
    path, size = file
    if size <= WHOLE_PUT_BYTES:
        data = await offload(path.read_bytes)
        if await bucket.create(relative, data, attributes) is not None:
            return True
    elif await bucket.head(relative) is None:
        await bucket.put_file(relative, path, attributes)
        return True
    there = await bucket.head(relative)
    return there is not None and (
        there.attributes.get(SHA256_ATTRIBUTE) == attributes[SHA256_ATTRIBUTE]
    )


def _clear_spool(root: Path) -> None:
    spool = root / SPOOL_DIR
    if spool.is_dir() and not spool.is_symlink():
        for leftover in spool.iterdir():
            leftover.unlink(missing_ok=True)


def _waiting(root: Path) -> list[str]:
    found: list[str] = []
    for folder in (IMAGES_DIR, INPUTS_DIR):
        for directory, _, names in os.walk(root / folder):
            for name in names:
                if not name.startswith("."):
                    found.append((Path(directory) / name).relative_to(root).as_posix())
    return sorted(found)


async def put_files(
    bucket: Bucket, root: Path, names: Iterable[str], retry: RetrySettings, offload: Offload
) -> None:
    """Write these files of ``root`` (the views) to the bucket, each replacing the last."""
    for name in names:
        path = root / name
        if await offload(path.is_file):
            await with_retries(
                Request.STORE_WRITE, functools.partial(bucket.put_file, name, path), retry
            )


# ---------------------------------------------------------------- checkpoints


def snapshot(journal_path: Path, destination: Path) -> None:
    """A consistent copy of the journal (SQLite's online backup, on a connection of its
    own: the run's writes go on meanwhile)."""
    destination.unlink(missing_ok=True)
    source = sqlite3.connect(journal_path)
    try:
        target = sqlite3.connect(destination)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()


async def checkpoint(
    bucket: Bucket,
    journal: Journal,
    server_now: Callable[[], datetime] | None,
    retry: RetrySettings,
    offload: Offload,
) -> None:
    """Copy the journal to ``_batchgen/journal.sqlite3`` in the bucket, with the API's
    time now in it: a run that starts from it looks for jobs made since then (on the
    API's clock, which the store's may not agree with).  Without ``server_now`` (no
    API asked: ``prune``) the time it has is kept: no job made before it was known."""
    if server_now is not None:
        await offload(journal.remember, CHECKPOINT_KEY, server_now().isoformat())
    copy = journal.path.with_name(f".{journal.path.name}.checkpoint")
    try:
        await offload(snapshot, journal.path, copy)
        e_tag = await with_retries(
            Request.STORE_WRITE, functools.partial(bucket.put_file, CHECKPOINT_NAME, copy), retry
        )
    finally:
        await offload(lambda: copy.unlink(missing_ok=True))
    await offload(journal.remember, CHECKPOINT_ETAG_KEY, e_tag or "")


async def restore_checkpoint(bucket: Bucket, state_dir: Path, offload: Offload) -> datetime | None:
    """Put the bucket's checkpoint in place as the state directory's journal; when it
    was written (the store's clock), or None if there is none."""
    journal = state_dir / JOURNAL_NAME

    def clear() -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        for suffix in ("-wal", "-shm"):
            journal.with_name(journal.name + suffix).unlink(missing_ok=True)

    await offload(clear)
    described = await bucket.download(CHECKPOINT_NAME, journal)
    return described.last_modified if described is not None else None


class Present:
    """The bucket's images as listed once (a run that starts from a checkpoint trusts
    only what it can see): each file recorded done must be there, with its size."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        # When the oldest image listed was written (the store's clock), if any was.
        self.first_written: datetime | None = None

    @classmethod
    async def listed(cls, bucket: Bucket) -> Present:
        present = cls()
        async for page in bucket.listing(IMAGES_DIR + "/"):
            for found in page:
                present.sizes[bucket.relative(found.key)] = found.size
                if present.first_written is None or found.last_modified < present.first_written:
                    present.first_written = found.last_modified
        return present

    def intact(self, files: Iterable[tuple[str, str]], stamps: Iterable[Stamp | None] = ()) -> bool:
        listed = list(files)
        known = list(stamps)
        if not listed:
            return False
        for index, (relative, _) in enumerate(listed):
            size = self.sizes.get(relative)
            if size is None:
                return False
            stamp = known[index] if index < len(known) else None
            if stamp is not None and stamp[1] == OBJECT_MTIME and stamp[0] != size:
                return False
        return True

    def problems(self, recorded: Iterable[str]) -> Iterator[tuple[str, bool]]:
        """(path, whether it is missing) of each recorded file not listed, or listed with
        another size than written; lazily (as :func:`files_not_as_written`)."""
        for files in parsed(recorded):
            for entry in files:
                size = self.sizes.get(entry[0])
                if size is None:
                    yield entry[0], True
                elif len(entry) == 4 and entry[3] == OBJECT_MTIME and entry[2] != size:
                    yield entry[0], False


def trusted(files: Iterable[tuple[str, str]], stamps: Iterable[Stamp | None] = ()) -> bool:
    """A run on the machine that wrote the journal trusts it: a file is recorded only
    once the store confirmed it (``batchgen verify`` checks the bucket)."""
    return any(True for _ in files)
