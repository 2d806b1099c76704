"""Every error batchgen raises on purpose, in one tree.

::

    BatchgenError                      anything batchgen knows how to explain in one line
    ├── ConfigError                    exit 2: bad input or configuration, nothing sent
    │   ├── ManifestError              names file, line and field
    │   ├── CredentialsError           no key/secret, or the API refused them (401)
    │   └── JournalMissingError        earlier work is there but its journal is not
    ├── OutputLockedError              exit 3: another run holds the output directory
    ├── StorageError                   exit 5: the output directory cannot be written or
    │   │                              read (full or read-only disk, a file in the way,
    │   │                              a damaged journal); what was recorded stays
    │   └── ObjectStoreError           an object store (s3://, gs://) refused or failed a
    │                                  request; ``transient`` ones (503 SlowDown, 429,
    │                                  5xx, a dropped connection) are retried
    ├── ApiError                       the Scenario API answered with an error, or not at all
    │   ├── PermanentApiError          400, 403, 404: the same request fails the same way
    │   │   └── ModelRestrictedError   403 ModelAccessRestrictedError: the plan lacks the model
    │   ├── OutOfCreditsError          402, or a 4xx about creative units: the account is empty
    │   ├── RateLimitedError           429: too many requests or too many jobs in flight
    │   ├── TransientApiError          5xx, 408, 409, dropped connections, timeouts: may pass
    │   │   ├── AmbiguousSubmitError   a POST that may have created a job before it failed
    │   │   └── ApiUnreachableError    exit 7: nothing reached the API (DNS, refused, TLS,
    │   │                              the proxy); retried, and the run's end if it lasts
    │   └── MalformedResponseError     a 2xx whose body is not what the API documents
    │       └── BrokenListError        a list past every bound (pages, items, time, a
    │                                  token that comes back): not read again
    └── DownloadError                  an asset could not be fetched or did not verify

Each error says what happened; what to do about it is decided in one table
(:func:`batchgen.retry.decide`).  Failures of the network are converted at the
HTTP boundary (``batchgen.scenario.transport`` and ``client``) with ``raise ... from
exc``, so code above it only ever sees this tree.  Messages never contain credentials
or signed URLs.
"""

from __future__ import annotations

# What a run's exit code says (the README's table).
EXIT_OK = 0
EXIT_FAILED_UNITS = 1
EXIT_INVALID = 2
EXIT_LOCKED = 3
EXIT_OUT_OF_TIME = 4
EXIT_STORAGE = 5
EXIT_STOPPED = 6
EXIT_UNREACHABLE = 7
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C): 128 + 2, by the shell's convention
EXIT_TERMINATED = 143  # SIGTERM (kill, a scheduler's stop): 128 + 15

# What each exit code means, as the log file and the help say it.
EXIT_MEANINGS = {
    EXIT_OK: "done",
    EXIT_FAILED_UNITS: "units failed or were left undone",
    EXIT_INVALID: "invalid input or configuration, nothing sent",
    EXIT_LOCKED: "the output is in use by another run",
    EXIT_OUT_OF_TIME: "--max-runtime reached; the next run goes on",
    EXIT_STORAGE: "a local fault (disk, journal, store)",
    EXIT_STOPPED: "submitting stopped by the budget or the credits",
    EXIT_UNREACHABLE: "the API cannot be reached (DNS, connection, TLS, proxy)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_TERMINATED: "terminated (SIGTERM)",
}


class BatchgenError(Exception):
    """Base of every error batchgen explains in one line."""

    exit_code = 1


class ConfigError(BatchgenError):
    """Invalid input or configuration: the run is refused before anything is sent."""

    exit_code = 2


class ManifestError(ConfigError):
    """A manifest (or a prompts file it names) is invalid at a known place."""

    def __init__(self, path: str, line: int | None, field: str, message: str) -> None:
        self.path = path
        self.line = line
        self.field = field
        self.message = message
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {field}: {message}")


class CredentialsError(ConfigError):
    """Credentials are missing, or the API refused them."""


class JournalMissingError(ConfigError):
    """Images or ``results.jsonl`` are in the output directory but the journal that
    recorded them is gone or empty: a run would pay for every unit again."""


class OutputLockedError(BatchgenError):
    """Another batchgen run is using this output directory."""

    exit_code = 3


class StorageError(BatchgenError):
    """A local fault: the output directory or its journal cannot be written or read.
    The run stops; every transition recorded before it stays, and the next run resumes
    once the fault is mended."""

    exit_code = 5


class ObjectStoreError(StorageError):
    """An object store answered a request with an error, or not at all."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


class ApiError(BatchgenError):
    """The API answered with an error status, or the request did not complete."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or message


class PermanentApiError(ApiError):
    """400/403/404: the same request will fail the same way."""

    def __init__(
        self, message: str, *, status: int | None = None, reason: str = "", name: str = ""
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.name = name


class ModelRestrictedError(PermanentApiError):
    """403 ``ModelAccessRestrictedError``: the plan does not cover this model."""


class OutOfCreditsError(ApiError):
    """The account has run out of creative units: nothing more can be submitted."""


class RateLimitedError(ApiError):
    """429. ``action_limit`` is the server's in-flight job limit when it says so."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        retry_after: float | None = None,
        action_limit: int | None = None,
    ) -> None:
        super().__init__(message, status=429, reason=reason)
        self.retry_after = retry_after
        self.action_limit = action_limit


class TransientApiError(ApiError):
    """5xx, a dropped connection or a timeout: the same request may succeed later."""


class AmbiguousSubmitError(TransientApiError):
    """A submission failed after the request may have reached the server.

    The job may exist and be billed; blindly retrying could pay for it twice.
    ``connection_dropped``: the connection closed with no answer at all, most often a
    kept-alive connection the server closed while it sat idle, which says nothing about
    the server's health (it does not use up an attempt).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str = "",
        connection_dropped: bool = False,
    ) -> None:
        super().__init__(message, status=status, reason=reason)
        self.connection_dropped = connection_dropped


class ApiUnreachableError(TransientApiError):
    """Nothing reached the API: its name did not resolve, the connection was refused,
    TLS failed, or the proxy would not carry it.  Retried as any transient failure; when
    it ends a run (or a check), its own exit code tells a network problem from failed
    units or bad input."""

    exit_code = EXIT_UNREACHABLE


class MalformedResponseError(ApiError):
    """A success status whose body does not have the documented shape."""


class BrokenListError(MalformedResponseError):
    """A paged list that does not end within its bounds: the server's list is broken,
    and reading it again would only break again."""


class DownloadError(BatchgenError):
    """An asset could not be downloaded, or what arrived did not verify."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


def known_error(error: BaseException) -> BatchgenError | None:
    """The error to show: ours, also when a task group wrapped it (the first found)."""
    if isinstance(error, BatchgenError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = known_error(inner)
            if found is not None:
                return found
    return None
