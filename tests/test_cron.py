"""Nightly runs from cron: nothing printed when all went well, one summary when not,
JSON on every exit, a log file with zoned times, a per-run budget with its own exit
code, credentials from a file only its owner reads.  The command line against the
simulator over loopback HTTP."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from batchgen.cli import main
from batchgen.config import Credentials
from batchgen.errors import CredentialsError
from batchgen.sim import Simulator
from tests.helpers import SIM_KEY, SIM_SECRET, World

Write = Callable[[str, str], Path]
Start = Callable[..., Simulator]
ZONED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d$")


def manifest_of(write: Write, prompts: list[str]) -> Path:
    jobs = "".join(f"  - prompt: {prompt!r}\n" for prompt in prompts)
    return write("jobs.yaml", f"model: model_sim-fast\nwidth: 64\nheight: 64\njobs:\n{jobs}")


def run(sim: Simulator, manifest: Path, out: Path, *options: str) -> int:
    command = ["run", str(manifest), "--out", str(out), "--api-url", sim.api_url]
    return main([*command, "--poll-interval", "0.1", *options])


def test_quiet_prints_nothing_when_everything_succeeded(
    write: Write,
    tmp_path: Path,
    start_simulator: Start,
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = start_simulator()
    assert run(sim, manifest_of(write, ["a", "b"]), tmp_path / "out", "-q") == 0
    assert capsys.readouterr() == ("", "")


def test_a_bad_night_is_one_summary_counted_by_reason(
    write: Write,
    tmp_path: Path,
    start_simulator: Start,
    api_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = start_simulator()
    prompts = ["fine"] + [f"forbidden {n}" for n in range(25)]
    assert run(sim, manifest_of(write, prompts), tmp_path / "out", "-q") == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("batchgen: 1 succeeded, 25 failed")
    assert "  25 failed: HTTP 400: The prompt was rejected by content moderation" in lines
    # Quiet: each failure said once, as it happened (the first ten each in a line, then
    # one line saying the rest are counted), not again in the summary.
    assert not any(line.startswith("  failed ") for line in lines)
    assert err.count("WARNING unit ") == 10 and "counts them by reason" in err


def test_json_on_every_exit_errors_included(
    write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write("bad.yaml", "model: m\njobs: []\n")
    assert main(["run", str(bad), "--json", "--simulate"]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["exit_code"] == 2 and "jobs" in answer["error"]
    assert main(["run", str(bad), "--json", "--no-such-option"]) == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2


def test_the_log_file_takes_everything_with_zoned_times(
    write: Write, tmp_path: Path, start_simulator: Start, api_env: None
) -> None:
    sim = start_simulator()
    log = tmp_path / "night.log"
    manifest = manifest_of(write, ["a", "forbidden"])
    for _ in range(2):  # appended to
        run(sim, manifest, tmp_path / "out", "-q", "--log-file", str(log), "--log-format", "json")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["level"] for r in records} >= {"INFO", "WARNING"}
    assert all(ZONED.match(r["time"]) for r in records)
    assert sum("units, output in" in r["message"] for r in records) == 2
    assert SIM_SECRET not in log.read_text()


def test_a_run_budget_caps_one_night_and_has_its_own_exit_code(
    write: Write, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = manifest_of(write, [f"p{n}" for n in range(10)])
    world = World(tmp_path)
    first = world.run(manifest, run_budget=4, concurrency=2, warn_at=0.5)
    assert first.exit_code == 6 and first.stopped == "budget" and first.succeeded == 4
    assert "would pass --run-budget" in first.line
    assert "--warn-at" in caplog.text
    # The next night has its own 4, though the directory has spent 4 already.
    second = world.run(manifest, run_budget=4, budget=100, concurrency=2)
    assert second.exit_code == 6 and second.succeeded == 4 and world.sim.spent == 8
    # The directory's budget, when nearer, is the one that stops it.
    third = world.run(manifest, run_budget=4, budget=9, concurrency=2)
    assert third.succeeded == 1 and "would pass --budget" in third.line


def test_credentials_from_a_file_only_its_owner_may_read(tmp_path: Path) -> None:
    secrets_file = tmp_path / "scenario.env"
    secrets_file.write_text(
        f"# for cron\nexport SCENARIO_API_KEY={SIM_KEY}\nSCENARIO_API_SECRET='{SIM_SECRET}'\n"
    )
    os.chmod(secrets_file, 0o644)
    environ = {"SCENARIO_CREDENTIALS_FILE": str(secrets_file)}
    with pytest.raises(CredentialsError, match="chmod 600") as caught:
        Credentials.from_environment(environ)
    assert SIM_SECRET not in str(caught.value)
    os.chmod(secrets_file, 0o600)
    found = Credentials.from_environment(environ)
    assert (found.key, found.secret) == (SIM_KEY, SIM_SECRET)
    secrets_file.write_text(f"SCENARIO_API_KEY {SIM_SECRET}\n")
    with pytest.raises(CredentialsError, match=r"scenario.env:1: expected NAME=value") as bad:
        Credentials.from_environment(environ)
    assert SIM_SECRET not in str(bad.value)


def test_a_cron_like_run_with_only_the_credentials_file(
    write: Write,
    tmp_path: Path,
    start_simulator: Start,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim = start_simulator()
    secrets_file = tmp_path / "scenario.env"
    secrets_file.write_text(f"SCENARIO_API_KEY={SIM_KEY}\nSCENARIO_API_SECRET={SIM_SECRET}\n")
    os.chmod(secrets_file, 0o600)
    monkeypatch.setenv("SCENARIO_CREDENTIALS_FILE", str(secrets_file))
    manifest = manifest_of(write, ["a", "b"])
    assert run(sim, manifest, tmp_path / "out", "-q") == 0
    assert capsys.readouterr() == ("", "")
    # Wrong credentials: refused before the output directory is made.
    secrets_file.write_text(f"SCENARIO_API_KEY={SIM_KEY}\nSCENARIO_API_SECRET=wrong\n")
    assert run(sim, manifest, tmp_path / "never", "-q") == 2
    assert not (tmp_path / "never").exists()


@pytest.mark.slow  # real processes, on real time
def test_a_simulated_run_cut_short_resumes_as_a_real_one(
    write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded simulator keeps its jobs in the output directory: the second
    --simulate run finds the first one's jobs (no "Job not found"), as it would at
    Scenario."""
    manifest = manifest_of(write, [f"p{n}" for n in range(4)])
    out = tmp_path / "out"
    common = ["run", str(manifest), "--out", str(out), "--simulate", "--poll-interval", "0.1"]
    assert main([*common, "--sim-job-seconds", "1.5", "--max-runtime", "0.5", "--json"]) == 4
    first = json.loads(capsys.readouterr().out)
    assert first["submitted"] == 4 and first["succeeded"] == 0
    assert main([*common, "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["succeeded"] == 4 and second["submitted"] == 0  # not one job more
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert not [r for r in results if r["error"]]


def cron(args: list[str], cwd: Path, log: Path) -> tuple[int, str, str, list[str]]:
    """``batchgen ARGS -q --log-file LOG`` as cron starts it: ``env -i``, a bare PATH and
    HOME, the credentials, nothing else.  (exit code, stdout, stderr, the log's lines)"""
    import subprocess
    import sys

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "SCENARIO_API_KEY": SIM_KEY,
        "SCENARIO_API_SECRET": SIM_SECRET,
    }
    done = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "batchgen",
         *args, "-q", "--log-file", str(log)],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = log.read_text("utf-8").splitlines() if log.exists() else []
    return done.returncode, done.stdout, done.stderr, lines


