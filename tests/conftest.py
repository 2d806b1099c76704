from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from anyio.from_thread import start_blocking_portal

from batchgen.sim import SimConfig, Simulator, serve

SIM_KEY = "test-key"
SIM_SECRET = "s3cr3t-NEVER-LOGGED-4b1d"


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

        def start(**overrides: object) -> Simulator:
            settings = {
                "api_key": SIM_KEY,
                "api_secret": SIM_SECRET,
                "job_seconds": 0.2,
                "jitter": 0.5,
            }
            settings.update(overrides)
            portal = stack.enter_context(start_blocking_portal())
            return stack.enter_context(
                portal.wrap_async_context_manager(serve(SimConfig(**settings)))
            )  # type: ignore[arg-type]

        yield start


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SCENARIO_SDK_API_KEY", "SCENARIO_SDK_API_SECRET", "SCENARIO_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SCENARIO_API_KEY", SIM_KEY)
    monkeypatch.setenv("SCENARIO_API_SECRET", SIM_SECRET)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
