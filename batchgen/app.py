"""The application: run, estimate, validate and status, for the command line and for Python.

::

    import batchgen
    report = batchgen.run("jobs.yaml", out="output/jobs", concurrency=8)
    report.succeeded, report.failed, report.exit_code

    # in a notebook, or any code with an event loop running:
    report = await batchgen.arun("jobs.yaml", simulate=True)

The keyword options are the command line's (:class:`~batchgen.options.RunOptions`,
declared once; mypy checks them), with the same defaults.
:func:`run` works in any thread, also one whose event loop is running elsewhere or here
(it then runs in a thread of its own), and installs signal handlers only when asked to
(``handle_signals``, which the command line sets). Known errors are raised as
:class:`~batchgen.errors.BatchgenError` (``exit_code`` says which); a run's own outcome,
failures included, is in the returned :class:`Report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import (
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Unpack

import anyio
from anyio import CancelScope

from . import config as defaults
from .backend import Backend, open_backend, run_sync
from .config import RetrySettings
from .engine import Engine, EngineSettings, Summary, cost_shape
from .engine.ports import Fetcher, inline
from .engine.submit import request_for, request_key
from .errors import (
    EXIT_FAILED_UNITS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUT_OF_TIME,
    EXIT_STOPPED,
    ApiError,
    BatchgenError,
    ConfigError,
    JournalMissingError,
    PermanentApiError,
    StorageError,
)
from .keywords import RunKeywords
from .ledger import Spend
from .manifest import Manifest, Unit, count_units, iter_units
from .manifest.naming import FileNameTemplate
from .manifest.shard import SHARD_DIRECTORY, Shard, shard_directories
from .options import RunOptions, from_keywords
from .output.bucket import (
    BucketOutput,
    Taken,
    checkpointed,
    default_state_root,
    finish,
    keep,
    leased,
    refuse_local_only,
    start,
)
from .output.bucket_files import BucketImages, checkpoint, trusted
from .report import Report
from .rerun import COMPLETE_KEY, MANIFEST_KEY, load, local_output
from .rerun import fingerprint as _fingerprint
from .rerun import finished_already as _finished_already
from .rerun import shard_of as _shard
from .rerun import still_complete as _still_complete
from .retry import Request, with_retries
from .scenario.inputs import ModelSpec, model_from_json
from .scenario.preflight import Problem, Prompts, check_manifest, read_prompts
from .scenario.remote import fetch_remote_images
from .store.bucket import BucketUrl, is_bucket_url, state_key
from .store.dataset import write_metadata
from .store.faults import storage_faults
from .store.files import files_not_as_written
from .store.gallery import write_gallery
from .store.journal import JOURNAL_NAME, Journal, Resume, State, resume_action
from .store.lock import OutputLock, run_in_progress
from .store.rebuild import Rebuilt, earlier_work, rebuild
from .store.views import update_views
from .ui.display import Display
from .ui.progress import RateMeter

log = logging.getLogger(__name__)
T = TypeVar("T")

# Journal metadata under which each model's inputs are kept, as checked by the last run.
MODEL_KEY = "model:"
ESTIMATE_CHUNK = 500


# ---------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class Shape:
    model: str
    size: str
    units: int
    cost_each: float | None


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the units left to do would cost, by the API's dry run: an estimate, never
    booked.  Units of a shape the dry run gave no price for are counted apart."""

    units: int
    estimated_left: float
    shapes: list[Shape]
    unpriced_units: int = 0

    @property
    def cost(self) -> float:
        """The estimate (the name of earlier versions)."""
        return self.estimated_left

    def to_json(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "estimated_left": self.estimated_left,
            "unpriced_units": self.unpriced_units,
            "shapes": [dataclasses.asdict(shape) for shape in self.shapes],
        }


@dataclass(frozen=True, slots=True)
class Validation:
    manifest: str
    entries: int
    units: int
    # Whether the models' inputs were checked (they need credentials and the API), and
    # if not, why not.
    inputs_checked: bool
    not_checked_because: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Status:
    out: str
    shards: list[str]
    running: bool
    units: int
    states: dict[str, int]
    # Creative units, from the ledger: ``this_run`` is the last run's.
    spend: Spend
    failures: list[dict[str, Any]]
    # Images gone, and images whose size or time changed since they were written (a
    # quick look: batchgen verify hashes them).
    missing_files: int = 0
    changed_files: int = 0
    # Given the manifest: its units, and how many of them are not done yet.
    manifest_units: int | None = None
    left: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- the backend


# ---------------------------------------------------------------------- manifests