@pytest.mark.slow  # real processes, on real time
def test_a_cron_night_is_told_by_the_log_alone(write: Write, tmp_path: Path) -> None:
    """A run that succeeds prints nothing, every night; an unreachable API and a bad
    manifest each have their own exit code; each log ends saying how the run ended."""
    manifest = manifest_of(write, ["a", "b"])
    fast = ["--simulate", "--sim-job-seconds", "0.3", "--poll-interval", "0.02"]
    fast += ["--progress-every", "0.05"]
    for night in (1, 2):
        log = tmp_path / f"ok{night}.log"
        code, out, err, lines = cron(["run", str(manifest), *fast], tmp_path, log)
        assert (code, out, err) == (0, "", ""), err
        assert "summary: " in "\n".join(lines) and lines[-1].endswith("exit 0: done")
        assert "run " in lines[0]
        # The first night's progress is in its log (the second has nothing to do).
        assert any("progress: " in line for line in lines) == (night == 1)

    log = tmp_path / "down.log"
    closed = ["--api-url", "http://127.0.0.1:9", "--retries", "1", "--out", "elsewhere"]
    code, out, err, lines = cron(["run", str(manifest), *closed], tmp_path, log)
    assert code == 7 and "cannot connect" in err and out == ""
    assert "error: " in lines[-2] and lines[-1].endswith(
        "exit 7: the API cannot be reached (DNS, connection, TLS, proxy)"
    )

    log = tmp_path / "bad.log"
    bad = write("bad.yaml", "model: model_sim-fast\njobs: []\n")
    code, out, err, lines = cron(["run", str(bad), "--simulate"], tmp_path, log)
    assert code == 2 and err.count("\n") == 1 and out == ""
    assert "jobs" in lines[-2] and lines[-1].endswith(
        "exit 2: invalid input or configuration, nothing sent"
    )

    log = tmp_path / "typo.log"  # refused before its arguments were read: still logged
    code, _, err, lines = cron(["run", str(manifest), "--concurency", "3"], tmp_path, log)
    assert code == 2 and err.startswith("batchgen: error: unrecognized arguments: --concurency")
    assert lines[-1].endswith("exit 2: invalid input or configuration, nothing sent")


def test_counts_are_said_in_good_grammar() -> None:
    from batchgen.ledger import plural

    assert [plural(n, "unit") for n in (0, 1, 2)] == ["0 units", "1 unit", "2 units"]
    assert plural(1, "entry") == "1 entry" and plural(3, "entry") == "3 entries"
