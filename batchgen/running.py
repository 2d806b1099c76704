"""A run from its options to its report: the output opened, the manifest checked, the
engine run beside the displays and the signals, and how it ended (the exit code)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import signal
import threading
from collections.abc import (
    Callable,
    Coroutine,
    Mapping,
)
from pathlib import Path
from typing import Any, TypeVar

import anyio
from anyio import CancelScope

from . import config as defaults
from .backend import Backend, open_backend
from .config import RetrySettings
from .engine import Engine, EngineSettings, Summary
from .engine.ports import Fetcher, inline
from .errors import (
    EXIT_FAILED_UNITS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUT_OF_TIME,
    EXIT_STOPPED,
    BatchgenError,
    ConfigError,
)
from .manifest import Manifest
from .manifest.shard import Shard, shard_directories
from .options import RunOptions, from_keywords
from .output.bucket import (
    BucketOutput,
    Taken,
    finish,
    keep,
    leased,
    refuse_local_only,
    start,
)
from .output.bucket_files import BucketImages, checkpoint, trusted
from .output.local import journal_or_rebuild, move_aside, write_gallery_of, write_views_if_possible
from .plan import (
    MODEL_KEY,
    checked_manifest,
    output_directory,
    output_url,
    saved_specs,
    sent_for,
    units_of,
)
from .report import Report
from .rerun import COMPLETE_KEY, MANIFEST_KEY, ROWS_OF_KEY, load
from .rerun import fingerprint as _fingerprint
from .rerun import finished_already as _finished_already
from .rerun import shard_of as _shard
from .rerun import still_complete as _still_complete
from .scenario.remote import fetch_remote_images
from .store.journal import JOURNAL_NAME, Journal
from .store.lock import OutputLock
from .ui.display import Display
from .ui.progress import RateMeter

log = logging.getLogger(__name__)
T = TypeVar("T")


def first_known(error: BaseException) -> BatchgenError | None:
    if isinstance(error, BatchgenError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = first_known(inner)
            if found is not None:
                return found
    return None


async def arun_with(manifest: str | Path, options: Mapping[str, Any]) -> Report:
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
        saved = await backend.offload(saved_specs, out_dir)
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
            total = await backend.offload(lambda: sum(1 for _ in units_of(loaded, shard)))
        log.info(
            "%s: %d units, output in %s, %d in flight at most",
            loaded.path,
            total,
            bucket_output.bucket.url if bucket_output is not None else out_dir,
            concurrency,
        )
        if opts.fresh:
            move_aside(out_dir)
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
                    lambda: units_of(loaded, shard),
                    sent_for(settings),
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
                    await journal_or_rebuild(journal, loaded, shard, opts, settings, backend)
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
                await backend.offload(note_rows_of, journal, fingerprint)
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
                    summary = await run_engine(
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
                        write_views_if_possible,
                        journal,
                        out_dir,
                        shard if bucket_output is None else None,
                    )
                    if bucket_output is not None:
                        await finish(bucket_output, save, backend.settings.retry, backend.offload)
                journal.close()
        if opts.gallery:
            root = out_dir.parent if shard is not None else out_dir
            await backend.offload(write_gallery_of, root, shard is not None)
    return Report(
        **summary.to_json(),
        output=str(bucket_output.bucket.url) if bucket_output is not None else str(out_dir),
        exit_code=exit_code(summary, total),
        line=summary.line(),
    )


def note_rows_of(journal: Journal, fingerprint: str) -> None:
    """Known when the journal is new, or was known by an earlier run of the same
    manifest; unknown after the manifest changed, until a run of it ends with every
    unit recorded and none departed."""
    known = journal.is_empty() or journal.recall(ROWS_OF_KEY).get("") == fingerprint
    journal.remember(ROWS_OF_KEY, fingerprint if known else "")


async def run_engine(
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
            await engine.run(units_of(manifest, shard), total)
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
