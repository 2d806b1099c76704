"""batchgen against a per-job-polling baseline, on the embedded simulator.  Not a test:
it prints figures.  Every client runs as a child process, so its CPU time and peak RSS
come from the operating system (``wait4``); the simulator runs in this process, in a
thread of its own, and counts every request it receives.

    python bench/bench.py                      # all scenarios, the issue's settings
    python bench/bench.py --only pipeline      # or latency memory floor fast validate resume

Scenarios:
  pipeline  N jobs of about --job-seconds (with --jitter), C at a time, both clients,
            the same poll interval: makespan, makespan over the ideal
            ceil(N / C) x mean job time, status requests per job, CPU, peak RSS.
  latency   the pipeline scenario for batchgen again, every request taking a round
            trip of --latency-ms, its answers written as a real network writes them
            (1,400-byte pieces, gzip, chunked): makespan and status requests per job
            beside loopback's, and how full the C slots were kept at the server.
  fast      jobs of about a millisecond, C = 500: the runner is the bottleneck;
            jobs per second and CPU per job.
  validate  `batchgen validate` of a prompts file of --validate-lines lines: peak RSS;
            `run --estimate` of it beside validate, with no journal and with a tenth done.
  resume    a journal of --resume-units finished units (their files on disk) and a few
            new units: seconds from start until the first new submission arrives.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anyio.from_thread import start_blocking_portal

from batchgen.manifest import iter_units, load_manifest
from batchgen.sim import Network, SimConfig, Simulator, serve
from batchgen.store.files import stamp_of
from batchgen.store.journal import Journal
from batchgen.store.results import UnitResult

KEY, SECRET = "bench-key", "bench-secret"
HERE = Path(__file__).resolve().parent
TARGETS = {
    "makespan_ratio": 1.10,
    "status_per_job": 0.25,
    "cpu_ms_per_job": 2.0,
    "validate_rss_mb": 300.0,
    "resume_seconds": 5.0,
    "rerun_over_validate": 1.5,
    "estimate_over_validate": 2.0,
    "cpu_over_best_case": 1.5,
    "gallery_seconds": 60.0,
    "gallery_again_seconds": 2.0,
    "memory_growth": 1.25,
    "memory_mb": 100.0,
}

# What a unit's POST sent, as the journal keeps it with ``submitting``.
SENT = '["model_x", {"prompt": "p"}]'


@dataclass
class Child:
    wall: float
    cpu: float
    peak_rss_mb: float
    returncode: int
    output: str


def run_child(command: list[str], env: dict[str, str] | None = None) -> Child:
    """Run a process to the end; its CPU seconds and peak RSS as the kernel counted
    them (through ``measure.py``: see there why not directly)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as place:
        figures_file = Path(place) / "figures.json"
        process = subprocess.run(
            [sys.executable, str(HERE / "measure.py"), str(figures_file), *command],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        figures = json.loads(figures_file.read_text(encoding="utf-8"))
    return Child(
        wall=time.monotonic() - started,
        cpu=figures["cpu"],
        peak_rss_mb=figures["peak_rss_mb"],
        returncode=figures["returncode"],
        output=process.stdout,
    )


@contextmanager
def simulator(**settings: object) -> Iterator[Simulator]:
    config = SimConfig(api_key=KEY, api_secret=SECRET, **settings)  # type: ignore[arg-type]
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(serve(config)) as sim:
        yield sim


def api_env(sim: Simulator) -> dict[str, str]:
    return {"SCENARIO_API_KEY": KEY, "SCENARIO_API_SECRET": SECRET, "SCENARIO_API_URL": sim.api_url}


def write_workload(place: Path, units: int, concurrency: int) -> tuple[Path, Path]:
    prompts = place / "prompts.txt"
    prompts.write_text("".join(f"bench prompt {i}\n" for i in range(units)), encoding="utf-8")
    manifest = place / "bench.yaml"
    manifest.write_text(
        f"model: model_sim-fast\nwidth: 64\nheight: 64\nconcurrency: {concurrency}\n"
        f"jobs:\n  - prompts_file: {prompts.name}\n",
        encoding="utf-8",
    )
    return manifest, prompts


def status_requests(sim: Simulator) -> int:
    return sim.requests["GET /v1/jobs"] + sim.requests["GET /v1/jobs/{job_id}"]


def makespan(sim: Simulator) -> float:
    assert sim.first_job_at is not None and sim.last_download_at is not None
    return sim.last_download_at - sim.first_job_at


def occupancy(sim: Simulator, concurrency: int) -> float:
    """Jobs running at the server on average, over the C slots, from the first job's
    start to the last one's end: 1.0 means the submitter kept every slot busy."""
    starts = [job.start for job in sim.jobs.values()]
    ends = [job.start + job.duration for job in sim.jobs.values()]
    busy = sum(job.duration for job in sim.jobs.values())
    return busy / ((max(ends) - min(starts)) * concurrency)


def batchgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "batchgen", *args]


