"""Knowing the account: concurrency from the team's own limit (shared by shards), a
batch its credits cannot finish refused before anything is spent, ``batchgen account``.
On virtual time against the simulator, which serves the account's endpoints and holds
its jobs to the same limit (a 429 past it)."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

import batchgen
from batchgen.cli import main
from batchgen.config import RetrySettings
from batchgen.errors import RateLimitedError
from batchgen.manifest.shard import Shard
from batchgen.retry import backoff_delay
from batchgen.scenario.account import Limits, OneShot, Team, shard_share
from batchgen.sim import Simulator
from batchgen.team import concurrency_for, credits_refusal
from tests.helpers import World

Write = Callable[[str, str], Path]
POSTS = "POST /v1/generate/custom/{model}"


def many(write: Write, units: int) -> Path:
    vars_ = ", ".join(str(n) for n in range(units))
    head = "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
    return write("jobs.yaml", head + f"  - {{prompt: 'p{{n}}', vars: {{n: [{vars_}]}}}}\n")


def test_a_run_with_no_concurrency_keeps_the_teams_limit_in_flight_and_meets_no_429(
    write: Write, tmp_path: Path
) -> None:
    world = World(tmp_path, in_flight_limit=12, job_seconds=30, jitter=0.1)
    assert world.run(many(write, 40)).exit_code == 0
    assert world.sim.max_in_flight == 12  # the account's limit, and never more
    assert world.sim.requests[POSTS] == world.sim.jobs_created == 40  # no 429 met


def test_two_shards_at_once_share_the_limit(write: Write, tmp_path: Path) -> None:
    manifest = many(write, 40)
    world = World(tmp_path, in_flight_limit=12, job_seconds=30, jitter=0.1)

    async def both() -> list[Any]:
        reports: list[Any] = []

        async def one(shard: str) -> None:
            reports.append(
                await batchgen.arun(manifest, out=world.out, shard=shard, backend=world.backend)
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "1/2")
            tg.start_soon(one, "2/2")
        return reports

    reports = world.call(both)
    assert [r.exit_code for r in reports] == [0, 0]
    assert world.sim.max_in_flight <= 12  # together, never past the account
    assert world.sim.requests[POSTS] == world.sim.jobs_created == 40


def test_a_concurrency_above_the_limit_is_capped_with_one_warning(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path, in_flight_limit=5, job_seconds=30)
    with caplog.at_level(logging.INFO, logger="batchgen"):
        assert world.run(many(write, 12), concurrency=50).exit_code == 0
    warned = [r for r in caplog.records if "parallelCustomJobs" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "concurrency 50 is above the team's parallelCustomJobs 5" in warned[0].getMessage()
    assert world.sim.requests[POSTS] == 12 and world.sim.max_in_flight == 5


def test_limits_that_cannot_be_read_leave_the_default_said_in_one_line(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World(tmp_path, team_access=False, job_seconds=30)
    with caplog.at_level(logging.INFO, logger="batchgen"):
        assert world.run(many(write, 12)).exit_code == 0
    said = [r for r in caplog.records if "limits cannot be read" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO and "403" in said[0].getMessage()
    assert world.sim.max_in_flight == 4  # batchgen's own default


def test_a_batch_the_credits_cannot_finish_is_refused_with_nothing_spent(
    write: Write,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = start_simulator(credits=20, one_shot_credits=5)
    manifest = many(write, 40)  # one creative unit each
    code = main(["run", str(manifest), "--out", str(tmp_path / "out"), "--api-url", sim.api_url])
    err = capsys.readouterr().err
    assert code == 6 and sim.jobs_created == 0 and not sim.requests[POSTS]
    assert "needs about 40 CU (estimated); the team has 25 left until" in err
    assert "--allow-partial" in err
    # validate says the same, read-only.
    assert main(["validate", str(manifest), "--api-url", sim.api_url]) == 0
    assert "credits: this batch needs about 40 CU" in capsys.readouterr().err
    # --allow-partial runs what the credits allow, and stops there.
    code = main(
        ["run", str(manifest), "--out", str(tmp_path / "out"), "--api-url", sim.api_url,
         "--allow-partial", "--poll-interval", "0.05", "-q"]
    )  # fmt: skip
    assert code == 6 and sim.jobs_created == 25


def test_credits_for_every_unit_at_its_dearest_spare_the_pass_over_the_journal(
    write: Write, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The credits check reads the journal unit by unit (the estimate) only when the
    credits do not cover every unit at the dearest price: a resume of a large batch
    with credits to spare starts submitting without that pass; short of it, the
    estimate decides, to the unit."""
    import batchgen.estimating as estimating

    passes: list[int] = []
    original = estimating._shapes_to_do

    def counted(*args: Any) -> Any:
        passes.append(1)
        return original(*args)

    monkeypatch.setattr(estimating, "_shapes_to_do", counted)
    manifest = many(write, 40)  # one creative unit each
    world = World(tmp_path, credits=40)
    first = world.run(manifest, budget=20)
    assert first.exit_code == 6 and 0 < world.sim.spent <= 20 and passes == []  # 40 <= 40
    # Less left than 40 units at most: the estimate counts those still to do, exactly.
    assert world.run(manifest).exit_code == 0 and passes == [1]
    assert world.sim.jobs_created == 40


