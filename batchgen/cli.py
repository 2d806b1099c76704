"""Turn a YAML manifest of image prompts into a folder of images through Scenario's
generation API, and look after the folder: run, validate, models, status, prune,
verify, export, gallery, account, sim.

The commands only parse, call :mod:`batchgen.app` (and :mod:`batchgen.upkeep`) and
render what they return.  Known errors print as one line on stderr (a line per problem
when there are several) with their own exit code (the table is in ``--help`` and the
README); set ``BATCHGEN_TRACEBACK=1`` to see the traceback as well."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TextIO

import anyio

from . import config as defaults
from .errors import (
    EXIT_FAILED_UNITS,
    EXIT_INTERRUPTED,
    EXIT_MEANINGS,
    EXIT_OK,
    ConfigError,
    known_error,
)
from .ledger import plural
from .options import add_arguments, chosen, output_place, positive_float, positive_int
from .redact import printable, redact
from .report import Estimate, Report
from .store.export import DEFAULT_SHARD_SIZE, FORMATS
from .ui.display import Display, Displays, LineDisplay
from .version import __version__

STATUS_FAILURES_SHOWN = 20
# Failed units a run's summary shows each in a line when there are more: the rest are
# counted by reason.
FAILURES_SHOWN = 3

log = logging.getLogger("batchgen")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # "batchgen: error: run: argument ...", not the program's name twice.
        command = self.prog.removeprefix("batchgen").strip()
        raise ConfigError(f"{command}: {message}" if command else message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batchgen", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"batchgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (
        _add_run,
        _add_validate,
        _add_models,
        _add_account,
        _add_status,
        _add_prune,
        _add_verify,
        _add_export,
        _add_gallery,
        _add_sim,
    ):
        add(commands)
    _finish(parser)
    return parser


def _add_run(commands: argparse._SubParsersAction[_Parser]) -> None:
    run = commands.add_parser("run", help="generate every unit of a manifest")
    run.add_argument("manifest", type=Path)
    add_arguments(run, "run")
    run.add_argument(
        "--estimate",
        action="store_true",
        help="print what the units still to do would cost (the API's dry run, once per "
        "model/size/params shape) and stop; nothing is created",
    )
    run.add_argument(
        "--progress-every",
        type=positive_float("--progress-every"),
        default=defaults.PROGRESS_EVERY_SECONDS,
        metavar="SECONDS",
        help="when stderr is not a terminal, and in the log file: seconds between progress "
        f"lines (default {defaults.PROGRESS_EVERY_SECONDS:g}); on a terminal a live panel "
        "is shown",
    )
    run.add_argument(
        "--json",
        action="store_true",
        help="print the final summary (or with --estimate, the estimate) as one JSON "
        "object on stdout",
    )
    _add_verbosity(run)


def _add_validate(commands: argparse._SubParsersAction[_Parser]) -> None:
    validate = commands.add_parser(
        "validate",
        help="check a manifest and count its units, and that the API answers, accepts the "
        "credentials and takes every unit (read-only requests); --offline: the manifest alone",
    )
    validate.add_argument("manifest", type=Path)
    add_arguments(validate, "validate")
    validate.add_argument(
        "--offline",
        action="store_true",
        help="check the manifest only: no request to the API, no credentials needed",
    )
    validate.add_argument("--json", action="store_true", help="print the check as JSON")
    _add_verbosity(validate)


def _add_models(commands: argparse._SubParsersAction[_Parser]) -> None:
    models = commands.add_parser(
        "models",
        help="list the models the credentials can use (the team's and Scenario's public "
        "ones), or one model's inputs",
    )
    models.add_argument(
        "model_id",
        nargs="?",
        metavar="MODEL_ID",
        help="show this model's inputs: name, type, what it accepts, default, required",
    )
    add_arguments(models, "models")
    models.add_argument("--json", action="store_true", help="print the API's model records")
    _add_verbosity(models)


def _add_account(commands: argparse._SubParsersAction[_Parser]) -> None:
    account = commands.add_parser(
        "account",
        help="the account of the credentials: team, plan, period, creative units allowed, "
        "used and left, parallel jobs and those running, this period's use by model",
    )
    add_arguments(account, "account")
    account.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbosity(account)


def _add_status(commands: argparse._SubParsersAction[_Parser]) -> None:
    status = commands.add_parser(
        "status", help="what a run has done so far in an output directory (also while it runs)"
    )
    status.add_argument("out", type=output_place, metavar="OUT")
    status.add_argument(
        "manifest",
        type=Path,
        nargs="?",
        metavar="MANIFEST",
        help="also say how many of this manifest's units are left to do",
    )
    add_arguments(status, "status")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbosity(status)


def _add_prune(commands: argparse._SubParsersAction[_Parser]) -> None:
    prune = commands.add_parser(
        "prune",
        help="forget the units that left the manifest (their lines in the views, and with "
        "--delete-files their images); their jobs stay recorded as theirs",
        epilog="example: batchgen prune output/jobs jobs.yaml --delete-files",
    )
    prune.add_argument("out", type=output_place, metavar="OUT")
    prune.add_argument(
        "manifest",
        type=Path,
        nargs="?",
        metavar="MANIFEST",
        help="the manifest whose units stay (default: the one the last run used)",
    )
    prune.add_argument(
        "--delete-files", action="store_true", help="also delete the forgotten units' images"
    )
    add_arguments(prune, "prune")
    prune.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbosity(prune)


def _add_verify(commands: argparse._SubParsersAction[_Parser]) -> None:
    verify = commands.add_parser(
        "verify",
        help="hash every image against the journal; with --fix fetch the missing and altered "
        "ones again from their jobs (never a new job)",
        epilog="example: batchgen verify output/jobs --fix",
    )
    verify.add_argument("out", type=output_place, metavar="OUT")
    verify.add_argument(
        "--fix", action="store_true", help="download the missing and altered images again"
    )
    add_arguments(verify, "verify")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbosity(verify)


def _add_export(commands: argparse._SubParsersAction[_Parser]) -> None:
    export = commands.add_parser(
        "export",
        help="write an output directory's images as WebDataset tar shards, Parquet (with the "
        "image bytes) or a clean imagefolder with a dataset card",
        epilog="example: batchgen export output/jobs exports/jobs --format webdataset",
    )
    export.add_argument("out", type=output_place, metavar="OUT")
    export.add_argument(
        "dest",
        type=output_place,
        metavar="DEST",
        help="a new, empty directory, or an empty bucket prefix (s3://BUCKET/PREFIX)",
    )
    export.add_argument(
        "--format",
        choices=FORMATS,
        default="imagefolder",
        help="webdataset: KEY.png + KEY.json per sample in tar shards; parquet: an image "
        "column of bytes, loadable by datasets (needs pyarrow); imagefolder (default): "
        "images, metadata.jsonl and README.md, no journal",
    )
    export.add_argument(
        "--shard-size",
        type=positive_int("--shard-size", 10**7),
        default=DEFAULT_SHARD_SIZE,
        metavar="N",
        help=f"images per tar or Parquet file (default {DEFAULT_SHARD_SIZE})",
    )
    export.add_argument(
        "--embed-metadata",
        action="store_true",
        help="write each image's prompt and settings into the copy: a PNG 'parameters' text "
        "chunk (as AUTOMATIC1111 writes it) and XMP with the IPTC AI-made source type; the "
        "pixels are not re-encoded",
    )
    export.add_argument(
        "--only-passed",
        action="store_true",
        help="only the images the quality gate passed (verdict pass)",
    )
    export.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="CONDITION",
        help="only the images whose metadata column meets it: COLUMN OP VALUE, OP one of "
        "== != >= <= > < in, not in (e.g. 'quality_score >= 60', 'model in a,b'); "
        "repeat it for more, all must hold",
    )
    add_arguments(export, "export")
    export.add_argument("--json", action="store_true", help="print one JSON object")
    _add_verbosity(export)


def _add_gallery(commands: argparse._SubParsersAction[_Parser]) -> None:
    gallery = commands.add_parser(
        "gallery",
        help="write OUT/gallery/index.html, a page to review the run (thumbnails, filters, a "
        "compare view, failures and their reasons); it opens from file:// with no network",
        epilog="example: batchgen gallery output/jobs --open",
    )
    gallery.add_argument("out", type=output_place, metavar="OUT")
    gallery.add_argument(
        "--open",
        action="store_true",
        help="open it in the default browser (a local one: a page in a bucket is read "
        "where the bucket is served, or from a copy)",
    )
    gallery.add_argument("--json", action="store_true", help="print one JSON object")
    add_arguments(gallery, "gallery")
    _add_verbosity(gallery)


def _add_sim(commands: argparse._SubParsersAction[_Parser]) -> None:
    sim = commands.add_parser("sim", help="serve the Scenario simulator until stopped")
    sim.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sim.add_argument("--port", type=int, default=0, help="API port (default: any free port)")
    sim.add_argument(
        "--cdn-port", type=int, default=0, help="asset host port (default: any free port)"
    )
    sim.add_argument("--key", default="sim-key", help="API key to accept (default sim-key)")
    sim.add_argument(
        "--secret", default="sim-secret", help="API secret to accept (default sim-secret)"
    )
    sim.add_argument(
        "--job-seconds",
        type=positive_float("--job-seconds"),
        default=1.0,
        metavar="SECONDS",
        help="how long a job takes (default 1)",
    )
    sim.add_argument("--jitter", type=float, default=0.3, help="job time spread, as a fraction")
    sim.add_argument("--failure-rate", type=float, default=0.0, help="fraction of jobs that fail")
    sim.add_argument(
        "--in-flight-limit", type=int, default=None, help="answer 429 above this many running jobs"
    )
    sim.add_argument(
        "--url-lifetime",
        type=positive_float("--url-lifetime"),
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
    sim.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seeds the injected faults (default 0)"
    )
    _add_verbosity(sim)


# Every option's value named the same way in every command.
METAVARS = {
    "api_url": "URL",
    "project_id": "ID",
    "concurrency": "N",
    "downloads": "N",
    "out": "DIR|URL",
    "host": "HOST",
    "port": "PORT",
    "cdn_port": "PORT",
    "key": "KEY",
    "secret": "SECRET",
    "in_flight_limit": "N",
    "credits": "CU",
}
POSITIONAL_HELP = {
    "manifest": "the YAML manifest",
    "out": "an output directory, or an output root holding --shard directories; for status, "
    "verify, prune and export also a bucket URL (s3://BUCKET/PREFIX)",
}
EXAMPLES = {
    "run": "examples:\n  batchgen run jobs.yaml\n  batchgen run jobs.yaml --simulate\n"
    "  batchgen run jobs.yaml -q --run-budget 500 --max-runtime 18000 --log-file run.log",
    "validate": "example: batchgen validate jobs.yaml",
    "account": "examples:\n  batchgen account\n  batchgen account --json",
    "models": "examples:\n  batchgen models\n  batchgen models model_imagen4-ultra",
    "status": "examples:\n  batchgen status output/jobs\n"
    "  batchgen status output/jobs jobs.yaml --json",
    "sim": "example: batchgen sim --port 8800 --lose-answer-rate 0.1 --network internet",
}
CREDENTIALS = (
    "credentials: SCENARIO_API_KEY and SCENARIO_API_SECRET (or the SDK's SCENARIO_SDK_API_KEY "
    "and SCENARIO_SDK_API_SECRET), or a file named by SCENARIO_CREDENTIALS_FILE (mode 600); "
    "SCENARIO_API_URL and SCENARIO_PROJECT_ID as --api-url and --project-id.\n"
    "exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_MEANINGS.items()) + "."
)


def _finish(parser: argparse.ArgumentParser) -> None:
    """The same metavars everywhere, a help for every argument, an example a command."""
    parser.epilog = "\n".join(textwrap.fill(part, 79) for part in CREDENTIALS.split("\n"))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        if name in EXAMPLES:
            command.epilog = EXAMPLES[name]
        for action in command._actions:
            if action.option_strings and action.nargs != 0 and action.metavar is None:
                if action.choices is None:
                    action.metavar = METAVARS.get(action.dest, action.dest.upper())
            if not action.option_strings and action.help is None:
                action.help = POSITIONAL_HELP.get(action.dest)


def _add_verbosity(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="log every request decision")
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="only warnings on stderr, and the summary only when something did not succeed "
        "(for cron: a run that did everything prints nothing)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        metavar="PATH",
        help="also append the log to this file, whatever -q says (rotation is logrotate's)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="the log file's lines: text, or one JSON object a line (time, level, logger, message)",
    )


def _say(*values: object, file: TextIO | None = None, flush: bool = False) -> None:
    """Print, as everything batchgen shows: no secret in it (see batchgen.redact)."""
    print(redact(" ".join(map(str, values))), file=file, flush=flush)


class _Formatter(logging.Formatter):
    """Times in ISO 8601 with the zone, as cron mail and log collectors want them; no
    secret, and no control character a terminal would act on (see batchgen.redact)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(redact(super().format(record)), lines=True)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created).astimezone()
        return moment.isoformat(timespec="milliseconds")


