"""How requests travel: the only module that speaks HTTP to the API.

:class:`ScenarioClient` (``client.py``) builds requests and reads answers; a transport
carries them.  :class:`AiohttpTransport` is the real one: a session with the user's
network (a proxy from ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``, the CA bundle from
``SSL_CERT_FILE``), each answer read whole however it arrives and refused past a bound.
:class:`MockTransport` hands each request to a function instead: the seam the engine's
tests and the simulator's in-memory API use, with no socket at all.

A transport turns every network failure into one of three, which say what the client
needs to know about a request that may have created a job:

::

    TransportError
    ├── CannotConnect         nothing was sent
    ├── ConnectionDropped     the connection closed with no answer at all (most often
    │                         a kept-alive connection that was closed while idle)
    └── NoAnswer              sent, then no whole answer: a timeout, a cut answer, or
                              an answer past the bound
"""

from __future__ import annotations

import base64
import inspect
import ssl
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
import anyio
from yarl import URL

USER_AGENT = "batchgen/0.1"


class TransportError(Exception):
    """A request that got no answer; the message never holds a secret or a signed URL."""


class CannotConnect(TransportError):
    """Nothing reached the server."""


class ConnectionDropped(TransportError):
    """The connection closed before any answer: the request may or may not have arrived."""


class NoAnswer(TransportError):
    """The request was sent and no whole answer came back."""


class AnswerTooLarge(NoAnswer):
    """The answer went on past the bytes any answer of the API's may have: a broken or
    hostile server (an endless body, a decompression bomb), not a slow network."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    # The wait the server asks for (Retry-After or retry-after-ms), in seconds.
    retry_after: float | None = None
    # The server's clock when it answered (the Date header), as given.
    date: str | None = None


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One request as a transport carries it."""

    method: str
    url: URL
    headers: Mapping[str, str]
    body: Any = None  # a JSON value, or None


class Transport(Protocol):
    async def send(self, request: Outgoing, *, limit: int) -> Answer: ...


# ---------------------------------------------------------------------- the real one


class AiohttpTransport:
    def __init__(
        self, session: aiohttp.ClientSession, seconds: float, proxies: Proxies | None = None
    ) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=seconds)
        self._proxies = proxies or Proxies()

    async def send(self, request: Outgoing, *, limit: int) -> Answer:
        url = request.url
        try:
            async with self._session.request(
                request.method,
                url,
                json=request.body,
                headers=dict(request.headers),
                allow_redirects=False,
                timeout=self._timeout,
                **proxy_options(self._proxies.for_url(url)),
            ) as response:
                status = response.status
                wait = retry_after_seconds(response.headers)
                date = response.headers.get("Date")
                body = await read_body(response, limit)
        except aiohttp.ClientConnectorError as exc:
            raise CannotConnect(f"cannot connect to {url.host}:{url.port} ({_why(exc)})") from exc
        except aiohttp.ClientHttpProxyError as exc:
            raise CannotConnect(f"the proxy refused to carry it (HTTP {exc.status})") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise ConnectionDropped(f"the connection was closed ({type(exc).__name__})") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise NoAnswer(f"{type(exc).__name__} before the answer arrived") from exc
        return Answer(status, body, wait, date)


def _why(exc: aiohttp.ClientConnectorError) -> str:
    """What stopped a connection, in a few words (no address the user did not give)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS: the certificate was not accepted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS failed"
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return "the proxy cannot be reached"
    if isinstance(exc.os_error, OSError) and exc.os_error.strerror:
        return str(exc.os_error.strerror)
    return type(exc).__name__


async def read_body(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, decoded from its ``Content-Encoding``, however many pieces it
    arrives in; :class:`NoAnswer` as soon as it passes ``limit`` bytes, without reading
    further.  (``content.read(n)`` would return only what has arrived so far.)"""
    pieces: list[bytes] = []
    size = 0
    while piece := await response.content.readany():
        size += len(piece)
        if size > limit:
            raise AnswerTooLarge(f"an answer larger than {limit} bytes")
        pieces.append(piece)
    return b"".join(pieces)


