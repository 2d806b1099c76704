"""The API a run talks to, opened in one place: the real one (its URL and credentials
from the options and the environment), the embedded simulator (``simulate``), or one
the caller brings (``backend``, as the tests do); and running async code to its end
from synchronous code (:func:`run_sync`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
from yarl import URL

from . import config as defaults
from .config import ApiSettings, Credentials, RetrySettings
from .engine.ports import Fetcher, Offload
from .errors import ConfigError
from .options import RunOptions
from .scenario.client import ScenarioClient
from .scenario.download import AssetDownloader

log = logging.getLogger(__name__)
T = TypeVar("T")

# Where the embedded simulator of --simulate keeps the jobs it made.
SIM_STATE = Path(".simulator") / "jobs.jsonl"


@dataclass(slots=True)
class Backend:
    """The API (the real one or the embedded simulator), the asset downloader, and how
    blocking work (SQLite, files) is run."""

    settings: ApiSettings
    client: ScenarioClient
    downloader: Fetcher
    simulator: Any = None
    offload: Offload = anyio.to_thread.run_sync


def connection(options: RunOptions) -> tuple[str, Credentials, str | None]:
    """(API base URL, credentials, project id) from the options and the environment.
    With ``simulate`` the URL is known only once the simulator runs: it is left empty."""
    project_id = options.project_id or os.environ.get(defaults.PROJECT_VARIABLE) or None
    if options.simulate:
        return "", Credentials(key="sim", secret=secrets.token_urlsafe(24)), project_id
    base_url = defaults.api_base_url(options.api_url)
    parsed = URL(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"--api-url: not an http(s) URL: {base_url!r}")
    return base_url, Credentials.from_environment(), project_id


@contextlib.asynccontextmanager
async def open_backend(options: RunOptions, out_dir: Path | None = None) -> AsyncIterator[Backend]:
    """The one place a run's API is opened: the embedded simulator with ``simulate``,
    else the URL and credentials the options and environment give (or whatever
    ``options.backend`` opens: an API of the caller's own, such as the tests').  The
    embedded simulator keeps its jobs in ``out_dir``, so that a killed ``--simulate``
    run resumes as a real one does: the jobs it made are still there."""
    if options.backend is not None:
        async with options.backend() as given:
            yield given
        return
    base_url, credentials, project_id = connection(options)
    async with contextlib.AsyncExitStack() as stack:
        simulator = None
        if options.simulate:
            from .sim import SimConfig, serve  # loaded only when used

            sim_config = SimConfig(
                api_key=credentials.key,
                api_secret=credentials.secret,
                job_seconds=options.sim_job_seconds,
                state_file=out_dir / SIM_STATE if out_dir is not None else None,
            )
            simulator = await stack.enter_async_context(serve(sim_config))
            base_url = simulator.api_url
            log.info("simulator running at %s", base_url)
        settings = ApiSettings(
            base_url=base_url,
            credentials=credentials,
            project_id=project_id,
            retry=RetrySettings(max_attempts=options.retries),
        )
        client = await stack.enter_async_context(ScenarioClient.open(settings))
        downloader = await stack.enter_async_context(
            AssetDownloader.open(settings.download_timeout)
        )
        yield Backend(settings, client, downloader, simulator)


def run_sync(call: Callable[[], Awaitable[T]]) -> T:
    """Run an async call to its end from synchronous code: in this thread when it has
    no event loop running, else in a thread of its own (a notebook's loop is running)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return anyio.run(call)
    outcome: list[T] = []
    failure: list[BaseException] = []

    def in_thread() -> None:
        try:
            outcome.append(anyio.run(call))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=in_thread, name="batchgen-run")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return outcome[0]
