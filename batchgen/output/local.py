"""An output in a folder: its lock, its journal (or one rebuilt), its views and its
gallery."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from ..backend import Backend
from ..engine import EngineSettings
from ..engine.ports import Fetcher
from ..errors import (
    ConfigError,
    JournalMissingError,
    StorageError,
)
from ..manifest import Manifest
from ..manifest.shard import Shard, shard_directories
from ..plan import sent_for, units_of
from ..report import Report
from ..rerun import finished_already
from ..store.dataset import write_metadata
from ..store.faults import storage_faults
from ..store.journal import JOURNAL_NAME, Journal
from ..store.lock import OutputLock
from ..store.rebuild import Rebuilt, earlier_work, rebuild
from ..store.views import update_views
from .base import RunPlan

log = logging.getLogger(__name__)
T = TypeVar("T")


async def journal_or_rebuild(
    journal: Journal,
    manifest: Manifest,
    shard: Shard | None,
    rebuild_asked: bool,
    settings: EngineSettings,
    backend: Backend,
) -> None:
    """Refuse to start from nothing over earlier work; rebuild the journal if asked."""
    out_dir = settings.output_dir
    empty = await backend.offload(journal.is_empty)
    if rebuild_asked:
        if not empty:
            raise ConfigError(
                f"--rebuild-journal: {journal.path} holds units; it is for a directory "
                "whose journal is lost (move the damaged one aside first)"
            )

        def rebuild_all() -> Rebuilt:
            with storage_faults(out_dir), journal.batch(durable=True):
                return rebuild(journal, out_dir, units_of(manifest, shard), sent_for(settings))

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


def move_aside(out_dir: Path) -> None:
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


def write_views_if_possible(journal: Journal, out_dir: Path, shard: Shard | None) -> None:
    """The views, unless the disk refuses them: a run ending on a full disk must say
    why it stopped, and the next run writes them (the journal has it all)."""
    try:
        with storage_faults(out_dir):
            write_views(journal, out_dir, shard)
    except StorageError as exc:
        log.warning("results.jsonl and metadata.jsonl not rewritten: %s", exc)


def write_views(journal: Journal, out_dir: Path, shard: Shard | None) -> None:
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


@dataclasses.dataclass(slots=True)
class FolderOutput:
    """An output in a local folder: held by its lock, its journal beside the images,
    a journal lost over earlier work refused (or rebuilt, if asked)."""

    state_dir: Path
    shard: Shard | None

    @property
    def shown(self) -> str:
        return str(self.state_dir)

    @property
    def whole(self) -> Path:
        return self.state_dir.parent if self.shard is not None else self.state_dir

    def finished(self, manifest: Manifest, shard: Shard | None) -> Report | None:
        return finished_already(manifest, shard, self.state_dir)

    def siblings(self, shard: Shard | None) -> tuple[Path, ...]:
        if shard is None:
            return ()
        others = shard_directories(self.state_dir.parent)
        return tuple(place / JOURNAL_NAME for place in others if place != self.state_dir)

    def fresh(self) -> None:
        move_aside(self.state_dir)

    async def open(
        self, held: contextlib.AsyncExitStack, run: RunPlan
    ) -> tuple[Journal, EngineSettings, Fetcher]:
        held.enter_context(OutputLock(self.state_dir))
        journal = Journal(self.state_dir, failed_job_limit=run.target.job_attempts)
        try:
            # Before the views are touched: over a lost journal they would be
            # rewritten from nothing.
            await journal_or_rebuild(
                journal,
                run.manifest,
                run.shard,
                run.target.rebuild_journal,
                run.settings,
                run.backend,
            )
        except BaseException:
            journal.close()
            raise
        return journal, run.settings, run.backend.downloader

    def alongside(self, run: RunPlan) -> Callable[[], Coroutine[Any, Any, None]] | None:
        return None

    async def close(self, journal: Journal, run: RunPlan) -> None:
        await run.backend.offload(write_views_if_possible, journal, self.state_dir, self.shard)
