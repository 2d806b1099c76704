"""Showing a run's progress: how a display looks to the run, and the plain line.

The edge for :mod:`batchgen.progress`: displays only draw summarys.  The live panel
for terminals is in :mod:`batchgen.live`, imported only when one is shown (rich takes
time to import, which cron runs need not pay).
"""

from __future__ import annotations

import logging
from typing import Protocol

from ..engine.summary import Summary
from .progress import progress_line

log = logging.getLogger("batchgen")


class Display(Protocol):
    interval: float  # seconds between two showings
    live: bool  # redraws in place (so it shows the final state too)

    def show(self, summary: Summary, rate: float | None) -> None: ...


class LineDisplay:
    """A log line every ``interval`` seconds: for logs, cron mail, CI consoles."""

    live = False

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def show(self, summary: Summary, rate: float | None) -> None:
        log.info("progress: %s", progress_line(summary, rate))
