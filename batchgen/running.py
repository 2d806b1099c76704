"""A run from its options to its report: the output opened, the manifest checked, the
engine run beside the displays and the signals, and how it ended (the exit code)."""

from __future__ import annotations

import contextlib
import dataclasses
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
from .engine import Engine, EngineSettings, Summary
from .engine.ports import Fetcher, inline
from .errors import (
    EXIT_FAILED_UNITS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUT_OF_TIME,
    EXIT_STOPPED,
    ConfigError,
    StorageError,
)
from .estimating import cost_at_most, priced
from .manifest import Manifest
from .manifest.shard import Shard
from .options import RunOptions, from_keywords
from .output import Output, RunPlan, Target, make_gallery, open_output
from .plan import (
    MODEL_KEY,
    checked_manifest,
    saved_specs,
    units_of,
)
from .report import Report
from .rerun import COMPLETE_KEY, MANIFEST_KEY, ROWS_OF_KEY, load
from .rerun import fingerprint as _fingerprint
from .rerun import shard_of as _shard
from .rerun import still_complete as _still_complete
from .scenario.inputs import ModelSpec
from .scenario.preflight import Prompts
from .scenario.remote import fetch_remote_images
from .store.journal import Journal
from .team import NotEnoughCreditsError, account_concurrency, credits_refusal, read_limits
from .ui.display import Display
from .ui.progress import RateMeter

log = logging.getLogger(__name__)
T = TypeVar("T")


async def arun_with(manifest: str | Path, options: Mapping[str, Any]) -> Report:
    """A run, from its keywords to its report."""
    opts = from_keywords(options)
    target = output_target(opts)
    loaded = load(manifest, opts.filename)
    shard = _shard(opts.shard, opts.shards)
    output = open_output(loaded, target, shard)
    settings = engine_settings(loaded, opts, output.state_dir)
    if not (opts.fresh or opts.rebuild_journal or opts.gallery):
        finished = output.finished(loaded, shard)
        if finished is not None:
            return finished
    async with open_backend(opts, output.state_dir) as backend:
        loaded, total, specs, settings = await planned(
            loaded, shard, opts, settings, backend, output
        )
        fingerprint = await backend.offload(_fingerprint, loaded, shard)
        run = RunPlan(loaded, shard, target, settings, backend, fingerprint, specs)
        if opts.fresh:
            output.fresh()
        summary = await held_run(output, run, opts, total)
        if opts.gallery:
            await gallery_of_run(output, target, backend)
    return Report(
        **summary.to_json(),
        output=output.shown,
        exit_code=exit_code(summary, total),
        line=summary.line(),
    )


def output_target(options: RunOptions) -> Target:
    """What the output takes of the run's options."""
    return Target(
        where=options.out,
        state_dir=options.state_dir,
        storage_options=options.storage_options,
        lease_seconds=options.lease_seconds,
        checkpoint_interval=options.checkpoint_interval,
        retries=options.retries,
        job_attempts=options.job_attempts,
        fresh=options.fresh,
        rebuild_journal=options.rebuild_journal,
    )


async def gallery_of_run(output: Output, target: Target, backend: Backend) -> None:
    """``--gallery``: the output's page (every shard's), or a warning: a page that could
    not be made must not fail a run that did its work."""
    try:
        made = await make_gallery(
            output.whole, target.storage_options, blocking=backend.offload is inline
        )
    except (StorageError, ConfigError) as exc:
        log.warning("the gallery was not made: %s", exc)
        return
    log.info("gallery: %s", made.page)


def engine_settings(manifest: Manifest, options: RunOptions, state_dir: Path) -> EngineSettings:
    concurrency = options.concurrency or manifest.concurrency or defaults.DEFAULT_CONCURRENCY
    if not 1 <= concurrency <= defaults.MAX_CONCURRENCY:
        raise ConfigError(f"concurrency must be between 1 and {defaults.MAX_CONCURRENCY}")
    return EngineSettings(
        output_dir=state_dir,
        concurrency=concurrency,
        poll_interval=options.poll_interval,
        job_timeout=options.job_timeout,
        job_attempts=options.job_attempts,
        download_workers=options.downloads or defaults.download_workers_for(concurrency),
        filename=manifest.filename,
        reconcile_grace=options.reconcile_grace,
        embed_metadata=options.embed_metadata,
    )


async def planned(
    manifest: Manifest,
    shard: Shard | None,
    options: RunOptions,
    settings: EngineSettings,
    backend: Backend,
    output: Output,
) -> tuple[Manifest, int, dict[str, str], EngineSettings]:
    """Before the output is touched: the credentials, the models and every unit
    checked.  The manifest (its remote images fetched), how many units it has, each
    model's inputs as checked (JSON), and the engine's settings as the account allows."""
    saved = await backend.offload(saved_specs, output.state_dir)
    manifest = await fetch_remote_images(manifest, backend.downloader, backend.settings.retry)
    total, specs, prompts = await checked_manifest(manifest, backend, saved, options.max_units)
    settings = dataclasses.replace(
        settings,
        seeds={model: spec.seed_range for model, spec in specs.items()},
        image_lists={model: spec.image_lists for model, spec in specs.items()},
        outputs={model: spec.outputs_per_job for model, spec in specs.items()},
        sibling_journals=output.siblings(shard),
    )
    if shard is not None:
        total = await backend.offload(lambda: sum(1 for _ in units_of(manifest, shard)))
    settings = await by_the_account(
        manifest, shard, options, settings, backend, output, specs, (prompts, total)
    )
    log.info(
        "%s: %d units, output in %s, %d in flight at most",
        manifest.path,
        total,
        output.shown,
        settings.concurrency,
    )
    specs_json = {model: json.dumps(spec.to_json()) for model, spec in specs.items()}
    return manifest, total, specs_json, settings


