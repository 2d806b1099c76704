"""The options of a run, declared once: name, type, default, help, metavar, group.

:class:`RunOptions` is the one declaration.  From it come the command line's arguments
(:func:`add_arguments`, for ``run`` and the options other commands share), the options
a parsed command line gives (:func:`chosen`), the check of :func:`batchgen.run`'s
keywords with a did-you-mean (:func:`from_keywords`), and the typed keywords mypy checks
callers against (``batchgen/keywords.py``, written from it by ``python -m
batchgen.options``; a test keeps the two the same).  A default is written here and
nowhere else; the help says it by itself.

Cheap to import: the command line loads it before anything heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import typing
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import config as defaults
from .config import CHECKPOINT_SECONDS
from .errors import ConfigError
from .manifest.naming import DEFAULT_TEMPLATE, UNIT_FIELDS, FileNameTemplate, parse_template
from .manifest.shard import Shard
from .output.lease import LEASE_SECONDS
from .store.bucket import is_bucket_url

if typing.TYPE_CHECKING:  # the library's own types, not loaded by the command line
    from .backend import Backend
    from .ui.display import Display

# ---------------------------------------------------------------------- parsing text


def positive_int(name: str, maximum: int) -> Callable[[str], int]:
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


def positive_float(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{name} must be a positive number, got {text}")
        return value

    return parse


def fraction(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be above 0 and at most 1, got {text}")
        return value

    return parse


def file_name_template(text: str) -> FileNameTemplate:
    try:
        return parse_template(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"--filename {text!r}: {exc}") from None


def shard_of(text: str) -> Shard | str:
    if text.strip() == "auto":
        return "auto"  # read from the environment when the run starts
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def output_place(text: str) -> str | Path:
    """A bucket URL as written, or a path."""
    return text if is_bucket_url(text) else Path(text)


# ---------------------------------------------------------------------- declarations

RUN = ("run",)
# The commands that talk to the API, and those that take an output with its store.
API = ("run", "validate", "models", "verify", "account")
STORE = ("run", "status", "prune", "verify", "export", "gallery")
BUCKET_GROUP = "an output in a bucket"


@dataclass(frozen=True, slots=True)
class Flag:
    """How an option is given on the command line (None: the library's only)."""

    help: str
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    commands: tuple[str, ...] = RUN
    group: str | None = None
    # The default as the help says it, where the value alone would not say it.
    shown_default: str | None = None
    # Given several times, each kept (a list).
    repeated: bool = False


def option(default: Any, flag: Flag | None = None) -> Any:
    return field(default=default, metadata={"flag": flag})


def _with_default(help_text: str, default: Any, shown: str | None) -> str:
    if shown is not None:
        return f"{help_text} (default {shown})"
    if default is None or isinstance(default, bool):
        return help_text
    value = f"{default:g}" if isinstance(default, float) else f"{default:,}"
    return f"{help_text} (default {value})"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """What ``batchgen run`` takes, as keyword options (the command line's, with ``-``
    as ``_``): each declared once, with its default and its help."""

    out: Path | str | None = option(
        None,
        Flag(
            "output directory, or a bucket: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX",
            metavar="DIR|URL",
            parse=output_place,
            shown_default="the manifest's output, else output/<manifest name>",
        ),
    )
    storage_options: list[str] | dict[str, str] | None = option(
        None,
        Flag(
            "an option of the bucket's store, as fsspec and datasets name them (e.g. "
            "endpoint_url=http://minio:9000, region_name=eu-west-1); repeatable. Credentials "
            "come from the store's standard chain (AWS_* variables, web identity, instance "
            "role; GCS application default credentials)",
            metavar="KEY=VALUE",
            commands=STORE,
            group=BUCKET_GROUP,
            repeated=True,
        ),
    )
    lease_seconds: float = option(
        LEASE_SECONDS,
        Flag(
            "how long the run's lease on the bucket's prefix lasts unless renewed (it is "
            "renewed 4 times in that): a run killed holds the output that long",
            metavar="SECONDS",
            parse=positive_float("--lease-seconds"),
            group=BUCKET_GROUP,
        ),
    )
    checkpoint_interval: float = option(
        CHECKPOINT_SECONDS,
        Flag(
            "seconds between copies of the journal to the bucket (also at the start and the "
            "end of every run)",
            metavar="SECONDS",
            parse=positive_float("--checkpoint-interval"),
            group=BUCKET_GROUP,
        ),
    )
    state_dir: Path | str | None = option(
        None,
        Flag(
            "where the journal lives locally; a run with none starts from the bucket's checkpoint",
            metavar="DIR",
            parse=Path,
            group=BUCKET_GROUP,
            shown_default="under ~/.cache/batchgen/state",
        ),
    )
    concurrency: int | None = option(
        None,
        Flag(
            "jobs in flight at the server at most",
            metavar="N",
            parse=positive_int("--concurrency", defaults.MAX_CONCURRENCY),
            shown_default=f"the manifest's, else {defaults.DEFAULT_CONCURRENCY}",
        ),
    )
    poll_interval: float = option(
        defaults.DEFAULT_POLL_INTERVAL,
        Flag(
            "seconds between status checks",
            metavar="SECONDS",
            parse=positive_float("--poll-interval"),
        ),
    )
    job_timeout: float = option(
        defaults.DEFAULT_JOB_TIMEOUT,
        Flag(
            "give up on a job not finished after this long, trying to cancel it",
            metavar="SECONDS",
            parse=positive_float("--job-timeout"),
        ),
    )
    job_attempts: int = option(
        defaults.DEFAULT_JOB_ATTEMPTS,
        Flag(
            "jobs to try per unit when they end in 'failure' (each costs creative units)",
            metavar="N",
            parse=positive_int("--job-attempts", 20),
        ),
    )
    downloads: int | None = option(
        None,
        Flag(
            "downloads at once",
            metavar="N",
            parse=positive_int("--downloads", 64),
            shown_default=f"as many as --concurrency, at least {defaults.MIN_DOWNLOAD_WORKERS} "
            f"and at most {defaults.MAX_DEFAULT_DOWNLOAD_WORKERS}",
        ),
    )
    retries: int = option(
        defaults.DEFAULT_MAX_ATTEMPTS,
        Flag(
            "attempts per request before a unit is given up (a 429 on submit is waited out longer)",
            metavar="N",
            parse=positive_int("--retries", 100),
        ),
    )
    api_url: str | None = option(
        None,
        Flag(
            "API base URL",
            metavar="URL",
            commands=API,
            shown_default=f"${defaults.API_URL_VARIABLE}, else ${defaults.SDK_BASE_URL_VARIABLE}"
            f", else {defaults.DEFAULT_API_URL}",
        ),
    )
    project_id: str | None = option(
        None,
        Flag(
            "Scenario project id",
            metavar="ID",
            commands=API,
            shown_default=f"${defaults.PROJECT_VARIABLE}",
        ),
    )
    retry_failed: bool = option(
        False,
        Flag(
            "also submit again the units that failed for good in earlier runs (400, 403, "
            "404, or jobs that failed repeatedly)"
        ),
    )
    resubmit_abandoned: bool = option(
        False,
        Flag(
            "buy a new job for each unit whose job was abandoned at --job-timeout, instead "
            "of watching that job again: the abandoned job runs on and is paid as well"
        ),
    )
    reconcile_grace: float = option(
        defaults.DEFAULT_RECONCILE_GRACE,
        Flag(
            "a POST whose answer was lost is sent again only once reads of the job list "
            "spread over this long have all missed its job (the list shows new jobs late)",
            metavar="SECONDS",
            parse=positive_float("--reconcile-grace"),
        ),
    )
    max_runtime: float | None = option(
        None,
        Flag(
            "stop after this long; jobs still running are picked up by the next run",
            metavar="SECONDS",
            parse=positive_float("--max-runtime"),
        ),
    )
    max_units: int = option(
        defaults.DEFAULT_MAX_UNITS,
        Flag(
            "refuse a manifest that expands to more units than this (a typo in vars can ask "
            "for billions)",
            metavar="N",
            parse=positive_int("--max-units", 10**12),
            commands=("run", "validate"),
        ),
    )
    fresh: bool = option(
        False,
        Flag(
            "start over: move an existing output of batchgen's aside to DIR.<date-time> "
            "(nothing is deleted) and begin a new one"
        ),
    )
    rebuild_journal: bool = option(
        False,
        Flag(
            "the output's journal is lost: rebuild it from results.jsonl, the files and the "
            "account's jobs (units with no results line are looked for among the jobs before "
            "any is sent)"
        ),
    )
    gallery: bool = option(
        False,
        Flag("refresh OUT/gallery/index.html at the end of the run (see batchgen gallery)"),
    )
    embed_metadata: bool = option(
        False,
        Flag(
            "write each image's prompt and settings into its file as it is downloaded (a "
            "PNG 'parameters' chunk and XMP; the pixels are not re-encoded; results keep the "
            "served sha256 beside the file's)"
        ),
    )
    budget: float | None = option(
        None,
        Flag(
            "stop submitting before the creative units spent on this output in all plus the "
            "next job's cost would pass this",
            metavar="CU",
            parse=positive_float("--budget"),
        ),
    )
    run_budget: float | None = option(
        None,
        Flag(
            "the same for what this run spends (a nightly cap); the nearer of the two "
            "budgets stops submission",
            metavar="CU",
            parse=positive_float("--run-budget"),
        ),
    )
    warn_at: float | None = option(
        None,
        Flag(
            "log a warning once the spend passes this fraction of the budget, e.g. 0.8",
            metavar="FRACTION",
            parse=fraction("--warn-at"),
        ),
    )
    filename: str | FileNameTemplate | None = option(
        None,
        Flag(
            "image file names below OUT/images, e.g. '{entry}/{index:06d}-{slug}'; fields: "
            f"{', '.join('{' + name + '}' for name in UNIT_FIELDS)} and the prompt file's "
            "columns or vars",
            metavar="TEMPLATE",
            parse=file_name_template,
            commands=("run", "validate"),
            shown_default=f"the manifest's filename, else {DEFAULT_TEMPLATE!r}",
        ),
    )
    shard: str | Shard | None = option(
        None,
        Flag(
            "run only shard I of N (1-based) of the units, in OUT/shard-I-of-N; for one "
            "machine or array task per shard; 'auto' reads it from a Kubernetes indexed Job "
            "(JOB_COMPLETION_INDEX, with --shards) or a SLURM array (SLURM_ARRAY_TASK_*)",
            metavar="I/N",
            parse=shard_of,
        ),
    )
    shards: int | None = option(
        None,
        Flag(
            "with --shard auto in a Kubernetes indexed Job: the number of shards (its completions)",
            metavar="N",
            parse=positive_int("--shards", 100_000),
        ),
    )
    simulate: bool = option(
        False,
        Flag(
            "run against the embedded simulator (no account, no network)",
            commands=API,
        ),
    )
    allow_partial: bool = option(
        False,
        Flag(
            "run even when the account's creative units left cannot finish the batch "
            "(estimated by the API's dry run): it stops once they run out"
        ),
    )
    sim_job_seconds: float = option(
        1.0,
        Flag(
            "with --simulate: how long each simulated job takes",
            metavar="SECONDS",
            parse=positive_float("--sim-job-seconds"),
        ),
    )
    # The library's only: a display shown every display.interval seconds while the run
    # goes on (the command line's panel); stopping cleanly on SIGINT/SIGTERM (only in the
    # main thread); the API to run against instead of the one the options name (tests
    # use the simulator in memory; an application may bring its own client).
    display: Display | None = option(None)
    handle_signals: bool = option(False)
    backend: Callable[[], AbstractAsyncContextManager[Backend]] | None = option(None)


def fields() -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(RunOptions)


def from_keywords(given: Mapping[str, Any]) -> RunOptions:
    """The options of these keywords; an unknown one is refused with the nearest name."""
    known = [f.name for f in fields()]
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"unknown option: {name}{hint}")
    return RunOptions(**given)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The command's arguments, one for each option it takes, in the order declared;
    an option with a group goes in that group, after the command's own."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for declared in fields():
        flag: Flag | None = declared.metadata.get("flag")
        if flag is None or command not in flag.commands:
            continue
        target: argparse._ActionsContainer = parser
        if flag.group is not None and command == "run":
            if flag.group not in groups:
                groups[flag.group] = parser.add_argument_group(flag.group)
            target = groups[flag.group]
        name = "--" + declared.name.replace("_", "-")
        help_text = _with_default(flag.help, declared.default, flag.shown_default)
        if declared.default is False:
            target.add_argument(name, action="store_true", help=help_text)
        elif flag.repeated:
            target.add_argument(
                name, action="append", dest=declared.name, metavar=flag.metavar, help=help_text
            )
        else:
            target.add_argument(
                name,
                type=flag.parse or str,
                default=declared.default,
                metavar=flag.metavar,
                help=help_text,
            )


