"""One run per output directory, so cron never starts a second run on top of a first.

``flock`` on the output directory itself: a user can delete a lock file under a running
process (and a second run would then lock a new file of the same name), but not the
directory the run writes into.  The operating system drops the lock when the process
holding it dies, however it dies, so a lock left by a dead run is simply taken by the
next one.  ``<out>/.batchgen.lock`` is locked too, which an earlier version locked
instead (an old and a new version exclude each other), and holds the pid and host for
the message.  Like any ``flock``, it excludes runs on one machine: a directory shared
over the network needs ``--shard`` to split its work.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
from pathlib import Path
from types import TracebackType

from ..errors import OutputLockedError
from .faults import storage_faults
from .files import NotRegularFile

LOCK_NAME = ".batchgen.lock"


class OutputLock:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / LOCK_NAME
        self._fds: list[int] = []

    def __enter__(self) -> OutputLock:
        with storage_faults(self.out_dir):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            try:
                for path, flags in (
                    (self.out_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC),
                    # Never through a link planted at its name (it would truncate and
                    # write the link's target), never a FIFO or a device.
                    (
                        self.path,
                        os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    ),
                ):
                    try:
                        fd = os.open(path, flags, 0o644)
                    except OSError as exc:
                        if exc.errno == errno.ELOOP:
                            raise NotRegularFile(path, "a symbolic link") from exc
                        raise
                    self._fds.append(fd)
                    if path == self.path and not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise NotRegularFile(path)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise OutputLockedError(
                            f"{self.out_dir} is in use by another batchgen run "
                            f"({_holder(self.path)}); it resumes from the journal when that "
                            "run ends"
                        ) from None
                fd = self._fds[-1]
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            except BaseException:
                self._release()
                raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._release()

    def _release(self) -> None:
        for fd in reversed(self._fds):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        self._fds.clear()


def _holder(path: Path) -> str:
    try:
        return path.read_text("utf-8", "replace").strip()[:200] or "another process"
    except OSError:
        return "another process"


def run_in_progress(out_dir: Path) -> bool:
    """Whether some process holds the directory's lock right now."""
    return any(
        _locked(path, flags)
        for path, flags in (
            (out_dir, os.O_RDONLY | os.O_DIRECTORY),
            (out_dir / LOCK_NAME, os.O_RDONLY),
        )
    )


def _locked(path: Path, flags: int) -> bool:
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
