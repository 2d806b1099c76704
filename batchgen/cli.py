"""Command line: ``batchgen run | validate | sim``.

Known errors print as one line on stderr with a non-zero exit code; set
``BATCHGEN_TRACEBACK=1`` to see the traceback as well.

Exit codes: 0 every unit succeeded, 1 some units failed, 2 invalid input or
configuration, 3 another run holds the output directory, 4 stopped at --max-runtime
with work left for the next run, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import secrets
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
from anyio import CancelScope
from yarl import URL

from . import config as defaults
from .api import AssetDownloader, ScenarioClient
from .config import ApiSettings, Credentials, EngineSettings, RetrySettings
from .dataset import write_metadata
from .display import Display, LineDisplay
from .engine import Engine, Summary, cost_shape
from .errors import BatchgenError, ConfigError
from .journal import JOURNAL_NAME, Journal, Resume, resume_action
from .lock import OutputLock, run_in_progress
from .manifest import Manifest, count_units, iter_units, load_manifest
from .naming import DEFAULT_TEMPLATE, UNIT_FIELDS, FileNameTemplate, parse_template
from .policy import Request, with_retries
from .progress import RateMeter
from .results import write_results
from .shard import Shard, shard_directories

EXIT_OK = 0
EXIT_FAILED_UNITS = 1
EXIT_INVALID = 2
EXIT_LOCKED = 3
EXIT_OUT_OF_TIME = 4
STATUS_FAILURES_SHOWN = 20
EXIT_INTERRUPTED = 130

log = logging.getLogger("batchgen")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def _positive_int(name: str, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a whole number, got {text!r}"
            ) from None
        if not 1 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{name} must be between 1 and {maximum}, got {value}")
        return value

    return parse


def _positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text}")
        return value

    return parse


def _filename(text: str) -> FileNameTemplate:
    try:
        return parse_template(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"--filename {text!r}: {exc}") from None


def _add_filename(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--filename",
        type=_filename,
        metavar="TEMPLATE",
        help="image file names below OUT/images, e.g. '{entry}/{index:06d}-{slug}'; fields: "
        f"{', '.join('{' + name + '}' for name in UNIT_FIELDS)} and the prompt file's "
        f"columns or vars (default: the manifest's filename, else {DEFAULT_TEMPLATE!r})",
    )


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batchgen", description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="generate every unit of a manifest")
    run.add_argument("manifest", type=Path)
    run.add_argument(
        "--out",
        type=Path,
        help="output directory (default: the manifest's output, else output/<manifest name>)",
    )
    run.add_argument(
        "--concurrency",
        type=_positive_int("--concurrency", defaults.MAX_CONCURRENCY),
        help=f"jobs in flight at the server at most (default {defaults.DEFAULT_CONCURRENCY})",
    )
    run.add_argument(
        "--poll-interval",
        type=_positive_float("--poll-interval"),
        default=defaults.DEFAULT_POLL_INTERVAL,
        metavar="SECONDS",
        help=f"seconds between status checks (default {defaults.DEFAULT_POLL_INTERVAL:g})",
    )
    run.add_argument(
        "--job-timeout",
        type=_positive_float("--job-timeout"),
        default=defaults.DEFAULT_JOB_TIMEOUT,
        metavar="SECONDS",
        help="give up on a job not finished after this long, trying to cancel it "
        f"(default {defaults.DEFAULT_JOB_TIMEOUT:g})",
    )
    run.add_argument(
        "--job-attempts",
        type=_positive_int("--job-attempts", 20),
        default=defaults.DEFAULT_JOB_ATTEMPTS,
        metavar="N",
        help="jobs to try per unit when they end in 'failure' (each costs creative units; "
        f"default {defaults.DEFAULT_JOB_ATTEMPTS})",
    )
    run.add_argument(
        "--downloads",
        type=_positive_int("--downloads", 64),
        help="downloads at once (default: as many as --concurrency, at least "
        f"{defaults.MIN_DOWNLOAD_WORKERS} and at most {defaults.MAX_DEFAULT_DOWNLOAD_WORKERS})",
    )
    run.add_argument(
        "--retries",
        type=_positive_int("--retries", 100),
        default=defaults.DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help="attempts per request before a unit is given up "
        f"(default {defaults.DEFAULT_MAX_ATTEMPTS}; a 429 on submit is waited out longer)",
    )
    run.add_argument(
        "--api-url",
        help=f"API base URL (default ${defaults.API_URL_VARIABLE}, "
        f"else {defaults.DEFAULT_API_URL})",
    )
    run.add_argument(
        "--project-id", help=f"Scenario project id (default ${defaults.PROJECT_VARIABLE})"
    )
    run.add_argument(
        "--retry-failed",
        action="store_true",
        help="also submit again the units that failed for good in earlier runs (400, 403, "
        "404, or jobs that failed repeatedly)",
    )
    run.add_argument(
        "--max-runtime",
        type=_positive_float("--max-runtime"),
        metavar="SECONDS",
        help="stop after this long; jobs still running are picked up by the next run",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="start over: move an existing output directory aside to DIR.<date-time> "
        "(nothing is deleted) and begin a new one",
    )
    run.add_argument(
        "--estimate",
        action="store_true",
        help="print what the units still to do would cost (the API's dry run, once per "
        "model/size/params shape) and stop; nothing is created",
    )
    run.add_argument(
        "--budget",
        type=_positive_float("--budget"),
        metavar="CU",
        help="stop submitting before the creative units spent in this output directory plus "
        "the next job's cost would pass this",
    )
    _add_filename(run)
    run.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="run only shard I of N (1-based) of the units, in OUT/shard-I-of-N; "
        "for one machine or array task per shard",
    )
    run.add_argument(
        "--simulate",
        action="store_true",
        help="start the embedded simulator and run against it (no account, no network)",
    )
    run.add_argument(
        "--sim-job-seconds",
        type=_positive_float("--sim-job-seconds"),
        default=1.0,
        help="with --simulate: how long each simulated job takes (default 1)",
    )
    run.add_argument(
        "--progress-every",
        type=_positive_float("--progress-every"),
        default=defaults.PROGRESS_EVERY_SECONDS,
        metavar="SECONDS",
        help="when stderr is not a terminal: seconds between progress lines "
        f"(default {defaults.PROGRESS_EVERY_SECONDS:g}); on a terminal a live panel is shown",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print the final summary (or with --estimate, the estimate) as one JSON "
        "object on stdout",
    )
    _add_verbosity(run)

    validate = commands.add_parser(
        "validate",
        help="check a manifest and count its units; with credentials in the environment, "
        "also check its model ids (one read-only request a page of models)",
    )
    validate.add_argument("manifest", type=Path)
    validate.add_argument("--api-url", help="API base URL (as for run)")
    validate.add_argument("--project-id", help="Scenario project id (as for run)")
    _add_filename(validate)
    validate.set_defaults(simulate=False)
    _add_verbosity(validate)

    models = commands.add_parser("models", help="list the models the credentials can use")
    models.add_argument("--api-url", help="API base URL (as for run)")
    models.add_argument("--project-id", help="Scenario project id (as for run)")
    models.add_argument("--simulate", action="store_true", help="ask the embedded simulator")
    models.add_argument("--json", action="store_true", help="print the API's model records")
    _add_verbosity(models)

    status = commands.add_parser(
        "status", help="what a run has done so far in an output directory (also while it runs)"
    )
    status.add_argument("out", type=Path, metavar="OUT")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbosity(status)

    sim = commands.add_parser("sim", help="serve the Scenario simulator until stopped")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=0, help="API port (default: any free port)")
    sim.add_argument(
        "--cdn-port", type=int, default=0, help="asset host port (default: any free port)"
    )
    sim.add_argument("--key", default="sim-key", help="API key to accept (default sim-key)")
    sim.add_argument(
        "--secret", default="sim-secret", help="API secret to accept (default sim-secret)"
    )
    sim.add_argument("--job-seconds", type=_positive_float("--job-seconds"), default=1.0)
    sim.add_argument("--jitter", type=float, default=0.3, help="job time spread, as a fraction")
    sim.add_argument("--failure-rate", type=float, default=0.0, help="fraction of jobs that fail")
    sim.add_argument(
        "--in-flight-limit", type=int, default=None, help="answer 429 above this many running jobs"
    )
    sim.add_argument(
        "--url-lifetime",
        type=_positive_float("--url-lifetime"),
        default=600.0,
        help="seconds a signed asset URL stays valid",
    )
    sim.add_argument(
        "--lose-answer-rate",
        type=float,
        default=0.0,
        help="fraction of submissions whose job is created but whose answer is lost",
    )
    sim.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of API requests refused (429/5xx)"
    )
    sim.add_argument(
        "--truncate-rate", type=float, default=0.0, help="fraction of downloads cut half-way"
    )
    sim.add_argument(
        "--stuck-rate", type=float, default=0.0, help="fraction of jobs that never finish"
    )
    sim.add_argument(
        "--credits", type=float, default=None, help="creative units available (default unlimited)"
    )
    sim.add_argument(
        "--restricted-model",
        action="append",
        default=[],
        metavar="MODEL",
        help="a model the plan does not cover (403); may be repeated",
    )
    sim.add_argument(
        "--network",
        choices=("loopback", "internet"),
        default="loopback",
        help="how answers travel: 'internet' writes them in 1,400-byte pieces, gzipped and "
        "chunked, 50-150 ms late, and drops connections idle for 2 s (default loopback)",
    )
    sim.add_argument("--seed", type=int, default=0)
    _add_verbosity(sim)
    return parser


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="log every request decision")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and the summary")


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    stamp = "" if sys.stderr.isatty() else "%(asctime)s "
    handler.setFormatter(logging.Formatter(f"{stamp}%(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(args)
        if args.command == "validate":
            return _validate(args)
        if args.command == "sim":
            return _sim(args)
        if args.command == "status":
            return _status(args)
        if args.command == "models":
            return _models(args)
        return _run(args)
    except KeyboardInterrupt:
        print("batchgen: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        known = _known_error(exc)
        if known is None:
            raise
        if os.environ.get(defaults.TRACEBACK_VARIABLE):
            traceback.print_exception(exc)
        print(f"batchgen: error: {known}", file=sys.stderr)
        return known.exit_code


def _known_error(exc: BaseException) -> BatchgenError | None:
    """The error to show: ours, also when a task group wrapped it."""
    if isinstance(exc, BatchgenError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _known_error(inner)
            if found is not None:
                return found
    return None


def _load(args: argparse.Namespace) -> Manifest:
    """The manifest, with the file name template of --filename when one is given."""
    manifest = load_manifest(args.manifest)
    if args.filename is not None:
        manifest = dataclasses.replace(manifest, filename=args.filename)
    return manifest


def _validate(args: argparse.Namespace) -> int:
    manifest = _load(args)
    total = count_units(manifest)
    print(f"{args.manifest}: ok, {len(manifest.entries)} entries expand to {total} units")
    try:
        base_url, credentials, project_id = _connection(args)
    except ConfigError:
        return EXIT_OK  # no credentials given: nothing is sent
    try:
        known = {m.get("id") for m in _fetch_models(args, base_url, credentials, project_id)}
    except BatchgenError as exc:
        print(f"{args.manifest}: warning: could not check the model ids: {exc}", file=sys.stderr)
        return EXIT_OK
    for model, line in sorted({(e.model, e.line) for e in manifest.entries}, key=lambda m: m[1]):
        if model not in known:
            print(
                f"{args.manifest}:{line}: warning: model {model!r} is not among the models "
                "these credentials can use (batchgen models lists them)",
                file=sys.stderr,
            )
    return EXIT_OK


def _connection(args: argparse.Namespace) -> tuple[str, Credentials, str | None]:
    """(API base URL, credentials, project id) from the options and the environment.
    With --simulate the URL is known only once the simulator runs: it is left empty."""
    project_id = args.project_id or os.environ.get(defaults.PROJECT_VARIABLE) or None
    if args.simulate:
        return "", Credentials(key="sim", secret=secrets.token_urlsafe(24)), project_id
    base_url = args.api_url or os.environ.get(defaults.API_URL_VARIABLE) or defaults.DEFAULT_API_URL
    parsed = URL(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"--api-url: not an http(s) URL: {base_url!r}")
    return base_url, Credentials.from_environment(), project_id


async def _estimate(
    args: argparse.Namespace,
    manifest: Manifest,
    out_dir: Path,
    credentials: Credentials,
    base_url: str,
    project_id: str | None,
) -> int:
    """Cost of the units still to do: one dry run (HTTP 269, nothing created) per shape."""
    journal = Journal(out_dir) if (out_dir / JOURNAL_NAME).is_file() else None
    shapes: dict[str, tuple[str, dict[str, Any], int]] = {}
    try:
        units = iter_units(manifest)
        for unit in units if args.shard is None else args.shard.select(units):
            if journal is not None:
                action = resume_action(journal.get(unit.id), retry_failed=args.retry_failed)
                if action not in (Resume.SUBMIT, Resume.RECONCILE):
                    continue  # done, or its job is already paid for
            body = unit.request_body()
            key = cost_shape(unit.model, body)
            model, first_body, count = shapes.get(key, (unit.model, body, 0))
            shapes[key] = (model, first_body, count + 1)
    finally:
        if journal is not None:
            journal.close()
    async with contextlib.AsyncExitStack() as stack:
        url = base_url
        if args.simulate:
            from .sim import SimConfig, serve  # loaded only when used

            sim_config = SimConfig(api_key=credentials.key, api_secret=credentials.secret)
            url = (await stack.enter_async_context(serve(sim_config))).api_url
        settings = ApiSettings(base_url=url, credentials=credentials, project_id=project_id)
        client = await stack.enter_async_context(ScenarioClient.open(settings))
        total = 0.0
        rows: list[dict[str, Any]] = []
        for model, body, count in shapes.values():
            ask = functools.partial(client.estimate, model, body)
            cost = await with_retries(Request.OTHER_READ, ask, settings.retry)
            total += (cost or 0.0) * count
            size = f"{body.get('width')}x{body.get('height')}"
            rows.append({"model": model, "size": size, "units": count, "cost_each": cost})
            if not args.json:
                print(f"  {count} x {model} {size}: {cost if cost is not None else '?'} CU each")
    to_do = sum(count for _, _, count in shapes.values())
    if args.json:
        print(json.dumps({"units": to_do, "cost": total, "shapes": rows}))
    else:
        print(f"batchgen: {to_do} units to do would cost {total:g} creative units (dry run)")
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    base_url, credentials, project_id = _connection(args)
    models = _fetch_models(args, base_url, credentials, project_id)
    if args.json:
        print(json.dumps(models, ensure_ascii=False))
        return EXIT_OK
    for model in models:
        name = model.get("name") or ""
        print(f"{model.get('id', '?')}\t{name}\t{model.get('type') or ''}".rstrip())
    return EXIT_OK


def _fetch_models(
    args: argparse.Namespace, base_url: str, credentials: Credentials, project_id: str | None
) -> list[dict[str, Any]]:
    """Every model the credentials can use (all pages)."""

    async def fetch() -> list[dict[str, Any]]:
        async with contextlib.AsyncExitStack() as stack:
            url = base_url
            if args.simulate:
                from .sim import SimConfig, serve  # loaded only when used

                sim_config = SimConfig(api_key=credentials.key, api_secret=credentials.secret)
                url = (await stack.enter_async_context(serve(sim_config))).api_url
            settings = ApiSettings(base_url=url, credentials=credentials, project_id=project_id)
            client = await stack.enter_async_context(ScenarioClient.open(settings))
            return await with_retries(Request.OTHER_READ, client.list_models, settings.retry)

    return anyio.run(fetch)


def _run(args: argparse.Namespace) -> int:
    manifest = _load(args)
    shard: Shard | None = args.shard
    total = (
        count_units(manifest)
        if shard is None
        else sum(1 for _ in shard.select(iter_units(manifest)))
    )
    out_dir = args.out or manifest.output or defaults.DEFAULT_OUTPUT_ROOT / args.manifest.stem
    if shard is not None:
        out_dir = out_dir / shard.directory
    concurrency = args.concurrency or manifest.concurrency or defaults.DEFAULT_CONCURRENCY

    base_url, credentials, project_id = _connection(args)

    engine_settings = EngineSettings(
        output_dir=out_dir,
        concurrency=concurrency,
        poll_interval=args.poll_interval,
        job_timeout=args.job_timeout,
        job_attempts=args.job_attempts,
        download_workers=args.downloads or defaults.download_workers_for(concurrency),
        filename=manifest.filename,
    )
    log.info(
        "%s: %d units, output in %s, %d in flight at most",
        args.manifest,
        total,
        out_dir,
        concurrency,
    )
    if args.estimate:
        return anyio.run(_estimate, args, manifest, out_dir, credentials, base_url, project_id)
    if args.fresh and out_dir.exists() and any(out_dir.iterdir()):
        aside = out_dir.with_name(f"{out_dir.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        with OutputLock(out_dir):  # never move a directory from under a live run
            out_dir.rename(aside)
        log.warning("--fresh: the previous output is kept in %s", aside)
    with OutputLock(out_dir):
        journal = Journal(out_dir, failed_job_limit=args.job_attempts)
        try:
            summary = anyio.run(
                _run_async,
                args,
                manifest,
                total,
                credentials,
                base_url,
                project_id,
                engine_settings,
                journal,
            )
            if not (summary.interrupted or summary.out_of_time):
                # Every unit of the manifest has a journal row now; any more are old ones.
                departed = sum(journal.counts().values()) - total
                if departed > 0:
                    log.warning(
                        "%d units recorded in %s are no longer in the manifest; "
                        "they are kept, with their lines in results.jsonl",
                        departed,
                        out_dir,
                    )
        finally:
            # Also after an error or an interruption: the views must match the journal.
            write_results(journal.results(), out_dir)
            _write_dataset_metadata(journal, out_dir, sharded=shard is not None)
            spent = journal.spent()
            journal.close()
    code = _exit_code(summary, total)
    if args.json:
        report = {**summary.to_json(), "spent_total": spent, "output": str(out_dir)}
        print(json.dumps({**report, "exit_code": code}))
    else:
        print(f"batchgen: {summary.line()}")
        for unit_id, reason in summary.failures:
            print(f"  failed {unit_id}: {reason}")
    return code


def _exit_code(summary: Summary, total: int) -> int:
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.out_of_time:
        return EXIT_OUT_OF_TIME
    return (
        EXIT_OK
        if summary.failed == 0
        and summary.left_failed == 0
        and summary.done + summary.skipped == total
        else EXIT_FAILED_UNITS
    )


async def _run_async(
    args: argparse.Namespace,
    manifest: Manifest,
    total: int,
    credentials: Credentials,
    base_url: str,
    project_id: str | None,
    settings: EngineSettings,
    journal: Journal,
) -> Summary:
    async with contextlib.AsyncExitStack() as stack:
        if args.simulate:
            from .sim import SimConfig, serve  # loaded only when used

            sim_config = SimConfig(
                api_key=credentials.key,
                api_secret=credentials.secret,
                job_seconds=args.sim_job_seconds,
            )
            simulator = await stack.enter_async_context(serve(sim_config))
            base_url = simulator.api_url
            log.info("simulator running at %s", base_url)
        api_settings = ApiSettings(
            base_url=base_url,
            credentials=credentials,
            project_id=project_id,
            retry=RetrySettings(max_attempts=args.retries),
        )
        client = await stack.enter_async_context(ScenarioClient.open(api_settings))
        fetcher = await stack.enter_async_context(
            AssetDownloader.open(api_settings.download_timeout)
        )
        engine = Engine(
            client,
            fetcher,
            journal,
            settings,
            api_settings.retry,
            retry_failed=args.retry_failed,
            budget=args.budget,
            spent_before=journal.spent(),
        )
        display = _open_display(args, stack)
        meter = RateMeter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, tg.cancel_scope, engine.summary)
            if display is not None:
                tg.start_soon(_show_progress, engine, display, meter)
            with anyio.move_on_after(args.max_runtime) as deadline:
                units = iter_units(manifest)
                await engine.run(units if args.shard is None else args.shard.select(units), total)
            if deadline.cancelled_caught:
                engine.summary.out_of_time = True
                log.warning("--max-runtime reached; the next run continues from here")
            tg.cancel_scope.cancel()
        if display is not None and display.live:  # its last frame is the final state
            _show_now(engine, display, meter)
        return engine.summary


def _open_display(args: argparse.Namespace, stack: contextlib.AsyncExitStack) -> Display | None:
    """The live panel on a terminal, a progress line every few seconds elsewhere, and
    nothing with --quiet."""
    if args.quiet:
        return None
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        from .live import LiveDisplay  # rich is imported only when it is shown

        return stack.enter_context(LiveDisplay.open())
    return LineDisplay(args.progress_every)


async def _show_progress(engine: Engine, display: Display, meter: RateMeter) -> None:
    while True:
        await anyio.sleep(display.interval)
        _show_now(engine, display, meter)


def _show_now(engine: Engine, display: Display, meter: RateMeter) -> None:
    snapshot = engine.snapshot()
    display.show(snapshot, meter.add(snapshot.elapsed, snapshot.done))


async def _stop_on_signal(scope: CancelScope, summary: Summary) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning(
                "%s: stopping; jobs already submitted keep running at the server",
                signal.Signals(signum).name,
            )
            summary.interrupted = True
            scope.cancel()
            return


def _write_dataset_metadata(journal: Journal, out_dir: Path, *, sharded: bool) -> None:
    """``metadata.jsonl`` for the run's directory or, for a shard, for the whole output
    root, covering every shard that has a journal (see :mod:`batchgen.dataset`).
    ``journal`` is the run's own, still open."""
    if not sharded:
        write_metadata(out_dir, [("", journal.results())])
        return
    with contextlib.ExitStack() as stack:
        parts = []
        for place in shard_directories(out_dir.parent):
            if place == out_dir:
                parts.append((f"{place.name}/", journal.results()))
            elif (place / JOURNAL_NAME).is_file():
                other = Journal(place)
                stack.callback(other.close)
                parts.append((f"{place.name}/", other.results()))
        write_metadata(out_dir.parent, parts)


