"""The images units send, uploaded once each.

An input image becomes an asset by ``POST /v1/assets``; its id is what a model input
takes.  Each distinct file (by sha256) is uploaded once per output directory, however
many units, runs and kills: the journal keeps its asset id.  Like a submission, an
upload whose answer is lost may have made an asset, and nothing deduplicates by
content at the server, so before an upload is sent again the account's recent uploads
are read for the name it was given (``batchgen-<sha256>``: the name says what it is),
twice, a grace period apart, as the job list is for a lost POST; the journal records
when it was sent (fsynced first), so a run killed mid-upload finds it as well.

Uploads of different files run at once, up to :data:`UPLOADS_AT_ONCE`; units that
need the same file wait for its one upload.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import random
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import anyio

from ..config import RetrySettings
from ..errors import ApiError
from ..manifest.types import InputImage, Unit
from ..retry import Action, Request, decide, with_retries
from ..store.commits import GroupCommit
from ..store.journal import Journal
from .ports import Api, Offload
from .submit import UnitFailed, server_time
from .summary import Summary

log = logging.getLogger(__name__)

UPLOADS_AT_ONCE = 4
# The server's list may show a new asset a little late, and clocks disagree.
LOOK_BACK = timedelta(seconds=60)


def upload_name(image: InputImage) -> str:
    """What an image is uploaded as: its hash, so that its asset can be found by name."""
    return f"batchgen-{image.sha256[:32]}{image.path.suffix.lower()}"


class Uploader:
    def __init__(
        self,
        api: Api,
        journal: Journal,
        record: GroupCommit,
        retry: RetrySettings,
        rng: random.Random,
        offload: Offload,
        *,
        grace: float,
        at_once: int = UPLOADS_AT_ONCE,
        summary: Summary | None = None,
        siblings: Sequence[Path] = (),
    ) -> None:
        self._summary = summary
        # Other shards' journals beside this one: an image one of them uploaded is theirs
        # to lend (shards of one output root on a shared volume upload each file once).
        self._siblings = siblings
        self._api = api
        self._journal = journal
        self._record = record
        self._retry = retry
        self._rng = rng
        self._offload = offload
        self._grace = grace
        self._slots = anyio.CapacityLimiter(at_once)
        self._known: dict[str, str] = {}
        self._flights: dict[str, anyio.Event] = {}
        self.uploaded = 0  # uploads this run sent and saw answered

    async def assets_for(self, unit: Unit) -> dict[str, list[str]]:
        """The asset ids of a unit's images, by model input (uploading what is new)."""
        return {
            name: [await self.asset_id(image) for image in images]
            for name, images, _ in unit.inputs
        }

    def asset_of(self, sha256: str) -> str | None:
        """The asset id of an image uploaded (or found uploaded) by this run."""
        return self._known.get(sha256)

    async def asset_id(self, image: InputImage) -> str:
        while image.sha256 not in self._known:
            flight = self._flights.get(image.sha256)
            if flight is not None:
                await flight.wait()  # another unit is uploading it: its asset is ours
                continue
            flight = self._flights[image.sha256] = anyio.Event()
            try:
                self._known[image.sha256] = await self._upload(image)
            finally:
                del self._flights[image.sha256]
                flight.set()
        return self._known[image.sha256]

    async def _upload(self, image: InputImage) -> str:
        name = upload_name(image)
        kept = await self._record(functools.partial(self._journal.upload, image.sha256))
        if kept is not None:
            _, kept_id, kept_started = kept
            if kept_id:
                return kept_id
            if kept_started:  # sent by an earlier run that never saw the answer
                found = await self._find(name, server_time(kept_started))
                if found is not None:
                    return await self._adopt(image, found)
        lent = await self._offload(self._from_siblings, image.sha256)
        if lent is not None:
            return await self._adopt(image, lent)
        content = await self._offload(image.path.read_bytes)
        if hashlib.sha256(content).hexdigest() != image.sha256:
            raise UnitFailed(f"{image.path}: changed while the run went on", permanent=False)
        for _ in range(self._retry.max_attempts):
            started = self._api.server_now()
            await self._record(
                functools.partial(
                    self._journal.uploading, image.sha256, name, started.isoformat(), len(content)
                ),
                durable=True,
            )
            try:
                async with self._slots:
                    asset_id = await with_retries(
                        Request.UPLOAD,
                        lambda: self._api.upload_image(name, content),
                        self._retry,
                        self._rng,
                    )
            except ApiError as exc:
                if decide(Request.UPLOAD, exc) is not Action.RECONCILE:
                    permanent = decide(Request.UPLOAD, exc) is Action.FAIL_FOR_GOOD
                    reason = f"uploading {image.path.name}: {exc}"
                    raise UnitFailed(reason, permanent=permanent) from exc
                log.warning("%s: %s; looking for the asset it may have made", image.path, exc)
                found = await self._find(name, started)
                if found is not None:
                    return await self._adopt(image, found)
                continue
            self.uploaded += 1
            if self._summary is not None:
                self._summary.uploaded += 1
            await self._record(functools.partial(self._journal.uploaded, image.sha256, asset_id))
            log.info("uploaded %s as %s", image.path, asset_id)
            return asset_id
        raise UnitFailed(f"uploading {image.path.name}: its answers were lost", permanent=False)

    def _from_siblings(self, sha256: str) -> str | None:
        """The asset id another shard's journal has for this image (blocking)."""
        for path in self._siblings:
            try:
                with contextlib.closing(
                    sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
                ) as other:
                    found = other.execute(
                        "SELECT asset_id FROM uploads WHERE sha256 = ? AND asset_id IS NOT NULL",
                        (sha256,),
                    ).fetchone()
            except sqlite3.Error:
                continue  # an older journal, or one being written: this run uploads it
            if found:
                return str(found[0])
        return None

    async def _adopt(self, image: InputImage, asset_id: str) -> str:
        log.info("%s: adopted asset %s (its upload's answer was lost)", image.path, asset_id)
        await self._record(functools.partial(self._journal.uploaded, image.sha256, asset_id))
        return asset_id

    async def _find(self, name: str, since: datetime) -> str | None:
        """The asset an upload sent at ``since`` made, if the account's uploads show one:
        read twice, ``grace`` apart (a new asset shows in the list a little late)."""
        for look in range(2):
            found = await with_retries(
                Request.OTHER_READ,
                lambda: self._api.uploads_created_after(since - LOOK_BACK),
                self._retry,
                self._rng,
            )
            if name in found:
                return found[name]
            if look == 0:
                await anyio.sleep(self._grace)
        return None
