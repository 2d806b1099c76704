"""The engine: every unit from submission to its files (:mod:`.run`), the one shared
poller's pure decisions (:mod:`.watch`), the retry table (:mod:`.policy`) and the
adaptive in-flight cap (:mod:`.pressure`)."""

from .run import Engine, EngineSettings, Summary, cost_shape

__all__ = ["Engine", "EngineSettings", "Summary", "cost_shape"]