def chosen(args: argparse.Namespace, command: str = "run") -> dict[str, Any]:
    """The options a parsed command line gives (those its command takes)."""
    return {
        declared.name: getattr(args, declared.name)
        for declared in fields()
        if (flag := declared.metadata.get("flag")) is not None and command in flag.commands
    }


# ---------------------------------------------------------------------- the keywords


def keywords_source() -> str:
    """``batchgen/keywords.py``: the options as a TypedDict, for mypy to check
    :func:`batchgen.run`'s callers against (``**options: Unpack[RunKeywords]``)."""
    lines = [
        '"""The keywords of :func:`batchgen.run`, as mypy checks them: written from',
        ":class:`batchgen.options.RunOptions` by ``python -m batchgen.options``, never by",
        'hand (a test compares the two)."""',
        "",
        "from __future__ import annotations",
        "",
        "from collections.abc import Callable",
        "from contextlib import AbstractAsyncContextManager",
        "from pathlib import Path",
        "from typing import TYPE_CHECKING, TypedDict",
        "",
        "from .manifest.naming import FileNameTemplate",
        "from .manifest.shard import Shard",
        "",
        "if TYPE_CHECKING:",
        "    from .backend import Backend",
        "    from .ui.display import Display",
        "",
        "",
        "class RunKeywords(TypedDict, total=False):",
    ]
    for declared in fields():
        lines.append(f"    {declared.name}: {declared.type}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(keywords_source())