def verdict(value: float, target: float) -> str:
    if value <= target:
        return f"meets <= {target:g}"
    return f"MISSES <= {target:g} by {value / target - 1:.0%}"


# ---------------------------------------------------------------------- scenarios


def pipeline(args: argparse.Namespace, place: Path) -> dict[str, dict[str, float]]:
    manifest, prompts = write_workload(place, args.units, args.concurrency)
    figures: dict[str, dict[str, float]] = {}
    clients = {
        "batchgen": lambda sim: batchgen(
            "run", str(manifest), "--out", str(place / "out-batchgen"), "--quiet",
            "--concurrency", str(args.concurrency), "--poll-interval", str(args.poll_interval),
        ),
        "per-job baseline": lambda sim: [
            sys.executable, str(HERE / "per_job_baseline.py"), "--api-url", sim.api_url,
            "--prompts", str(prompts), "--out", str(place / "out-baseline"),
            "--concurrency", str(args.concurrency), "--poll-interval", str(args.poll_interval),
        ],
    }  # fmt: skip
    for name, command in clients.items():
        with simulator(job_seconds=args.job_seconds, jitter=args.jitter, seed=args.seed) as sim:
            child = run_child(command(sim), api_env(sim))
            if child.returncode != 0:
                sys.exit(f"{name} failed ({child.returncode}):\n{child.output}")
            mean_job = statistics.fmean(job.duration for job in sim.jobs.values())
            ideal = math.ceil(args.units / args.concurrency) * mean_job
            figures[name] = {
                "jobs": len(sim.jobs),
                "makespan_s": makespan(sim),
                "ideal_s": ideal,
                "makespan_ratio": makespan(sim) / ideal,
                "status_per_job": status_requests(sim) / args.units,
                "list_pages": sim.requests["GET /v1/jobs"],
                "job_gets": sim.requests["GET /v1/jobs/{job_id}"],
                "asset_requests": sim.requests["POST /v1/assets/get-bulk"]
                + sim.requests["GET /v1/assets/{asset_id}"],
                "cpu_ms_per_job": 1000 * child.cpu / args.units,
                "peak_rss_mb": child.peak_rss_mb,
            }
    return figures


def latency(args: argparse.Namespace, place: Path) -> dict[str, dict[str, float]]:
    """batchgen on the pipeline workload over loopback and over a slow network."""
    manifest, _ = write_workload(place, args.units, args.concurrency)
    round_trip = args.latency_ms / 1000
    networks = {
        "loopback": Network(),
        f"{args.latency_ms:g} ms": Network(
            piece_bytes=1400, gzip=True, chunked=True, latency=(round_trip, round_trip)
        ),
    }
    figures: dict[str, dict[str, float]] = {}
    for name, network in networks.items():
        settings = {"job_seconds": args.job_seconds, "jitter": args.jitter, "seed": args.seed}
        with simulator(**settings, network=network) as sim:
            command = batchgen(
                "run", str(manifest), "--out", str(place / f"out-{len(figures)}"), "--quiet",
                "--concurrency", str(args.concurrency), "--poll-interval", str(args.poll_interval),
            )  # fmt: skip
            child = run_child(command, api_env(sim))
            if child.returncode != 0:
                sys.exit(f"batchgen over {name} failed ({child.returncode}):\n{child.output}")
            mean_job = statistics.fmean(job.duration for job in sim.jobs.values())
            ideal = math.ceil(args.units / args.concurrency) * mean_job
            figures[name] = {
                "jobs": len(sim.jobs),
                "makespan_s": makespan(sim),
                "makespan_ratio": makespan(sim) / ideal,
                "status_per_job": status_requests(sim) / args.units,
                "slots_busy": occupancy(sim, args.concurrency),
                "cpu_ms_per_job": 1000 * child.cpu / args.units,
            }
    return figures


