r"""The output interfaces: during a run (:class:`Output`, told of the run by
:class:`RunPlan`), and between runs (:class:`Kept`, an output of one or more
:class:`Place`\ s: itself, or each of its shards, each with its own journal, a bucket's
restored from its checkpoint into a local directory).  What :mod:`batchgen.output`'s
kinds implement, apart from the functions that choose one."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..backend import Backend
    from ..engine import EngineSettings
    from ..engine.ports import Fetcher
    from ..manifest import Manifest
    from ..manifest.shard import Shard
    from ..report import Report
    from ..store.files import Stamp
    from ..store.gallery import Gallery
    from ..store.journal import Journal


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What the output takes of a run's options: where it is, and how it is held (the
    rest of the options are not the output's business)."""

    # --out (None: the manifest's output, else output/<manifest name>).
    where: str | Path | None
    state_dir: str | Path | None
    storage_options: list[str] | dict[str, str] | None
    lease_seconds: float
    checkpoint_interval: float
    retries: int
    # Each unit's failed jobs the journal keeps (--job-attempts).
    job_attempts: int
    fresh: bool
    rebuild_journal: bool


@dataclass(slots=True)
class RunPlan:
    """What an output is told of the run it holds."""

    manifest: Manifest
    shard: Shard | None
    target: Target
    settings: EngineSettings
    backend: Backend
    fingerprint: str
    # Each model's inputs as checked (JSON), kept in the journal for the next run.
    specs: dict[str, str]


class Output(Protocol):
    """An output of a run, whatever holds it."""

    # Where the journal lives (the engine's output directory), and what the log and
    # the report call the output.
    state_dir: Path

    @property
    def shown(self) -> str: ...

    def finished(self, manifest: Manifest, shard: Shard | None) -> Report | None:
        """The report of a batch finished and unchanged, known cheaply; else None."""

    def siblings(self, shard: Shard | None) -> tuple[Path, ...]:
        """The journals of the other shards of the output (for their uploads)."""

    def fresh(self) -> None:
        """``--fresh``: the output as it is, moved aside."""

    async def open(
        self, held: AsyncExitStack, run: RunPlan
    ) -> tuple[Journal, EngineSettings, Fetcher]:
        """Held for the run (lock, lease: released by ``held``): its journal, the
        engine's settings and the fetcher images reach the output through."""

    def alongside(self, run: RunPlan) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """What runs beside the engine while it runs (a bucket's lease and checkpoints)."""

    async def close(self, journal: Journal, run: RunPlan) -> None:
        """At the run's end, however it ended: the views (and what else the output
        keeps) brought up to date with the journal."""

    @property
    def whole(self) -> str | Path:
        """The whole output (a sharded one's root), as :func:`open_kept` takes it."""


# How a place's recorded files are checked cheaply (size and time, no hashing): each
# one not as written, with whether it is missing (else changed).
FileCheck = Callable[[Iterable[str]], Iterator[tuple[str, bool]]]


@dataclass(frozen=True, slots=True)
class Place:
    """One output (or one shard of it) and its journal's directory."""

    journal_dir: Path
    shard: Shard | None
    # The path from the output's root to it ("" for an output not sharded).
    prefix: str


class Kept(Protocol):
    """An output between runs."""

    @property
    def shown(self) -> str:
        """What messages and reports call it."""

    @property
    def name(self) -> str:
        """What an export names its files after."""

    @property
    def places(self) -> list[Place]: ...

    @property
    def sharded(self) -> bool: ...

    def running(self) -> bool:
        """Whether a run holds it now (as far as can be told without writing)."""

    def file_check(self, place: Place) -> FileCheck:
        """``status``'s quick look at the files a place records."""

    def reading(self, place: Place) -> AbstractAsyncContextManager[Journal]:
        """The place's journal, held for a read (no run writes meanwhile)."""

    def holding(self, place: Place) -> AbstractAsyncContextManager[Journal]:
        """The place's journal, held for a change (its lock, or its lease): what is
        changed is saved with :meth:`saved` before it is let go."""

    async def saved(self, place: Place, journal: Journal) -> None:
        """The views (and a bucket's checkpoint) brought up to date with the journal."""

    async def problem(self, place: Place, relative: str, sha256: str) -> str | None:
        """``missing``, ``altered`` (hashed, or by the sha256 stored with it), or None."""

    def name_of(self, place: Place, relative: str) -> str:
        """A recorded file as messages show it."""

    async def delete_image(self, place: Place, relative: str) -> bool:
        """An image the journal recorded (below ``images/`` only) deleted; whether it was
        there."""

    def reader(self) -> Callable[[str], bytes | None] | None:
        """How an export reads a file by its path from the root (None: from disk)."""

    def root_dir(self) -> Path:
        """The directory the places' paths are relative to (for an export's rows)."""

    def gallery(self) -> Gallery:
        """The review page written, from every place's journal as it stands (a run may
        be going on: it is read, not held).  Blocking."""

    def refetch(self, place: Place, backend: Backend) -> Refetch:
        """How ``verify --fix`` puts the images it fetches again into the place."""


class Refetch(Protocol):
    """Images fetched again (``verify --fix``) into one place of an output: where they
    are written, their story written in again, what the journal records of each."""

    @property
    def fetcher(self) -> Fetcher:
        """Fetches an image to ``place.journal_dir / relative`` (as the run's does)."""

    async def rewrite(self, relative: str, change: Callable[[bytes], bytes]) -> str:
        """The image replaced by ``change`` of its bytes; its new sha256."""

    def stamp(self, relative: str) -> Stamp | None:
        """What the journal records of a file written."""

    async def finish(self) -> None:
        """Everything fetched is where it belongs (a bucket's spill written), or an
        error: nothing may be recorded that is not there."""


@contextlib.contextmanager
def opened_journals(places: Iterable[Place]) -> Iterator[list[tuple[str, Journal]]]:
    """Each place's journal open for reading, without its lock, closed at the end:
    (its path from the output's root, the journal)."""
    from ..store.journal import Journal

    with contextlib.ExitStack() as stack:
        journals = []
        for place in places:
            journal = Journal(place.journal_dir)
            stack.callback(journal.close)
            journals.append((place.prefix, journal))
        yield journals
