"""One writer per output prefix, across machines: a lease object in the bucket.

``_batchgen/lease.json`` under the output (each shard has its own) says who holds it.
It is created with a conditional write (``If-None-Match: *``), so of two runs starting
at once exactly one gets it, and renewed :data:`RENEWALS_PER_LEASE` times in its length
with compare-and-swap (``If-Match`` on the ETag the holder last wrote), so a holder that
lost it (taken over after it stopped renewing for a whole lease) finds out at its next
renewal and stops.  A run that finds the lease held is refused, naming the holder and
when the lease expires unless renewed.

Expiry is judged on the store's clock, never on a machine's: the lease's age is the
store's time now (read from the modification time of a probe object this run writes)
less the lease's modification time.  Two machines whose clocks disagree by minutes
still agree on whether a lease has expired.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ..errors import OutputLockedError
from ..store.bucket import STATE_PREFIX, Bucket, Found

log = logging.getLogger(__name__)

LEASE_NAME = f"{STATE_PREFIX}/lease.json"
LEASE_SECONDS = 120.0
# A lease is renewed four times in its length (a renewal may fail and be retried).
RENEWALS_PER_LEASE = 4


def expires_at(written: datetime, seconds: float = LEASE_SECONDS) -> datetime:
    return written + timedelta(seconds=seconds)


def has_expired(written: datetime, store_now: datetime, seconds: float = LEASE_SECONDS) -> bool:
    """Whether a lease last written at ``written`` (the store's clock) has run out by
    ``store_now`` (the store's clock too)."""
    return store_now >= expires_at(written, seconds)


@dataclass(frozen=True, slots=True)
class Holder:
    host: str
    pid: int
    run: str

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex)

    def to_bytes(self, seconds: float) -> bytes:
        return json.dumps(
            {"host": self.host, "pid": self.pid, "run": self.run, "seconds": seconds}
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[Holder, float | None]:
        """The holder, and the lease's length as it declared it."""
        try:
            fields = json.loads(data)
            holder = cls(str(fields["host"]), int(fields["pid"]), str(fields["run"]))
        except (ValueError, KeyError, TypeError):
            return cls("an unknown host", 0, ""), None
        seconds = fields.get("seconds")
        return holder, float(seconds) if isinstance(seconds, int | float) else None

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


class Lease:
    """Taken with :meth:`acquire`, kept with :meth:`renew`, given back with
    :meth:`release`.  ``retrying`` runs each request to the store (the run's retry
    table: a lease is never lost to one 503)."""

    def __init__(
        self, bucket: Bucket, seconds: float = LEASE_SECONDS, retrying: Retrying | None = None
    ) -> None:
        self.bucket = bucket
        self.seconds = seconds
        self.holder = Holder.this_process()
        self._retrying: Retrying = retrying or _once
        self._e_tag: str | None = None

    @property
    def held(self) -> bool:
        return self._e_tag is not None

    async def acquire(self) -> None:
        body = self.holder.to_bytes(self.seconds)
        for _ in range(3):  # the lease may go (released) between the two calls
            self._e_tag = await self._retrying(lambda: self.bucket.create(LEASE_NAME, body))
            if self._e_tag is not None:
                return
            found = await self._retrying(lambda: self.bucket.read(LEASE_NAME))
            if found is None:
                continue
            data, lease = found
            holder, declared = Holder.from_bytes(data)
            if holder == self.holder:  # written by an attempt whose answer was lost
                self._e_tag = _e_tag(lease)
                return
            # The holder's own length: it renews on that rhythm, whatever ours is.
            length = declared if declared is not None else self.seconds
            store_now = await self.store_now()
            if not has_expired(lease.last_modified, store_now, length):
                until = expires_at(lease.last_modified, length)
                raise OutputLockedError(
                    f"{self.bucket.url}: another run holds it ({holder}); its lease "
                    f"expires at {until.isoformat(timespec='seconds')} unless renewed"
                )
            expired = _e_tag(lease)
            self._e_tag = await self._retrying(
                functools.partial(self.bucket.replace, LEASE_NAME, body, expired)
            )
            if self._e_tag is not None:
                log.warning(
                    "%s: took over the lease of %s, which expired at %s",
                    self.bucket.url,
                    holder,
                    expires_at(lease.last_modified, length).isoformat(timespec="seconds"),
                )
                return
        raise OutputLockedError(f"{self.bucket.url}: another run took the lease just now")

    async def renew(self) -> None:
        """Write the lease again, if it is still ours; else the run must stop."""
        if self._e_tag is None:
            raise OutputLockedError(f"{self.bucket.url}: the lease is not held")
        held = self._e_tag
        body = self.holder.to_bytes(self.seconds)
        renewed = await self._retrying(lambda: self.bucket.replace(LEASE_NAME, body, held))
        if renewed is None:
            # Ours still if an attempt wrote it and its answer was lost.
            found = await self._retrying(lambda: self.bucket.read(LEASE_NAME))
            if found is not None and Holder.from_bytes(found[0])[0] == self.holder:
                renewed = _e_tag(found[1])
        if renewed is None:
            self._e_tag = None
            raise OutputLockedError(
                f"{self.bucket.url}: the lease was taken over by another run (it was not "
                f"renewed for {self.seconds:g} s); this run stops"
            )
        self._e_tag = renewed

    async def release(self) -> None:
        if self._e_tag is None:
            return
        found = await self._retrying(lambda: self.bucket.head(LEASE_NAME))
        if found is not None and found.e_tag == self._e_tag:
            await self._retrying(lambda: self.bucket.delete(LEASE_NAME))
        self._e_tag = None

    async def store_now(self) -> datetime:
        """The store's clock now: the modification time of an object written now."""
        probe = f"{STATE_PREFIX}/clock-{self.holder.run}"
        await self._retrying(lambda: self.bucket.put(probe, b""))
        found: Found | None = await self._retrying(lambda: self.bucket.head(probe))
        await self._retrying(lambda: self.bucket.delete(probe))
        if found is None:
            raise OutputLockedError(f"{self.bucket.url}: cannot read the store's clock")
        return found.last_modified


T = TypeVar("T")
# Runs one request to the store, retrying it as the caller's policy says.
Retrying = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


async def _once(call: Callable[[], Awaitable[T]]) -> T:
    return await call()


def _e_tag(found: Found) -> str:
    if found.e_tag is None:
        raise OutputLockedError(f"{found.key}: the store gives no ETag; it cannot hold a lease")
    return found.e_tag
