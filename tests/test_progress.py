"""Where a run stands, as plain data: counts, rate, ETA and spend."""

from __future__ import annotations

import pytest

from batchgen.ui.format import format_duration, format_rate
from batchgen.ui.progress import RATE_MIN_SECONDS, RateMeter, progress_line
from tests.helpers import summary as snapshot


@pytest.mark.parametrize(
    ("changes", "remaining", "queued", "finishing"),
    [
        ({}, 40, 30, 40),
        # Submitting stopped (budget, credits): only what is at the server will finish.
        ({"submitting_stopped": True}, 40, 30, 10),
        ({"in_flight": 0, "downloading": 0, "submitting_stopped": True}, 40, 40, 0),
        # Counts caught between two updates never go below zero.
        ({"succeeded": 90}, 0, 0, 0),
        ({"in_flight": 50}, 40, 0, 40),
    ],
)
def test_what_is_left(changes: dict, remaining: int, queued: int, finishing: int) -> None:
    now = snapshot(**changes)
    assert (now.remaining, now.queued, now.finishing) == (remaining, queued, finishing)


@pytest.mark.parametrize(
    ("changes", "rate", "eta"),
    [
        ({}, 2.0, 20.0),
        ({}, None, None),  # no rate yet, no ETA
        ({}, 0.0, None),  # nothing finishing lately: no honest ETA
        ({"succeeded": 80}, None, 0.0),  # nothing left: done now
        ({"submitting_stopped": True}, 2.0, 5.0),
    ],
)
def test_eta(changes: dict, rate: float | None, eta: float | None) -> None:
    assert snapshot(**changes).eta(rate) == eta


@pytest.mark.parametrize(
    ("changes", "rate", "expected"),
    [
        (
            {},
            2.0,
            "55/100 done; 5 failed; 8 in flight; 30 queued; 2 downloading; 2.0/s, ETA 20s; "
            "60 CU spent (45 by this run)",
        ),
        (
            {"downloading": 0, "spent": 45.0, "budget": 50.0},
            0.25,
            "55/100 done; 5 failed; 8 in flight; 32 queued; 15.0/min, ETA 2m40s; 45 CU spent of 50",
        ),
        (
            {"downloading": 0, "spent": 45.0},
            None,
            "55/100 done; 5 failed; 8 in flight; 32 queued; rate -, ETA -; 45 CU spent",
        ),
    ],
)
def test_the_plain_line(changes: dict, rate: float | None, expected: str) -> None:
    assert progress_line(snapshot(**changes), rate) == expected


@pytest.mark.parametrize(
    ("samples", "rates"),
    [
        # No rate until there are RATE_MIN_SECONDS of history.
        ([(0, 0), (1, 5), (RATE_MIN_SECONDS, 10)], [None, None, 5.0]),
        # The rate follows the last minute: a slow start is forgotten.
        (
            [(0, 0), (30, 3), (60, 6), (90, 66), (120, 126)],
            [None, 0.1, 0.1, 63 / 60, 2.0],
        ),
        # A resume that skips work shows no finishing: rate 0, not negative.
        ([(0, 7), (10, 7)], [None, 0.0]),
    ],
)
def test_rate_over_a_window(samples: list[tuple[float, int]], rates: list[float | None]) -> None:
    meter = RateMeter(window=60.0)
    got = [meter.add(now, done) for now, done in samples]
    assert got == pytest.approx(rates)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.4, "0s"), (59.6, "1m00s"), (61, "1m01s"), (3599, "59m59s"), (7384, "2h03m")],
)
def test_format_duration(seconds: float | None, shown: str) -> None:
    assert format_duration(seconds) == shown


@pytest.mark.parametrize(
    ("rate", "shown"), [(None, "rate -"), (0.0, "0.0/s"), (0.5, "30.0/min"), (12.34, "12.3/s")]
)
def test_format_rate(rate: float | None, shown: str) -> None:
    assert format_rate(rate) == shown