async def by_the_account(
    manifest: Manifest,
    shard: Shard | None,
    options: RunOptions,
    settings: EngineSettings,
    backend: Backend,
    output: Output,
    specs: Mapping[str, ModelSpec],
    read: tuple[list[Prompts], int],
) -> EngineSettings:
    """What the account's limits say of the run: its concurrency, the wait after a
    429, and whether its credits can finish the batch (else refused, nothing spent).
    ``read``: the manifest's prompts, and how many units the run has."""
    prompts, total = read
    limits = await read_limits(backend)
    if limits is None:
        return settings
    if limits.parallel_custom_jobs is not None:
        given = options.concurrency or manifest.concurrency
        concurrency = await account_concurrency(backend, limits, shard, given)
        workers = options.downloads or defaults.download_workers_for(concurrency)
        settings = dataclasses.replace(settings, concurrency=concurrency, download_workers=workers)
    if (cooldown := limits.cooldown()) is not None:
        retry = dataclasses.replace(backend.settings.retry, cooldown=cooldown)
        backend.settings = dataclasses.replace(backend.settings, retry=retry)
    if not options.allow_partial and limits.left(backend.client.server_now()) is not None:
        # Enough for every unit at the dearest price: no need to read the journal unit
        # by unit (a resume of a large batch would, before its first submission).
        bound = await cost_at_most(manifest, backend, specs, prompts, total)
        if bound is None or credits_refusal(bound, limits, backend.client.server_now()):
            found = await priced(
                manifest, shard, output.state_dir, options, backend, specs, prompts
            )
            refusal = credits_refusal(found.estimated_left, limits, backend.client.server_now())
            if refusal is not None:
                raise NotEnoughCreditsError(refusal)
    return settings


async def held_run(output: Output, run: RunPlan, options: RunOptions, total: int) -> Summary:
    """The run while its output is held: journal opened, engine run, views closed."""
    backend = run.backend
    async with contextlib.AsyncExitStack() as held:
        journal, settings, fetcher = await output.open(held, run)
        try:
            await backend.offload(remember_the_run, journal, run)
            finished = await backend.offload(
                _still_complete, journal, output.state_dir, run.fingerprint
            )
            if finished is not None:
                summary = Summary(total=total, skipped=total, spent_before=journal.spent())
            else:
                summary = await run_engine(
                    dataclasses.replace(run, settings=settings),
                    options,
                    total,
                    journal,
                    fetcher,
                    output.alongside(run),
                )
            await backend.offload(note_the_end, journal, run, summary, total)
        finally:
            # Also after an error or an interruption: the views must match the journal.
            with CancelScope(shield=True):
                try:
                    await output.close(journal, run)
                finally:
                    journal.close()
    return summary


def remember_the_run(journal: Journal, run: RunPlan) -> None:
    note_rows_of(journal, run.fingerprint)
    journal.remember(MANIFEST_KEY, str(run.manifest.path.resolve()))
    for model_id, spec in run.specs.items():
        journal.remember(MODEL_KEY + model_id, spec)


def note_the_end(journal: Journal, run: RunPlan, summary: Summary, total: int) -> None:
    """A batch finished is noted so (its rerun knows it cheaply); units the manifest
    no longer has are said."""
    if summary.skipped + summary.succeeded == total and summary.not_finished == 0:
        journal.remember(COMPLETE_KEY, f"{run.fingerprint} {journal.result_seq()} {total}")
    if summary.interrupted or summary.out_of_time:
        return
    # Every unit of the manifest has a journal row now; any more are old.
    departed = sum(journal.counts().values()) - total
    if departed >= 0:
        journal.remember(ROWS_OF_KEY, run.fingerprint if departed == 0 else "")
    if departed > 0:
        log.warning(
            "%d units recorded in %s are no longer in the manifest; they are kept, with "
            "their lines in results.jsonl (batchgen prune forgets them)",
            departed,
            run.settings.output_dir,
        )


def note_rows_of(journal: Journal, fingerprint: str) -> None:
    """Known when the journal is new, or was known by an earlier run of the same
    manifest; unknown after the manifest changed, until a run of it ends with every
    unit recorded and none departed."""
    known = journal.is_empty() or journal.recall(ROWS_OF_KEY).get("") == fingerprint
    journal.remember(ROWS_OF_KEY, fingerprint if known else "")


async def run_engine(
    run: RunPlan,
    options: RunOptions,
    total: int,
    journal: Journal,
    fetcher: Fetcher,
    alongside: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> Summary:
    """The engine over the run's units, beside what watches it: the display, the
    signals, the output's own work (a bucket's lease and checkpoints), the deadline."""
    backend = run.backend
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
        run.settings,
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
            await engine.run(units_of(run.manifest, run.shard), total)
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
