"""The CLI against the simulator on loopback: what lands on disk is what was served."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.sim import Simulator
from tests.conftest import SIM_SECRET
from tests.test_manifest import BAD_MANIFESTS

MANIFEST = """\
model: model_sim-fast
width: 256
height: 256
jobs:
  - id: cats
    prompt: "a {animal} in {style}"
    vars: {animal: [cat, lynx], style: [oil, ink]}
  - prompt: "a mixed-size tile"
    sizes: [[128, 64], [320, 192]]
    count: 2
  - prompts_file: prompts.csv
    params: {numOutputs: 2}
"""
CSV = "prompt,sku\nred mug,A1\nblue mug,B2\n"
UNITS = 4 + 4 + 2


@pytest.fixture
def example_manifest(write: Callable[[str, str], Path]) -> Path:
    """MANIFEST and its prompts file: vars, mixed sizes, and a CSV with extra columns."""
    write("prompts.csv", CSV)
    return write("jobs.yaml", MANIFEST)


def run_cli(sim: Simulator, manifest: Path, out: Path, *options: str) -> int:
    return main(["run", str(manifest), "--out", str(out), "--api-url", sim.api_url, *options])


def read_results(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def assert_matches_what_was_served(out: Path, results: list[dict], sim: Simulator) -> None:
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
        body = sim.jobs[record["job_id"]].body
        assert (body["prompt"], body["width"], body["height"]) == (
            record["prompt"],
            record["width"],
            record["height"],
        )


def test_run_against_the_simulator_with_api_url(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = example_manifest
    sim = start_simulator()
    out = tmp_path / "out"
    code = run_cli(
        sim,
        manifest,
        out,
        "--concurrency",
        "3",
        "--poll-interval",
        "0.05",
    )
    assert code == 0
    results = read_results(out)
    assert len(results) == UNITS and len({r["id"] for r in results}) == UNITS
    assert_matches_what_was_served(out, results, sim)
    assert sim.jobs_created == UNITS  # nothing submitted twice
    assert sim.cdn_authorization_headers == 0
    csv_rows = [r for r in results if r["metadata"].get("sku")]
    assert sorted(r["metadata"]["sku"] for r in csv_rows) == ["A1", "B2"]
    assert all(len(r["files"]) == 2 for r in csv_rows)
    assert all(r["cost"] and r["cost"] > 0 for r in results)
    assert not list(out.rglob("*.part"))
    captured = capsys.readouterr()
    assert SIM_SECRET not in captured.out + captured.err
    assert SIM_SECRET not in (out / "results.jsonl").read_text()

    # Run again: everything is done, nothing is submitted or rewritten.
    before = (out / "results.jsonl").read_bytes()
    assert run_cli(sim, manifest, out) == 0
    assert sim.jobs_created == UNITS
    assert (out / "results.jsonl").read_bytes() == before


def test_in_flight_jobs_never_exceed_concurrency(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    # The server refuses a 4th running job: a slot must be held until the job ends,
    # not just for the POST, or this run would meet 429s.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: p\n    count: 12\n",
    )
    sim = start_simulator(in_flight_limit=3, job_seconds=0.15)
    out = tmp_path / "out"
    assert (
        run_cli(
            sim,
            manifest,
            out,
            "--concurrency",
            "3",
            "--poll-interval",
            "0.02",
        )
        == 0
    )
    assert sim.requests["POST /v1/generate/custom/{model}"] == 12  # no 429 was ever answered
    assert sim.jobs_created == 12


def test_failed_units_give_exit_1_with_reasons_and_wait_for_retry_failed(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: p\n    count: 6\n  - prompt: q forbidden\n",
    )
    sim = start_simulator(failure_rate=0.6, seed=3)
    out = tmp_path / "out"
    options = ("--poll-interval", "0.02", "--job-attempts", "2")
    assert run_cli(sim, manifest, out, *options) == 1
    results = read_results(out)
    failed = [r for r in results if r["status"] == "failure"]
    failed_p = [r for r in failed if r["prompt"] == "p"]
    assert failed_p and all("Simulated generation failure" in r["error"] for r in failed_p)
    # A refusal no check of the model's inputs can foresee (content moderation): a 400
    # from the API, for good.
    assert any(r["prompt"] == "q forbidden" and "moderation" in r["error"] for r in failed)
    assert len(results) == 7

    # Both jobs of those units failed: they failed for good, and a plain rerun leaves
    # them alone, keeping one line per unit.
    created_before = sim.jobs_created
    assert run_cli(sim, manifest, out, *options) == 1
    assert sim.jobs_created == created_before
    assert read_results(out) == results

    # --retry-failed gives each failed unit one more job (q is refused again by the API).
    succeeded_before = {r["id"] for r in results if r["status"] == "success"}
    run_cli(sim, manifest, out, *options, "--retry-failed")
    again = read_results(out)
    assert len(again) == 7 and len({r["id"] for r in again}) == 7
    assert sim.jobs_created - created_before == len(failed_p)
    assert succeeded_before <= {r["id"] for r in again if r["status"] == "success"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "{manifest}", "--concurrency", "0"], "--concurrency"),
        (["run", "{manifest}", "--poll-interval", "-1"], "--poll-interval"),
        (["run", "{manifest}", "--api-url", "ftp://x"], "--api-url"),
        (["run", "{manifest}", "--concurrency", "many"], "--concurrency"),
        (["run", "{manifest}", "--retries", "0"], "--retries"),
        (["run", "{manifest}", "--job-timeout", "0"], "--job-timeout"),
        (["run", "{manifest}", "--job-attempts", "-2"], "--job-attempts"),
        (["run", "{manifest}", "--downloads", "0"], "--downloads"),
        (["run", "{manifest}", "--max-runtime", "soon"], "--max-runtime"),
        (["run", "{manifest}", "--no-such-option"], "--no-such-option"),
        (["run"], "manifest"),
        (["frobnicate"], "frobnicate"),
        (["run", "{bad}"], "bad.yaml:5: jobs[0].width"),
        (["validate", "{bad}"], "bad.yaml:5: jobs[0].width"),
        (["run", "{manifest}"], "no API credentials"),
    ],
)
def test_invalid_input_exits_2_with_one_line_and_writes_nothing(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    for name in (
        "SCENARIO_API_KEY",
        "SCENARIO_API_SECRET",
        "SCENARIO_SDK_API_KEY",
        "SCENARIO_SDK_API_SECRET",
    ):
        monkeypatch.delenv(name, raising=False)
    manifest = write("ok.yaml", "model: m\nwidth: 64\nheight: 64\njobs:\n  - prompt: p\n")
    bad = write(
        "bad.yaml", "model: m\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, width: 1000}\n"
    )
    monkeypatch.chdir(tmp_path)
    argv = [a.format(manifest=manifest, bad=bad) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "output").exists()


def test_validate_counts_units(example_manifest: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(example_manifest)]) == 0
    assert f"expand to {UNITS} units" in capsys.readouterr().out


def test_the_readme_demo_runs_as_a_subprocess(tmp_path: Path) -> None:
    """`batchgen run jobs.example.yaml --simulate` from a fresh directory, as the README says."""
    example = Path(__file__).resolve().parent.parent / "jobs.example.yaml"
    (tmp_path / "jobs.example.yaml").write_text(example.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCENARIO_")}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchgen",
            "run",
            "jobs.example.yaml",
            "--simulate",
            "--sim-job-seconds",
            "0.2",
            "--poll-interval",
            "0.05",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    out = tmp_path / "output" / "jobs.example"
    results = read_results(out)
    assert results and all(r["status"] == "success" for r in results)
    for record in results:
        for relative in record["files"]:
            assert (out / relative).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_with_a_summary_and_exit_130(tmp_path: Path, signum: int) -> None:
    (tmp_path / "jobs.yaml").write_text(
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: p\n    count: 5\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCENARIO_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchgen",
            "run",
            "jobs.yaml",
            "--simulate",
            "-v",
            "--sim-job-seconds",
            "60",
            "--poll-interval",
            "0.05",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # signal only once a job is really in flight
            if "submitted unit" in line:
                break
        process.send_signal(signum)
        stdout, _ = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "not finished" in stdout


def test_a_failed_download_is_fetched_again_from_its_job_never_resubmitted(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: p\n    count: 3\n    params: {numOutputs: 2}\n",
    )
    sim = start_simulator(url_lifetime=0)  # every signed URL has expired on arrival
    out = tmp_path / "out"
    options = ("--poll-interval", "0.02", "--retries", "2")
    assert run_cli(sim, manifest, out, *options) == 1
    first = read_results(out)
    assert [r["status"] for r in first] == ["failure"] * 3
    assert all(r["job_status"] == "success" and "HTTP 403" in r["error"] for r in first)
    assert not list((out / "images").iterdir())  # nothing partial under any name

    sim.config = dataclasses.replace(sim.config, url_lifetime=600)
    assert run_cli(sim, manifest, out, *options) == 0
    again = read_results(out)
    assert len(again) == 3
    assert sim.jobs_created == 3  # the images were paid for once
    assert {r["job_id"] for r in again} == {r["job_id"] for r in first}
    assert_matches_what_was_served(out, again, sim)


@pytest.mark.parametrize("normalised", [False, True], ids=["input-as-sent", "input-normalised"])
def test_lost_answers_are_reconciled_so_every_unit_is_made_and_paid_once(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    normalised: bool,
) -> None:
    # Identical bodies (count > 1) are the hard case: each lost answer must adopt a
    # different job, and none may take the job another unit's answer is bringing.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\n"
        "jobs:\n  - prompt: same\n    count: 12\n  - prompt: 'p{n}'\n"
        "    vars: {n: [1, 2, 3, 4, 5, 6, 7, 8]}\n    params: {seed: 1234, guidance: 2.5}\n",
    )
    # With normalised input the server stores each job's input with its defaults, the
    # seed as a string and modelId added: a lost job must still be recognised.
    sim = start_simulator(lose_answer_rate=0.4, seed=7, normalise_input=normalised)
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02", "--concurrency", "6") == 0
    results = read_results(out)
    assert len(results) == 20 and {r["status"] for r in results} == {"success"}
    assert sim.answers_lost > 3
    assert sim.jobs_created == 20  # no job paid for twice, none lost
    assert len({r["job_id"] for r in results}) == 20
    assert_matches_what_was_served(out, results, sim)


def test_kept_alive_connections_dropped_while_idle_cost_no_attempt_and_no_second_job(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    # A load balancer closed the kept-alive connection that every other submission is
    # sent on (reads are test_network's); with one attempt per request, the run still
    # ends with every unit made once.
    sim = start_simulator()
    reused: Counter[str] = Counter()

    def dropped(route: str) -> bool:
        reused[route] += 1
        return route.startswith("POST /v1/generate") and reused[route] % 2 == 1

    sim.drop_reused = dropped
    out = tmp_path / "out"
    options = ("--poll-interval", "0.02", "--concurrency", "3", "--retries", "1")
    assert run_cli(sim, example_manifest, out, *options) == 0
    results = read_results(out)
    assert {r["status"] for r in results} == {"success"} and len(results) == UNITS
    assert sim.jobs_created == UNITS
    assert sim.connections_dropped["POST /v1/generate/custom/{model}"] > 0
    assert_matches_what_was_served(out, results, sim)


def test_429_pressure_lowers_the_cap_to_the_servers_limit(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: 'p{n}'\n"
        "    vars: {n: [" + ", ".join(map(str, range(24))) + "]}\n",
    )
    sim = start_simulator(in_flight_limit=3, job_seconds=0.2)
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--concurrency", "12", "--poll-interval", "0.02") == 0
    assert sim.jobs_created == 24
    assert sim.requests["POST /v1/generate/custom/{model}"] > 24  # 429s were met
    assert "jobs in flight: at most 3 now (--concurrency 12)" in capsys.readouterr().err


def test_out_of_credits_stops_submitting_and_the_rest_waits_for_more(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: p\n    count: 10\n",
    )
    sim = start_simulator(credits=5.0)  # one creative unit per 64x64 job
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--concurrency", "2", "--poll-interval", "0.02") == 1
    assert sim.jobs_created == 5
    assert "out of creative units" in capsys.readouterr().out
    assert sum(r["status"] == "success" for r in read_results(out)) == 5

    sim.config = dataclasses.replace(sim.config, credits=None)  # topped up
    assert run_cli(sim, manifest, out, "--concurrency", "2", "--poll-interval", "0.02") == 0
    assert sim.jobs_created == 10


def test_a_model_the_plan_does_not_cover_fails_its_units_after_one_request(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    manifest = write(
        "jobs.yaml",
        "jobs:\n"
        "  - {model: model_imagen4-ultra, prompt: a, count: 4, aspect_ratio: '1:1'}\n"
        "  - {model: model_sim-fast, prompt: b, count: 2, width: 64, height: 64}\n",
    )
    sim = start_simulator(restricted_models=("model_imagen4-ultra",))
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--concurrency", "1", "--poll-interval", "0.02") == 1
    results = read_results(out)
    refused = [r for r in results if r["model"] == "model_imagen4-ultra"]
    assert len(refused) == 4 and all("does not give access" in r["error"] for r in refused)
    assert sim.requests["POST /v1/generate/custom/{model}"] == 1 + 2
    assert [r["status"] for r in results if r["model"] == "model_sim-fast"] == ["success"] * 2


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize(("text", "line", "field", "_message"), BAD_MANIFESTS)
def test_every_bad_manifest_exits_2_with_one_line_and_writes_nothing(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    api_env: None,
    command: str,
    text: str,
    line: int,
    field: str,
    _message: str,
) -> None:
    path = write("bad.yaml", text)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [command, str(path)] + (["--api-url", "http://127.0.0.1:9"] if command == "run" else [])
    assert main(argv) == 2
    captured = capsys.readouterr()
    (message,) = captured.err.strip().splitlines()
    assert message.startswith(f"batchgen: error: {path}:{line}: {field}")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_a_failed_job_is_tried_again_within_the_run_up_to_job_attempts(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    from tests.test_chaos import assert_every_job_belongs_to_one_unit

    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - prompt: 'p{n}'\n"
        "    vars: {n: [" + ", ".join(map(str, range(30))) + "]}\n",
    )
    sim = start_simulator(failure_rate=0.5, seed=9)
    out = tmp_path / "out"
    run_cli(sim, manifest, out, "--poll-interval", "0.02", "--job-attempts", "3")
    results = read_results(out)
    assert len(results) == 30
    assert sim.jobs_created > 30  # failures were tried again, in this same run
    assert_every_job_belongs_to_one_unit(out, sim, job_attempts=3)
    for record in results:  # a unit gives up only after its third failed job
        jobs_of_unit = [j for j in sim.jobs.values() if j.body["prompt"] == record["prompt"]]
        if record["status"] == "failure":
            assert len(jobs_of_unit) == 3 and all(j.fails for j in jobs_of_unit)


def test_refused_credentials_stop_the_run_at_once_with_exit_2(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SCENARIO_API_KEY", "test-key")
    monkeypatch.setenv("SCENARIO_API_SECRET", "wrong-secret-value")
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n  - {prompt: p, count: 5}\n",
    )
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--concurrency", "1") == 2
    err = capsys.readouterr().err
    assert "refused the credentials" in err and "wrong-secret-value" not in err
    # Stopped at once, at the first request (the model's inputs), before the output
    # directory was touched.
    assert sim.requests.total() == 1 and sim.jobs_created == 0
    assert not out.exists()


def test_models_lists_every_page(
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = tuple(f"model_{i:03d}" for i in range(230))  # three pages of 100
    sim = start_simulator(models=names)
    assert main(["models", "--api-url", sim.api_url]) == 0
    listed = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(names)
    assert sim.requests["GET /v1/models"] == 3 + 1  # the team's three pages, one public
    assert main(["models", "--api-url", sim.api_url, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 230


def test_models_lists_the_teams_and_the_public_ones_and_one_models_inputs(
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = start_simulator()
    assert main(["models", "--api-url", sim.api_url]) == 0
    rows = {
        line.split("\t")[0]: line.split("\t")[1] for line in capsys.readouterr().out.splitlines()
    }
    assert rows["model_sim-fast"] == "private"
    assert rows["model_bfl-flux-2-dev"] == rows["model_imagen4-ultra"] == "public"
    assert main(["models", "model_imagen4-ultra", "--api-url", sim.api_url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("model_imagen4-ultra")
    ratio = next(line for line in table if line.startswith("aspectRatio"))
    assert '"16:9"' in ratio and "string" in ratio and '"1:1"' in ratio.split()[-1]
    prompt = next(line for line in table if line.startswith("prompt"))
    assert prompt.rstrip().endswith("yes")
    assert main(["models", "model_nope", "--api-url", sim.api_url]) == 1
    assert "404" in capsys.readouterr().err


def test_the_estimate_matches_what_the_run_then_spends(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = example_manifest
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--estimate") == 0
    assert sim.jobs_created == 0  # dry runs create nothing
    estimate = float(capsys.readouterr().out.split("would cost ")[1].split()[0])
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02") == 0
    assert estimate == sim.spent > 0
    assert run_cli(sim, manifest, out, "--estimate") == 0  # everything is done now
    assert "0 units to do would cost 0 creative units" in capsys.readouterr().out


def test_the_estimate_as_json_counts_each_shape(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = example_manifest
    sim = start_simulator()
    assert run_cli(sim, manifest, tmp_path / "out", "--estimate", "--json") == 0
    estimate = json.loads(capsys.readouterr().out)
    assert estimate["units"] == UNITS == sum(shape["units"] for shape in estimate["shapes"])
    assert estimate["cost"] == sum(s["units"] * s["cost_each"] for s in estimate["shapes"]) > 0
    # One dry run per model/size/params shape: the cats, two tile sizes, the CSV's numOutputs.
    assert len(estimate["shapes"]) == sim.requests["POST /v1/generate/custom/{model}"] == 4
    assert sim.jobs_created == 0


def test_a_budget_stops_submitting_before_it_is_passed(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 256x256 costs 1 CU, 1024x1024 costs 4 CU in the simulator.
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\njobs:\n"
        "  - {prompt: small, width: 256, height: 256, count: 6}\n"
        "  - {prompt: big, width: 1024, height: 1024, count: 3}\n",
    )
    sim = start_simulator()
    out = tmp_path / "out"
    options = ("--poll-interval", "0.02", "--concurrency", "3")
    assert run_cli(sim, manifest, out, *options, "--budget", "9") == 1
    assert sim.spent <= 9 and sim.jobs_created >= 6
    assert "would pass --budget" in capsys.readouterr().out
    # The budget counts what earlier runs spent in this directory too.
    assert run_cli(sim, manifest, out, *options, "--budget", "12") == 1
    assert sim.spent <= 12
    assert run_cli(sim, manifest, out, *options, "--budget", "100") == 0
    assert sim.jobs_created == 9


def test_the_seed_used_is_recorded(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - {prompt: fixed, params: {seed: 7}}\n"
        "  - {prompt: derived, params: {seed: per-unit}}\n"
        "  - {prompt: api}\n",
    )
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02") == 0
    by_prompt = {r["prompt"]: r for r in read_results(out)}
    assert by_prompt["fixed"]["seed"] == 7
    derived = by_prompt["derived"]
    assert derived["seed"] == derived["params"]["seed"] == sim.jobs[derived["job_id"]].body["seed"]
    api = by_prompt["api"]  # chosen by the API: read back from the asset's metadata
    assert api["seed"] == sim.assets[sim.jobs[api["job_id"]].asset_ids[0]].seed


def test_validate_checks_every_unit_against_its_models_inputs(
    write: Callable[[str, str], Path],
    start_simulator: Callable[..., Simulator],
    api_env: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write("long.txt", "fine\n" + "x" * 4001 + "\n")
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n"
        "  - prompt: known\n"
        "  - prompt: typo\n    model: model_sim-fsat\n"
        "  - prompt: steps\n    params: {numInferenceSteps: 500, guidanse: 2}\n"
        "  - prompts_file: long.txt\n"
        "  - {prompt: wide, model: model_imagen4-ultra, sizes: [[1024, 576], '3:2']}\n"
        "  - {prompt: public, model: model_bfl-flux-2-dev, width: 512, height: 512}\n",
    )
    sim = start_simulator()
    assert main(["validate", str(manifest), "--api-url", sim.api_url]) == 2
    problems = capsys.readouterr().err.strip().splitlines()
    expected = [
        f"{manifest}:7: jobs[1].model: model 'model_sim-fsat': not found",
        f"{manifest}:9: jobs[2].params.numInferenceSteps: must be at most 100, got 500",
        f"{manifest}:9: jobs[2].params.guidanse: model_sim-fast takes no input 'guidanse' "
        "(did you mean 'guidance'?)",
        f"{manifest.parent / 'long.txt'}:2: prompt: must have at most 4000 characters, has 4001",
        f"{manifest}:11: jobs[4].sizes[0]: model_imagen4-ultra takes no width/height; give an "
        'aspect ratio, e.g. aspect_ratio: "16:9"',
        f"{manifest}:11: jobs[4].sizes[1]: aspectRatio must be one of",
    ]
    for wanted in expected:
        assert any(wanted in line for line in problems), (wanted, problems)
    assert len(problems) == len(expected) + 1 and "6 problems" in problems[-1]
    assert sim.jobs_created == 0 and not sim.requests["POST /v1/generate/custom/{model}"]
    assert sim.requests["GET /v1/models/{model}"] == 4  # one request per model

    # A manifest of public models and good params checks clean, without a warning.
    good = write(
        "good.yaml",
        "jobs:\n  - {prompt: a, model: model_bfl-flux-2-dev, width: 512, height: 512}\n"
        "  - {prompt: b, model: model_imagen4-ultra, aspect_ratio: '16:9'}\n",
    )
    assert main(["validate", str(good), "--api-url", sim.api_url + "/v1"]) == 0
    captured = capsys.readouterr()
    assert "expand to 2 units" in captured.out and captured.err == ""

    # Without credentials validate sends nothing and says what it could not check.
    requests = sim.requests.total()
    monkeypatch.delenv("SCENARIO_API_KEY")
    assert main(["validate", str(manifest), "--api-url", sim.api_url]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inputs were not checked: no credentials" in err[0]
    assert sim.requests.total() == requests


def test_run_refuses_a_param_its_model_does_not_take_before_sending_anything(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_bfl-flux-2-dev\nwidth: 512\nheight: 512\njobs:\n"
        "  - prompt: a\n    count: 50\n  - prompt: b\n    params: {negativePrompt: blur}\n",
    )
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"{manifest}:8: jobs[1].params.negativePrompt: model_bfl-flux-2-dev takes no " in err[0]
    assert sim.jobs_created == 0 and not out.exists()


def test_an_aspect_ratio_model_runs_end_to_end_and_records_each_images_real_size(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_imagen4-ultra\naspect_ratio: '1:1'\n"
        "filename: '{aspect_ratio}/{index}-{width}x{height}'\njobs:\n"
        "  - prompt: a lighthouse\n    sizes: ['16:9', '9:16']\n"
        "  - prompt: a harbour\n    params: {numOutputs: 2}\n",
    )
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02") == 0
    results = {(r["prompt"], r["aspect_ratio"]): r for r in read_results(out)}
    assert sim.jobs_created == 3 and not sim.refusals
    expected = {("a lighthouse", "16:9"): (1408, 768), ("a lighthouse", "9:16"): (768, 1408),
                ("a harbour", "1:1"): (1024, 1024)}  # fmt: skip
    for key, (width, height) in expected.items():
        record = results[key]
        assert (record["width"], record["height"]) == (width, height)
        body = sim.jobs[record["job_id"]].body
        assert body["aspectRatio"] == key[1] and "width" not in body and "height" not in body
        for path, size in zip(record["files"], record["sizes"], strict=True):
            assert size == [width, height]
            content = (out / path).read_bytes()
            assert int.from_bytes(content[16:20], "big") == width  # the PNG's own header
    assert results[("a lighthouse", "16:9")]["files"] == ["images/16x9/0-1408x768.png"]
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert {(r["width"], r["height"]) for r in rows} == set(expected.values())
    assert len(rows) == 4


def test_images_are_named_by_the_filename_template(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    manifest = example_manifest
    sim = start_simulator()
    out = tmp_path / "out"
    template = "{entry}/{index:03d}-{slug}-{width}x{height}"
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02", "--filename", template) == 0
    results = read_results(out)
    assert_matches_what_was_served(out, results, sim)
    files = sorted(path for record in results for path in record["files"])
    assert files[:3] == [
        "images/cats/000-a-cat-in-oil-256x256.png",
        "images/cats/001-a-cat-in-ink-256x256.png",
        "images/cats/002-a-lynx-in-oil-256x256.png",
    ]
    # Two images from one job: the second is numbered.
    assert "images/jobs-2/008-red-mug-256x256.png" in files
    assert "images/jobs-2/008-red-mug-256x256-1.png" in files
    assert len(set(files)) == len(files) == 4 + 4 + 2 * 2
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")) == files

    # The next run finds every image under its templated name: nothing is fetched again.
    downloads = sim.requests["GET cdn"]
    assert run_cli(sim, manifest, out, "--filename", template) == 0
    assert sim.requests["GET cdn"] == downloads and sim.jobs_created == UNITS


def test_an_edited_manifest_never_overwrites_an_image_already_made(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    head = "model: model_sim-fast\nwidth: 64\nheight: 64\nfilename: '{index:03d}'\njobs:\n"
    manifest = write("jobs.yaml", head + "  - prompt: second\n  - prompt: third\n")
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02") == 0
    before = {p.name: p.read_bytes() for p in (out / "images").iterdir()}
    assert sorted(before) == ["000.png", "001.png"]

    # A prompt inserted at the top takes index 0, whose name the first run used.
    write("jobs.yaml", head + "  - prompt: first\n  - prompt: second\n  - prompt: third\n")
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02") == 0
    assert sim.jobs_created == 3
    for name, content in before.items():
        assert (out / "images" / name).read_bytes() == content
    by_prompt = {r["prompt"]: r for r in read_results(out)}
    assert by_prompt["second"]["files"] == ["images/000.png"]
    first = by_prompt["first"]
    assert first["files"] == [f"images/000~{first['id']}-0.png"]
    assert_matches_what_was_served(out, list(by_prompt.values()), sim)
    assert "images/000.png holds another image" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("template", "message"),
    [("../{id}", "'..' path part"), ("{slug}", "{id} or {index}"), ("{sku}/{id}", "uses {sku}")],
)
def test_a_bad_filename_option_exits_2_and_writes_nothing(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
    template: str,
    message: str,
) -> None:
    manifest = write("jobs.yaml", "model: m\nwidth: 64\nheight: 64\njobs:\n  - prompt: a\n")
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--filename", template) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
    assert not out.exists() and sim.jobs_created == 0


def test_progress_lines_when_not_a_terminal_and_json_summary(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = example_manifest
    sim = start_simulator(job_seconds=0.3)
    out = tmp_path / "out"
    options = ("--poll-interval", "0.05", "--progress-every", "0.05", "--budget", "1000")
    assert run_cli(sim, manifest, out, *options, "--json") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout is the one JSON object, nothing else
    assert summary["succeeded"] == UNITS and summary["failed"] == summary["not_finished"] == 0
    assert summary["exit_code"] == 0 and summary["stopped"] is None
    assert summary["cost"] == summary["spent_total"] == sim.spent
    progress = [line for line in captured.err.splitlines() if "INFO progress: " in line]
    assert len(progress) >= 2
    assert all(f"/{UNITS} done" in line and "CU spent of 1000" in line for line in progress)
    assert any(" in flight" in line and "ETA" in line for line in progress)

    # Run again, quietly: nothing to do, nothing on stderr, the summary says so.
    assert run_cli(sim, manifest, out, *options, "--json", "--quiet") == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert (again["already_done"], again["submitted"], again["cost"]) == (UNITS, 0, 0)
    assert again["spent_total"] == summary["spent_total"]
    assert captured.err == ""


def test_a_live_panel_on_a_terminal(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = example_manifest
    sim = start_simulator()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm")
    assert run_cli(sim, manifest, tmp_path / "out", "--poll-interval", "0.05") == 0
    captured = capsys.readouterr()
    assert "\x1b[" in captured.err  # drawn in place, with terminal control
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", captured.err)
    assert f"{UNITS}/{UNITS} done 100%" in shown  # the last frame: the final state
    assert f"succeeded {UNITS}   failed 0" in shown
    assert "INFO progress:" not in captured.err
    assert captured.out.startswith(f"batchgen: {UNITS} succeeded")


def test_a_changed_or_deleted_image_is_fetched_again_under_its_own_name(
    write: Callable[[str, str], Path],
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    manifest = write(
        "jobs.yaml",
        "model: model_sim-fast\nwidth: 64\nheight: 64\nfilename: '{entry}/{index}'\n"
        "jobs:\n  - {id: mugs, prompt: a mug, count: 3}\n",
    )
    sim = start_simulator()
    out = tmp_path / "out"
    assert run_cli(sim, manifest, out, "--poll-interval", "0.02") == 0
    first = read_results(out)
    changed, deleted = out / "images/mugs/0.png", out / "images/mugs/1.png"
    changed.write_bytes(b"\x89PNG\r\n\x1a\n edited by hand")
    deleted.unlink()

    assert run_cli(sim, manifest, out, "--poll-interval", "0.02") == 0
    assert sim.jobs_created == 3  # fetched from the jobs already made, not made again
    again = read_results(out)
    assert [r["files"] for r in again] == [r["files"] for r in first]
    assert_matches_what_was_served(out, again, sim)
    assert sorted(p.name for p in (out / "images/mugs").iterdir()) == ["0.png", "1.png", "2.png"]