def output_directory(manifest: Manifest, options: RunOptions, shard: Shard | None) -> Path:
    """The local output directory; for an output in a bucket, its state directory."""
    target = output_url(manifest, options)
    if target is not None:
        state = Path(options.state_dir) if options.state_dir else default_state_root()
        state = state if options.state_dir else state / state_key(target)
        return state / shard.directory if shard is not None else state
    return local_output(manifest, options.out, shard)


def output_url(manifest: Manifest, options: RunOptions) -> BucketUrl | None:
    """The bucket the output goes to, if it goes to one (``--out`` or ``output:``)."""
    given = options.out if options.out is not None else manifest.output
    return BucketUrl.parse(given) if isinstance(given, str) and is_bucket_url(given) else None


def _units(manifest: Manifest, shard: Shard | None) -> Iterator[Unit]:
    units = iter_units(manifest)
    return units if shard is None else shard.select(units)


async def checked_manifest(
    manifest: Manifest,
    backend: Backend,
    saved: dict[str, str] | None = None,
    max_units: int = defaults.DEFAULT_MAX_UNITS,
) -> tuple[int, dict[str, ModelSpec], list[Prompts]]:
    """Every unit checked against its model's inputs, before anything is sent: (units,
    the models' inputs).  The manifest's own errors come first: its prompts are read
    through before the API is asked anything."""
    prompts = await backend.offload(read_prompts, manifest, max_units)
    specs, problems = await model_specs(manifest, backend, saved)
    total = await backend.offload(check_manifest, manifest, specs, problems, prompts)
    return total, specs, prompts


async def model_specs(
    manifest: Manifest, backend: Backend, saved: dict[str, str] | None = None
) -> tuple[dict[str, ModelSpec], list[Problem]]:
    """Each model's inputs, one request per model, and a problem for each model the API
    does not know.  One that cannot be read for now is taken from what an earlier run
    saved, if it did."""
    wanted: dict[str, tuple[int, str]] = {}
    for entry in manifest.entries:
        wanted.setdefault(entry.model, (entry.model_line, entry.model_field))
    specs: dict[str, ModelSpec] = {}
    problems: list[Problem] = []
    for model_id, (line, where) in wanted.items():
        try:
            specs[model_id] = await with_retries(
                Request.OTHER_READ,
                lambda model_id=model_id: backend.client.get_model(model_id),  # type: ignore[misc]
                backend.settings.retry,
            )
        except PermanentApiError as exc:
            reason = "not found" if exc.status == 404 else exc.reason
            problems.append(
                Problem(
                    str(manifest.path),
                    line,
                    where,
                    f"model {model_id!r}: {reason} (batchgen models lists the models "
                    "these credentials can use)",
                )
            )
        except ApiError as exc:
            if saved and model_id in saved:
                log.warning(
                    "model %s: its inputs cannot be read now (%s); checking against those "
                    "saved by the last run",
                    model_id,
                    exc,
                )
                specs[model_id] = model_from_json(json.loads(saved[model_id]))
            else:
                raise
    return specs, problems


def _saved_specs(out_dir: Path) -> dict[str, str]:
    if not (out_dir / JOURNAL_NAME).is_file():
        return {}
    journal = Journal(out_dir)
    try:
        return journal.recall(MODEL_KEY)
    finally:
        journal.close()


# ---------------------------------------------------------------------- validate


def validate(
    manifest: str | Path,
    *,
    api_url: str | None = None,
    project_id: str | None = None,
    filename: str | FileNameTemplate | None = None,
    max_units: int = defaults.DEFAULT_MAX_UNITS,
    offline: bool = False,
    simulate: bool = False,
) -> Validation:
    """Check a manifest and count its units, and (unless ``offline``) that the API
    answers, takes the credentials and takes every unit by its model's inputs (read-only
    requests; ``simulate``: the embedded simulator's).  Raises :class:`ConfigError`
    (``ModelInputsError``, ``ManifestError``, ``CredentialsError``) on a problem, and
    :class:`ApiUnreachableError` when the API cannot be reached."""
    loaded = load(manifest, filename)
    place = (str(loaded.path), len(loaded.entries))
    if offline:
        return Validation(*place, count_units(loaded, max_units), False, "--offline")
    options = RunOptions(api_url=api_url, project_id=project_id, simulate=simulate)

    async def check() -> int:
        async with open_backend(options) as backend:
            total, _, _ = await checked_manifest(loaded, backend, max_units=max_units)
        return total

    return Validation(*place, run_sync(check), True)


# ---------------------------------------------------------------------- estimate


