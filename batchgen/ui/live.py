"""The live progress panel on a terminal, drawn by rich.

rich is a well-kept library for this; hand-written cursor control would not be.  While
the panel is up, the run's log lines go through the same rich console, so they scroll
above the panel instead of tearing it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..engine.summary import Summary
from .format import format_duration, format_rate
from .progress import spend

log = logging.getLogger("batchgen")

LIVE_REFRESH_SECONDS = 0.25
BAR_WIDTH = 40


class LiveDisplay:
    """rich's live panel, redrawn every :data:`LIVE_REFRESH_SECONDS` by the run's task."""

    interval = LIVE_REFRESH_SECONDS
    live = True

    def __init__(self, live: Live) -> None:
        self._live = live

    @classmethod
    @contextmanager
    def open(cls, console: Console | None = None) -> Iterator[LiveDisplay]:
        console = console or Console(stderr=True)
        handler = RichHandler(
            console=console, show_path=False, markup=False, log_time_format=_iso_time
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        saved = log.handlers[:]
        # auto_refresh off: redrawing happens in the run's own task, not in a thread.
        with Live(console=console, auto_refresh=False, redirect_stdout=False) as live:
            log.handlers[:] = [handler]
            try:
                yield cls(live)
            finally:
                log.handlers[:] = saved

    def show(self, snapshot: Summary, rate: float | None) -> None:
        self._live.update(render(snapshot, rate), refresh=True)


def render(snapshot: Summary, rate: float | None) -> RenderableType:
    finished = snapshot.done + snapshot.skipped
    share = finished / snapshot.total if snapshot.total else 1.0
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(snapshot.total, 1), completed=finished, width=BAR_WIDTH),
        Text(f"{finished}/{snapshot.total} done", style="bold"),
        Text(f"{share:.0%}"),
    )
    return Group(
        bar,
        _row(
            ("queued", snapshot.queued, ""),
            ("in flight", snapshot.in_flight, "cyan"),
            ("downloading", snapshot.downloading, ""),
        ),
        _row(
            ("succeeded", snapshot.succeeded, "green"),
            ("failed", snapshot.failed, "red" if snapshot.failed else ""),
            ("already done", snapshot.skipped, "dim"),
        ),
        Text.assemble(
            f"{format_rate(rate)}   ETA {format_duration(snapshot.eta(rate))}   "
            f"elapsed {format_duration(snapshot.elapsed)}   ",
            (spend(snapshot), "yellow"),
        ),
    )


def _row(*counts: tuple[str, int, str]) -> Text:
    """Counts on one line, each label next to its number (no wrapping between them)."""
    text = Text()
    for position, (label, count, style) in enumerate(counts):
        if position:
            text.append("   ")
        text.append(f"{label} {count}", style=style)
    return text


def _iso_time(moment: datetime) -> Text:
    """ISO 8601 with the zone, not the locale's date order."""
    return Text(moment.astimezone().isoformat(timespec="seconds"))
