"""Entries expanded lazily into work units, each with its stable id.

A work unit is one generation job.  Its id is a digest of the request it makes
(model, prompt, size, params) and of its repeat index, so the same manifest always
yields the same ids and a changed prompt or param yields a new unit.  The repeat index
counts identical requests in manifest order: ``count: 3`` gives repeats 0, 1, 2, and a
prompt that appears again later (in another entry or a prompts file) continues the
count instead of colliding.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from ..config import DEFAULT_MAX_UNITS
from ..errors import ManifestError
from .prompts import iter_entry_prompts
from .types import Entry, Manifest, Size, Unit

UNIT_ID_HEX_DIGITS = 20
# params.seed: per-unit derives each unit's seed from its id (see seed_for), and is in
# the id's digest; random leaves the seed to the API.  Left out, a seed is drawn from
# the unit's id as well, when the model takes one (see batchgen.engine.submit).
PER_UNIT_SEED = "per-unit"
RANDOM_SEED = "random"
SEED_MASK = 2**31 - 1


def iter_units(manifest: Manifest) -> Iterator[Unit]:
    """Yield every unit of the manifest in order, reading prompts files as it goes."""
    occurrences: dict[bytes, int] = {}
    index = 0
    for entry in manifest.entries:
        # Everything in the canonical request but the prompt is fixed per entry and size:
        # encode it once, not once per prompt (this loop runs millions of times).
        model_json = json.dumps(entry.model, ensure_ascii=False)
        params_json = _canonical_json(entry.params)
        tails = [(size, f",{size.canonical()},{params_json}]") for size in entry.sizes]
        # "per-unit" stays in the digest, so the id says how the seed was chosen, and
        # the seed sent is drawn from that id: the same unit asks the same seed again.
        derive_seed = entry.params.get("seed") == PER_UNIT_SEED
        for prompt, metadata, source in iter_entry_prompts(manifest, entry):
            head = f"[{model_json},{json.dumps(prompt, ensure_ascii=False)}"
            for size, tail in tails:
                request = head + tail
                key = hashlib.sha256(request.encode()).digest()[:12]
                first_repeat = occurrences.get(key, 0)
                occurrences[key] = first_repeat + entry.count
                for repeat in range(first_repeat, first_repeat + entry.count):
                    identity = unit_id(request, repeat)
                    params = entry.params
                    if derive_seed:
                        params = {**entry.params, "seed": seed_for(identity)}
                    yield Unit(
                        id=identity,
                        entry=entry.label,
                        model=entry.model,
                        prompt=prompt,
                        width=size.width,
                        height=size.height,
                        params=params,
                        repeat=repeat,
                        source=source,
                        metadata=metadata,
                        index=index,
                        aspect_ratio=size.ratio,
                    )
                    index += 1


def seed_for(identity: str) -> int:
    """A seed drawn from a unit id: stable, and spread over 0 .. 2**31 - 1."""
    return int(identity[:8], 16) & SEED_MASK


def count_units(manifest: Manifest, max_units: int = DEFAULT_MAX_UNITS) -> int:
    """Check every prompt of every prompts file and count the units; raises on the first bad one.

    Reads every prompt as :func:`iter_units` does, but builds no units: a run counts
    (and so checks) the whole manifest before its first submission."""
    bound = UnitBound(manifest, max_units)
    for entry in manifest.entries:
        for _ in iter_entry_prompts(manifest, entry):
            bound.add(entry)
    return bound.total


class UnitBound:
    """Refuses a manifest that expands to more than ``max_units`` units, naming the
    entry where the count passes it, before the units are made: the vars of every
    entry are multiplied out at once (``vars`` of 1,000 × 1,000 × 1,000 values is
    refused at once, not after a billion prompts), a prompts file's lines as read."""

    def __init__(self, manifest: Manifest, max_units: int) -> None:
        self.max_units = max_units
        self.total = 0
        self._path = str(manifest.path)
        planned = 0
        for entry in manifest.entries:
            if entry.prompt is None:
                continue
            prompts = math.prod(len(values) for _, values in entry.variables)
            planned += prompts * len(entry.sizes) * entry.count
            if planned > max_units:
                raise self._too_many(entry)

    def add(self, entry: Entry) -> None:
        """Count one prompt of ``entry`` (its sizes times its count in units)."""
        self.total += len(entry.sizes) * entry.count
        if self.total > self.max_units:
            raise self._too_many(entry)

    def _too_many(self, entry: Entry) -> ManifestError:
        return ManifestError(
            self._path,
            entry.line,
            f"jobs[{entry.index}]",
            f"the manifest expands to more than {self.max_units:,} units by this entry "
            "(--max-units; raise it if that many is meant)",
        )


def unit_id(canonical_request: str, repeat: int) -> str:
    digest = hashlib.sha256(f"{canonical_request}#{repeat}".encode()).hexdigest()
    return digest[:UNIT_ID_HEX_DIGITS]


def canonical_request(model: str, prompt: str, size: Size, params: Mapping[str, Any]) -> str:
    """The definition of what a unit id digests: ``[model, prompt, width, height,
    params]``, where an aspect ratio stands in the width's place with a null height, and
    no size is two nulls.  :func:`iter_units` builds the same string piecewise, and a
    test holds the two equal."""
    first = size.ratio if size.ratio is not None else size.width
    return _canonical_json([model, prompt, first, size.height, params])


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