def memory(args: argparse.Namespace, place: Path) -> dict[str, dict[str, float]]:
    """Peak memory of batchgen runs of growing size, fast jobs at C: what it holds must
    follow the concurrency and the downloads, not the batch."""
    figures: dict[str, dict[str, float]] = {}
    for units in args.memory_units:
        sub = place / f"n{units}"
        sub.mkdir()
        manifest, _ = write_workload(sub, units, args.memory_concurrency)
        with simulator(job_seconds=0.05, jitter=0.5, seed=args.seed) as sim:
            command = batchgen(
                "run", str(manifest), "--out", str(sub / "out"), "--quiet",
                "--concurrency", str(args.memory_concurrency), "--poll-interval", "0.05",
            )  # fmt: skip
            child = run_child(command, api_env(sim))
            if child.returncode != 0 or len(sim.jobs) != units:
                sys.exit(f"memory run of {units} failed ({child.returncode}):\n{child.output}")
            figures[str(units)] = {
                "units": units,
                "peak_rss_mb": child.peak_rss_mb,
                "cpu_ms_per_job": 1000 * child.cpu / units,
                "seconds": child.wall,
            }
    return figures


def floor(args: argparse.Namespace, place: Path) -> dict[str, dict[str, float]]:
    """CPU per job of batchgen beside the best-case client (``best_case.py``: no
    journal, no checks, no retries) on the same fast workload, each against a fresh
    simulator: what batchgen's guarantees cost a job."""
    manifest, prompts = write_workload(place, args.floor_units, args.floor_concurrency)
    clients = {
        "batchgen": batchgen(
            "run", str(manifest), "--out", str(place / "out-batchgen"), "--quiet",
            "--concurrency", str(args.floor_concurrency), "--poll-interval", "0.05",
        ),
        "best case": [
            sys.executable, str(HERE / "best_case.py"), "--prompts", str(prompts),
            "--out", str(place / "out-best"), "--concurrency", str(args.floor_concurrency),
        ],
    }  # fmt: skip
    figures: dict[str, dict[str, float]] = {}
    for name, command in clients.items():
        with simulator(job_seconds=0.05, jitter=0.5, seed=args.seed) as sim:
            if name == "best case":
                command = [*command, "--api-url", sim.api_url]
            child = run_child(command, api_env(sim))
            if child.returncode != 0 or len(sim.jobs) != args.floor_units:
                sys.exit(f"{name} failed ({child.returncode}):\n{child.output}")
            figures[name] = {
                "cpu_ms_per_job": 1000 * child.cpu / args.floor_units,
                "seconds": child.wall,
                "peak_rss_mb": child.peak_rss_mb,
            }
    return figures


def startup_cpu(place: Path) -> float:
    """CPU seconds of starting batchgen and reading a one-line manifest: the fixed cost
    inside every per-job CPU figure."""
    manifest, _ = write_workload(place, 1, 1)
    return min(run_child(batchgen("validate", str(manifest), "--offline")).cpu for _ in range(3))


def fast(args: argparse.Namespace, place: Path) -> dict[str, float]:
    manifest, _ = write_workload(place, args.fast_units, args.fast_concurrency)
    with simulator(job_seconds=0.001, jitter=0.0, seed=args.seed) as sim:
        command = batchgen(
            "run", str(manifest), "--out", str(place / "out-fast"), "--quiet",
            "--concurrency", str(args.fast_concurrency),
            "--poll-interval", str(args.poll_interval),
        )  # fmt: skip
        child = run_child(command, api_env(sim))
        if child.returncode != 0:
            sys.exit(f"fast run failed ({child.returncode}):\n{child.output}")
        return {
            "jobs": len(sim.jobs),
            "jobs_per_s": args.fast_units / makespan(sim),
            "cpu_ms_per_job": 1000 * child.cpu / args.fast_units,
            "status_per_job": status_requests(sim) / args.fast_units,
            "peak_rss_mb": child.peak_rss_mb,
        }


