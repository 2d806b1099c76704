"""Never pay twice, never hand one image to two units, in a world as unkind as the real
one: other clients on the account, a skewed clock, a job list that lags, is down, or
changes while it is read, jobs the API does not show yet, jobs that outlive their
deadline.  On virtual time, against the simulator in memory."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import batchgen
from batchgen.sim import Simulator
from tests.helpers import World, assert_matches_what_was_served

Write = Callable[[str, str], Path]


def ours(sim: Simulator) -> dict[str, object]:
    """The jobs this client made (not another client's on the same account)."""
    return {job_id: job for job_id, job in sim.jobs.items() if not job.by_other_client}


def assert_each_unit_its_own_job(world: World, results: list[dict[str, object]]) -> None:
    jobs = [r["job_id"] for r in results]
    assert len(jobs) == len(set(jobs))  # no job given to two units
    mine = ours(world.sim)
    assert set(jobs) <= set(mine)  # none of another client's jobs adopted
    for record in results:
        body = world.sim.jobs[str(record["job_id"])].body
        assert body["prompt"] == record["prompt"]


def test_every_request_carries_a_seed_of_its_own_when_the_model_takes_one(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - {prompt: same, count: 4}\n"
        "  - {prompt: chosen, count: 2, params: {seed: random}}\n"
        "  - {prompt: fixed, params: {seed: 7}}\n"
        "  - {prompt: no seed input, model: model_sim-noseed, count: 2}\n",
    )
    world = World(tmp_path)
    assert world.run(manifest).exit_code == 0
    by_prompt: dict[str, list[dict[str, object]]] = {}
    for record in world.results():
        by_prompt.setdefault(str(record["prompt"]), []).append(record)
    bodies = {r["id"]: world.sim.jobs[r["job_id"]].body for r in world.results()}
    same = [bodies[r["id"]]["seed"] for r in by_prompt["same"]]
    assert len(set(same)) == 4 and all(0 <= s <= 2**31 - 1 for s in same)
    assert [r["seed"] for r in by_prompt["same"]] == same  # and recorded
    assert all("seed" not in bodies[r["id"]] for r in by_prompt["chosen"])
    assert [bodies[r["id"]]["seed"] for r in by_prompt["fixed"]] == [7]
    assert all("seed" not in bodies[r["id"]] for r in by_prompt["no seed input"])
    # The same unit asks the same seed again: a re-run sends the very same request.
    again = World(tmp_path / "again")
    again.run(manifest)
    assert {r["id"]: again.sim.jobs[r["job_id"]].body.get("seed") for r in again.results()} == {
        unit_id: body.get("seed") for unit_id, body in bodies.items()
    }


def test_two_processes_sending_the_same_requests_never_take_each_others_jobs(
    write: Write, tmp_path: Path
) -> None:
    # Two shards of one manifest with count: 4 and no seed, run at once on one account,
    # with lost answers; and another client on the account sending the same bodies.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - prompt: 'item {n}'\n    vars: {n: [" + ", ".join(map(str, range(40))) + "]}\n"
        "    count: 4\n",
    )
    world = World(tmp_path, lose_answer_rate=0.2, other_clients=0.3, seed=21, job_seconds=5)

    async def both() -> None:
        async with anyio.create_task_group() as tg:
            for shard in ("1/2", "2/2"):
                tg.start_soon(
                    lambda shard=shard: batchgen.arun(  # type: ignore[misc]
                        manifest, out=world.out, shard=shard, backend=world.backend, concurrency=8
                    )
                )

    world.call(both)
    results = world.results(world.out / "shard-1-of-2") + world.results(world.out / "shard-2-of-2")
    assert len(results) == 160 and {r["status"] for r in results} == {"success"}
    assert world.sim.answers_lost > 10 and len(world.sim.jobs) > len(ours(world.sim))
    assert len(ours(world.sim)) == 160  # every unit paid once
    assert_each_unit_its_own_job(world, results)


def test_without_a_seed_input_no_job_is_ever_shared_by_two_units(
    write: Write, tmp_path: Path
) -> None:
    # Identical bodies cannot be told apart: a lost answer may adopt another client's
    # identical job (the README's bound), but never one that is a unit's of ours.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-noseed\nwidth: 64\nheight: 64\njobs:\n  - {prompt: same, count: 30}\n",
    )
    world = World(tmp_path, lose_answer_rate=0.3, other_clients=0.3, seed=5, job_seconds=5)
    assert world.run(manifest, concurrency=6).exit_code == 0
    results = world.results()
    assert len(results) == 30 and {r["status"] for r in results} == {"success"}
    jobs = [r["job_id"] for r in results]
    assert len(set(jobs)) == 30
    # Ours that no unit took are lost answers whose job another identical one took.
    unused = set(ours(world.sim)) - set(jobs)
    adopted_from_others = {j for j in jobs if world.sim.jobs[j].by_other_client}
    assert len(unused) == len(adopted_from_others) <= world.sim.answers_lost


