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

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar, Unpack

from . import config as defaults
from .backend import open_backend, run_sync
from .errors import known_error
from .estimating import aestimate, priced
from .keywords import RunKeywords
from .manifest import count_units
from .manifest.naming import FileNameTemplate
from .options import RunOptions
from .output import open_kept
from .plan import checked_manifest
from .report import Estimate, Report, Status, Validation
from .rerun import load
from .retry import Request, with_retries
from .running import arun_with
from .scenario.inputs import ModelSpec
from .tally import tally
from .team import Account, account_of, credits_refusal, read_limits

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------------- reports


# ---------------------------------------------------------------------- the backend


# ---------------------------------------------------------------------- manifests


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

    async def check() -> Validation:
        async with open_backend(options) as backend:
            total, specs, prompts = await checked_manifest(loaded, backend, max_units=max_units)
            found = Validation(*place, total, True)
            limits = await read_limits(backend)
            now = backend.client.server_now()
            if limits is None or limits.left(now) is None:
                return found
            out_dir = Path(tempfile.mkdtemp())  # no journal: every unit is to do
            try:
                cost = await priced(loaded, None, out_dir, options, backend, specs, prompts)
            finally:
                shutil.rmtree(out_dir, ignore_errors=True)
            return dataclasses.replace(
                found,
                estimated_cost=cost.estimated_left,
                worst_case=cost.worst_case,
                credits_left=limits.left(now),
                credits_refusal=credits_refusal(cost.estimated_left, limits, now),
            )

    return run_sync(check)


def account(
    *, api_url: str | None = None, project_id: str | None = None, simulate: bool = False
) -> Account:
    """The account of the credentials: team, plan, period, creative units allowed, used
    and left (one-shot ones with their expiry), parallel jobs and those running now,
    this period's use by model (``batchgen account``)."""
    options = RunOptions(api_url=api_url, project_id=project_id, simulate=simulate)

    async def fetch() -> Account:
        async with open_backend(options) as backend:
            return await account_of(backend)

    return run_sync(fetch)


# ---------------------------------------------------------------------- estimate


def estimate(manifest: str | Path, **options: Unpack[RunKeywords]) -> Estimate:
    """What the units still to do would cost: the API's dry run (HTTP 269, nothing
    created), once per model/size/params shape."""
    return run_sync(lambda: aestimate(manifest, **options))


# ---------------------------------------------------------------------- run


def run(manifest: str | Path, **options: Unpack[RunKeywords]) -> Report:
    """Run every unit of a manifest; the options are :class:`~batchgen.options.RunOptions`
    (the command line's, with ``-`` as ``_``), checked by mypy as keywords."""
    return run_sync(lambda: arun(manifest, **options))


async def arun(manifest: str | Path, **options: Unpack[RunKeywords]) -> Report:
    """:func:`run`, awaited in a running event loop (a notebook's, a service's)."""
    try:
        return await arun_with(manifest, options)
    except BaseExceptionGroup as group:
        # The task groups a run is made of gather errors; the caller gets the one that
        # says why the run stopped, as the command line shows it.
        known = known_error(group)
        if known is None:
            raise
        raise known from None


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

    async def read() -> Status:
        async with open_kept(out, storage_options) as kept:
            return tally(
                kept.shown,
                [(place.journal_dir, place.shard, kept.file_check(place)) for place in kept.places],
                loaded,
                running=kept.running(),
                sharded=kept.sharded,
            )

    return run_sync(read)


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
