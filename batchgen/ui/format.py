"""Rates and durations in a few characters, for progress lines and the live panel."""

from __future__ import annotations

import math


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
