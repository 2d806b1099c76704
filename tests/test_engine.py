"""The engine against the simulator in the test's own event loop: how it watches jobs,
what that costs in requests, and that a freed slot never waits for a download."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from batchgen.config import ApiSettings, Credentials, EngineSettings, RetrySettings
from batchgen.engine import Engine, Summary
from batchgen.manifest import iter_units, load_manifest
from batchgen.scenario.client import ScenarioClient
from batchgen.scenario.download import AssetDownloader, Downloaded
from batchgen.sim import SimConfig, Simulator, serve
from batchgen.store.journal import Journal
from tests.conftest import SIM_KEY, SIM_SECRET

MANIFEST = """\
model: model_sim-fast
width: 64
height: 64
jobs:
  - prompts_file: prompts.txt
"""


@dataclass
class Run:
    sim: Simulator
    summary: Summary
    out: Path

    @property
    def list_pages(self) -> int:
        return self.sim.requests["GET /v1/jobs"]

    @property
    def job_gets(self) -> int:
        return self.sim.requests["GET /v1/jobs/{job_id}"]


@asynccontextmanager
async def client_for(sim: Simulator) -> AsyncIterator[tuple[ScenarioClient, AssetDownloader]]:
    settings = ApiSettings(
        base_url=sim.api_url,
        credentials=Credentials(SIM_KEY, SIM_SECRET),
        retry=RetrySettings(backoff_base=0.01, backoff_max=0.05),
    )
    async with ScenarioClient.open(settings) as client, AssetDownloader.open(30) as fetcher:
        yield client, fetcher


async def run_engine(
    tmp_path: Path,
    units: int,
    *,
    concurrency: int = 10,
    poll_interval: float = 0.05,
    wrap_fetcher: Callable[[AssetDownloader, Simulator], object] | None = None,
    **sim_settings: object,
) -> Run:
    (tmp_path / "prompts.txt").write_text("".join(f"prompt {i}\n" for i in range(units)))
    (tmp_path / "jobs.yaml").write_text(MANIFEST)
    manifest = load_manifest(tmp_path / "jobs.yaml")
    config = SimConfig(
        api_key=SIM_KEY,
        api_secret=SIM_SECRET,
        **{"job_seconds": 0.2, "jitter": 0.3, **sim_settings},  # type: ignore[arg-type]
    )
    out = tmp_path / "out"
    journal = Journal(out)
    try:
        async with serve(config) as sim, client_for(sim) as (client, fetcher):
            engine = Engine(
                client,
                wrap_fetcher(fetcher, sim) if wrap_fetcher else fetcher,  # type: ignore[arg-type]
                journal,
                EngineSettings(
                    output_dir=out, concurrency=concurrency, poll_interval=poll_interval
                ),
                RetrySettings(backoff_base=0.01, backoff_max=0.05),
            )
            with anyio.fail_after(60):
                summary = await engine.run(iter_units(manifest), units)
    finally:
        journal.close()
    return Run(sim, summary, out)


def assert_all_made_once(run: Run, units: int) -> None:
    assert run.summary.succeeded == units and run.summary.failed == 0
    assert run.sim.jobs_created == units
    assert len(list((run.out / "images").glob("*.png"))) == units


@pytest.mark.anyio
async def test_jobs_are_watched_through_the_list_for_a_fraction_of_a_request_each(
    tmp_path: Path,
) -> None:
    units = 120
    run = await run_engine(tmp_path, units, concurrency=30)
    assert_all_made_once(run, units)
    # One GET per job per poll would be several requests per job.
    assert (run.list_pages + run.job_gets) / units < 0.5
    assert run.job_gets == 0
    # URLs resolved in bulk, across jobs that finished together.
    bulk = run.sim.requests["POST /v1/assets/get-bulk"]
    single = run.sim.requests["GET /v1/assets/{asset_id}"]
    assert bulk + single < units / 2


@pytest.mark.anyio
async def test_a_refused_job_list_falls_back_to_asking_about_each_job(tmp_path: Path) -> None:
    units = 20
    run = await run_engine(tmp_path, units, list_refused=True)
    assert_all_made_once(run, units)
    assert run.list_pages == 1  # refused once, never asked again
    # Each job is asked about, but not before it can have finished.
    assert units <= run.job_gets < 4 * units


@pytest.mark.anyio
async def test_a_late_and_gappy_job_list_still_shows_every_end(tmp_path: Path) -> None:
    units = 40
    run = await run_engine(tmp_path, units, list_lag=0.3, list_holes=0.4)
    assert_all_made_once(run, units)


@pytest.mark.anyio
async def test_a_freed_slot_is_refilled_while_downloads_are_still_waiting(
    tmp_path: Path,
) -> None:
    units, concurrency = 6, 2

    class HeldDownloads:
        """Downloads wait until every job has been submitted: if the submitter waited
        for a download before using a freed slot, the run could never finish."""

        def __init__(self, inner: AssetDownloader, sim: Simulator) -> None:
            self.inner, self.sim = inner, sim
            self.waited = 0

        async def fetch(
            self,
            url: str,
            destination: Path,
            expected_size: int | None = None,
            *,
            fallback: Path | None = None,
        ) -> Downloaded:
            while self.sim.jobs_created < units:
                self.waited += 1
                await anyio.sleep(0.01)
            return await self.inner.fetch(url, destination, expected_size, fallback=fallback)

    held: list[HeldDownloads] = []

    def wrap(inner: AssetDownloader, sim: Simulator) -> HeldDownloads:
        held.append(HeldDownloads(inner, sim))
        return held[0]

    run = await run_engine(tmp_path, units, concurrency=concurrency, wrap_fetcher=wrap)
    assert_all_made_once(run, units)
    assert held[0].waited > 0  # downloads really were held back
