"""Files on disk: hashes, the stamps that spare a resume from reading them again, and
writes that a reader never sees half done.  Blocking code: callers run it in a worker
thread, or inline in tests."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

HASH_CHUNK = 1024 * 1024

Stamp = tuple[int, int]  # a file's (size, mtime_ns) when it was written

# Where the images go, below the output directory; and a copy of each input image.
IMAGES_DIR = "images"
INPUTS_DIR = "inputs"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stamp_of(path: Path) -> Stamp:
    status = path.stat()
    return status.st_size, status.st_mtime_ns


def files_intact(
    out_dir: Path, files: Iterable[tuple[str, str]], stamps: Iterable[Stamp | None] = ()
) -> bool:
    """Every recorded file is there with its recorded sha256.

    A file whose size and modification time are still those recorded when it was
    written is taken as unchanged without reading it (as make and rsync do): a resume
    of a million-image run must not read the whole dataset again.  Any other file is
    hashed."""
    listed = list(files)
    if not listed:
        return False
    known = list(stamps)
    for index, (relative, digest) in enumerate(listed):
        path = out_dir / relative
        try:
            stamp = stamp_of(path)
        except OSError:
            return False
        if index < len(known) and known[index] == stamp:
            continue
        if not path.is_file() or sha256_of(path) != digest:
            return False
    return True


def write_lines_atomically(path: Path, lines: Iterable[str]) -> Path:
    """Replace ``path`` with these lines: written beside it, fsynced, renamed over it, so
    a reader sees the old file or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def stamps_hold(out_dir: Path, recorded: Iterable[str]) -> bool:
    """Whether every file in ``recorded`` (each unit's files as the journal keeps them,
    JSON) still has the size and modification time it was written with: the check of
    a finished batch that nothing was deleted or changed, at one ``stat`` a file.  A
    file recorded without them (an earlier version) fails it, as does any change."""
    return next(files_not_as_written(out_dir, recorded), None) is None


def files_not_as_written(out_dir: Path, recorded: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """(path, whether it is missing) of each recorded file gone or not as written (size
    and modification time; one recorded without them counts as changed), lazily."""
    # Paths relative to an open directory: the kernel walks two names, not the whole
    # path, for each of (maybe) millions of files.
    directory = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for files in parsed(recorded):
            for entry in files:
                try:
                    status = os.stat(entry[0], dir_fd=directory)
                except OSError:
                    yield entry[0], True
                    continue
                if len(entry) != 4 or (status.st_size, status.st_mtime_ns) != (
                    entry[2],
                    entry[3],
                ):
                    yield entry[0], False
    finally:
        os.close(directory)


def parsed(recorded: Iterable[str | None]) -> Iterator[list[list[Any]]]:
    """Each unit's files as the journal keeps them (JSON), parsed a thousand at a time:
    one parse of a thousand is a fifth of the cost of a thousand parses."""
    rows = iter(recorded)
    while chunk := list(itertools.islice(rows, 1000)):
        yield from json.loads("[" + ",".join(files or "[]" for files in chunk) + "]")


def keep_copy(source: Path, destination: Path) -> None:
    """``destination`` holding ``source``'s bytes, unless it is there already (named by
    its content's hash, it then holds the same).  Copied, not linked: an edit of the
    source must not change what the dataset says the image was made from."""
    if destination.exists():
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


_PART_NUMBERS = itertools.count()


class PartFile:
    """A download's bytes under a hidden name (``.NAME.xxxx.part``), put in place only when
    complete and verified."""

    def __init__(self, destination: Path, token: str | None = None) -> None:
        # Unique among this process's downloads (the output lock says no other process
        # writes here; a killed run's part files are removed by the next run).
        token = token or str(next(_PART_NUMBERS))
        self.path = destination.with_name(f".{destination.name}.{token}.part")
        self._file: BinaryIO | None = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            try:
                self._file = self.path.open("wb")
            except FileNotFoundError:  # the first file in one of the template's folders
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("wb")
        self._file.write(data)

    def finish(self, data: bytes, destination: Path, fallback: Path | None, sha256: str) -> Path:
        """Write the last bytes and put the file in place.  Without a ``fallback`` the
        destination is replaced; with one, a destination that already holds other bytes is
        left alone and the file goes to the fallback.  Returns where it went."""
        self.write(data)
        assert self._file is not None
        self._file.close()
        if fallback is None:
            os.replace(self.path, destination)
            return destination
        if create_from(self.path, destination):
            return destination
        if sha256_of(destination) == sha256:
            return destination  # these very bytes, put there by a run killed before it noted them
        os.replace(self.path, fallback)
        return fallback

    def discard(self) -> None:
        """Remove the part file, if it is still there; never raises (it runs in a
        ``finally``, where a full disk's error must not hide the one that ended the
        download; a part file left behind is removed by the next run)."""
        with contextlib.suppress(OSError):
            if self._file is not None:
                self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


def create_from(part: Path, destination: Path) -> bool:
    """Give ``part``'s bytes the name ``destination`` unless that name exists: one
    atomic step, so two writers can never both believe they own the name."""
    try:
        os.link(part, destination)
        return True
    except FileExistsError:
        return False
    except OSError:
        pass
    # A file system without hard links: claim the name, then move the bytes in.
    try:
        os.close(os.open(destination, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    os.replace(part, destination)
    return True
