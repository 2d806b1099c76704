"""Showing a run's progress: how a display looks to the run, and the plain line.

The edge for :mod:`batchgen.progress`: displays only draw summarys.  The live panel
for terminals is in :mod:`batchgen.live`, imported only when one is shown (rich takes
time to import, which cron runs need not pay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from ..engine.summary import Summary
from .progress import progress_line

log = logging.getLogger("batchgen")


class Display(Protocol):
    interval: float  # seconds between two showings
    live: bool  # redraws in place (so it shows the final state too)

    def show(self, summary: Summary, rate: float | None) -> None: ...


class LineDisplay:
    """A log line every ``interval`` seconds: for logs, cron mail, CI consoles.  ``say``
    is where the line goes (the log, or the log file alone)."""

    live = False

    def __init__(self, interval: float, say: Callable[[str], None] | None = None) -> None:
        self.interval = interval
        self._say = say or (lambda line: log.info("%s", line))

    def show(self, summary: Summary, rate: float | None) -> None:
        self._say(f"progress: {progress_line(summary, rate)}")


class Displays:
    """Several displays at once, each at its own pace (the panel on the terminal, and
    the progress lines of the log file)."""

    def __init__(self, *displays: Display) -> None:
        self._displays = displays
        self.interval = min(display.interval for display in displays)
        self.live = any(display.live for display in displays)
        self._due = [0.0 for _ in displays]

    def show(self, summary: Summary, rate: float | None) -> None:
        for index, display in enumerate(self._displays):
            if (
                summary.elapsed >= self._due[index]
                or summary.done + summary.skipped >= summary.total
            ):
                display.show(summary, rate)
                self._due[index] = summary.elapsed + display.interval