def estimate(manifest: str | Path, **options: Unpack[RunKeywords]) -> Estimate:
    """What the units still to do would cost: the API's dry run (HTTP 269, nothing
    created), once per model/size/params shape."""
    return run_sync(lambda: aestimate(manifest, **options))


async def aestimate(manifest: str | Path, **options: Unpack[RunKeywords]) -> Estimate:
    opts = from_keywords(options)
    loaded = load(manifest, opts.filename)
    shard = _shard(opts.shard, opts.shards)
    out_dir = output_directory(loaded, opts, shard)
    async with open_backend(opts) as backend:
        saved = await backend.offload(_saved_specs, out_dir)
        loaded = await fetch_remote_images(loaded, backend.downloader, backend.settings.retry)
        _, specs, prompts = await checked_manifest(loaded, backend, saved, opts.max_units)
        lists = {model: spec.image_lists for model, spec in specs.items()}
        shapes = await backend.offload(_shapes_to_do, loaded, shard, out_dir, opts, prompts, lists)
        total = 0.0
        rows: list[Shape] = []
        for model, body, count in shapes.values():
            cost = await with_retries(
                Request.OTHER_READ,
                lambda model=model, body=body: backend.client.estimate(model, body),  # type: ignore[misc]
                backend.settings.retry,
            )
            total += (cost or 0.0) * count
            rows.append(Shape(model, _size_label(body), count, cost))
    unpriced = sum(row.units for row in rows if row.cost_each is None)
    return Estimate(sum(row.units for row in rows), total, rows, unpriced)


Shapes = dict[str, tuple[str, dict[str, Any], int]]


def _shapes_to_do(
    manifest: Manifest,
    shard: Shard | None,
    out_dir: Path,
    options: RunOptions,
    prompts: list[Prompts],
    lists: Mapping[str, frozenset[str]] | None = None,
) -> Shapes:
    """(model, first body, units) per cost shape, of the units still to do.  With no
    journal yet every unit is to do, and the shapes are counted entry by entry from
    the pass over the prompts already made; a finished batch has none; else the
    journal is asked about a chunk of units at a time, as a run does."""
    journal = Journal(out_dir) if (out_dir / JOURNAL_NAME).is_file() else None
    try:
        if journal is None or journal.is_empty():
            if shard is None:
                return _shapes_of_entries(manifest, prompts, lists)
            return _shapes_of_units(manifest, shard, journal, options, lists)
        fingerprint = _fingerprint(manifest, shard)
        if _still_complete(journal, out_dir, fingerprint) is not None:
            return {}
        if shard is None and journal.recall(ROWS_OF_KEY).get("") == fingerprint:
            left = _shapes_left(_shapes_of_entries(manifest, prompts, lists), journal, options)
            if left is not None:
                return left
        return _shapes_of_units(manifest, shard, journal, options, lists)
    finally:
        if journal is not None:
            journal.close()


def _shapes_of_entries(
    manifest: Manifest,
    prompts: list[Prompts],
    lists: Mapping[str, frozenset[str]] | None = None,
) -> Shapes:
    """Every unit's shape without making the units: all of an entry's units of one
    size share a shape (the prompt and seed are taken not to change the cost), so one
    unit of each size stands for the entry's prompts times its count."""
    shapes: Shapes = {}
    for entry, seen in zip(manifest.entries, prompts, strict=True):
        one_entry = dataclasses.replace(manifest, entries=(entry,))
        counted: set[str] = set()
        for unit in itertools.islice(iter_units(one_entry), len(entry.sizes) * entry.count):
            body = request_for(unit, None, lists=(lists or {}).get(unit.model, ()))
            key = cost_shape(unit.model, body)
            if key in counted:
                continue
            counted.add(key)
            model, first_body, count = shapes.get(key, (unit.model, body, 0))
            shapes[key] = (
                model,
                first_body,
                count + seen.count * entry.count * max(1, len(entry.images)),
            )
    return shapes


def _shapes_left(shapes: Shapes, journal: Journal, options: RunOptions) -> Shapes | None:
    """Every unit's shapes less those of the units a run would not submit, counted by
    shape in the journal (whose units are all the manifest's); None if a unit done has
    no shape recorded (an earlier version's), or one the manifest does not make."""
    left = dict(shapes)
    for shape, row, count in journal.shapes():
        action = resume_action(
            row, retry_failed=options.retry_failed, resubmit_abandoned=options.resubmit_abandoned
        )
        if action in (Resume.SUBMIT, Resume.RECONCILE):
            continue  # to do: counted among the manifest's
        if shape is None or shape not in left or left[shape][2] < count:
            return None
        model, body, units = left[shape]
        left[shape] = (model, body, units - count)
    return {key: value for key, value in left.items() if value[2] > 0}


