"""The keywords of :func:`batchgen.run`, as mypy checks them: written from
:class:`batchgen.options.RunOptions` by ``python -m batchgen.options``, never by
hand (a test compares the two)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from .manifest.naming import FileNameTemplate
from .manifest.shard import Shard

if TYPE_CHECKING:
    from .backend import Backend
    from .ui.display import Display


class RunKeywords(TypedDict, total=False):
    out: Path | str | None
    storage_options: list[str] | dict[str, str] | None
    lease_seconds: float
    checkpoint_interval: float
    state_dir: Path | str | None
    concurrency: int | None
    poll_interval: float
    job_timeout: float
    job_attempts: int
    downloads: int | None
    retries: int
    api_url: str | None
    project_id: str | None
    retry_failed: bool
    resubmit_abandoned: bool
    reconcile_grace: float
    max_runtime: float | None
    max_units: int
    fresh: bool
    rebuild_journal: bool
    gallery: bool
    embed_metadata: bool
    budget: float | None
    run_budget: float | None
    warn_at: float | None
    filename: str | FileNameTemplate | None
    shard: str | Shard | None
    shards: int | None
    simulate: bool
    allow_partial: bool
    sim_job_seconds: float
    display: Display | None
    handle_signals: bool
    backend: Callable[[], AbstractAsyncContextManager[Backend]] | None
