"""The simulator over HTTP: two aiohttp applications (the API and the CDN) on loopback,
each request carried to :class:`~batchgen.sim.state.Simulator` and its answer back, as a
network would carry it (:class:`~batchgen.sim.records.Network`: pieces, gzip, chunked
encoding, latency, idle connections dropped)."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web

from .records import Network, SimConfig, SimRequest
from .state import Simulator, _route

# An idle connection's mark once the "load balancer" has dropped it.
DROPPED = -float("inf")
_IS_CDN = web.AppKey("is_cdn", bool)


class HttpSimulator:
    """The HTTP face of one simulator: its two applications and the network between."""

    def __init__(self, simulator: Simulator) -> None:
        self.sim = simulator
        self._idle_since: weakref.WeakKeyDictionary[asyncio.BaseTransport, float] = (
            weakref.WeakKeyDictionary()
        )
        self._rng = simulator._network_rng

    def drop_idle_connections(self) -> int:
        """Drop every kept-alive connection now idle, as a load balancer does after its
        idle timeout, without telling the client: the next request sent on one of them
        gets no answer.  Returns how many there were."""
        idle = [t for t in self._idle_since if not t.is_closing()]
        for transport in idle:
            self._idle_since[transport] = DROPPED
        return len(idle)

    # ------------------------------------------------------------------ the network

    @web.middleware
    async def _network(self, request: web.Request, handler: Any) -> web.StreamResponse:
        net = self.sim.config.network
        transport = request.transport
        if transport is not None:
            idle_from = self._idle_since.pop(transport, None)
            route = _route(request.method, request.path)[0]
            drop_reused = self.sim.drop_reused
            if idle_from is not None and (
                idle_from == DROPPED
                or (net.idle_close is not None and time.monotonic() - idle_from >= net.idle_close)
                or (drop_reused is not None and drop_reused(route))
            ):
                self.sim.connections_dropped[route] += 1
                transport.abort()
                return web.Response(status=502)  # never reaches the client
        low, high = net.latency
        delay = self._rng.uniform(low, high) if high > 0 else 0.0
        if delay:
            await asyncio.sleep(delay / 2)
        response: web.StreamResponse = await handler(request)
        if delay:
            await asyncio.sleep(delay / 2)
        if transport is not None and transport.is_closing():
            return response  # dropped on purpose: nothing more is written
        if isinstance(response, web.Response) and not response.prepared and not net.kind:
            response = await self._send_in_pieces(request, response, net)
        if transport is not None and not transport.is_closing():
            self._idle_since[transport] = time.monotonic()
        return response

    async def _send_in_pieces(
        self, request: web.Request, response: web.Response, net: Network
    ) -> web.StreamResponse:
        body = response.body if isinstance(response.body, bytes) else b""
        headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in ("content-length", "transfer-encoding", "content-encoding")
        }
        api = request.app.get(_IS_CDN) is None
        if api and net.gzip and "gzip" in request.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        stream = web.StreamResponse(status=response.status, reason=response.reason, headers=headers)
        if net.chunked:
            stream.enable_chunked_encoding()
        else:
            stream.content_length = len(body)
        await stream.prepare(request)
        first = net.first_cdn_piece if not api and net.first_cdn_piece else net.piece_bytes
        size = net.piece_bytes or len(body) or 1
        offset = 0
        while offset < len(body):
            step = first if offset == 0 and first else size
            await stream.write(body[offset : offset + step])
            offset += step
            if offset < len(body) and net.piece_pause:
                await asyncio.sleep(net.piece_pause)
        await stream.write_eof()
        return stream

    # ------------------------------------------------------------------ the origins

    async def _api(self, request: web.Request) -> web.Response:
        answer = self.sim.handle(
            SimRequest(
                request.method,
                request.path,
                {name: request.query[name] for name in request.query},
                {name: value for name, value in request.headers.items()},
                await request.read(),
            )
        )
        if answer.drop and request.transport is not None:
            request.transport.abort()  # the job exists; its answer is lost
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers=dict(answer.headers),
            content_type="application/json",
        )

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        answer = self.sim.cdn_get(str(request.rel_url), request.headers)
        if answer.status != 200:
            return web.Response(status=answer.status, body=answer.content)
        if len(answer.content) < answer.announced:
            # Cut half-way, after the full length was announced.
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.content_length = answer.announced
            await response.prepare(request)
            await response.write(answer.content)
            if request.transport is not None:
                request.transport.abort()
            return response
        return web.Response(body=answer.content, content_type="image/png")

    def api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._network])
        app.router.add_route("*", "/{tail:.*}", self._api)
        return app

    def cdn_app(self) -> web.Application:
        app = web.Application(middlewares=[self._network])
        app[_IS_CDN] = True
        app.router.add_get("/assets/{asset_id}.png", self._cdn)
        return app


@asynccontextmanager
async def serve(
    config: SimConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    cdn_port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Simulator]:
    """Run the API and CDN origins on loopback for the duration of the block; over
    HTTPS with ``ssl_context`` (a server context).  The simulator keeps real time."""
    simulator = Simulator(config or SimConfig(), clock=time.monotonic, wall=time.time)
    http = HttpSimulator(simulator)
    simulator.drop_idle_connections = http.drop_idle_connections
    scheme = "https" if ssl_context is not None else "http"
    runners: list[web.AppRunner] = []
    try:
        urls = []
        for app, wanted in ((http.api_app(), port), (http.cdn_app(), cdn_port)):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, host, wanted, ssl_context=ssl_context)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            urls.append(f"{scheme}://{bound_host}:{bound_port}")
        simulator.api_url, simulator.cdn_url = urls
        yield simulator
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        simulator.close()