def _shapes_of_units(
    manifest: Manifest,
    shard: Shard | None,
    journal: Journal | None,
    options: RunOptions,
    lists: Mapping[str, frozenset[str]] | None = None,
) -> Shapes:
    shapes: Shapes = {}
    units = _units(manifest, shard)
    while chunk := list(itertools.islice(units, ESTIMATE_CHUNK)):
        rows = journal.get_many([unit.id for unit in chunk]) if journal else {}
        for unit in chunk:
            action = resume_action(
                rows.get(unit.id),
                retry_failed=options.retry_failed,
                resubmit_abandoned=options.resubmit_abandoned,
            )
            if action not in (Resume.SUBMIT, Resume.RECONCILE):
                continue  # done, or its job is already paid for
            body = request_for(unit, None, lists=(lists or {}).get(unit.model, ()))
            key = cost_shape(unit.model, body)
            model, first_body, count = shapes.get(key, (unit.model, body, 0))
            shapes[key] = (model, first_body, count + 1)
    return shapes


def _size_label(body: dict[str, Any]) -> str:
    if "aspectRatio" in body:
        return str(body["aspectRatio"])
    if "width" in body:
        return f"{body.get('width')}x{body.get('height')}"
    return "default"


# ---------------------------------------------------------------------- run


def run(manifest: str | Path, **options: Unpack[RunKeywords]) -> Report:
    """Run every unit of a manifest; the options are :class:`~batchgen.options.RunOptions`
    (the command line's, with ``-`` as ``_``), checked by mypy as keywords."""
    return run_sync(lambda: arun(manifest, **options))


async def arun(manifest: str | Path, **options: Unpack[RunKeywords]) -> Report:
    """:func:`run`, awaited in a running event loop (a notebook's, a service's)."""
    try:
        return await _arun(manifest, options)
    except BaseExceptionGroup as group:
        # The task groups a run is made of gather errors; the caller gets the one that
        # says why the run stopped, as the command line shows it.
        known = _first_known(group)
        if known is None:
            raise
        raise known from None