@pytest.mark.parametrize("skew", [-120.0, 120.0], ids=["server-behind", "server-ahead"])
def test_a_clock_minutes_off_the_servers_hides_no_lost_job(
    write: Write, tmp_path: Path, skew: float
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - prompt: 'p{n}'\n    vars: {n: [" + ", ".join(map(str, range(40))) + "]}\n",
    )
    world = World(tmp_path, lose_answer_rate=0.4, clock_skew=skew, seed=3)
    assert world.run(manifest, concurrency=8).exit_code == 0
    assert world.sim.answers_lost > 8
    assert world.sim.jobs_created == 40  # every lost answer recognised, none paid twice


def test_a_job_list_that_shows_new_jobs_late_buys_no_second_job(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - prompt: 'p{n}'\n    vars: {n: [" + ", ".join(map(str, range(30))) + "]}\n",
    )
    world = World(tmp_path, lose_answer_rate=0.5, list_lag=3.0, seed=8, job_seconds=20)
    assert world.run(manifest, concurrency=10).exit_code == 0
    assert world.sim.answers_lost > 8 and world.sim.jobs_created == 30


def test_a_list_that_changes_while_it_is_paged_skips_no_job(write: Write, tmp_path: Path) -> None:
    # Newest first by offset: jobs made while a scan pages push others past it.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - prompt: 'p{n}'\n    vars: {n: [" + ", ".join(map(str, range(400))) + "]}\n",
    )
    world = World(tmp_path, lose_answer_rate=0.1, unstable_paging=True, seed=13, job_seconds=2)
    assert world.run(manifest, concurrency=100).exit_code == 0
    assert world.sim.answers_lost > 20 and world.sim.jobs_created == 400


def test_a_lost_answer_while_the_list_is_down_stays_uncertain_and_is_reconciled_next(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - prompt: 'p{n}'\n    vars: {n: [1, 2, 3, 4, 5]}\n",
    )
    world = World(tmp_path, lose_answer_rate=1.0, list_down=True, seed=1)
    first = world.run(manifest, concurrency=5)
    assert first.exit_code == 1 and first.not_finished == 5 and first.failed == 0
    assert world.sim.jobs_created == 5  # each POST made its job; every answer was lost
    # Not spent as far as batchgen knows (the next run books what it finds), but what
    # the lost answers may have cost is shown, never 0.
    assert first.spent_total == 0 and first.possibly_spent == world.sim.spent > 0
    status = batchgen.status(world.out)
    assert status.states == {"submitting": 5}
    assert status.spend.possibly == world.sim.spent

    world.configure(list_down=False, lose_answer_rate=0.0)
    again = world.run(manifest, concurrency=5)
    assert again.exit_code == 0 and again.succeeded == 5
    assert world.sim.jobs_created == 5  # reconciled first: not one POST more
    assert again.spent_total == again.spent_this_run == world.sim.spent
    assert again.possibly_spent == 0


def test_a_job_the_api_does_not_show_yet_is_waited_for_not_bought_again(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: 'p{n}'\n"
        "    vars: {n: [1, 2, 3, 4, 5, 6]}\n",
    )
    # GET of a job answers 404 for its first 20 s; the list is refused, so every job is
    # asked about on its own.
    world = World(tmp_path, young_job_404=20, list_refused=True, job_seconds=5)
    assert world.run(manifest, concurrency=6, poll_interval=1).exit_code == 0
    assert world.sim.jobs_created == 6


def test_a_job_past_its_deadline_is_abandoned_watched_again_and_never_bought_twice(
    write: Write, tmp_path: Path
) -> None:
    # Issue 22's measurement: 6 units, jobs of 40 s, --job-timeout 10; cancels refused.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: 'p{n}'\n"
        "    vars: {n: [1, 2, 3, 4, 5, 6]}\n",
    )
    world = World(tmp_path, job_seconds=40, jitter=0.0)
    first = world.run(manifest, concurrency=6, job_timeout=10)
    assert first.exit_code == 1 and first.abandoned == 6 and first.failed == 0
    assert "6 still running at the server" in first.line
    assert world.sim.cancels["refused"] == 6
    status = batchgen.status(world.out)
    assert status.states == {"abandoned": 6}
    jobs_first = {r["id"]: r["job_id"] for r in world.results()}
    assert {r["status"] for r in world.results()} == {"abandoned"}

    world.clock.jump(60)  # the jobs ended while no run was watching
    again = world.run(manifest, concurrency=6, job_timeout=10)
    assert again.exit_code == 0 and again.succeeded == 6
    assert world.sim.jobs_created == 6  # six jobs for six units
    assert {r["id"]: r["job_id"] for r in world.results()} == jobs_first  # each its first
    assert_matches_what_was_served(world.out, world.results(), world.sim)


