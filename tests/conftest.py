from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from batchgen.sim import Network, SimConfig, Simulator, contract, serve
from batchgen.store.journal import Journal
from tests.helpers import SIM_KEY, SIM_SECRET

# How the tests' simulator answers: as across a network (pieces, gzip, chunked, first
# CDN piece of four bytes, a little latency), only faster than the internet's.
TEST_NETWORK = Network(
    piece_bytes=1400,
    piece_pause=0.0002,
    first_cdn_piece=4,
    gzip=True,
    chunked=True,
    latency=(0.0005, 0.002),
)


@pytest.fixture(autouse=True)
def _hermetic_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's credentials, API address or proxy, nor writes to
    their cache: a test that wants one sets it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in (
        "SCENARIO_API_KEY",
        "SCENARIO_API_SECRET",
        "SCENARIO_SDK_API_KEY",
        "SCENARIO_SDK_API_SECRET",
        "SCENARIO_API_URL",
        "SCENARIO_BASE_URL",
        "SCENARIO_PROJECT_ID",
        "SCENARIO_CREDENTIALS_FILE",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "NO_PROXY",
        "no_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _every_request_as_the_api_takes_it(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every request a simulator answers during the test is checked against the official
    SDK's contract (tests/sdk_contract.py): one the real API would refuse fails the test,
    with the code that sent it, even where the test itself would not notice.  A test
    that sends wrong requests on purpose is marked ``bad_requests``."""
    if request.node.get_closest_marker("bad_requests"):
        yield
        return
    judge = _judge()
    judge.problems.clear()
    contract.observers.append(judge)
    try:
        yield
    finally:
        contract.observers.remove(judge)
    if judge.problems:
        shown = "\n".join(dict.fromkeys(judge.problems))
        pytest.fail(f"requests the real API refuses (scenario-sdk's contract):\n{shown}")


@functools.cache
def _judge() -> Any:
    from tests.sdk_contract import RequestJudge

    return RequestJudge(contract.simulated())


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """The command line takes over batchgen's logger (its own handler, no propagation);
    every test gets it back as it was, so caplog sees what the next one logs."""
    logger = logging.getLogger("batchgen")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture
def open_journal() -> Iterator[Callable[..., Journal]]:
    """Journals for a test, each closed when it ends (a test leaves no connection
    open: Python 3.13 reports one as an error)."""
    opened: list[Journal] = []

    def open_one(out: Path, kind: type[Journal] = Journal, **options: Any) -> Journal:
        journal = kind(out, **options)
        opened.append(journal)
        return journal

    yield open_one
    for journal in opened:
        journal.close()


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write a file under tmp_path and return its path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    return _write


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., Simulator]]:
    """Start the simulator in a thread of its own, for tests that call the CLI (which
    runs its own event loop).  Counters are read once the CLI has returned."""
    with ExitStack() as stack:

        def start(ssl_context: ssl.SSLContext | None = None, **overrides: object) -> Simulator:
            settings = {
                "api_key": SIM_KEY,
                "api_secret": SIM_SECRET,
                "job_seconds": 0.2,
                "jitter": 0.5,
                "network": TEST_NETWORK,
            }
            settings.update(overrides)
            portal = stack.enter_context(start_blocking_portal())
            return stack.enter_context(
                portal.wrap_async_context_manager(
                    serve(SimConfig(**settings), ssl_context=ssl_context)  # type: ignore[arg-type]
                )
            )  # type: ignore[arg-type]

        yield start


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCENARIO_API_KEY", SIM_KEY)
    monkeypatch.setenv("SCENARIO_API_SECRET", SIM_SECRET)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ConnectProxy:
    """A forwarding proxy that speaks CONNECT, as a corporate or cluster egress proxy
    does; it keeps every request head it was sent and every byte it tunnelled, so a test
    can check what a proxy's logs would hold."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.tunnelled = bytearray()
        self.url = ""

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                self.tunnelled += data
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.heads.append(head)
        method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
        if method != b"CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        host, _, port = target.decode().rpartition(":")
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[ConnectProxy]:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        async with server:
            yield self
            server.close()


@pytest.fixture
def tls() -> Any:
    """A certificate authority made for the test, and a server context signed by it for
    127.0.0.1 and localhost."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return ca, context
