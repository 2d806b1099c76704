"""The rate a run finishes units at, from the counts the displays are shown.

Pure code.  The engine's :class:`~batchgen.engine.summary.Summary` says where a run
stands; a :class:`RateMeter` turns a series of its counts into a recent rate; the
displays (:mod:`.display`, :mod:`.live`) only show them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..engine.summary import Summary
from ..ledger import plural
from .format import format_duration, format_rate

# The rate is measured over about this long: long enough to smooth the bursts in which
# jobs end, short enough to follow a run that speeds up or slows down.
RATE_WINDOW_SECONDS = 60.0
# Below this much history a rate would be noise: no rate and no ETA yet.
RATE_MIN_SECONDS = 2.0


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


def progress_line(summary: Summary, rate: float | None) -> str:
    """The plain progress line: for logs, cron mail and anything not a terminal."""
    parts = [
        f"{summary.done + summary.skipped}/{summary.total} done",
        f"{summary.failed} failed",
        f"{summary.in_flight} in flight",
        f"{summary.queued} queued",
    ]
    if summary.downloading:
        parts.append(f"{summary.downloading} downloading")
    if summary.uploaded:
        parts.append(f"{plural(summary.uploaded, 'image')} uploaded")
    parts.append(f"{format_rate(rate)}, ETA {format_duration(summary.eta(rate))}")
    parts.append(spend(summary))
    return "; ".join(parts)


def spend(summary: Summary) -> str:
    """Creative units spent, against the budget, and how many of them this run."""
    text = f"{summary.spent:g} CU spent"
    if summary.budget is not None:
        text += f" of {summary.budget:g}"
    if summary.spent != summary.cost:
        text += f" ({summary.cost:g} by this run)"
    return text
