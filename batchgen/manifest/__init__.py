"""The manifest: YAML parsed into entries (:mod:`.parse`), entries expanded lazily into
work units (:mod:`.expand`, reading prompts files with :mod:`.prompts`), file names made
from a template (:mod:`.naming`) and units split over machines (:mod:`.shard`)."""

from .expand import (
    PER_UNIT_SEED,
    RANDOM_SEED,
    SEED_MASK,
    UnitBound,
    canonical_request,
    count_units,
    iter_units,
    seed_for,
    unit_id,
)
from .parse import load_manifest
from .prompts import iter_entry_prompts
from .types import NO_SIZE, Entry, Manifest, Size, Unit

__all__ = [
    "NO_SIZE",
    "PER_UNIT_SEED",
    "RANDOM_SEED",
    "SEED_MASK",
    "Entry",
    "Manifest",
    "Size",
    "Unit",
    "UnitBound",
    "canonical_request",
    "count_units",
    "iter_entry_prompts",
    "iter_units",
    "load_manifest",
    "seed_for",
    "unit_id",
]
