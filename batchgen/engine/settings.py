"""How a run goes: the engine's settings, one record."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .. import config as defaults
from ..manifest.naming import DEFAULT_FILENAME, FileNameTemplate
from ..store.files import Stamp
from .submit import SeedRange


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """How a run goes: its output directory and the knobs of the command line."""

    output_dir: Path
    concurrency: int = defaults.DEFAULT_CONCURRENCY
    poll_interval: float = defaults.DEFAULT_POLL_INTERVAL
    job_timeout: float = defaults.DEFAULT_JOB_TIMEOUT
    job_attempts: int = defaults.DEFAULT_JOB_ATTEMPTS
    download_workers: int = defaults.DEFAULT_DOWNLOAD_WORKERS
    filename: FileNameTemplate = DEFAULT_FILENAME
    reconcile_grace: float = defaults.DEFAULT_RECONCILE_GRACE
    # Each model's seed range, for the models that take a seed: a unit the manifest
    # gives no seed gets one drawn from its id (see submit.request_for).
    seeds: Mapping[str, SeedRange | None] = field(default_factory=dict)
    # Each model's image inputs that take several (type file_array): they get a list.
    image_lists: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Each model's images per job when a unit does not say (numOutputs): a job that
    # lists more is kept to that many.
    outputs: Mapping[str, int] = field(default_factory=dict)
    # The journals of the other shards of the same output root (for their uploads).
    sibling_journals: tuple[Path, ...] = ()
    # Write each image's prompt and settings into its file (see store.embed).
    embed_metadata: bool = False
    # For an output in a bucket (see batchgen.output.bucket_files): whether a done unit's files are
    # still there, and what the journal records of a file written.  None: local files.
    files_intact: Callable[[Iterable[tuple[str, str]], Iterable[Stamp | None]], bool] | None = None
    stamp: Callable[[Path, str], Stamp | None] | None = None
    # Called with how many units (in the manifest's order) will have been taken once
    # the next chunk is: an output in a bucket records it there first, so that a run
    # that starts from its checkpoint knows no unit past it was ever submitted.
    reserve: Callable[[int], Awaitable[None]] | None = None
    # Keeps a copy of an input image (its path, its name below the output) elsewhere
    # than the output directory (a bucket).  None: copied into the output directory.
    keep_input: Callable[[Path, str], Awaitable[None]] | None = None
    # Moves the images the quality gate rejected aside, elsewhere than the output
    # directory (a bucket); gives their new names.  None: moved in the output directory.
    set_aside: Callable[[list[str], int], Awaitable[list[str]]] | None = None
    # Replaces an image (its name below the output) with a change of its bytes,
    # elsewhere than the output directory (a bucket); gives its new sha256 (for
    # --embed-metadata).  None: rewritten in the output directory.
    rewrite: Callable[[str, Callable[[bytes], bytes]], Awaitable[str]] | None = None