class _JsonFormatter(_Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": self.formatTime(record),
                "level": record.levelname,
                "logger": record.name,
                "message": redact(record.getMessage()),
            },
            ensure_ascii=False,
        )


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    stamp = "" if sys.stderr.isatty() else "%(asctime)s "
    handler.setFormatter(_Formatter(f"{stamp}%(levelname)s %(message)s"))
    handler.setLevel(level)
    handlers: list[logging.Handler] = [handler]
    if getattr(args, "log_file", None) is not None:
        try:
            to_file = logging.FileHandler(args.log_file, mode="a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--log-file {args.log_file}: {exc.strerror or exc}") from None
        to_file.setLevel(logging.DEBUG if args.verbose else logging.INFO)
        to_file.setFormatter(
            _JsonFormatter()
            if args.log_format == "json"
            else _Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        handlers.append(to_file)
    for old in log.handlers:
        old.close()
    log.handlers[:] = handlers
    log.setLevel(min(h.level for h in handlers))
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
    except BaseException:
        _record(logging.ERROR, "stopped by an unexpected error (its traceback is on stderr)")
        raise
    else:
        # The log file is the run's record: how it ended, also when nothing else says.
        _record(logging.INFO, f"exit {code}: {EXIT_MEANINGS.get(code, 'unknown')}")
        return code
    finally:
        for handler in log.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()


def _main(argv: Sequence[str] | None) -> int:
    # --json promises a JSON object on every exit, also when the arguments are wrong.
    given = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--json" in given
    try:
        args = build_parser().parse_args(given)
        _setup_logging(args)
        _record(logging.INFO, f"batchgen {__version__}: {' '.join(given)} (pid {os.getpid()})")
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _say("batchgen: interrupted", file=sys.stderr)
        if wants_json:
            _say(json.dumps({"error": "interrupted", "exit_code": EXIT_INTERRUPTED}))
        return EXIT_INTERRUPTED
    except BaseException as exc:  # noqa: BLE001 - the one place errors become exit codes
        known = known_error(exc)
        if known is None:
            raise
        if not _log_files():  # refused before the log was opened: opened for this
            _early_log_file(given)
        if os.environ.get(defaults.TRACEBACK_VARIABLE):
            traceback.print_exception(exc)
        for line in str(known).splitlines():
            _say(f"batchgen: error: {line}", file=sys.stderr)
            _record(logging.ERROR, f"error: {line}")
        if wants_json:
            _say(json.dumps({"error": str(known), "exit_code": known.exit_code}))
        return known.exit_code


def _log_files() -> list[logging.FileHandler]:
    return [h for h in log.handlers if isinstance(h, logging.FileHandler)]


def _record(level: int, message: str) -> None:
    """A line for the log file alone (what the terminal is shown otherwise: the summary,
    an error, how the run ended)."""
    record = log.makeRecord(log.name, level, __file__, 0, message, (), None)
    for handler in _log_files():
        if level >= handler.level:
            handler.handle(record)


def _early_log_file(given: list[str]) -> None:
    """The log file of a command refused before its arguments were read: it must still
    say why (``--log-file PATH`` or ``--log-file=PATH`` found among them)."""
    for index, word in enumerate(given):
        path = word.partition("=")[2] if word.startswith("--log-file=") else None
        if word == "--log-file" and index + 1 < len(given):
            path = given[index + 1]
        if path:
            try:
                handler = logging.FileHandler(path, mode="a", encoding="utf-8")
            except OSError:
                return
            json_lines = "--log-format=json" in given or "json" in given
            handler.setFormatter(
                _JsonFormatter()
                if json_lines
                else _Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
            )
            log.addHandler(handler)
            return


def _account(args: argparse.Namespace) -> int:
    from . import app  # loaded when used: a rerun of a finished batch needs none
    from .team import account_lines

    found = app.account(**chosen(args, "account"))
    if args.json:
        _say(json.dumps(found.to_json()))
    else:
        for line in account_lines(found):
            _say(line)
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from . import app  # loaded when used: a rerun of a finished batch needs none

    checked = app.validate(
        args.manifest,
        api_url=args.api_url,
        project_id=args.project_id,
        filename=args.filename,
        max_units=args.max_units,
        offline=args.offline,
        simulate=args.simulate,
    )
    if args.json:
        _say(json.dumps(checked.to_json()))
        return EXIT_OK
    entries, units = plural(checked.entries, "entry"), plural(checked.units, "unit")
    verb = "expands" if checked.entries == 1 else "expand"
    _say(f"{checked.manifest}: ok, {entries} {verb} to {units}")
    if checked.credits_refusal:
        _say(f"{checked.manifest}: credits: {checked.credits_refusal}", file=sys.stderr)
    elif checked.estimated_cost is not None and checked.credits_left is not None:
        worst = ""
        if checked.worst_case is not None and checked.worst_case > checked.estimated_cost:
            worst = f", at worst {checked.worst_case:,.0f} if the quality gate regenerates"
        _say(
            f"{checked.manifest}: credits: about {checked.estimated_cost:,.0f} CU "
            f"(estimated{worst}) of the {checked.credits_left:,.0f} left"
        )
    if not checked.inputs_checked:
        _say(
            f"{checked.manifest}: the models' inputs were not checked: "
            f"{checked.not_checked_because}",
            file=sys.stderr,
        )
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    from . import app  # loaded when used: a rerun of a finished batch needs none

    if args.model_id:
        spec = app.model(args.model_id, **chosen(args, "models"))
        if args.json:
            _say(json.dumps(spec.to_json(), ensure_ascii=False))
            return EXIT_OK
        _say(f"{spec.id}  {spec.name}  {spec.privacy}".rstrip())
        rows = [("input", "type", "accepts", "default", "required")]
        for item in spec.inputs.values():
            default = "" if item.default is None else json.dumps(item.default)
            required = "yes" if item.always_required else "when " if item.required else ""
            if required == "when ":
                required = "sometimes"
            rows.append((item.name, item.type, item.describe_range(), default, required))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            _say(
                "  ".join(
                    cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                ).rstrip()
            )
        return EXIT_OK
    found = app.models(**chosen(args, "models"))
    if args.json:
        _say(json.dumps(found, ensure_ascii=False))
        return EXIT_OK
    for record in found:
        name = record.get("name") or ""
        line = f"{record.get('id', '?')}\t{record['privacy']}\t{name}\t{record.get('type') or ''}"
        _say(line.rstrip())
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    report = _finished(args)
    if report is not None:
        return _render(args, report)
    from . import app  # loaded when used: a rerun of a finished batch needs none

    if args.estimate:
        found = app.estimate(args.manifest, **chosen(args))
        if args.json:
            _say(json.dumps(found.to_json()))
            return EXIT_OK
        for line in estimate_lines(found):
            _say(line)
        return EXIT_OK
    with contextlib.ExitStack() as stack:
        display = _open_display(args, stack)
        report = app.run(args.manifest, **chosen(args), display=display, handle_signals=True)
    return _render(args, report)


def estimate_lines(found: Estimate) -> list[str]:
    """An estimate as ``run --estimate`` says it: a line a shape, then the total, and
    the quality gate's worst case when it may make jobs again."""
    lines = []
    for shape in found.shapes:
        cost = shape.cost_each if shape.cost_each is not None else "?"
        line = f"  {shape.units} x {shape.model} {shape.size}: {cost} CU each (estimated)"
        if not shape.units:  # only images to gate, of jobs paid for already
            line = f"  {shape.model} {shape.size}: jobs paid for"
        if shape.gate_calls:
            gate = shape.gate_cost_each if shape.gate_cost_each is not None else "?"
            line += f"; {plural(shape.gate_calls, 'image')} gated at {gate} CU each"
        if shape.regenerations_at_most:
            line += f"; at most {plural(shape.regenerations_at_most, 'regeneration')}"
        lines.append(line)
    unpriced = f" (+ {plural(found.unpriced_units, 'unit')} the dry run gave no price for)"
    lines.append(
        f"batchgen: {plural(found.units, 'unit')} to do; estimated left: "
        f"{found.estimated_left:g} CU, by the API's dry run"
        + (unpriced if found.unpriced_units else "")
    )
    if found.gate_calls:
        gated = f"batchgen: the quality gate's {plural(found.gate_calls, 'call')} counted in"
        if found.unpriced_gate_calls:
            gated += f" (+ {plural(found.unpriced_gate_calls, 'call')} with no price)"
        lines.append(gated)
    if found.regenerations_at_most and found.worst_case is not None:
        lines.append(
            f"batchgen: at worst {found.worst_case:g} CU, if the quality gate makes all "
            f"{plural(found.regenerations_at_most, 'regeneration')} it may"
        )
    return lines


def _finished(args: argparse.Namespace) -> Report | None:
    """The report of a rerun with nothing to do, known before the HTTP stack and the
    engine are even loaded (see :mod:`batchgen.rerun`); None when there may be work."""
    if args.estimate or args.fresh or args.rebuild_journal or args.gallery:
        return None
    from .rerun import finished_report

    return finished_report(
        args.manifest, out=args.out, filename=args.filename, shard=args.shard, shards=args.shards
    )


def _render(args: argparse.Namespace, report: Report) -> int:
    _record(logging.INFO, f"summary: {report.line}")
    if args.json:
        _say(json.dumps(report.to_json()))
    elif not (args.quiet and report.exit_code == EXIT_OK):
        _say(f"batchgen: {report.line}")
        if report.failed > len(report.failures):  # many: counted by reason, a few shown
            for reason in report.failure_reasons:
                _say(f"  {reason['units']} failed: {reason['reason']}")
        # Quiet: each failure was said once already, as it happened (stderr).
        shown = (
            0 if args.quiet else FAILURES_SHOWN if report.failed > len(report.failures) else None
        )
        for failure in report.failures[:shown]:
            permanent = " (for good)" if failure["permanent"] else ""
            _say(f"  failed {failure['id']}{permanent}: {failure['error']}")
    return report.exit_code


def _open_display(args: argparse.Namespace, stack: contextlib.ExitStack) -> Display | None:
    """The live panel on a terminal, a progress line every few seconds elsewhere, and
    nothing with --quiet; the log file has the progress lines whatever the terminal
    shows (they are the run's record)."""
    screen: Display | None = None
    if args.quiet:
        screen = None
    elif sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        from .ui.live import LiveDisplay  # rich is imported only when it is shown

        screen = stack.enter_context(LiveDisplay.open())
    else:
        return LineDisplay(args.progress_every)  # the log file has its lines too
    if not _log_files():
        return screen
    to_file = LineDisplay(args.progress_every, lambda line: _record(logging.INFO, line))
    return to_file if screen is None else Displays(screen, to_file)


def _prune(args: argparse.Namespace) -> int:
    from . import upkeep  # loaded when used: a rerun of a finished batch needs none

    pruned = upkeep.prune(
        args.out,
        args.manifest,
        delete_files=args.delete_files,
        storage_options=args.storage_options,
    )
    if args.json:
        _say(json.dumps(pruned.to_json()))
    elif not args.quiet or pruned.units:
        deleted = f", {plural(pruned.files_deleted, 'image')} deleted" if args.delete_files else ""
        _say(f"{args.out}: {plural(pruned.units, 'unit')} forgotten{deleted}")
    return EXIT_OK


def _verify(args: argparse.Namespace) -> int:
    from . import upkeep  # loaded when used: a rerun of a finished batch needs none

    found = upkeep.verify(args.out, fix=args.fix, **chosen(args, "verify"))
    if args.json:
        _say(json.dumps(found.to_json()))
    else:
        broken = len(found.missing) + len(found.altered)
        if not (args.quiet and broken == 0):
            _say(
                f"{args.out}: {plural(found.checked, 'image')} checked, "
                f"{len(found.missing)} missing, "
                f"{len(found.altered)} altered"
                + (f", {found.fixed} fetched again" if args.fix else "")
            )
        for path in found.missing[:STATUS_FAILURES_SHOWN]:
            _say(f"  missing {path}")
        for path in found.altered[:STATUS_FAILURES_SHOWN]:
            _say(f"  altered {path}")
        for problem in found.not_fixed:
            _say(f"  not fixed {problem}")
    return EXIT_OK if found.intact else EXIT_FAILED_UNITS


def _export(args: argparse.Namespace) -> int:
    from . import upkeep  # loaded when used: a rerun of a finished batch needs none

    done = upkeep.export(
        args.out,
        args.dest,
        args.format,
        shard_size=args.shard_size,
        embed_metadata=args.embed_metadata,
        storage_options=args.storage_options,
        only_passed=args.only_passed,
        where=args.where,
    )
    if args.json:
        _say(json.dumps(done.to_json()))
    elif not args.quiet:
        _say(
            f"{args.dest}: {plural(done.images, 'image')} as {done.format}, "
            f"{plural(len(done.files), 'file')}"
        )
    return EXIT_OK


def _gallery(args: argparse.Namespace) -> int:
    from . import upkeep  # loaded when used: a rerun of a finished batch needs none

    made = upkeep.gallery(args.out, storage_options=args.storage_options)
    if args.json:
        _say(json.dumps(made.to_json()))
    else:
        _say(made.page)
    if args.open and made.file is None:
        log.warning("--open: the page is in a bucket; read it where the bucket is served")
    elif args.open and made.file is not None:
        import webbrowser  # loaded only when used

        webbrowser.open(made.file.resolve().as_uri())
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from . import app  # loaded when used: a rerun of a finished batch needs none

    found = app.status(args.out, args.manifest, storage_options=args.storage_options)
    if args.json:
        _say(json.dumps(found.to_json(), ensure_ascii=False))
        return EXIT_OK
    states = (
        ", ".join(f"{count} {state}" for state, count in sorted(found.states.items()))
        or "nothing yet"
    )
    running = "a run is in progress; " if found.running else ""
    _say(f"{found.out}: {running}{states}; {found.spend.status_words()}")
    if found.left is not None:
        _say(
            f"  {found.left} of the manifest's {plural(found.manifest_units or 0, 'unit')} "
            "left to do"
        )
    if found.quality:
        counted = found.quality
        _say(
            f"  quality gate: {counted.get('pass', 0)} passed, {counted.get('warn', 0)} warned, "
            f"{counted.get('fail', 0)} failed, {counted.get('regenerating', 0)} regenerating"
        )
    if found.missing_files or found.changed_files:
        _say(
            f"  {plural(found.missing_files, 'image')} missing, {found.changed_files} changed "
            "since written (batchgen verify hashes them; --fix fetches them again)"
        )
    for failure in found.failures[:STATUS_FAILURES_SHOWN]:
        permanent = " (for good)" if failure["permanent"] else ""
        _say(f"  failed {failure['id']}{permanent}: {failure['error']}")
    if len(found.failures) > STATUS_FAILURES_SHOWN:
        more = len(found.failures) - STATUS_FAILURES_SHOWN
        _say(f"  ... and {more} more (--json lists them all)")
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
            _say(
                f"simulator API at {simulator.api_url} (assets at {simulator.cdn_url})", flush=True
            )
            _say(
                f"accepting key {config.api_key!r} with the secret given by --secret; Ctrl-C stops",
                flush=True,
            )
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    return

    anyio.run(serve_forever)
    return EXIT_OK


# Each command's function: it parses nothing more, calls the library and renders.
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "validate": _validate,
    "models": _models,
    "account": _account,
    "status": _status,
    "prune": _prune,
    "verify": _verify,
    "export": _export,
    "gallery": _gallery,
    "sim": _sim,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
