"""What the engine needs of the world, as protocols: the API (the client is one, and so
is the client over the simulator's in-memory transport) and the downloader (the real
one, or the tests' fake).  The engine imports no transport."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from ..scenario.download import Fetcher
from ..scenario.records import Asset, JobRecord, Submission, Verdict

T = TypeVar("T")

# How blocking work (SQLite, files) is run: in a worker thread, or inline in tests
# that keep virtual time (a thread would let the clock jump while it works).
Offload = Callable[..., Awaitable[Any]]


class Api(Protocol):
    def server_now(self) -> datetime: ...

    async def submit(self, model: str, body: dict[str, Any]) -> Submission: ...

    async def estimate(self, model: str, body: dict[str, Any]) -> float | None: ...

    async def get_job(self, job_id: str) -> JobRecord: ...

    async def cancel_job(self, job_id: str) -> None: ...

    async def get_assets(self, asset_ids: Sequence[str]) -> list[Asset]: ...

    async def lookup_assets(self, asset_ids: Sequence[str]) -> dict[str, Asset]: ...

    async def jobs_created_after(self, since: datetime) -> list[JobRecord]: ...

    async def jobs_updated_after(self, since: datetime) -> list[JobRecord]: ...

    async def upload_image(self, name: str, content: bytes) -> str: ...

    async def uploads_created_after(self, since: datetime) -> dict[str, str]: ...

    async def quality_gate(self, asset_id: str, sensitivity: str | None) -> Verdict: ...

    async def stored_verdict(self, asset_id: str) -> Verdict | None: ...

    async def gate_price(self, asset_id: str, sensitivity: str | None) -> float | None: ...


async def inline(call: Callable[..., T], *args: Any) -> T:
    """Run blocking work right here: the offload for tests on virtual time."""
    return call(*args)


__all__ = ["Api", "Fetcher", "Offload", "inline"]