def test_account_shows_the_figures_and_what_it_cannot_see(
    write: Write,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = start_simulator(in_flight_limit=12, credits=500, one_shot_credits=50, job_seconds=0.05)
    assert main(["run", str(many(write, 3)), "--out", str(tmp_path / "o"), "--api-url",
                 sim.api_url, "--poll-interval", "0.02", "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["account", "--api-url", sim.api_url]) == 0
    shown = capsys.readouterr().out
    assert "team Simulated team" in shown and "plan cu-pro" in shown
    assert "500 CU allowed, 3 used; 547 left" in shown  # 497 + the 50 not expired
    assert "expired" in shown and "expires" in shown
    assert "parallel custom jobs: 12; running now: 0" in shown
    assert "model_sim-fast: 3 CU this period, 3 jobs" in shown
    assert main(["account", "--api-url", sim.api_url, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["left"] == 547 and found["parallel_custom_jobs"] == 12
    assert found["by_model"] == [{"model": "model_sim-fast", "cost": 3.0, "jobs": 3}]

    blind = start_simulator(team_access=False)
    assert main(["account", "--api-url", blind.api_url]) == 0
    assert "cannot be seen with these credentials" in capsys.readouterr().out
    assert batchgen.account(api_url=blind.api_url).not_seen.startswith("the team and its limits")


# ---------------------------------------------------------------------- pure


@pytest.mark.parametrize(
    ("limit", "running", "shard", "given", "chosen"),
    [
        (12, 0, None, None, 12),
        (12, 5, None, None, 7),
        (12, 12, None, None, 1),  # all taken: one at a time, not none
        (12, 0, Shard(1, 2), None, 6),
        (13, 0, Shard(1, 2), None, 7),
        (13, 0, Shard(2, 2), None, 6),
        (12, 0, None, 4, 4),
        (12, 0, None, 40, 12),  # capped
    ],
)
def test_concurrency_for(
    limit: int, running: int, shard: Shard | None, given: int | None, chosen: int
) -> None:
    assert concurrency_for(limit, running, shard, given)[0] == chosen


def test_shard_shares_sum_to_what_is_available() -> None:
    rng = random.Random(1)
    for _ in range(200):
        count = rng.randint(1, 9)
        available = rng.randint(count, 100)
        shares = [shard_share(available, index, count) for index in range(1, count + 1)]
        assert sum(shares) == available and min(shares) >= 1


def test_what_is_left_counts_one_shot_units_until_they_expire() -> None:
    now = datetime(2027, 1, 15, tzinfo=UTC)
    limits = Limits(
        team=Team("t", "T", "cu-pro"),
        plan="cu-pro",
        parallel_custom_jobs=10,
        min_cooldown=1,
        max_cooldown=4,
        allowance=1000,
        used=900,
        period_start=now - timedelta(days=10),
        period_end=now + timedelta(days=20),
        one_shots=(OneShot(50, now + timedelta(days=1)), OneShot(70, now - timedelta(days=1))),
    )
    assert limits.left(now) == 150
    assert credits_refusal(150, limits, now) is None
    refusal = credits_refusal(12_400, limits, now)
    assert refusal is not None and "needs about 12,400 CU" in refusal
    assert "has 150 left until 2027-02-04 (plan cu-pro)" in refusal


def test_a_429_with_no_retry_after_waits_the_accounts_cooldown() -> None:
    settings = RetrySettings(cooldown=(1.0, 4.0))
    rng = random.Random(3)
    waits = [backoff_delay(1, RateLimitedError("429"), settings, rng) for _ in range(50)]
    assert min(waits) >= 1.0 and max(waits) <= 4.0
    told = RateLimitedError("429", retry_after=0.5)
    assert backoff_delay(1, told, settings, rng) == 0.5  # a Retry-After wins