def validate(args: argparse.Namespace, place: Path) -> dict[str, float]:
    """``validate`` of a large prompts file, and ``run --estimate`` of it beside
    ``validate`` against the same API (each asks for the model; the estimate adds one
    dry run)."""
    manifest, _ = write_workload(place, args.validate_lines, 8)
    # Offline: the manifest alone (validate asks the API otherwise, as below).
    child = run_child(batchgen("validate", str(manifest), "--offline"))
    if child.returncode != 0:
        sys.exit(f"validate failed:\n{child.output}")
    with simulator(seed=args.seed) as sim:
        out = place / "out-estimate"
        estimate = run_child(
            batchgen("run", str(manifest), "--out", str(out), "--estimate"), api_env(sim)
        )
        check = run_child(batchgen("validate", str(manifest)), api_env(sim))
        if estimate.returncode != 0 or check.returncode != 0:
            sys.exit(f"estimate or validate failed:\n{estimate.output}\n{check.output}")
        # Then a tenth of the units done, as a run cut short leaves its journal.
        partial_journal(manifest, out, args.validate_lines // 10)
        partial = run_child(
            batchgen("run", str(manifest), "--out", str(out), "--estimate", "--json"),
            api_env(sim),
        )
        if partial.returncode != 0:
            sys.exit(f"estimate with a journal failed:\n{partial.output}")
        left = json.loads(partial.output.strip().splitlines()[-1])["units"]
        if left != args.validate_lines - args.validate_lines // 10:
            sys.exit(f"estimate with a journal counted {left} units left")
    return {
        "lines": args.validate_lines,
        "seconds": child.wall,
        "peak_rss_mb": child.peak_rss_mb,
        "estimate_over_validate_time": estimate.wall / check.wall,
        "estimate_over_validate_memory": estimate.peak_rss_mb / check.peak_rss_mb,
        "partial_estimate_over_validate_time": partial.wall / check.wall,
        "partial_estimate_over_validate_memory": partial.peak_rss_mb / check.peak_rss_mb,
    }


def partial_journal(manifest: Path, out: Path, done: int) -> None:
    """A journal with the first ``done`` units downloaded, each with its cost shape,
    and every unit known to be the manifest's: what a run of it cut short leaves."""
    from batchgen.engine.submit import cost_shape, request_for
    from batchgen.rerun import ROWS_OF_KEY, fingerprint

    loaded = load_manifest(manifest)
    journal = Journal(out)
    units = iter_units(loaded)
    written = 0
    while written < done and (chunk := list(itertools.islice(units, min(5000, done - written)))):
        with journal.batch():
            for unit in chunk:
                shape = cost_shape(unit.model, request_for(unit, None))
                files = [(f"images/{unit.id}_0.png", "0" * 64)]
                journal.submitting(unit.id, "2026-11-24T00:00:00+00:00", SENT, 1.0, shape)
                journal.submitted(unit.id, f"job-{unit.id}", 1.0)
                result = UnitResult.success(unit, job_id=f"job-{unit.id}", files=files, cost=1.0)
                journal.downloaded(unit.id, files, result.to_json(), [(1, 1)])
        written += len(chunk)
    journal.remember(ROWS_OF_KEY, fingerprint(loaded, None))
    journal.close()


def gallery(args: argparse.Namespace, place: Path) -> dict[str, float]:
    """``batchgen gallery`` of a finished run of N images (real PNGs of 512 px, as a run
    leaves them), then again with nothing new."""
    from batchgen.sim.png import make_png

    manifest, _ = write_workload(place, args.gallery_units, 8)
    out = place / "out-gallery"
    (out / "images").mkdir(parents=True)
    journal = Journal(out)
    units = iter_units(load_manifest(manifest))
    while chunk := list(itertools.islice(units, 2000)):
        with journal.batch():
            for unit in chunk:
                content = make_png(512, 512, unit.id)
                relative = f"images/{unit.id}_0.png"
                (out / relative).write_bytes(content)
                files = [(relative, hashlib.sha256(content).hexdigest())]
                journal.submitting(unit.id, "2026-11-24T00:00:00+00:00", SENT)
                journal.submitted(unit.id, f"job-{unit.id}", 1.0)
                result = UnitResult.success(
                    unit, job_id=f"job-{unit.id}", files=files, cost=1.0, sizes=[(512, 512)]
                )
                journal.downloaded(unit.id, files, result.to_json(), [stamp_of(out / relative)])
    journal.close()
    first = run_child(batchgen("gallery", str(out)))
    again = run_child(batchgen("gallery", str(out)))
    if first.returncode != 0 or again.returncode != 0:
        sys.exit(f"gallery failed:\n{first.output}\n{again.output}")
    return {
        "images": args.gallery_units,
        "first_seconds": first.wall,
        "again_seconds": again.wall,
        "page_mb": (out / "gallery" / "index.html").stat().st_size / 1e6,
        "peak_rss_mb": first.peak_rss_mb,
    }


def resume(args: argparse.Namespace, place: Path) -> dict[str, float]:
    """A journal of N finished units, as a run leaves it, then a run with a few units
    more: how long until the first new POST reaches the server."""
    manifest, prompts = write_workload(place, args.resume_units, 8)
    out = place / "out-resume"
    images = out / "images"
    images.mkdir(parents=True)
    journal = Journal(out)
    units = iter_units(load_manifest(manifest))
    while chunk := list(itertools.islice(units, 5000)):
        with journal.batch():  # each unit's way through the journal, as a run records it
            for unit in chunk:
                content = b"\x89PNG\r\n\x1a\n" + unit.id.encode()
                relative = f"images/{unit.id}_0.png"
                (out / relative).write_bytes(content)
                files = [(relative, hashlib.sha256(content).hexdigest())]
                job_id = f"job-{unit.id}"
                journal.submitting(unit.id, "2026-11-24T00:00:00+00:00", SENT)
                journal.submitted(unit.id, job_id, 1.0)
                result = UnitResult.success(unit, job_id=job_id, files=files, cost=1.0)
                journal.downloaded(unit.id, files, result.to_json(), [stamp_of(out / relative)])
    journal.close()
    with prompts.open("a", encoding="utf-8") as handle:
        handle.writelines(f"new prompt {i}\n" for i in range(8))
    with simulator(job_seconds=0.01, jitter=0.0, seed=args.seed) as sim:
        started = time.monotonic()
        child = run_child(
            batchgen("run", str(manifest), "--out", str(out), "--quiet", "--poll-interval", "0.05"),
            api_env(sim),
        )
        if child.returncode != 0 or len(sim.jobs) != 8:
            sys.exit(
                f"resume run failed ({child.returncode}, {len(sim.jobs)} jobs):\n{child.output}"
            )
        assert sim.first_job_at is not None
        first_submission = sim.first_job_at - started  # the simulator's clock is ours
        # Then the same run again, with nothing left to do, beside validate of the same
        # manifest against the same API (both read every prompt and ask for the model).
        rerun = run_child(
            batchgen("run", str(manifest), "--out", str(out), "--quiet"), api_env(sim)
        )
        check = run_child(batchgen("validate", str(manifest)), api_env(sim))
        if rerun.returncode != 0 or check.returncode != 0 or len(sim.jobs) != 8:
            sys.exit(f"rerun or validate failed:\n{rerun.output}\n{check.output}")
        return {
            "journal_units": args.resume_units,
            "seconds_to_first_submission": first_submission,
            "run_seconds": child.wall,
            "peak_rss_mb": child.peak_rss_mb,
            "rerun_seconds": rerun.wall,
            "validate_seconds": check.wall,
            "rerun_over_validate": rerun.wall / check.wall,
        }


# ---------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        choices=["pipeline", "latency", "memory", "floor", "fast", "validate", "resume", "gallery"],
    )
    parser.add_argument("--units", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--job-seconds", type=float, default=1.0)
    parser.add_argument("--jitter", type=float, default=0.1)
    parser.add_argument("--poll-interval", type=float, default=0.25)
    parser.add_argument(
        "--latency-ms", type=float, default=100, help="round trip, latency scenario"
    )
    parser.add_argument(
        "--memory-units", type=int, nargs="+", default=[10_000, 50_000], metavar="N"
    )
    parser.add_argument("--memory-concurrency", type=int, default=300)
    parser.add_argument("--floor-units", type=int, default=10_000)
    parser.add_argument("--floor-concurrency", type=int, default=300)
    parser.add_argument("--fast-units", type=int, default=5000)
    parser.add_argument("--fast-concurrency", type=int, default=500)
    parser.add_argument("--validate-lines", type=int, default=1_000_000)
    parser.add_argument("--resume-units", type=int, default=100_000)
    parser.add_argument("--gallery-units", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print all figures as JSON")
    args = parser.parse_args()
    report: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="batchgen-bench-") as tmp:
        place = Path(tmp)

        def scenario(name: str) -> Path | None:
            if args.only not in (None, name):
                return None
            sub = place / name
            sub.mkdir()
            return sub

        if (sub := scenario("pipeline")) is not None:
            figures = pipeline(args, sub)
            report["pipeline"] = figures
            ours, theirs = figures["batchgen"], figures["per-job baseline"]
            print(
                f"pipeline: N={args.units} C={args.concurrency} job ~{args.job_seconds:g}s "
                f"(jitter {args.jitter:g}) poll {args.poll_interval:g}s"
            )
            print(f"  {'':18}{'batchgen':>12}{'baseline':>12}")
            for key in ("makespan_s", "ideal_s", "makespan_ratio", "status_per_job",
                        "list_pages", "job_gets", "asset_requests", "cpu_ms_per_job",
                        "peak_rss_mb"):  # fmt: skip
                print(f"  {key:18}{ours[key]:>12.3f}{theirs[key]:>12.3f}")
            print(f"  makespan/ideal {ours['makespan_ratio']:.3f}: "
                  f"{verdict(ours['makespan_ratio'], TARGETS['makespan_ratio'])}")  # fmt: skip
            print(f"  status requests/job {ours['status_per_job']:.3f}: "
                  f"{verdict(ours['status_per_job'], TARGETS['status_per_job'])} "
                  f"({theirs['status_per_job'] / max(ours['status_per_job'], 1e-9):.0f}x fewer "
                  f"than the baseline)")  # fmt: skip
            startup = startup_cpu(sub)
            net = ours["cpu_ms_per_job"] - 1000 * startup / args.units
            report["startup_cpu_s"] = startup
            verdict_cpu = verdict(ours["cpu_ms_per_job"], TARGETS["cpu_ms_per_job"])
            print(f"  CPU/job {ours['cpu_ms_per_job']:.2f} ms: {verdict_cpu} ({net:.2f} ms "
                  f"without the {startup:.2f}s of starting Python)")  # fmt: skip
        if (sub := scenario("latency")) is not None:
            figures_l = latency(args, sub)
            report["latency"] = figures_l
            print(
                f"latency: batchgen, N={args.units} C={args.concurrency} job "
                f"~{args.job_seconds:g}s, round trips of {args.latency_ms:g} ms, answers in "
                "1,400-byte pieces, gzipped, chunked; beside loopback"
            )
            names = list(figures_l)
            print(f"  {'':18}" + "".join(f"{name:>12}" for name in names))
            for key in ("makespan_s", "makespan_ratio", "status_per_job", "slots_busy",
                        "cpu_ms_per_job"):  # fmt: skip
                print(f"  {key:18}" + "".join(f"{figures_l[n][key]:>12.3f}" for n in names))
        if (sub := scenario("memory")) is not None:
            figures_m = memory(args, sub)
            report["memory"] = figures_m
            sizes = list(figures_m)
            print(f"memory: batchgen, fast jobs, C={args.memory_concurrency}")
            for size in sizes:
                row = figures_m[size]
                print(f"  {size:>8} units: peak RSS {row['peak_rss_mb']:.0f} MB, "
                      f"{row['cpu_ms_per_job']:.2f} ms CPU/job, {row['seconds']:.1f}s")  # fmt: skip
            smallest, largest = figures_m[sizes[0]], figures_m[sizes[-1]]
            growth = largest["peak_rss_mb"] / smallest["peak_rss_mb"]
            print(f"  {sizes[-1]} over {sizes[0]}: {growth:.2f}x: "
                  f"{verdict(growth, TARGETS['memory_growth'])}; largest "
                  f"{verdict(largest['peak_rss_mb'], TARGETS['memory_mb'])} MB")  # fmt: skip
        if (sub := scenario("floor")) is not None:
            figures_f = floor(args, sub)
            report["floor"] = figures_f
            ours, best = figures_f["batchgen"], figures_f["best case"]
            ratio = ours["cpu_ms_per_job"] / best["cpu_ms_per_job"]
            print(f"floor: N={args.floor_units} C={args.floor_concurrency}, fast jobs, "
                  "beside the best-case client")  # fmt: skip
            for name, row in figures_f.items():
                print(f"  {name:10} {row['cpu_ms_per_job']:.2f} ms CPU/job, "
                      f"{row['seconds']:.1f}s, peak RSS {row['peak_rss_mb']:.0f} MB")  # fmt: skip
            print(f"  CPU/job over the best case: {ratio:.2f}x: "
                  f"{verdict(ratio, TARGETS['cpu_over_best_case'])}")  # fmt: skip
        if (sub := scenario("fast")) is not None:
            figures_fast = fast(args, sub)
            report["fast"] = figures_fast
            startup = startup_cpu(sub)
            net = figures_fast["cpu_ms_per_job"] - 1000 * startup / args.fast_units
            print(f"fast: N={args.fast_units} C={args.fast_concurrency} job ~1 ms")
            print(f"  {figures_fast['jobs_per_s']:.0f} jobs/s; CPU/job "
                  f"{figures_fast['cpu_ms_per_job']:.2f} ms: "
                  f"{verdict(figures_fast['cpu_ms_per_job'], TARGETS['cpu_ms_per_job'])} "
                  f"({net:.2f} ms without startup); status requests/job "
                  f"{figures_fast['status_per_job']:.3f}; peak RSS "
                  f"{figures_fast['peak_rss_mb']:.0f} MB")  # fmt: skip
        if (sub := scenario("validate")) is not None:
            figures_v = validate(args, sub)
            report["validate"] = figures_v
            print(f"validate: {args.validate_lines} lines in {figures_v['seconds']:.1f}s, "
                  f"peak RSS {figures_v['peak_rss_mb']:.0f} MB: "
                  f"{verdict(figures_v['peak_rss_mb'], TARGETS['validate_rss_mb'])}")  # fmt: skip
            for journal, prefix in (("no journal", ""), ("a tenth done", "partial_")):
                for what in ("time", "memory"):
                    ratio = figures_v[f"{prefix}estimate_over_validate_{what}"]
                    print(f"  run --estimate ({journal}) over validate, {what}: {ratio:.2f}x: "
                          f"{verdict(ratio, TARGETS['estimate_over_validate'])}")  # fmt: skip
        if (sub := scenario("resume")) is not None:
            figures_r = resume(args, sub)
            report["resume"] = figures_r
            seconds = figures_r["seconds_to_first_submission"]
            print(f"resume: journal of {args.resume_units} units, first new submission after "
                  f"{seconds:.2f}s: {verdict(seconds, TARGETS['resume_seconds'])}; "
                  f"peak RSS {figures_r['peak_rss_mb']:.0f} MB")  # fmt: skip
            ratio = figures_r["rerun_over_validate"]
            print(f"  a rerun with nothing to do: {figures_r['rerun_seconds']:.2f}s, validate "
                  f"{figures_r['validate_seconds']:.2f}s: {ratio:.2f}x: "
                  f"{verdict(ratio, TARGETS['rerun_over_validate'])}")  # fmt: skip
        if (sub := scenario("gallery")) is not None:
            figures_g = gallery(args, sub)
            report["gallery"] = figures_g
            print(f"gallery: {args.gallery_units} images of 512 px")
            print(f"  first: {figures_g['first_seconds']:.1f}s: "
                  f"{verdict(figures_g['first_seconds'], TARGETS['gallery_seconds'])}; "
                  f"again: {figures_g['again_seconds']:.2f}s: "
                  f"{verdict(figures_g['again_seconds'], TARGETS['gallery_again_seconds'])}; "
                  f"page {figures_g['page_mb']:.1f} MB, "
                  f"peak RSS {figures_g['peak_rss_mb']:.0f} MB")  # fmt: skip
    if args.json:
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
