"""Files on disk: hashes, the stamps that spare a resume from reading them again, and
writes that a reader never sees half done.  Blocking code: callers run it in a worker
thread, or inline in tests."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
import shutil
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePath
from typing import IO, Any, BinaryIO

HASH_CHUNK = 1024 * 1024

Stamp = tuple[int, int]  # a file's (size, mtime_ns) when it was written

# Where the images go, below the output directory; and a copy of each input image.
IMAGES_DIR = "images"
INPUTS_DIR = "inputs"


# Opening a file batchgen makes inside the output: never through a link at its name (a
# link planted there would have batchgen write its target), never one already there.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# A directory of the output, reached component by component, none of them a link.
REAL_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotRegularFile(OSError):
    """A name inside the output holds a link, a FIFO or a device where batchgen reads
    or writes a regular file: refused (following it could write outside the output,
    or read forever)."""

    def __init__(self, path: Path | str, what: str = "not a regular file") -> None:
        super().__init__(errno.EINVAL, f"{what} (a link, a FIFO or a device)", str(path))


def create_new(path: Path, text: bool = False) -> IO[Any]:
    """A new file at ``path``, open for writing: refused if anything is there already,
    a link above all (:data:`NEW_FILE`)."""
    fd = os.open(path, NEW_FILE, 0o644)
    return os.fdopen(fd, "w" if text else "wb", encoding="utf-8" if text else None)


def open_regular(path: Path) -> BinaryIO:
    """``path`` open for reading, if it is a regular file: a link, a FIFO or a device
    is refused (:class:`NotRegularFile`) rather than followed or read without end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(path, "a symbolic link") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotRegularFile(path)
    return os.fdopen(fd, "rb")


def copy_new(source: Path, destination: Path) -> None:
    """``source``'s bytes into a new file at ``destination`` (:func:`create_new`), both
    regular files; copied by the kernel (``sendfile``) where it can."""
    with open_regular(source) as old, create_new(destination) as new:
        size = os.fstat(old.fileno()).st_size
        offset = 0
        try:
            while offset < size:
                sent = os.sendfile(new.fileno(), old.fileno(), offset, size - offset)
                if sent == 0:
                    break
                offset += sent
        except OSError:  # no sendfile between two files here (macOS): through Python
            old.seek(offset)
            new.seek(offset)
            shutil.copyfileobj(old, new)


def real_directory(root: Path, relative: PurePath | str) -> Path:
    """``root / relative``, made where missing, each of its directories below ``root`` a
    real one: a link or a file in the way is refused, never followed (``root`` itself
    is the user's to name, a link or not)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in PurePath(relative).parts:
            try:
                child = os.open(name, REAL_DIRECTORY, dir_fd=fd)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
                child = _child(fd, name, root, relative)
            except OSError as exc:
                raise _not_a_directory(exc, root, relative) from exc
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    return root / relative


def _child(fd: int, name: str, root: Path, relative: PurePath | str) -> int:
    try:
        return os.open(name, REAL_DIRECTORY, dir_fd=fd)
    except OSError as exc:
        raise _not_a_directory(exc, root, relative) from exc


def _not_a_directory(exc: OSError, root: Path, relative: PurePath | str) -> OSError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return NotRegularFile(root / relative, "not a directory of the output's own")
    return exc


def sha256_of(path: Path) -> str:
    """The file's sha256; a link, FIFO or device at ``path`` is refused, not read."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
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
            status = os.lstat(path)  # a link in its place is not the file written
        except OSError:
            return False
        if not stat.S_ISREG(status.st_mode):
            return False  # fetched again, in place of whatever took its name
        if index < len(known) and known[index] == (status.st_size, status.st_mtime_ns):
            continue
        if sha256_of(path) != digest:
            return False
    return True


def write_lines_atomically(path: Path, lines: Iterable[str]) -> Path:
    """Replace ``path`` with these lines: written beside it, fsynced, renamed over it, so
    a reader sees the old file or the new one, never a part."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # a killed run's, or anything planted there
    try:
        with create_new(temporary, text=True) as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_bytes_atomically(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one rename (never writing through a link at
    either name)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        with create_new(temporary) as handle:
            handle.write(data)
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
    if os.path.lexists(destination):
        return
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        copy_new(source, temporary)
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
        self._file: IO[Any] | None = None

    def write(self, data: bytes) -> None:
        if self._file is None:
            # Its folder was made, or checked to be a real one, by whoever chose the
            # name; the part file is new, never a link planted at its name.
            self.path.unlink(missing_ok=True)
            self._file = create_new(self.path)
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
