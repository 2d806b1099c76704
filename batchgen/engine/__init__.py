"""The engine: every unit from submission to its files (:mod:`.run`), the one shared
poller's pure decisions (:mod:`.watch`), the retry table (:mod:`.policy`) and the
adaptive in-flight cap (:mod:`.pressure`).  Its names load on first use: a module that
needs only the summary (:mod:`.summary`) does not load the HTTP stack."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .run import Engine, EngineSettings, Summary, cost_shape

__all__ = ["Engine", "EngineSettings", "Summary", "cost_shape"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'batchgen.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(".run", __name__), name)
    globals()[name] = value
    return value