def retry_after_seconds(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """How long the server asks us to wait: ``retry-after-ms``, or ``Retry-After`` in
    seconds or as an HTTP date (as the official SDK reads them); None if it does not say.
    The caller caps it."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


# ---------------------------------------------------------------------- the network


def tls_context() -> ssl.SSLContext:
    """A verifying TLS context made now, so it honours the environment's CA bundle
    (``SSL_CERT_FILE``, ``SSL_CERT_DIR``) as the official SDK does; aiohttp's default
    one is made when aiohttp is imported.  Blocking (it reads the bundle)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


async def open_session(**options: Any) -> aiohttp.ClientSession:
    """An aiohttp session with a TLS context that honours the environment's CA bundle.
    Not ``trust_env``: that would also send ``~/.netrc`` credentials to any host it
    names (a signed CDN URL must get none) and cost a thread trip per request;
    proxies come from :class:`Proxies` instead."""
    context = await anyio.to_thread.run_sync(tls_context)
    limit = options.pop("limit", 100)
    connector = aiohttp.TCPConnector(limit=limit, ssl=context)
    return aiohttp.ClientSession(connector=connector, **options)


class Proxies:
    """The proxy for each URL, from ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` (either
    case), as the official SDK (httpx) and curl read them; worked out once per origin."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        if environ is None:
            self._proxies = urllib.request.getproxies_environment()
        else:
            self._proxies = {
                name[: -len("_proxy")].lower(): value
                for name, value in environ.items()
                if name.lower().endswith("_proxy") and value
            }
        self._known: dict[tuple[str, str], Proxy | None] = {}

    def for_url(self, url: URL) -> Proxy | None:
        origin = (url.scheme, url.host or "")
        if origin not in self._known:
            given = self._proxies.get(url.scheme)
            bypass = _no_proxy(url, self._proxies.get("no", ""))
            self._known[origin] = Proxy.parse(given) if given and not bypass else None
        return self._known[origin]


def _no_proxy(url: URL, rules: str) -> bool:
    """Whether ``NO_PROXY`` exempts the URL: ``*``, or a host, domain (``example.com`` and
    ``.example.com`` both cover ``a.example.com``) or IP address, optionally with a port."""
    host = (url.host or "").lower()
    for rule in (part.strip().lower() for part in rules.split(",")):
        if rule == "*":
            return True
        name, _, port = rule.rpartition(":") if rule.count(":") == 1 else (rule, "", "")
        if port and port != str(url.port):
            continue
        name = name.strip("[]").lstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy's URL, and its credentials apart (never part of a message)."""

    url: URL
    authorization: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, text: str) -> Proxy:
        url = URL(text if "://" in text else f"http://{text}")
        authorization = None
        if url.user:
            token = f"{url.user}:{url.password or ''}".encode()
            authorization = "Basic " + base64.b64encode(token).decode("ascii")
        return cls(url.with_user(None), authorization)

    def options(self) -> dict[str, Any]:
        headers = {"Proxy-Authorization": self.authorization} if self.authorization else None
        return {"proxy": self.url, "proxy_headers": headers}


def proxy_options(proxy: Proxy | None) -> dict[str, Any]:
    return proxy.options() if proxy is not None else {}


# ---------------------------------------------------------------------- the seam

Handler = Callable[[Outgoing], "Answer | Awaitable[Answer]"]


class MockTransport:
    """Hands every request to ``handler`` (plain or async), which answers it or raises a
    :class:`TransportError`: the client runs as it does against a server, with none."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler

    async def send(self, request: Outgoing, *, limit: int) -> Answer:
        answer = self._handler(request)
        if inspect.isawaitable(answer):
            answer = await answer
        assert isinstance(answer, Answer)
        if len(answer.body) > limit:
            raise AnswerTooLarge(f"an answer larger than {limit} bytes")
        return answer
