"""Where a run's images, views and journal go: a folder (:mod:`.local`) or a bucket
(:mod:`.bucket`), behind one interface (:class:`Output`).  A run asks its output for
what it needs (its lock or lease, its journal, how images reach it, its views at the
end) and never which kind it is; what a bucket cannot do is refused in one place
(:func:`open_output`).  A third kind of output is a third module here, and one line of
:func:`open_output`.

Light to import: the command line's fast path reads the lease's length from here.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..backend import Backend
    from ..engine import EngineSettings
    from ..engine.ports import Fetcher
    from ..manifest import Manifest
    from ..manifest.shard import Shard
    from ..options import RunOptions
    from ..report import Report
    from ..store.journal import Journal


@dataclass(slots=True)
class RunPlan:
    """What an output is told of the run it holds."""

    manifest: Manifest
    shard: Shard | None
    options: RunOptions
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

    async def gallery(self, run: RunPlan) -> None:
        """``--gallery``: the output's page written."""


def open_output(manifest: Manifest, options: RunOptions, shard: Shard | None) -> Output:
    """The output the options and the manifest name: a bucket (``s3://``, ``gs://``), or
    a folder.  What a kind of output cannot do is refused here, before anything."""
    from ..plan import output_directory, output_url

    target = output_url(manifest, options)
    if target is None:
        from .local import FolderOutput

        return FolderOutput(output_directory(manifest, options, shard), shard)
    from .bucket import BucketOutput

    return BucketOutput.for_run(target, options, shard)
