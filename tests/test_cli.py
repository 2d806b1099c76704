"""The command line against the simulator over real HTTP on loopback: what it prints,
its exit codes, and what lands on disk.  (How runs behave is tests/test_runs.py's, on
virtual time.)"""

from __future__ import annotations

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
from tests.helpers import SIM_SECRET, assert_matches_what_was_served, read_results
from tests.test_manifest import BAD_MANIFESTS
from tests.test_runs import CSV, MANIFEST, UNITS


@pytest.fixture
def example_manifest(write: Callable[[str, str], Path]) -> Path:
    """MANIFEST and its prompts file: vars, mixed sizes, and a CSV with extra columns."""
    write("prompts.csv", CSV)
    return write("jobs.yaml", MANIFEST)


def run_cli(sim: Simulator, manifest: Path, out: Path, *options: str) -> int:
    return main(["run", str(manifest), "--out", str(out), "--api-url", sim.api_url, *options])


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
        (["run", "{manifest}", "--out", "ftp://host/x"], "ftp://host/x: batchgen writes to"),
        (
            ["run", "{manifest}", "--out", "s3://b/p", "--storage-option", "endpont_url=x"],
            "endpont_url: not an option of s3:// stores (did you mean endpoint_url?)",
        ),
        (
            ["run", "{manifest}", "--out", "s3://b/p", "--storage-option", "region"],
            "--storage-option: region…: expected KEY=VALUE",
        ),
        (["run", "{manifest}", "--out", "s3://b/p", "--fresh"], "--fresh moves a local"),
        (["run", "{manifest}", "--lease-seconds", "0"], "--lease-seconds"),
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
    assert main(["validate", str(example_manifest), "--offline"]) == 0
    said = capsys.readouterr()
    assert f"expand to {UNITS} units" in said.out and "--offline" in said.err
    # Without --offline, the API must answer and take the credentials: none here.
    assert main(["validate", str(example_manifest)]) == 2
    assert "no API credentials" in capsys.readouterr().err
    assert main(["validate", str(example_manifest), "--simulate", "--json"]) == 0
    checked = json.loads(capsys.readouterr().out)
    assert checked["units"] == UNITS and checked["inputs_checked"] is True


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_the_run_with_a_summary_and_its_own_exit_code(
    tmp_path: Path, signum: int
) -> None:
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
    assert process.returncode == 128 + signum  # 130 for SIGINT, 143 for SIGTERM
    assert "not finished" in stdout


def test_kept_alive_connections_dropped_while_idle_cost_no_attempt_and_no_second_job(
    example_manifest: Path,
    tmp_path: Path,
    start_simulator: Callable[..., Simulator],
    api_env: None,
) -> None:
    # A load balancer closed the kept-alive connections the first three reused
    # submissions are sent on (reads are test_network's); with one attempt per
    # request, the run still ends with every unit made once.
    sim = start_simulator()
    reused: Counter[str] = Counter()

    def dropped(route: str) -> bool:
        reused[route] += 1
        return route.startswith("POST /v1/generate") and reused[route] <= 3

    sim.drop_reused = dropped
    out = tmp_path / "out"
    options = ("--poll-interval", "0.02", "--concurrency", "3", "--retries", "1")
    assert run_cli(sim, example_manifest, out, *options, "--reconcile-grace", "0.2") == 0
    results = read_results(out)
    assert {r["status"] for r in results} == {"success"} and len(results) == UNITS
    assert sim.jobs_created == UNITS
    assert sim.connections_dropped["POST /v1/generate/custom/{model}"] > 0
    assert_matches_what_was_served(out, results, sim)


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
    assert (
        estimate["estimated_left"]
        == sum(s["units"] * s["cost_each"] for s in estimate["shapes"])
        > 0
    )
    # One dry run per model/size/params shape: the cats, two tile sizes, the CSV's numOutputs.
    assert (
        len(estimate["shapes"]) == sim.requests["POST /v1/generate/custom/{model} (dry run)"] == 4
    )
    assert sim.jobs_created == 0


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

    # Without credentials validate sends nothing and says why, exit 2.
    requests = sim.requests.total()
    monkeypatch.delenv("SCENARIO_API_KEY")
    assert main(["validate", str(manifest), "--api-url", sim.api_url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no API credentials" in err[0]
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
    assert summary["spent_this_run"] == summary["spent_total"] == sim.spent
    progress = [line for line in captured.err.splitlines() if "INFO progress: " in line]
    assert len(progress) >= 2
    assert all(f"/{UNITS} done" in line and "CU spent of 1000" in line for line in progress)
    assert any(" in flight" in line and "ETA" in line for line in progress)

    # Run again, quietly: nothing to do, nothing on stderr, the summary says so.
    assert run_cli(sim, manifest, out, *options, "--json", "--quiet") == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert (again["already_done"], again["submitted"], again["spent_this_run"]) == (UNITS, 0, 0)
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


def test_every_command_explains_every_argument_and_shows_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    from batchgen.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        assert command.epilog and "batchgen " + name in command.epilog, name
        for action in command._actions:
            assert action.help, (name, action.dest)
            if action.option_strings and action.nargs != 0 and action.choices is None:
                assert action.metavar and action.metavar.isupper(), (name, action.dest)
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    assert "SCENARIO_CREDENTIALS_FILE" in shown and "exit codes" in shown
    assert "``" not in shown and "[bold" not in shown
