"""A rerun of a finished batch, known finished without the network: the manifest's
fingerprint, the journal's record of the run that finished it, and one ``stat`` per
file.  Light on purpose (no HTTP stack, no engine): ``batchgen run`` from cron on a
batch done long ago starts, looks and leaves in about the time ``validate`` takes.

::

    report = finished_report("jobs.yaml", out="output/jobs")   # None: there is work
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

from . import config as defaults
from .engine.summary import Summary
from .errors import EXIT_OK, ConfigError
from .manifest import Manifest, load_manifest
from .manifest.naming import FileNameTemplate, parse_template
from .manifest.shard import Shard
from .report import Report
from .store.faults import storage_faults
from .store.files import stamps_hold
from .store.journal import JOURNAL_NAME, Journal
from .store.lock import OutputLock
from .version import __version__

log = logging.getLogger(__name__)

# A finished batch, as the journal remembers it: the manifest it was (its fingerprint)
# and the journal's latest change then.  A rerun that finds both unchanged and every
# file as written has nothing to do, and knows it without expanding a unit.
COMPLETE_KEY = "complete"
# The manifest the last run used, for the commands that look after the directory.
MANIFEST_KEY = "manifest"
# The fingerprint of the manifest every unit in the journal is known to be from (none
# left it): --estimate then counts the units left by shape, from the entries and the
# journal, without making every unit.
ROWS_OF_KEY = "rows_of"


def load(manifest: str | Path, filename: str | FileNameTemplate | None = None) -> Manifest:
    """The manifest, with another file name template when one is given."""
    loaded = load_manifest(manifest)
    if filename is not None:
        template = parse_template(filename) if isinstance(filename, str) else filename
        loaded = dataclasses.replace(loaded, filename=template)
    return loaded


def shard_of(value: str | Shard | None, shards: int | None = None) -> Shard | None:
    """The shard to run: ``I/N``, or ``auto`` (from a Kubernetes indexed Job's or a
    SLURM array task's environment)."""
    if value is None or isinstance(value, Shard):
        return value
    try:
        if value.strip() == "auto":
            return Shard.from_environment(os.environ, shards)
        return Shard.parse(value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def local_output(manifest: Manifest, out: str | Path | None, shard: Shard | None) -> Path:
    """The output directory of a run to local files."""
    given = Path(out) if out is not None else None
    if given is None and manifest.output_refused is not None:
        raise ConfigError(manifest.output_refused)
    manifest_output = manifest.output if isinstance(manifest.output, Path) else None
    root = given or manifest_output or defaults.DEFAULT_OUTPUT_ROOT / manifest.path.stem
    return root / shard.directory if shard is not None else root


def fingerprint(manifest: Manifest, shard: Shard | None) -> str:
    """What a run's units are made from: the manifest's bytes, each prompts file's path,
    size and modification time, the shard and the file name template."""
    digest = hashlib.sha256(manifest.path.read_bytes())
    for entry in manifest.entries:
        if entry.prompts_file is not None:
            status = entry.prompts_file.stat()
            digest.update(f"\0{entry.prompts_file}:{status.st_size}:{status.st_mtime_ns}".encode())
    digest.update(f"\0{shard}\0{manifest.filename.text}\0{__version__}".encode())
    return digest.hexdigest()


def still_complete(journal: Journal, out_dir: Path, fingerprint: str) -> int | None:
    """The batch's units, if an earlier run finished it and nothing changed since: the
    same manifest, no change in the journal, every file as it was written."""
    recorded = journal.recall(COMPLETE_KEY).get("", "").split()
    if len(recorded) != 3 or recorded[:2] != [fingerprint, str(journal.result_seq())]:
        return None
    with storage_faults(out_dir):
        return int(recorded[2]) if stamps_hold(out_dir, journal.downloaded_files()) else None


def finished_already(manifest: Manifest, shard: Shard | None, out_dir: Path) -> Report | None:
    """The report of a run with nothing to do, known without reading a prompt or asking
    the API anything: the batch is finished and unchanged (see :func:`still_complete`).
    Nothing is sent, so the manifest's check against the models, made by the run that
    finished it, is not made again."""
    if not (out_dir / JOURNAL_NAME).is_file():
        return None
    with OutputLock(out_dir):
        journal = Journal(out_dir)
        try:
            total = still_complete(journal, out_dir, fingerprint(manifest, shard))
            if total is None:
                return None
            spent = journal.spent()
        finally:
            journal.close()
    log.info("%s: finished by an earlier run, and nothing has changed since", out_dir)
    summary = Summary(total=total, skipped=total, spent_before=spent)
    return Report(
        **summary.to_json(),
        output=str(out_dir),
        exit_code=EXIT_OK,
        line=summary.line(),
    )


def finished_report(
    manifest: str | Path,
    *,
    out: str | Path | None = None,
    filename: str | FileNameTemplate | None = None,
    shard: str | Shard | None = None,
    shards: int | None = None,
) -> Report | None:
    """:func:`finished_already` for a run to local files, from a run's own options;
    None when the output is a bucket (its lease must be taken to know)."""
    if isinstance(out, str) and "://" in out:
        return None
    loaded = load(manifest, filename)
    if out is None and isinstance(loaded.output, str):
        return None
    chosen = shard_of(shard, shards)
    return finished_already(loaded, chosen, local_output(loaded, out, chosen))
