"""Local faults in one line: the disk, the file system, the journal's file.

Errors of the output directory are converted here into
:class:`~batchgen.errors.StorageError`, ``from`` the error the system gave, as the
network's are at the HTTP boundary: a full or read-only disk, a file where a directory
should be, a damaged journal.  Each says what it hit and what to do; none is a
traceback.  Nothing recorded is lost: every journal transition is a transaction, so a
run stopped by a fault resumes where it stopped once the fault is mended.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import StorageError

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_IN_THE_WAY = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}

RESUMES = "run again once it is mended: the run resumes where it stopped"
DAMAGED = (
    "the journal is damaged; it is left as it is: move it aside and run again with "
    "--rebuild-journal (or --fresh to start over in a new directory)"
)


def storage_error(exc: OSError | sqlite3.Error, where: Path) -> StorageError:
    """The one-line error for a fault met at ``where`` (a path in the output), caused
    by ``exc`` also when it is kept to be raised later."""
    error = _describe(exc, where)
    error.__cause__ = exc
    return error


def _describe(exc: OSError | sqlite3.Error, where: Path) -> StorageError:
    if isinstance(exc, sqlite3.Error):
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "full" in text:
            return StorageError(f"{where}: {text}; free some space and {RESUMES}")
        if "readonly" in text or "read-only" in text:
            return StorageError(f"{where}: {text}; make it writable and {RESUMES}")
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            return StorageError(f"{where}: {text}: {DAMAGED}")
        return StorageError(f"{where}: {text}; {RESUMES}")
    target = exc.filename or where
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ELOOP or type(exc).__name__ == "NotRegularFile":
        return StorageError(
            f"{target}: {reason}; batchgen reads and writes only regular files inside the "
            "output, never through a link: move it away and run again"
        )
    if exc.errno in _FULL:
        return StorageError(f"{target}: {reason}; free some space and {RESUMES}")
    if exc.errno in _READ_ONLY:
        return StorageError(f"{target}: {reason}; make it writable and {RESUMES}")
    if exc.errno in _IN_THE_WAY:
        return StorageError(f"{target}: {reason}; the output must be a directory of its own")
    return StorageError(f"{target}: {reason}; {RESUMES}")


@contextmanager
def storage_faults(where: Path) -> Iterator[None]:
    """Convert a local fault raised inside into a :class:`StorageError`."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        raise storage_error(exc, where) from exc
