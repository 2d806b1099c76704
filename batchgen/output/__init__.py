"""Where a run's images, views and journal go: a folder (:mod:`.local`) or a bucket
(:mod:`.bucket`), behind one interface (:class:`Output`, told of the run by a
:class:`Target`, not the run's options); between runs, :class:`Kept` (status, verify
and its fix, prune, export, the gallery).  A command asks its output for what it needs
(its lock or lease, its journal, how images reach it, its views at the end) and never
which kind it is; what a bucket cannot do (``--fresh``) is
refused in one place (``BucketOutput.for_run``).  A third kind of output is a module or
two here, and one line each of :func:`open_output` and :func:`open_kept`.

Light to import: the command line's fast path reads the lease's length from here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from .base import FileCheck, Kept, Output, Place, RunPlan, Target

if TYPE_CHECKING:
    from ..manifest import Manifest
    from ..manifest.shard import Shard
    from ..store.bucket import BucketUrl
    from ..store.gallery import Gallery

__all__ = [
    "FileCheck",
    "Kept",
    "Output",
    "Place",
    "RunPlan",
    "Target",
    "make_gallery",
    "open_kept",
    "open_output",
    "output_directory",
]


def open_output(manifest: Manifest, target: Target, shard: Shard | None) -> Output:
    """The output the target and the manifest name: a bucket (``s3://``, ``gs://``), or
    a folder.  What a kind of output cannot do is refused here, before anything."""
    url = _bucket_of(manifest, target.where)
    if url is None:
        from .local import FolderOutput

        return FolderOutput(output_directory(manifest, target.where, None, shard), shard)
    from .bucket import BucketOutput

    return BucketOutput.for_run(url, target, shard)


def output_directory(
    manifest: Manifest, where: str | Path | None, state_dir: str | Path | None, shard: Shard | None
) -> Path:
    """Where the run's journal is: the local output directory (``where``: --out, else
    the manifest's), or for an output in a bucket, its state directory (``state_dir``:
    --state-dir, else one of its own under the user's state directory)."""
    from ..config import default_state_root
    from ..rerun import local_output
    from ..store.bucket import state_key

    url = _bucket_of(manifest, where)
    if url is not None:
        state = Path(state_dir) if state_dir else default_state_root() / state_key(url)
        return state / shard.directory if shard is not None else state
    return local_output(manifest, where, shard)


def _bucket_of(manifest: Manifest, where: str | Path | None) -> BucketUrl | None:
    """The bucket the output goes to, if it goes to one (``--out`` or ``output:``)."""
    from ..store.bucket import BucketUrl, is_bucket_url

    given = where if where is not None else manifest.output
    return BucketUrl.parse(given) if isinstance(given, str) and is_bucket_url(given) else None


@asynccontextmanager
async def open_kept(
    out: str | Path,
    storage_options: list[str] | dict[str, str] | None = None,
    *,
    blocking: bool | None = None,
) -> AsyncIterator[Kept]:
    """The output at ``out``: a bucket (``s3://``, ``gs://``, …), or a folder.
    ``blocking``: a bucket read with the calling thread (by default, off asyncio)."""
    if isinstance(out, Path) or "://" not in out:
        from .local_kept import KeptFolder

        yield KeptFolder.at(Path(out))
        return
    from .bucket_kept import KeptBucket

    async with KeptBucket.at(out, storage_options, blocking=blocking) as kept:
        yield kept


async def make_gallery(
    out: str | Path,
    storage_options: list[str] | dict[str, str] | None = None,
    *,
    blocking: bool = False,
) -> Gallery:
    """The review page of the output at ``out`` written into it (every shard's, from
    its root), from the journals as they stand; in a worker thread, unless
    ``blocking`` (a run on virtual time: everything with the calling thread)."""
    async with open_kept(out, storage_options, blocking=blocking) as kept:
        if blocking:
            return kept.gallery()
        import anyio.to_thread

        return await anyio.to_thread.run_sync(kept.gallery)
