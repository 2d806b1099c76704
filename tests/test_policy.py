from __future__ import annotations

import random

import pytest

from batchgen.config import RetrySettings
from batchgen.errors import (
    AmbiguousSubmitError,
    BrokenListError,
    CredentialsError,
    DownloadError,
    MalformedResponseError,
    ModelRestrictedError,
    OutOfCreditsError,
    PermanentApiError,
    RateLimitedError,
    TransientApiError,
)
from batchgen.retry import (
    Action,
    Request,
    attempts_allowed,
    backoff_delay,
    decide,
    with_retries,
)

S, J, A, D = Request.SUBMIT, Request.JOB_STATUS, Request.ASSET_LOOKUP, Request.DOWNLOAD


@pytest.mark.parametrize(
    ("request_kind", "error", "action"),
    [
        (S, TransientApiError("connect refused"), Action.RETRY),
        (S, AmbiguousSubmitError("timeout after sending"), Action.RECONCILE),
        (S, AmbiguousSubmitError("HTTP 502", status=502), Action.RECONCILE),
        (Request.JOB_LIST, TransientApiError("HTTP 500", status=500), Action.RETRY),
        (S, RateLimitedError("429"), Action.RETRY),
        (S, PermanentApiError("400", status=400), Action.FAIL_FOR_GOOD),
        (
            S,
            ModelRestrictedError("403", status=403, name="ModelAccessRestrictedError"),
            Action.FAIL_MODEL,
        ),
        (S, CredentialsError("401"), Action.STOP_RUN),
        (S, OutOfCreditsError("402", status=402), Action.STOP_SUBMITTING),
        (S, MalformedResponseError("bad body"), Action.FAIL_UNIT),
        (J, TransientApiError("HTTP 503", status=503), Action.RETRY),
        (J, MalformedResponseError("bad body"), Action.RETRY),
        (J, BrokenListError("more than 500 pages"), Action.FAIL_UNIT),
        (J, PermanentApiError("404", status=404), Action.FAIL_UNIT),
        (J, CredentialsError("401"), Action.STOP_RUN),
        (A, RateLimitedError("429", retry_after=2), Action.RETRY),
        (D, DownloadError("cut short"), Action.RETRY),
        (D, DownloadError("no assets", transient=False), Action.FAIL_UNIT),
    ],
)
def test_retry_table(request_kind: Request, error: Exception, action: Action) -> None:
    assert decide(request_kind, error) is action


def test_cancellation_is_never_ours_to_retry() -> None:
    import asyncio

    assert decide(J, asyncio.CancelledError()) is Action.STOP_RUN


def test_backoff_is_full_jitter_and_honours_retry_after() -> None:
    settings = RetrySettings(max_attempts=5, backoff_base=1.0, backoff_max=8.0)
    rng = random.Random(1)
    delays = [backoff_delay(4, TransientApiError("x"), settings, rng) for _ in range(200)]
    assert 0 <= min(delays) < 1 and 6 < max(delays) <= 8  # spread over [0, 8]
    assert backoff_delay(1, RateLimitedError("x", retry_after=3.0), settings, rng) == 3.0
    assert backoff_delay(1, RateLimitedError("x", retry_after=99.0), settings, rng) == 8.0


def test_rate_limited_submissions_wait_longer_than_other_failures() -> None:
    settings = RetrySettings(max_attempts=3)
    assert attempts_allowed(S, RateLimitedError("x"), settings) > 3
    assert attempts_allowed(J, RateLimitedError("x"), settings) == 3


@pytest.mark.anyio
async def test_with_retries_retries_then_gives_up() -> None:
    calls = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientApiError("503")
        return "ok"

    settings = RetrySettings(max_attempts=4, backoff_base=0.001, backoff_max=0.001)
    assert await with_retries(J, flaky, settings) == "ok"
    assert len(calls) == 3

    async def always() -> str:
        calls.append(1)
        raise TransientApiError("503")

    calls.clear()
    with pytest.raises(TransientApiError):
        await with_retries(J, always, settings)
    assert len(calls) == 4

    async def ambiguous() -> str:
        calls.append(1)
        raise AmbiguousSubmitError("timeout")

    calls.clear()
    with pytest.raises(AmbiguousSubmitError):
        await with_retries(S, ambiguous, settings)
    assert len(calls) == 1  # never blindly resubmitted
