"""A run's output in a bucket: where its local state lives, how it takes the output
(the lease), starts on a machine with no state (the checkpoint), and keeps both while
it runs.  The bytes themselves move in :mod:`.bucket_files`.

A run to ``s3://bucket/prefix``:

1. opens the store and takes the lease (the first request to the store: refused
   credentials or a missing bucket end the run here, before anything is submitted);
2. finds its journal in the state directory or, when there is none (a new machine, a
   rescheduled pod), restores the bucket's checkpoint, then trusts only what it can
   prove: a unit recorded done whose images are not all listed is downloaded again
   from its job; a unit the checkpoint does not know may have been submitted after it
   was written, and is looked for in the account's jobs before anything is sent;
3. while the engine runs, renews the lease and checkpoints the journal;
4. at its end (also when stopped), writes what waits in the spill directory, the
   views (``results.jsonl``, ``metadata.jsonl``), a last checkpoint, and gives the
   lease back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from ..config import CHECKPOINT_SECONDS, RetrySettings, default_state_root
from ..engine import EngineSettings
from ..engine.ports import Fetcher, Offload, inline
from ..errors import ConfigError, JournalMissingError
from ..manifest import Manifest, Unit
from ..manifest.shard import SHARD_DIRECTORY, Shard
from ..plan import sent_for, units_of
from ..report import Report
from ..rerun import COMPLETE_KEY
from ..retry import Request, with_retries
from ..store.bucket import STATE_PREFIX, Bucket, BucketUrl, parse_storage_options, state_key
from ..store.dataset import METADATA_NAME
from ..store.files import IMAGES_DIR, Stamp
from ..store.journal import Journal, State
from ..store.lock import OutputLock
from ..store.rebuild import Rebuilt, rebuild
from ..store.results import RESULTS_NAME
from .base import RunPlan, Target
from .bucket_files import (
    CHECKPOINT_ETAG_KEY,
    CHECKPOINT_KEY,
    CHECKPOINT_NAME,
    OBJECT_MTIME,
    BucketImages,
    Present,
    WriteSlots,
    checkpoint,
    flush_spilled,
    put_files,
    restore_checkpoint,
    trusted,
)
from .lease import (
    LEASE_NAME,
    LEASE_SECONDS,
    RENEWALS_PER_LEASE,
    Holder,
    Lease,
    Retrying,
    has_expired,
)
from .local import write_views_if_possible

log = logging.getLogger(__name__)

# How long before a checkpoint a unit it does not know may have been submitted (the
# store's clock and the API's may disagree; a POST's job may be listed late).
CHECKPOINT_LOOKBACK = timedelta(hours=1)
# Options a run to a bucket does not take (yet), with why.
LOCAL_ONLY = {
    "fresh": "--fresh moves a local directory aside (use a new prefix)",
}


TAKEN_NAME = f"{STATE_PREFIX}/taken.json"
# How far past the units about to be taken a reservation reaches: one write per this
# many units, and at most this many more looked for after a restore.
RESERVE_AHEAD = 5000


class Taken:
    """How many of the manifest's units (in its order) runs may have submitted,
    recorded in the bucket *before* they are taken: a run that starts from a checkpoint
    need only look for the jobs of the units before it (not of a million).  Kept per
    manifest fingerprint: another manifest orders its units otherwise."""

    def __init__(self, bucket: Bucket, fingerprint: str, retrying: Retrying) -> None:
        self.bucket = bucket
        self.fingerprint = fingerprint
        self._retrying = retrying
        self.upto = 0

    async def recorded(self) -> int | None:
        """The reservation in the bucket for this manifest; None if there is none for it."""
        found = await self._retrying(lambda: self.bucket.read(TAKEN_NAME))
        if found is None:
            return None
        try:
            fields = json.loads(found[0])
            if fields["fingerprint"] != self.fingerprint:
                return None
            return int(fields["upto"])
        except (ValueError, KeyError, TypeError):
            return None

    async def reserve(self, position: int) -> None:
        if position <= self.upto:
            return
        upto = position + RESERVE_AHEAD
        body = json.dumps({"fingerprint": self.fingerprint, "upto": upto}).encode()
        await self._retrying(lambda: self.bucket.put(TAKEN_NAME, body))
        self.upto = upto


def retrying_with(settings: RetrySettings) -> Retrying:
    """Each request to the store under the run's retry table."""

    def retrying(call: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        return with_retries(Request.STORE_WRITE, call, settings)

    return retrying


@dataclass(slots=True)
class BucketOutput:
    """An output in a bucket: held by its lease, its journal in a local state
    directory and checkpointed to the bucket, images written to it as they come."""

    bucket: Bucket
    state_dir: Path
    lease: Lease
    retrying: Retrying
    # Copies the journal to the bucket (once the run's journal is open).
    save: Save | None = None
    checkpoint_interval: float = CHECKPOINT_SECONDS
    # The whole output (a sharded one's root), as open_kept takes it.
    whole: str = ""

    @classmethod
    def for_run(cls, url: BucketUrl, target: Target, shard: Shard | None) -> BucketOutput:
        """A run's output at ``url``; what a bucket cannot do is refused here."""
        refuse_local_only(target)
        output = cls.at(
            url,
            target.storage_options,
            target.state_dir,
            shard,
            blocking=False,
            lease_seconds=target.lease_seconds,
            retry=RetrySettings(max_attempts=target.retries),
        )
        output.checkpoint_interval = target.checkpoint_interval
        return output

    @property
    def shown(self) -> str:
        return str(self.bucket.url)

    def finished(self, manifest: Manifest, shard: Shard | None) -> Report | None:
        return None  # the lease must be taken to know

    def siblings(self, shard: Shard | None) -> tuple[Path, ...]:
        return ()

    def fresh(self) -> None:
        raise ConfigError(LOCAL_ONLY["fresh"])  # refused by for_run already

    async def open(
        self, held: contextlib.AsyncExitStack, run: RunPlan
    ) -> tuple[Journal, EngineSettings, Fetcher]:
        backend = run.backend
        # The store's first request: refused credentials end the run here.
        self.bucket.blocking = backend.offload is inline
        await held.enter_async_context(leased(self))
        held.enter_context(OutputLock(self.state_dir))
        taken = Taken(self.bucket, run.fingerprint, self.retrying)
        journal, present = await start(
            self,
            lambda: Journal(self.state_dir, failed_job_limit=run.target.job_attempts),
            lambda: units_of(run.manifest, run.shard),
            sent_for(run.settings),
            backend.offload,
            COMPLETE_KEY,
            taken,
            run.target.rebuild_journal,
        )
        images = BucketImages(
            backend.downloader, self.bucket, self.state_dir, backend.settings.retry, backend.offload
        )
        settings = dataclasses.replace(
            run.settings,
            files_intact=present.intact if present is not None else trusted,
            stamp=images.stamp,
            reserve=taken.reserve,
            keep_input=images.keep_input,
            set_aside=images.set_aside,
            rewrite=images.rewrite,
        )
        self.save = functools.partial(
            checkpoint,
            self.bucket,
            journal,
            backend.client.server_now,
            backend.settings.retry,
            backend.offload,
        )
        try:  # where a new machine starts from if this one is lost from now on
            await self.save()
        except BaseException:
            journal.close()
            raise
        return journal, settings, images

    def alongside(self, run: RunPlan) -> Callable[[], Coroutine[Any, Any, None]] | None:
        assert self.save is not None
        return functools.partial(keep, self, self.save, self.checkpoint_interval)

    async def close(self, journal: Journal, run: RunPlan) -> None:
        await run.backend.offload(write_views_if_possible, journal, self.state_dir, None)
        assert self.save is not None
        await finish(self, self.save, run.backend.settings.retry, run.backend.offload)

    @classmethod
    def at(
        cls,
        url: BucketUrl,
        storage_options: list[str] | dict[str, str] | None,
        state_dir: Path | str | None,
        shard: Shard | None,
        *,
        blocking: bool,
        lease_seconds: float = LEASE_SECONDS,
        retry: RetrySettings | None = None,
    ) -> BucketOutput:
        state = Path(state_dir) if state_dir is not None else default_state_root() / state_key(url)
        bucket = Bucket.open(url, parse_storage_options(storage_options), blocking=blocking)
        bucket.slots = WriteSlots()
        if shard is not None:
            bucket, state = bucket.child(shard.directory), state / shard.directory
        retrying = retrying_with(retry or RetrySettings())
        lease = Lease(bucket, lease_seconds, retrying)
        return cls(bucket, state, lease, retrying, whole=str(url))


def refuse_local_only(target: Target) -> None:
    for name, why in LOCAL_ONLY.items():
        if getattr(target, name):
            raise ConfigError(f"{why}; it is not available with an output in a bucket")


async def start(
    output: BucketOutput,
    journal_opener: Callable[[], Journal],
    units: Callable[[], Iterable[Unit]],
    sent_for: Callable[[Unit], str],
    offload: Offload,
    complete_key: str,
    taken: Taken,
    rebuild: bool = False,
) -> tuple[Journal, Present | None]:
    """The run's journal: the state directory's, or the bucket's checkpoint restored
    (with what it cannot prove marked so), or with ``rebuild`` (for a bucket whose
    checkpoint is lost) one rebuilt from its ``results.jsonl`` and its listing.  With a
    restored or rebuilt one, what the bucket lists."""
    journal = journal_opener()
    if not await offload(journal.is_empty):
        if rebuild:
            raise _rebuild_refused(journal, f"{journal.path} holds units (an empty --state-dir)")
        if await _still_latest(output.bucket, journal, offload):
            taken.upto = await taken.recorded() or 0
            return journal, None
        journal.close()
        aside = await offload(_set_aside, journal.path)
        log.warning(
            "%s: another machine has run on it since this one's journal was last "
            "checkpointed; that journal is kept as %s, and the run starts from the "
            "bucket's checkpoint",
            output.bucket.url,
            aside,
        )
    else:
        journal.close()
    written = await restore_checkpoint(output.bucket, output.state_dir, offload)
    journal = journal_opener()
    if written is None:
        present = await _without_checkpoint(output, journal, units, sent_for, offload, rebuild)
        taken.upto = await taken.recorded() or 0
        return journal, present
    if rebuild:
        raise _rebuild_refused(journal, f"{output.bucket.url} has a checkpoint, restored")
    try:
        # Units past the reservation were never taken, so never submitted.
        upto = await taken.recorded()
        taken.upto = upto or 0
        marked = await _mark_unknown(journal, written, units, sent_for, offload, complete_key, upto)
        present = await Present.listed(output.bucket)
    except BaseException:
        journal.close()
        raise
    log.warning(
        "%s: no local state in %s; started from the bucket's checkpoint of %s: %d images "
        "listed, %d units it does not know are looked for in the account's jobs first",
        output.bucket.url,
        output.state_dir,
        written.isoformat(timespec="seconds"),
        len(present.sizes),
        marked,
    )
    return journal, present


def _rebuild_refused(journal: Journal, why: str) -> ConfigError:
    journal.close()
    return ConfigError(f"--rebuild-journal: {why}; it is for a bucket whose checkpoint is lost")


async def _without_checkpoint(
    output: BucketOutput,
    journal: Journal,
    units: Callable[[], Iterable[Unit]],
    sent_for: Callable[[Unit], str],
    offload: Offload,
    rebuild: bool,
) -> Present | None:
    """A bucket with no checkpoint: a new output, or (its images there) one whose
    journal is lost, rebuilt if asked and refused if not (a run would pay again)."""
    if rebuild:
        return await _rebuilt(output, journal, units, sent_for, offload)
    if await _has_images(output.bucket):
        journal.close()
        raise JournalMissingError(
            f"{output.bucket.url}: images are there but no journal (not in "
            f"{output.state_dir}, no checkpoint in the bucket): a run now would pay "
            "for every unit again. Run with --rebuild-journal to rebuild it from the "
            "bucket's results.jsonl, its images and the account's jobs, or use a new "
            "prefix"
        )
    return None


async def _mark_unknown(
    journal: Journal,
    written: datetime,
    units: Callable[[], Iterable[Unit]],
    sent_for: Callable[[Unit], str],
    offload: Offload,
    complete_key: str,
    upto: int | None,
) -> int:
    """Each unit a restored checkpoint does not know, before the reservation, marked
    as maybe submitted since it was taken; how many."""
    # The API's time when the checkpoint was taken, else the store's.
    recorded = (await offload(journal.recall, CHECKPOINT_KEY)).get("")
    when = datetime.fromisoformat(recorded) if recorded else written
    since = (when - CHECKPOINT_LOOKBACK).isoformat()

    def mark() -> int:
        marked = 0
        with journal.batch(durable=True):
            # The finished batch it may record is proved again, object by object.
            journal.remember(complete_key, "")
            for position, unit in enumerate(units()):
                if upto is not None and position >= upto:
                    break
                if journal.get(unit.id) is None:
                    journal.restore(unit.id, State.SUBMITTING, started=since, sent=sent_for(unit))
                    marked += 1
        return marked

    marked: int = await offload(mark)
    return marked


async def _still_latest(bucket: Bucket, journal: Journal, offload: Offload) -> bool:
    """Whether the local journal is the newest state of the output: the bucket's
    checkpoint is the one it last wrote (or there is none).  Another machine that took
    the output over since wrote its own, which knows what this journal does not."""
    there = await bucket.head(CHECKPOINT_NAME)
    if there is None:
        return True
    recalled: dict[str, str] = await offload(journal.recall, CHECKPOINT_ETAG_KEY)
    return recalled.get("") == there.e_tag


def _set_aside(path: Path) -> Path:
    aside = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(aside.with_name(aside.name + suffix))
    return aside


async def _rebuilt(
    output: BucketOutput,
    journal: Journal,
    units: Callable[[], Iterable[Unit]],
    sent_for: Callable[[Unit], str],
    offload: Offload,
) -> Present:
    """``--rebuild-journal`` on a bucket whose checkpoint is lost: its ``results.jsonl``
    fetched into the state directory and rebuilt from (see :mod:`batchgen.store.rebuild`),
    each file recorded as the bucket lists it; what the bucket lists."""
    try:
        listed = await BucketRemains.listed(output.bucket)
        await output.bucket.download(RESULTS_NAME, output.state_dir / RESULTS_NAME)

        def rebuild_all() -> Rebuilt:
            with journal.batch(durable=True):
                return rebuild(journal, output.state_dir, units(), sent_for, listed)

        rebuilt = await offload(rebuild_all)
    except BaseException:
        journal.close()
        raise
    log.warning(
        "%s: journal rebuilt from the bucket: %d units from results.jsonl; %d others may "
        "have been submitted since %s and are looked for in the account's jobs first",
        output.bucket.url,
        rebuilt.restored,
        rebuilt.uncertain,
        rebuilt.since,
    )
    return listed.present


@dataclass(frozen=True, slots=True)
class BucketRemains:
    """A bucket's images as listed once: a file is taken to hold its bytes while it is
    listed (as after a checkpoint's restore), with its size as its stamp."""

    present: Present

    @classmethod
    async def listed(cls, bucket: Bucket) -> BucketRemains:
        return cls(await Present.listed(bucket))

    def stamp(self, relative: str, sha256: str) -> Stamp | None:
        size = self.present.sizes.get(relative)
        return None if size is None else (size, OBJECT_MTIME)

    def oldest(self) -> float:
        first = self.present.first_written
        return (first or datetime.now(UTC)).timestamp()


async def _has_images(bucket: Bucket) -> bool:
    async with contextlib.aclosing(bucket.listing(IMAGES_DIR + "/")) as pages:
        async for page in pages:
            if page:
                return True
    return False


Save = Callable[[], Awaitable[None]]


# A checkpoint waits at least this many times as long as the last one took: copying a
# journal of millions of units to the bucket never takes more than a tenth of the run.
CHECKPOINT_SHARE = 10


async def keep(output: BucketOutput, save: Save, interval: float = CHECKPOINT_SECONDS) -> None:
    """Renew the lease and checkpoint the journal, until cancelled; two loops, so that a
    long checkpoint never delays a renewal.  A lease lost raises (the run must stop
    writing)."""
    async with anyio.create_task_group() as both:
        both.start_soon(_renew, output)
        both.start_soon(_checkpoints, save, interval)


async def _renew(output: BucketOutput) -> None:
    renew_every = max(output.lease.seconds / RENEWALS_PER_LEASE, 1.0)
    while True:
        await anyio.sleep(renew_every)
        await output.lease.renew()


async def _checkpoints(save: Save, interval: float) -> None:
    wait = interval
    while True:
        await anyio.sleep(wait)
        started = anyio.current_time()
        await save()
        wait = max(interval, CHECKPOINT_SHARE * (anyio.current_time() - started))


async def finish(output: BucketOutput, save: Save, retry: RetrySettings, offload: Offload) -> None:
    """What every run to a bucket does at its end: spilled files, views, checkpoint,
    lease (each attempted even if one before it failed; the first failure raised).
    Nothing at all once the lease is lost: the run that took it over owns the views and
    the checkpoint now (and finds what this one did: its jobs in the account's list,
    its images in the bucket)."""
    if not output.lease.held:
        log.warning(
            "%s: the lease was lost; this run writes nothing more there (its journal "
            "in %s is set aside by its next run)",
            output.bucket.url,
            output.state_dir,
        )
        return
    failures: list[BaseException] = []
    for step in (
        lambda: flush_spilled(output.bucket, output.state_dir, retry, offload),
        lambda: put_files(
            output.bucket, output.state_dir, (RESULTS_NAME, METADATA_NAME), retry, offload
        ),
        save,
        output.lease.release,
    ):
        try:
            await step()
        except Exception as exc:  # noqa: PERF203  each step is tried
            failures.append(exc)
            log.warning("%s: %s", output.bucket.url, exc)
    if failures:
        raise failures[0]


@contextlib.asynccontextmanager
async def leased(output: BucketOutput) -> AsyncIterator[None]:
    await output.lease.acquire()
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await output.lease.release()


@dataclass(slots=True)
class Checkpointed:
    """One output under a bucket URL (itself, or one of its shards), its checkpoint
    restored into a local directory of its own, and what the bucket lists of it."""

    bucket: Bucket
    place: Path
    shard: Shard | None
    present: Present
    lease_held: bool


async def _lease_live(bucket: Bucket) -> bool:
    """Whether a run holds the output now, as far as a reader can tell without writing:
    a lease whose holder renewed it within its length (by this machine's clock: a
    killed run's lease, never renewed again, stops counting once it has expired)."""
    found = await bucket.read(LEASE_NAME)
    if found is None:
        return False
    _, declared = Holder.from_bytes(found[0])
    length = declared if declared is not None else LEASE_SECONDS
    return not has_expired(found[1].last_modified, datetime.now(UTC), length)


async def checkpointed(
    url: BucketUrl,
    storage_options: list[str] | dict[str, str] | None,
    into: Path,
    *,
    blocking: bool = True,
) -> list[Checkpointed]:
    """Every output at ``url`` with a checkpoint: itself, or each shard under it (for
    ``status`` and ``verify``, which read and never write)."""
    root = Bucket.open(url, parse_storage_options(storage_options), blocking=blocking)
    candidates: list[tuple[Bucket, Shard | None]] = [(root, None)]
    if await root.head(CHECKPOINT_NAME) is None:
        candidates = []
        for name in await root.folders():
            match = SHARD_DIRECTORY.match(name)
            if match:
                candidates.append((root.child(name), Shard(int(match[1]), int(match[2]))))
    found: list[Checkpointed] = []
    for bucket, shard in candidates:
        place = into / (shard.directory if shard is not None else "output")
        if await restore_checkpoint(bucket, place, inline) is None:
            continue
        present = await Present.listed(bucket)
        found.append(Checkpointed(bucket, place, shard, present, await _lease_live(bucket)))
    if not found:
        raise ConfigError(f"{url}: no batchgen checkpoint here (is it a run's output?)")
    return found
