"""Where a run stands, as plain data: counts, rate, ETA and spend.

Pure code.  The engine gives a :class:`Snapshot` of its counters; a :class:`RateMeter`
turns a series of them into a recent rate; the displays (``batchgen.display``) only
show what is here.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

# The rate is measured over about this long: long enough to smooth the bursts in which
# jobs end, short enough to follow a run that speeds up or slows down.
RATE_WINDOW_SECONDS = 60.0
# Below this much history a rate would be noise: no rate and no ETA yet.
RATE_MIN_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    total: int
    skipped: int  # done by earlier runs
    left_failed: int  # failed for good in earlier runs, not tried again
    succeeded: int
    failed: int
    in_flight: int  # jobs at the server
    downloading: int  # jobs ended, their images on the way
    cost: float  # creative units this run
    spent: float  # creative units in this output directory, earlier runs included
    elapsed: float
    budget: float | None = None
    submitting_stopped: bool = False

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def remaining(self) -> int:
        """Units this run still has to finish."""
        return max(0, self.total - self.skipped - self.left_failed - self.done)

    @property
    def queued(self) -> int:
        """Units not yet submitted."""
        return max(0, self.remaining - self.in_flight - self.downloading)

    @property
    def finishing(self) -> int:
        """Units this run will still finish: once submitting has stopped (budget,
        credits), only those already submitted."""
        if self.submitting_stopped:
            return min(self.remaining, self.in_flight + self.downloading)
        return self.remaining

    def eta(self, rate: float | None) -> float | None:
        if self.finishing == 0:
            return 0.0
        if not rate:
            return None
        return self.finishing / rate

    def line(self, rate: float | None) -> str:
        """The plain progress line: for logs, cron mail and anything not a terminal."""
        parts = [
            f"{self.done + self.skipped}/{self.total} done",
            f"{self.failed} failed",
            f"{self.in_flight} in flight",
            f"{self.queued} queued",
        ]
        if self.downloading:
            parts.append(f"{self.downloading} downloading")
        parts.append(f"{format_rate(rate)}, ETA {format_duration(self.eta(rate))}")
        parts.append(self.spend())
        return "; ".join(parts)

    def spend(self) -> str:
        text = f"{self.spent:g} CU spent"
        if self.budget is not None:
            text += f" of {self.budget:g}"
        if self.spent != self.cost:
            text += f" ({self.cost:g} this run)"
        return text


@dataclass(slots=True)
class RateMeter:
    """Units finished per second over the last :data:`RATE_WINDOW_SECONDS`."""

    window: float = RATE_WINDOW_SECONDS
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, done: int) -> float | None:
        """Note ``done`` units finished at time ``now``; the rate, once there is one."""
        self._samples.append((now, done))
        # Keep one sample at or beyond the window's start, so the span stays a window.
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_time, first_done = self._samples[0]
        span = now - first_time
        if span < RATE_MIN_SECONDS:
            return None
        return (done - first_done) / span


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "rate -"
    if rate >= 1 or rate == 0:
        return f"{rate:.1f}/s"
    return f"{rate * 60:.1f}/min"


def format_duration(seconds: float | None) -> str:
    if seconds is None or math.isinf(seconds):
        return "-"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