def _status(args: argparse.Namespace) -> int:
    out: Path = args.out
    places = [out] if (out / JOURNAL_NAME).is_file() else shard_directories(out)
    places = [p for p in places if (p / JOURNAL_NAME).is_file()]
    if not places:
        raise ConfigError(f"{out}: no batchgen journal here (is it a run's output directory?)")
    counts: Counter[str] = Counter()
    spent = 0.0
    failures: list[tuple[str, str, bool, str | None]] = []
    for place in places:
        journal = Journal(place)
        try:
            counts.update(journal.counts())
            spent += journal.spent()
            failures.extend(journal.failures())
        finally:
            journal.close()
    running = any(run_in_progress(place) for place in places)
    if args.json:
        report = {
            "out": str(out),
            "shards": [p.name for p in places] if places != [out] else [],
            "running": running,
            "units": sum(counts.values()),
            "states": dict(counts),
            "cost": spent,
            "failures": [
                {"id": unit_id, "error": error, "permanent": permanent, "job_id": job_id}
                for unit_id, error, permanent, job_id in failures
            ],
        }
        print(json.dumps(report, ensure_ascii=False))
        return EXIT_OK
    states = (
        ", ".join(f"{count} {state}" for state, count in sorted(counts.items())) or "nothing yet"
    )
    print(f"{out}: {'a run is in progress; ' if running else ''}{states}; cost {spent:g} CU")
    for unit_id, error, permanent, _ in failures[:STATUS_FAILURES_SHOWN]:
        print(f"  failed {unit_id}{' (for good)' if permanent else ''}: {error}")
    if len(failures) > STATUS_FAILURES_SHOWN:
        print(f"  ... and {len(failures) - STATUS_FAILURES_SHOWN} more (--json lists them all)")
    return EXIT_OK


def _sim(args: argparse.Namespace) -> int:
    from .sim import INTERNET, Network, SimConfig, serve  # loaded only when used

    config = SimConfig(
        api_key=args.key,
        api_secret=args.secret,
        job_seconds=args.job_seconds,
        jitter=args.jitter,
        failure_rate=args.failure_rate,
        in_flight_limit=args.in_flight_limit,
        url_lifetime=args.url_lifetime,
        lose_answer_rate=args.lose_answer_rate,
        error_rate=args.error_rate,
        truncate_rate=args.truncate_rate,
        stuck_rate=args.stuck_rate,
        credits=args.credits,
        restricted_models=tuple(args.restricted_model),
        seed=args.seed,
        network=INTERNET if args.network == "internet" else Network(),
    )

    async def serve_forever() -> None:
        async with serve(
            config, host=args.host, port=args.port, cdn_port=args.cdn_port
        ) as simulator:
            print(
                f"simulator API at {simulator.api_url} (assets at {simulator.cdn_url})", flush=True
            )
            print(
                f"accepting key {config.api_key!r} with the secret given by --secret; Ctrl-C stops",
                flush=True,
            )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

    anyio.run(serve_forever)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
