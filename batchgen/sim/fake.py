"""The simulator in memory: the real client, through a :class:`MockTransport`, talking to
:meth:`Simulator.handle`; and a fetcher that takes the CDN's bytes straight from it.

No socket, no thread: the engine's tests run the whole pipeline on virtual time (trio's
``MockClock(autojump_threshold=0)``, through anyio), so a job of an hour takes no time
and no test sleeps.  The simulator's clock is the event loop's, and the server's wall
clock starts at :data:`EPOCH`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anyio
from yarl import URL

from ..config import MAX_ASSET_BYTES, ApiSettings, Credentials
from ..errors import DownloadError
from ..scenario.client import ScenarioClient
from ..scenario.download import Downloaded, Fetched, ImageCheck
from ..scenario.transport import Answer, ConnectionDropped, MockTransport, Outgoing
from ..store.faults import storage_error
from ..store.files import PartFile
from .records import SimConfig, SimRequest
from .state import Simulator

# The server's wall clock when the virtual clock reads 0 (2027-01-15T08:00:00Z).
EPOCH = 1_800_000_000.0


def virtual_simulator(config: SimConfig) -> Simulator:
    """A simulator on the running event loop's clock."""
    return Simulator(
        config,
        clock=anyio.current_time,
        wall=lambda: EPOCH + anyio.current_time(),
    )


def client_for(sim: Simulator, *, project_id: str | None = None) -> ScenarioClient:
    """The real API client, its requests carried to ``sim`` in memory."""

    def carry(request: Outgoing) -> Answer:
        body = json.dumps(request.body).encode() if request.body is not None else b""
        answer = sim.handle(
            SimRequest(
                request.method,
                request.url.path,
                dict(request.url.query),
                dict(request.headers),
                body,
            )
        )
        if answer.drop:
            raise ConnectionDropped("the connection was closed (ServerDisconnectedError)")
        wait = answer.headers.get("Retry-After")
        return Answer(
            answer.status,
            answer.body,
            float(wait) if wait else None,
            answer.headers.get("Date"),
        )

    credentials = Credentials(sim.config.api_key, sim.config.api_secret)
    settings = ApiSettings(base_url=sim.api_url, credentials=credentials, project_id=project_id)
    return ScenarioClient(settings, MockTransport(carry))


@dataclass
class FakeFetcher:
    """Downloads from the simulator's CDN, checked and placed as the real downloader
    checks and places them (:class:`ImageCheck`, :class:`PartFile`), inline."""

    sim: Simulator

    async def fetch(
        self,
        url: str,
        destination: Path,
        expected_size: int | None = None,
        *,
        fallback: Path | None = None,
        unit_id: str | None = None,
    ) -> Downloaded:
        fetched = await self.fetch_bytes(url, expected_size)
        sha256 = fetched.sha256
        part = PartFile(destination)
        try:
            placed = part.finish(fetched.data, destination, fallback, sha256)
        except OSError as exc:
            raise storage_error(exc, destination) from exc
        finally:
            part.discard()
        return Downloaded(placed, len(fetched.data), sha256, fetched.dimensions)

    async def fetch_bytes(self, url: str, expected_size: int | None = None) -> Fetched:
        await anyio.lowlevel.checkpoint()
        host = URL(url).host
        answer = self.sim.cdn_get(url, {})
        if answer.status != 200:
            transient = answer.status in (403, 408, 429) or answer.status >= 500
            raise DownloadError(
                f"asset host {host} answered HTTP {answer.status}", transient=transient
            )
        limit = min(x for x in (answer.announced, expected_size, MAX_ASSET_BYTES) if x)
        check = ImageCheck(host, limit)
        check.feed(answer.content)
        if len(answer.content) < answer.announced:
            raise DownloadError(f"download from {host} failed: ClientPayloadError")
        sha256 = check.finish(answer.announced, expected_size)
        return Fetched(bytes(answer.content), sha256, check.dimensions())