def _first_known(error: BaseException) -> BatchgenError | None:
    if isinstance(error, BatchgenError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_known(inner)
            if found is not None:
                return found
    return None


async def _arun(manifest: str | Path, options: Mapping[str, Any]) -> Report:
    opts = from_keywords(options)
    loaded = load(manifest, opts.filename)
    shard = _shard(opts.shard, opts.shards)
    target = output_url(loaded, opts)
    bucket_output: BucketOutput | None = None
    if target is not None:
        refuse_local_only(dataclasses.asdict(opts))
        bucket_output = BucketOutput.open(
            target,
            opts.storage_options,
            opts.state_dir,
            shard,
            blocking=False,
            lease_seconds=opts.lease_seconds,
            retry=RetrySettings(max_attempts=opts.retries),
        )
        out_dir = bucket_output.state_dir
    else:
        out_dir = output_directory(loaded, opts, shard)
    concurrency = opts.concurrency or loaded.concurrency or defaults.DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= defaults.MAX_CONCURRENCY:
        raise ConfigError(f"concurrency must be between 1 and {defaults.MAX_CONCURRENCY}")
    settings = EngineSettings(
        output_dir=out_dir,
        concurrency=concurrency,
        poll_interval=opts.poll_interval,
        job_timeout=opts.job_timeout,
        job_attempts=opts.job_attempts,
        download_workers=opts.downloads or defaults.download_workers_for(concurrency),
        filename=loaded.filename,
        reconcile_grace=opts.reconcile_grace,
        embed_metadata=opts.embed_metadata,
    )
    if bucket_output is None and not (opts.fresh or opts.rebuild_journal or opts.gallery):
        finished = _finished_already(loaded, shard, out_dir)
        if finished is not None:
            return finished
    async with open_backend(opts, out_dir) as backend:
        # Before the output directory is touched: credentials, models and every unit.
        saved = await backend.offload(_saved_specs, out_dir)
        loaded = await fetch_remote_images(loaded, backend.downloader, backend.settings.retry)
        total, specs, _ = await checked_manifest(loaded, backend, saved, opts.max_units)
        settings = dataclasses.replace(
            settings,
            seeds={model: spec.seed_range for model, spec in specs.items()},
            image_lists={model: spec.image_lists for model, spec in specs.items()},
            outputs={model: spec.outputs_per_job for model, spec in specs.items()},
            sibling_journals=tuple(
                place / JOURNAL_NAME
                for place in (
                    shard_directories(out_dir.parent)
                    if shard is not None and bucket_output is None
                    else []
                )
                if place != out_dir
            ),
        )
        if shard is not None:
            total = await backend.offload(lambda: sum(1 for _ in _units(loaded, shard)))
        log.info(
            "%s: %d units, output in %s, %d in flight at most",
            loaded.path,
            total,
            bucket_output.bucket.url if bucket_output is not None else out_dir,
            concurrency,
        )
        if opts.fresh:
            _move_aside(out_dir)
        fetcher: Fetcher = backend.downloader
        fingerprint = await backend.offload(_fingerprint, loaded, shard)
        async with contextlib.AsyncExitStack() as held:
            if bucket_output is not None:
                # The store's first request: refused credentials end the run here.
                bucket_output.bucket.blocking = backend.offload is inline
                await held.enter_async_context(leased(bucket_output))
            held.enter_context(OutputLock(out_dir))
            if bucket_output is not None:
                taken = Taken(bucket_output.bucket, fingerprint, bucket_output.retrying)
                journal, present = await start(
                    bucket_output,
                    lambda: Journal(out_dir, failed_job_limit=opts.job_attempts),
                    lambda: _units(loaded, shard),
                    _sent_for(settings),
                    backend.offload,
                    COMPLETE_KEY,
                    taken,
                )
                images = BucketImages(
                    backend.downloader,
                    bucket_output.bucket,
                    out_dir,
                    backend.settings.retry,
                    backend.offload,
                )
                fetcher = images
                settings = dataclasses.replace(
                    settings,
                    files_intact=present.intact if present is not None else trusted,
                    stamp=images.stamp,
                    reserve=taken.reserve,
                    keep_input=images.keep_input,
                )
            else:
                journal = Journal(out_dir, failed_job_limit=opts.job_attempts)
            try:
                # Before the views are touched: over a lost journal they would be
                # rewritten from nothing.
                if bucket_output is None:
                    await _journal_or_rebuild(journal, loaded, shard, opts, settings, backend)
                else:  # where a new machine starts from if this one is lost from now on
                    save = functools.partial(
                        checkpoint,
                        bucket_output.bucket,
                        journal,
                        backend.client.server_now,
                        backend.settings.retry,
                        backend.offload,
                    )
                    await save()
            except BaseException:
                journal.close()
                raise
            try:
                await backend.offload(_note_rows_of, journal, fingerprint)
                journal.remember(MANIFEST_KEY, str(loaded.path.resolve()))
                for model_id, spec in specs.items():
                    journal.remember(MODEL_KEY + model_id, json.dumps(spec.to_json()))
                finished = await backend.offload(_still_complete, journal, out_dir, fingerprint)
                if finished is not None:
                    summary = Summary(total=total, skipped=total, spent_before=journal.spent())
                else:
                    alongside = None
                    if bucket_output is not None:
                        alongside = functools.partial(
                            keep, bucket_output, save, opts.checkpoint_interval
                        )
                    summary = await _run_engine(
                        loaded, shard, total, opts, settings, backend, journal, fetcher, alongside
                    )
                if summary.skipped + summary.succeeded == total and summary.not_finished == 0:
                    journal.remember(COMPLETE_KEY, f"{fingerprint} {journal.result_seq()} {total}")
                if not (summary.interrupted or summary.out_of_time):
                    # Every unit of the manifest has a journal row now; any more are old.
                    departed = sum(journal.counts().values()) - total
                    if departed >= 0:
                        journal.remember(ROWS_OF_KEY, fingerprint if departed == 0 else "")
                    if departed > 0:
                        log.warning(
                            "%d units recorded in %s are no longer in the manifest; "
                            "they are kept, with their lines in results.jsonl (batchgen "
                            "prune forgets them)",
                            departed,
                            out_dir,
                        )
            finally:
                # Also after an error or an interruption: the views must match the journal.
                with CancelScope(shield=True):
                    await backend.offload(
                        _write_views_if_possible,
                        journal,
                        out_dir,
                        shard if bucket_output is None else None,
                    )
                    if bucket_output is not None:
                        await finish(bucket_output, save, backend.settings.retry, backend.offload)
                journal.close()
        if opts.gallery:
            root = out_dir.parent if shard is not None else out_dir
            await backend.offload(_write_gallery, root, shard is not None)
    return Report(
        **summary.to_json(),
        output=str(bucket_output.bucket.url) if bucket_output is not None else str(out_dir),
        exit_code=exit_code(summary, total),
        line=summary.line(),
    )


def _sent_for(settings: EngineSettings) -> Callable[[Unit], str]:
    """The request a unit would send, as the journal keeps it, less what only the run
    that sent it knew (its images' asset ids): what finds its job in the account's list
    when the journal that had it is lost."""

    def sent_for(unit: Unit) -> str:
        body = request_for(unit, settings.seeds.get(unit.model))
        for name, _, _ in unit.inputs:
            body.pop(name, None)
        return request_key(unit.model, body)

    return sent_for


# The fingerprint of the manifest every unit in the journal is known to be from (none
# left it): --estimate then counts the units left by shape, from the entries and the
# journal, without making every unit.
ROWS_OF_KEY = "rows_of"


def _note_rows_of(journal: Journal, fingerprint: str) -> None:
    """Known when the journal is new, or was known by an earlier run of the same
    manifest; unknown after the manifest changed, until a run of it ends with every
    unit recorded and none departed."""
    known = journal.is_empty() or journal.recall(ROWS_OF_KEY).get("") == fingerprint
    journal.remember(ROWS_OF_KEY, fingerprint if known else "")


async def _journal_or_rebuild(
    journal: Journal,
    manifest: Manifest,
    shard: Shard | None,
    options: RunOptions,
    settings: EngineSettings,
    backend: Backend,
) -> None:
    """Refuse to start from nothing over earlier work; rebuild the journal if asked."""
    out_dir = settings.output_dir
    empty = await backend.offload(journal.is_empty)
    if options.rebuild_journal:
        if not empty:
            raise ConfigError(
                f"--rebuild-journal: {journal.path} holds units; it is for a directory "
                "whose journal is lost (move the damaged one aside first)"
            )

        def rebuild_all() -> Rebuilt:
            with storage_faults(out_dir), journal.batch(durable=True):
                return rebuild(journal, out_dir, _units(manifest, shard), _sent_for(settings))

        rebuilt = await backend.offload(rebuild_all)
        log.warning(
            "journal rebuilt: %d units from results.jsonl; %d others may have been "
            "submitted since %s and are looked for in the account's jobs first",
            rebuilt.restored,
            rebuilt.uncertain,
            rebuilt.since,
        )
    elif empty and await backend.offload(earlier_work, out_dir):
        raise JournalMissingError(
            f"{out_dir}: its journal ({journal.path.name}) is missing or empty, but "
            "results.jsonl or images/ hold earlier work: a run now would pay for every "
            "unit again. Run with --rebuild-journal to rebuild it from results.jsonl, "
            "the files and the account's jobs, or with --fresh to start over elsewhere"
        )


def _move_aside(out_dir: Path) -> None:
    """``--fresh``: the earlier output moved aside, kept whole.  Only an output of
    batchgen's own (it holds a journal) is moved: any other directory is refused, left
    as it is."""
    out_dir = out_dir.resolve()  # "." has no name to give the copy
    with storage_faults(out_dir):
        if not out_dir.exists() or not any(out_dir.iterdir()):
            return
        if Path.cwd().resolve().is_relative_to(out_dir):
            raise ConfigError(
                f"--fresh: {out_dir} is the current directory (or holds it): it cannot be "
                "moved aside from within; name the output by a path outside it"
            )
        if not (out_dir / JOURNAL_NAME).is_file() or out_dir.is_mount():
            raise ConfigError(
                f"--fresh: {out_dir} holds no batchgen journal: it is not an output of "
                "batchgen's, and is left as it is (name an empty or new directory with --out)"
            )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        with OutputLock(out_dir):  # never move a directory from under a live run
            # --fresh twice in one second: the second name gets a number.
            for number in itertools.count(1):
                suffix = stamp if number == 1 else f"{stamp}-{number}"
                aside = out_dir.with_name(f"{out_dir.name}.{suffix}")
                if not aside.exists():
                    out_dir.rename(aside)
                    break
    log.warning("--fresh: the previous output is kept in %s", aside)


async def _run_engine(
    manifest: Manifest,
    shard: Shard | None,
    total: int,
    options: RunOptions,
    settings: EngineSettings,
    backend: Backend,
    journal: Journal,
    fetcher: Fetcher,
    alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Summary:
    # What this run learns about money is booked to it from here on.
    await backend.offload(journal.begin_run)
    # The directory's budget, or this run's if it is the nearer of the two.
    spent_before = journal.spent()
    budget, budget_option = options.budget, "--budget"
    if options.run_budget is not None and (
        budget is None or spent_before + options.run_budget < budget
    ):
        budget, budget_option = spent_before + options.run_budget, "--run-budget"
    engine = Engine(
        backend.client,
        fetcher,
        journal,
        settings,
        backend.settings.retry,
        retry_failed=options.retry_failed,
        resubmit_abandoned=options.resubmit_abandoned,
        budget=budget,
        budget_option=budget_option,
        warn_at=options.warn_at,
        spent_before=spent_before,
        offload=backend.offload,
    )
    display = options.display
    meter = RateMeter()
    async with anyio.create_task_group() as tg:
        if options.handle_signals and threading.current_thread() is threading.main_thread():
            tg.start_soon(_stop_on_signal, tg.cancel_scope, engine.summary)
        if display is not None:
            tg.start_soon(_show_progress, engine, display, meter)
        if alongside is not None:  # a bucket's lease renewal and checkpoints
            tg.start_soon(alongside)
        with anyio.move_on_after(options.max_runtime) as deadline:
            await engine.run(_units(manifest, shard), total)
        if deadline.cancelled_caught:
            engine.summary.out_of_time = True
            log.warning("--max-runtime reached; the next run continues from here")
        tg.cancel_scope.cancel()
    if display is not None and display.live:  # its last frame is the final state
        _show_now(engine, display, meter)
    return engine.summary


def exit_code(summary: Summary, total: int) -> int:
    if summary.interrupted:
        return 128 + summary.signal if summary.signal else EXIT_INTERRUPTED
    if summary.out_of_time:
        return EXIT_OUT_OF_TIME
    complete = summary.done + summary.skipped == total
    if summary.failed == 0 and summary.left_failed == 0:
        if complete:
            return EXIT_OK
        if summary.submitting_stopped:
            return EXIT_STOPPED  # the budget or the credits: nothing failed
    return EXIT_FAILED_UNITS


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
            summary.signal = signum
            scope.cancel()
            return


def _write_views_if_possible(journal: Journal, out_dir: Path, shard: Shard | None) -> None:
    """The views, unless the disk refuses them: a run ending on a full disk must say
    why it stopped, and the next run writes them (the journal has it all)."""
    try:
        with storage_faults(out_dir):
            _write_views(journal, out_dir, shard)
    except StorageError as exc:
        log.warning("results.jsonl and metadata.jsonl not rewritten: %s", exc)


def _write_gallery(root: Path, sharded: bool) -> None:
    """The gallery of the output (of every shard, for a shard's run), or a warning: a
    page that could not be made must not fail a run that did its work."""
    places = shard_directories(root) if sharded else [root]
    with contextlib.ExitStack() as stack:
        journals = []
        for place in places:
            if (place / JOURNAL_NAME).is_file():
                journal = Journal(place)
                stack.callback(journal.close)
                journals.append((place, journal))
        try:
            with storage_faults(root):
                made = write_gallery(root, journals)
        except StorageError as exc:
            log.warning("the gallery was not made: %s", exc)
            return
    log.info("gallery: %s", made.page)


def _write_views(journal: Journal, out_dir: Path, shard: Shard | None) -> None:
    update_views(journal, out_dir, metadata=shard is None)
    if shard is not None:  # one metadata.jsonl at the root, for every shard
        write_dataset_metadata(journal, out_dir, sharded=True)


def write_dataset_metadata(journal: Journal, out_dir: Path, *, sharded: bool) -> None:
    """``metadata.jsonl`` for the run's directory or, for a shard, for the whole output
    root, covering every shard that has a journal (see :mod:`batchgen.dataset`).
    ``journal`` is the run's own, still open."""
    if not sharded:
        write_metadata(out_dir, lambda: [("", journal.results())], journal.first_time)
        return
    with contextlib.ExitStack() as stack:
        journals: list[tuple[str, Journal]] = []
        for place in shard_directories(out_dir.parent):
            if place == out_dir:
                journals.append((f"{place.name}/", journal))
            elif (place / JOURNAL_NAME).is_file():
                other = Journal(place)
                stack.callback(other.close)
                journals.append((f"{place.name}/", other))
        write_metadata(
            out_dir.parent,
            lambda: [(prefix, shard.results()) for prefix, shard in journals],
            journal.first_time,
        )


# ---------------------------------------------------------------------- status


def status(
    out: str | Path,
    manifest: str | Path | None = None,
    *,
    storage_options: list[str] | dict[str, str] | None = None,
) -> Status:
    """What the runs in an output directory (or every shard under it) have done so far;
    also while a run goes on.  Given the manifest, also how much of it is left.  ``out``
    may be a bucket URL (``s3://…``): its checkpoints are read, its images listed."""
    loaded = load(manifest) if manifest is not None else None
    if isinstance(out, str) and is_bucket_url(out):
        url = BucketUrl.parse(out)
        assert url is not None
        with tempfile.TemporaryDirectory() as temporary:
            found = run_sync(lambda: checkpointed(url, storage_options, Path(temporary)))
            return _tally(
                str(url),
                [(c.place, c.shard, c.present.problems) for c in found],
                loaded,
                running=any(c.lease_held for c in found),
                sharded=found[0].shard is not None,
            )
    root = Path(out)
    places = [root] if (root / JOURNAL_NAME).is_file() else shard_directories(root)
    places = [p for p in places if (p / JOURNAL_NAME).is_file()]
    if not places:
        raise ConfigError(f"{root}: no batchgen journal here (is it a run's output directory?)")

    def shard_of(place: Path) -> Shard | None:
        match = SHARD_DIRECTORY.match(place.name) if place != root else None
        return Shard(int(match[1]), int(match[2])) if match else None

    return _tally(
        str(root),
        [
            (place, shard_of(place), functools.partial(files_not_as_written, place))
            for place in places
        ],
        loaded,
        running=any(run_in_progress(place) for place in places),
        sharded=places != [root],
    )


# How a place's recorded files are checked: (path, whether missing) of each one not as
# written (files_not_as_written for a directory, Present.problems for a bucket).
FileCheck = Callable[[Iterable[str]], Iterator[tuple[str, bool]]]


def _tally(
    out: str,
    places: list[tuple[Path, Shard | None, FileCheck]],
    loaded: Manifest | None,
    *,
    running: bool,
    sharded: bool,
) -> Status:
    """The journals of ``places``, each with how its files are checked, summed up."""
    counts: Counter[str] = Counter()
    spend = Spend()
    failures: list[dict[str, Any]] = []
    missing = changed = manifest_units = left = 0
    for place, shard, not_as_written in places:
        journal = Journal(place)
        try:
            with storage_faults(journal.path):
                counts.update(journal.counts())
                spend += journal.spend()
                failures.extend(
                    {"id": unit_id, "error": error, "permanent": permanent, "job_id": job_id}
                    for unit_id, error, permanent, job_id in journal.failures()
                )
                for _, gone in not_as_written(journal.downloaded_files()):
                    missing += gone
                    changed += not gone
                if loaded is not None:
                    units = _units(loaded, shard)
                    while chunk := list(itertools.islice(units, ESTIMATE_CHUNK)):
                        rows = journal.get_many([unit.id for unit in chunk])
                        manifest_units += len(chunk)
                        left += sum(
                            1
                            for unit in chunk
                            if unit.id not in rows or rows[unit.id].state is not State.DOWNLOADED
                        )
        finally:
            journal.close()
    return Status(
        out=out,
        shards=[shard.directory for _, shard, _ in places if shard is not None] if sharded else [],
        running=running,
        units=sum(counts.values()),
        states=dict(counts),
        spend=spend,
        failures=failures,
        missing_files=missing,
        changed_files=changed,
        manifest_units=manifest_units if loaded is not None else None,
        left=left if loaded is not None else None,
    )


# ---------------------------------------------------------------------- models


def models(
    *, api_url: str | None = None, project_id: str | None = None, simulate: bool = False
) -> list[dict[str, Any]]:
    """Every model the credentials can use: the team's own (``privacy: private``) and
    Scenario's public ones, each record as the API gives it."""
    options = RunOptions(api_url=api_url, project_id=project_id, simulate=simulate)

    async def fetch() -> list[dict[str, Any]]:
        async with open_backend(options) as backend:
            found: list[dict[str, Any]] = []
            for privacy in ("private", "public"):
                listed = await with_retries(
                    Request.OTHER_READ,
                    lambda privacy=privacy: backend.client.list_models(privacy),  # type: ignore[misc]
                    backend.settings.retry,
                )
                found += [{**record, "privacy": privacy} for record in listed]
            return found

    return run_sync(fetch)


def model(
    model_id: str,
    *,
    api_url: str | None = None,
    project_id: str | None = None,
    simulate: bool = False,
) -> ModelSpec:
    """One model and its inputs."""
    options = RunOptions(api_url=api_url, project_id=project_id, simulate=simulate)

    async def fetch() -> ModelSpec:
        async with open_backend(options) as backend:
            return await with_retries(
                Request.OTHER_READ,
                lambda: backend.client.get_model(model_id),
                backend.settings.retry,
            )

    return run_sync(fetch)
