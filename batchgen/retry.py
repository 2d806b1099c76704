"""What to do when a request fails: one table, plain functions, no I/O.

The HTTP adapter turns every failure into an error from :mod:`batchgen.errors`; this
module decides from the kind of request and that error whether to retry it, fail the
unit, or stop the run, and how long to wait.  The loop itself is tenacity's.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState

from .config import RetrySettings
from .errors import (
    AmbiguousSubmitError,
    ApiError,
    BrokenListError,
    CredentialsError,
    DownloadError,
    MalformedResponseError,
    ModelRestrictedError,
    ObjectStoreError,
    OutOfCreditsError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)

T = TypeVar("T")

# A 429 on submit means nothing was created, and it lasts as long as the jobs in
# flight do, so it is worth waiting for far longer than a 5xx.
RATE_LIMITED_SUBMIT_ATTEMPTS = 40


class Request(enum.Enum):
    SUBMIT = "submit"
    UPLOAD = "upload"  # an input image: like a submission, it makes something
    GATE = "quality gate"  # paid, like a submission; a lost answer is read back
    JOB_STATUS = "job status"
    JOB_LIST = "job list"
    ASSET_LOOKUP = "asset lookup"
    DOWNLOAD = "download"
    STORE_WRITE = "object store write"
    OTHER_READ = "read"


# The requests that make something at the server (and whose lost answers are found).
MAKES = (Request.SUBMIT, Request.UPLOAD, Request.GATE)


class Action(enum.Enum):
    RETRY = "retry"
    RECONCILE = "find out whether the job exists before submitting again"
    FAIL_UNIT = "fail the unit; the next run tries it again"
    FAIL_FOR_GOOD = "fail the unit for good (--retry-failed tries it again)"
    FAIL_MODEL = "fail every unit of the model for good, after one request"
    STOP_SUBMITTING = "stop submitting; let the jobs in flight finish"
    STOP_RUN = "stop the run"


def describe(error: BaseException) -> str:
    """An error in a line, as results and logs say it: its HTTP status and the reason."""
    if isinstance(error, ApiError) and error.reason:
        return f"HTTP {error.status}: {error.reason}" if error.status else error.reason
    return str(error)


def decide(request: Request, error: BaseException) -> Action:
    """The retry table (the README's, row by row).  Anything not an error of ours
    (cancellation included) is not ours to decide: it is never retried and propagates."""
    match error:
        case CredentialsError():
            return Action.STOP_RUN
        case AmbiguousSubmitError():
            # The job may exist and be billed: never resubmitted blindly.
            return Action.RECONCILE
        case RateLimitedError() | TransientApiError():
            return Action.RETRY
        case BrokenListError():
            # Past its bounds (pages, items, time): read again, it breaks again.
            return Action.FAIL_UNIT
        case MalformedResponseError():
            return Action.FAIL_UNIT if request in MAKES else Action.RETRY
        case OutOfCreditsError():
            return Action.STOP_SUBMITTING
        case ModelRestrictedError():
            return Action.FAIL_MODEL
        case PermanentApiError():
            # A request refused for what it is fails the same way again; a job or asset
            # the API no longer knows makes the unit start over on the next run.
            return Action.FAIL_FOR_GOOD if request in MAKES else Action.FAIL_UNIT
        case DownloadError():
            return Action.RETRY if error.transient else Action.FAIL_UNIT
        case ObjectStoreError():
            # Throttled or down for a moment: retried (an image whose writes keep
            # failing waits in the spill directory); refused credentials stop the run.
            return Action.RETRY if error.transient else Action.STOP_RUN
        case ApiError():
            return Action.FAIL_UNIT
    return Action.STOP_RUN


def attempts_allowed(request: Request, error: BaseException | None, settings: RetrySettings) -> int:
    if request is Request.SUBMIT and isinstance(error, RateLimitedError):
        return max(settings.max_attempts, RATE_LIMITED_SUBMIT_ATTEMPTS)
    return settings.max_attempts


def backoff_delay(
    attempt: int, error: BaseException | None, settings: RetrySettings, rng: random.Random
) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when it is given."""
    if isinstance(error, RateLimitedError) and error.retry_after is not None:
        return min(max(error.retry_after, 0.0), settings.backoff_max)
    if isinstance(error, RateLimitedError) and settings.cooldown is not None:
        low, high = settings.cooldown  # the account's own, from its limits
        return rng.uniform(low, high)
    ceiling = min(settings.backoff_max, settings.backoff_base * (2 ** max(attempt - 1, 0)))
    return rng.uniform(0, ceiling)


async def with_retries(
    request: Request,
    call: Callable[[], Awaitable[T]],
    settings: RetrySettings,
    rng: random.Random | None = None,
) -> T:
    """Run ``call`` under the policy for ``request``: retried while the table says so."""
    generator = rng or random.Random()
    # Most calls succeed the first time: they skip building a retry loop (a measurable
    # share of the runner's CPU per job), which then only runs the attempts after it.
    try:
        return await call()
    except Exception as exc:
        if decide(request, exc) is not Action.RETRY:
            raise
        if attempts_allowed(request, exc, settings) <= 1:
            raise
        first_delay = backoff_delay(1, exc, settings, generator)
    await anyio.sleep(first_delay)

    def should_retry(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        return error is not None and decide(request, error) is Action.RETRY

    # tenacity counts from 1 at the second attempt.
    def should_stop(state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        return state.attempt_number + 1 >= attempts_allowed(request, error, settings)

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        return backoff_delay(state.attempt_number + 1, error, settings, generator)

    retrying = AsyncRetrying(
        retry=should_retry, stop=should_stop, wait=wait, sleep=anyio.sleep, reraise=True
    )

    async def attempt() -> T:
        # tenacity only awaits what a coroutine *function* returns; callers pass lambdas.
        return await call()

    return await retrying(attempt)