def test_resubmit_abandoned_buys_a_new_job_and_never_hands_the_old_one_on(
    write: Write, tmp_path: Path
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: slow, count: 3}\n",
    )
    world = World(tmp_path, job_seconds=40, jitter=0.0)
    first = world.run(manifest, job_timeout=10)
    assert first.abandoned == 3
    abandoned_jobs = {r["job_id"] for r in world.results()}
    assert world.estimate(manifest).units == 0  # watched again: nothing to buy
    assert world.estimate(manifest, resubmit_abandoned=True).units == 3

    world.configure(job_seconds=1)
    again = world.run(manifest, resubmit_abandoned=True)
    assert again.exit_code == 0 and again.succeeded == 3
    assert world.sim.jobs_created == 6  # what the option costs: the old jobs ran on
    assert not abandoned_jobs & {r["job_id"] for r in world.results()}
    assert_matches_what_was_served(world.out, world.results(), world.sim)
    # The abandoned jobs' cost stays in what was spent.
    assert again.spent_total == world.sim.spent


def test_a_cancel_the_server_accepts_frees_the_unit(write: Write, tmp_path: Path) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: slow, count: 2}\n",
    )
    world = World(tmp_path, job_seconds=40, jitter=0.0, cancel_accepted=True)
    first = world.run(manifest, job_timeout=10)
    assert first.abandoned == 0 and first.failed == 2
    assert all("cancelled" in r["error"] for r in world.results())
    assert {job.phase(world.clock.current_time())[0] for job in world.sim.jobs.values()} == {
        "canceled"
    }
    world.configure(job_seconds=1)
    assert world.run(manifest).exit_code == 0  # free: a new job each
    assert world.sim.jobs_created == 4


def test_a_chaotic_world_cut_short_again_and_again_pays_each_unit_once(
    write: Write, tmp_path: Path
) -> None:
    """Every unkindness at once, and runs stopped at random moments (a cancelled await
    is where a kill would have struck: a POST sent and its answer never read)."""
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 32\nheight: 32\njobs:\n"
        "  - {prompt: same body, count: 40}\n"
        "  - prompt: 'unit {n}'\n    vars: {n: [" + ", ".join(map(str, range(160))) + "]}\n",
    )
    world = World(
        tmp_path,
        job_seconds=10,
        jitter=0.5,
        seed=99,
        error_rate=0.03,
        lose_answer_rate=0.1,
        truncate_rate=0.05,
        list_lag=2.0,
        list_holes=0.2,
        young_job_404=3,
        other_clients=0.1,
        clock_skew=75,
        unstable_paging=True,
        normalise_input=True,
    )
    rng = random.Random(7)
    abandoned = 0
    for _ in range(6):
        # A deadline shorter than the slowest jobs: some are abandoned (cancels are
        # refused), to be watched again by a later run.
        report = world.run(manifest, concurrency=20, max_runtime=rng.uniform(5, 40), job_timeout=12)
        assert report.exit_code in (0, 1, 4)
        abandoned += report.abandoned
        world.clock.jump(rng.uniform(0, 30))
    world.configure(error_rate=0.0, truncate_rate=0.0)
    assert abandoned > 0 and world.sim.cancels["refused"] > 0
    final = world.run(manifest, concurrency=20)
    results = world.results()
    assert final.exit_code == 0, final
    assert len(results) == 200 and {r["status"] for r in results} == {"success"}
    assert len(ours(world.sim)) == 200  # every unit paid once, none lost
    assert_each_unit_its_own_job(world, results)
    assert_matches_what_was_served(world.out, results, world.sim)
    images = {p.relative_to(world.out).as_posix() for p in (world.out / "images").rglob("*")}
    assert images == {path for r in results for path in r["files"]}  # no stray files
    counted = Counter(json.dumps(j.body, sort_keys=True) for j in ours(world.sim).values())
    assert max(counted.values()) == 1  # every body sent was a request of its own
