"""The live panel, drawn into a console that writes to a string."""

from __future__ import annotations

import io
import logging
import re

from rich.console import Console

from batchgen.ui.live import LiveDisplay, render
from tests.helpers import summary as snapshot

log = logging.getLogger("batchgen")
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def console(width: int = 80, terminal: bool = True) -> tuple[Console, io.StringIO]:
    sink = io.StringIO()
    return Console(file=sink, width=width, force_terminal=terminal, color_system=None), sink


def test_the_panel_shows_counts_rate_eta_and_spend_in_80_columns() -> None:
    screen, sink = console()
    screen.print(render(snapshot(budget=100.0), 2.0))
    lines = sink.getvalue().splitlines()
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines)
    assert lines[0].endswith("55/100 done 55%")
    assert lines[1] == "queued 30   in flight 8   downloading 2"
    assert lines[2] == "succeeded 40   failed 5   already done 10"
    assert lines[3] == "2.0/s   ETA 20s   elapsed 30s   60 CU spent of 100 (45 by this run)"


def test_log_lines_scroll_above_the_panel_while_it_is_up() -> None:
    screen, sink = console()
    before = log.handlers[:]
    with LiveDisplay.open(screen) as display:
        display.show(snapshot(succeeded=10), None)
        log.warning("unit abc failed: HTTP 400: bad prompt")
        display.show(snapshot(succeeded=20), 1.0)
    assert log.handlers == before  # the run's own handler is back
    shown = ESCAPES.sub("", sink.getvalue())
    assert "unit abc failed: HTTP 400: bad prompt" in shown
    assert "25/100 done" in shown and "35/100 done" in shown
    # The last frame stays on screen: the final state.
    assert shown.rstrip().endswith("60 CU spent (45 by this run)")
