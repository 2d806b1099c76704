"""Helpers the test modules share (fixtures are in conftest.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from batchgen.engine.summary import Summary
from batchgen.sim import Simulator

T = TypeVar("T")


def summary(**changes: Any) -> Summary:
    """A run part-way: 100 units, 10 done earlier, 5 failed for good earlier, 40 made and
    5 failed now, 8 at the server and 2 downloading; 45 CU spent now and 15 before."""
    fields: dict[str, Any] = {
        "total": 100,
        "skipped": 10,
        "left_failed": 5,
        "succeeded": 40,
        "failed": 5,
        "in_flight": 8,
        "downloading": 2,
        "cost": 45.0,
        "spent_before": 15.0,
        "elapsed": 30.0,
    }
    if "spent" in changes:
        changes["spent_before"] = changes.pop("spent") - changes.get("cost", fields["cost"])
    if changes.pop("submitting_stopped", False):
        changes["over_budget"] = True
    fields.update(changes)
    return Summary(**fields)


def read_results(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def assert_matches_what_was_served(
    out: Path, results: list[dict[str, Any]], sim: Simulator
) -> None:
    """Every successful unit's files hold exactly the bytes its job's assets were, and
    its job was asked for what the unit says."""
    for record in results:
        assert record["status"] == "success", record
        job = sim.jobs[record["job_id"]]
        assert len(record["files"]) == len(job.asset_ids) == len(record["sha256"])
        for relative, digest, asset_id in zip(
            record["files"], record["sha256"], job.asset_ids, strict=True
        ):
            content = (out / relative).read_bytes()
            assert content == sim.assets[asset_id].content()
            assert hashlib.sha256(content).hexdigest() == digest
        assert job.body["prompt"] == record["prompt"]


class World:
    """The simulator in memory, on a virtual clock, and an output directory.

    :meth:`run` is ``batchgen.run`` against it: the real application, engine and client,
    with no socket and no thread, on trio's ``MockClock`` (through anyio), so an hour of
    jobs takes no time and no test sleeps.  The clock goes on from run to run."""

    def __init__(self, tmp_path: Path, **config: Any) -> None:
        import trio.testing

        from batchgen.sim import SimConfig, Simulator
        from batchgen.sim.fake import EPOCH

        settings: dict[str, Any] = {"api_key": SIM_KEY, "api_secret": SIM_SECRET}
        settings.update(config)
        self.clock = trio.testing.MockClock(autojump_threshold=0)
        self.sim = Simulator(
            SimConfig(**settings),
            clock=self.clock.current_time,
            wall=lambda: EPOCH + self.clock.current_time(),
        )
        self.out = tmp_path / "out"

    def configure(self, **changes: Any) -> None:
        """Change the simulator's settings between runs (credits topped up, say)."""
        import dataclasses

        self.sim.config = dataclasses.replace(self.sim.config, **changes)

    @contextlib.asynccontextmanager
    async def backend(self) -> AsyncIterator[Any]:
        from batchgen.backend import Backend
        from batchgen.engine.ports import inline
        from batchgen.sim.fake import FakeFetcher, client_for

        client = client_for(self.sim)
        yield Backend(client.settings, client, FakeFetcher(self.sim), self.sim, inline)

    def call(self, function: Callable[[], Awaitable[T]]) -> T:
        """Run an async call to its end on this world's virtual clock."""
        return anyio.run(function, backend="trio", backend_options={"clock": self.clock})

    def run(self, manifest: Path, **options: Any) -> Any:
        """``batchgen.run`` of ``manifest`` (into ``self.out`` unless ``out`` is given)."""
        import batchgen

        options.setdefault("out", self.out)
        return self.call(lambda: batchgen.arun(manifest, backend=self.backend, **options))

    def estimate(self, manifest: Path, **options: Any) -> Any:
        import batchgen

        options.setdefault("out", self.out)
        return self.call(lambda: batchgen.aestimate(manifest, backend=self.backend, **options))

    def results(self, out: Path | None = None) -> list[dict[str, Any]]:
        return read_results(out or self.out)


SIM_KEY = "test-key"
SIM_SECRET = "s3cr3t-NEVER-LOGGED-4b1d"


def start_batchgen(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m batchgen ARGS`` as a process of its own, its output piped: with the
    simulator's credentials and none of the developer's (no ``SCENARIO_*`` or ``AWS_*``
    of theirs), plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SCENARIO_", "AWS_"))}
    clean |= {"SCENARIO_API_KEY": SIM_KEY, "SCENARIO_API_SECRET": SIM_SECRET}
    return subprocess.Popen(
        [sys.executable, "-m", "batchgen", *args],
        env=clean | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fast_run(manifest: Path, out: str | Path, sim: Simulator, *extra: str) -> list[str]:
    """``run``'s arguments against ``sim``, paced for tests: six jobs in flight, quick
    polls, a short reconcile grace, verbose (the tests read the log)."""
    return [
        "run",
        str(manifest),
        "--out",
        str(out),
        "--api-url",
        sim.api_url,
        "--concurrency",
        "6",
        "--poll-interval",
        "0.02",
        "--reconcile-grace",
        "1",
        "-v",
        *extra,
    ]


def quality_manifest(units: int, quality: str, *, height: int = 64) -> str:
    """A manifest of ``units`` units of one entry (``a 0``, ``a 1``, ...), their images
    scored by the quality gate as ``quality`` (a flow mapping) says."""
    words = ", ".join(f"w{n}" for n in range(units))
    return (
        f"model: model_sim-fast\nwidth: 64\nheight: {height}\nquality: {quality}\n"
        f"jobs:\n  - {{prompt: 'a {{w}}', vars: {{w: [{words}]}}}}\n"
    )


def every_verdict(world: World, manifest: Path) -> World:
    """``world`` once ``manifest`` ran, checked to hold every verdict (so that a filter
    by verdict can be wrong)."""
    assert world.run(manifest).exit_code == 0
    assert {r["quality_verdict"] for r in world.results()} == {"pass", "warn", "fail"}
    return world
