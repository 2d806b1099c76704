"""What the units still to do would cost: the API's dry run (HTTP 269, nothing
created), once per model/size/params shape, and the shapes a partial journal leaves."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import (
    Mapping,
)
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, Unpack

from .backend import Backend, open_backend
from .engine import cost_shape
from .engine.deliver import images_asked
from .engine.submit import request_for
from .errors import PermanentApiError
from .keywords import RunKeywords
from .manifest import Manifest, Unit, iter_units
from .manifest.shard import Shard
from .options import RunOptions, from_keywords
from .output import output_directory
from .plan import UNITS_CHUNK, checked_manifest, saved_specs, units_of
from .report import Estimate, Shape
from .rerun import ROWS_OF_KEY, load
from .rerun import fingerprint as _fingerprint
from .rerun import shard_of as _shard
from .rerun import still_complete as _still_complete
from .retry import Request, with_retries
from .scenario.inputs import ModelSpec
from .scenario.preflight import Prompts
from .scenario.remote import fetch_remote_images
from .store.journal import JOURNAL_NAME, Journal, Resume, resume_action

log = logging.getLogger(__name__)
T = TypeVar("T")

# The image a quality-gate call is priced with: a 1x1 PNG as a data URL.
PRICING_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4"
    "nGNgYGBgAAAABQABpfZFQAAAAABJRU5ErkJggg=="
)


@dataclass(slots=True)
class Counted:
    """The units still to do of one cost shape (and one quality rule): their first jobs,
    the images the quality gate scores of them, and the jobs it may make again at most
    (each with its images scored again)."""

    model: str
    body: dict[str, Any]
    units: int = 0
    gated: int = 0
    regenerations: int = 0
    images_per_job: int = 0
    sensitivity: str | None = None


Shapes = dict[str, Counted]


def _shape_key(unit: Unit, body: dict[str, Any]) -> str:
    """A cost shape, and the unit's quality rule: units of one key cost the same."""
    key = cost_shape(unit.model, body)
    return key if unit.quality is None else f"{key}\n{unit.quality!r}"


def _count(
    shapes: Shapes,
    unit: Unit,
    body: dict[str, Any],
    units: int,
    outputs: Mapping[str, int],
    regenerated: int = 0,
    *,
    paid: int = 0,
) -> None:
    """``units`` units like ``unit`` counted in, ``regenerated`` of their regenerations
    already made; and ``paid`` units whose job is paid for already (watched again),
    their images still to be gated."""
    counted = shapes.setdefault(_shape_key(unit, body), Counted(unit.model, body))
    counted.units += units
    rule = unit.quality
    if rule is None:
        return
    counted.images_per_job = images_asked(unit, outputs)
    counted.sensitivity = rule.sensitivity
    counted.gated += (units + paid) * counted.images_per_job
    if rule.regenerates:
        counted.regenerations += max(0, (units + paid) * rule.attempts - regenerated)


async def aestimate(manifest: str | Path, **options: Unpack[RunKeywords]) -> Estimate:
    opts = from_keywords(options)
    loaded = load(manifest, opts.filename)
    shard = _shard(opts.shard, opts.shards)
    out_dir = output_directory(loaded, opts.out, opts.state_dir, shard)
    async with open_backend(opts) as backend:
        saved = await backend.offload(saved_specs, out_dir)
        loaded = await fetch_remote_images(loaded, backend.downloader, backend.settings.retry)
        _, specs, prompts = await checked_manifest(loaded, backend, saved, opts.max_units)
        return await priced(loaded, shard, out_dir, opts, backend, specs, prompts)


async def priced(
    manifest: Manifest,
    shard: Shard | None,
    out_dir: Path,
    options: RunOptions,
    backend: Backend,
    specs: Mapping[str, ModelSpec],
    prompts: list[Prompts],
) -> Estimate:
    """The units still to do, by shape, each shape priced by one dry run."""
    lists = {model: spec.image_lists for model, spec in specs.items()}
    outputs = {model: spec.outputs_per_job for model, spec in specs.items()}
    shapes = await backend.offload(
        _shapes_to_do, manifest, shard, out_dir, options, prompts, lists, outputs
    )
    total = worst = 0.0
    rows: list[Shape] = []
    gate_prices: dict[str | None, float | None] = {}
    for counted in shapes.values():
        cost = await _dry_run(backend, counted)
        gate = None
        if counted.gated:
            if counted.sensitivity not in gate_prices:
                gate_prices[counted.sensitivity] = await _gate_price(backend, counted.sensitivity)
            gate = gate_prices[counted.sensitivity]
        first = (cost or 0.0) * counted.units + (gate or 0.0) * counted.gated
        again = counted.regenerations * ((cost or 0.0) + (gate or 0.0) * counted.images_per_job)
        total += first
        worst += first + again
        rows.append(
            Shape(
                counted.model,
                _size_label(counted.body),
                counted.units,
                cost,
                gate_calls=counted.gated,
                gate_cost_each=gate,
                regenerations_at_most=counted.regenerations,
            )
        )
    unpriced = sum(row.units for row in rows if row.cost_each is None)
    return Estimate(
        sum(row.units for row in rows),
        total,
        rows,
        unpriced,
        gate_calls=sum(row.gate_calls for row in rows),
        regenerations_at_most=sum(row.regenerations_at_most for row in rows),
        worst_case=worst,
        unpriced_gate_calls=sum(row.gate_calls for row in rows if row.gate_cost_each is None),
    )


async def _dry_run(backend: Backend, counted: Counted) -> float | None:
    """What one job of a shape costs, by its dry run; None if the API gives no price."""
    try:
        cost: float | None = await with_retries(
            Request.OTHER_READ,
            lambda: backend.client.estimate(counted.model, counted.body),
            backend.settings.retry,
        )
    except PermanentApiError as exc:  # this body refused (moderation): unpriced
        log.info("%s: no price for a shape of it: %s", counted.model, exc)
        return None
    return cost


async def cost_at_most(
    manifest: Manifest,
    backend: Backend,
    specs: Mapping[str, ModelSpec],
    prompts: list[Prompts],
    units: int,
) -> float | None:
    """A bound on what is left to do, with no journal read: all ``units`` at the
    dearest of the manifest's shapes (a dry run each, as the estimate makes).  The
    estimate is never above it (a unit done only lowers it); None with a quality rule
    (its gate calls and regenerations are the estimate's to count)."""
    lists = {model: spec.image_lists for model, spec in specs.items()}
    outputs = {model: spec.outputs_per_job for model, spec in specs.items()}
    shapes = await backend.offload(_shapes_of_entries, manifest, prompts, lists, outputs)
    if any("\n" in key for key in shapes):
        return None
    prices = [await _dry_run(backend, counted) for counted in shapes.values()]
    return max((price for price in prices if price is not None), default=0.0) * units


async def _gate_price(backend: Backend, sensitivity: str | None) -> float | None:
    """A quality-gate call's price, by its dry run on a tiny image (a data URL: no
    image of the batch exists yet, and the price is the call's, not the image's)."""
    try:
        return await with_retries(
            Request.OTHER_READ,
            lambda: backend.client.gate_price(PRICING_IMAGE, sensitivity),
            backend.settings.retry,
        )
    except PermanentApiError as exc:
        log.info("no price for the quality gate: %s", exc)
        return None


def _shapes_to_do(
    manifest: Manifest,
    shard: Shard | None,
    out_dir: Path,
    options: RunOptions,
    prompts: list[Prompts],
    lists: Mapping[str, frozenset[str]] | None = None,
    outputs: Mapping[str, int] | None = None,
) -> Shapes:
    """The units still to do, counted by shape.  With no journal yet every unit is to
    do, and the shapes are counted entry by entry from the pass over the prompts already
    made; a finished batch has none; else the journal is asked about a chunk of units at
    a time, as a run does."""
    lists, outputs = lists or {}, outputs or {}
    journal = Journal(out_dir) if (out_dir / JOURNAL_NAME).is_file() else None
    try:
        if journal is None or journal.is_empty():
            if shard is None:
                return _shapes_of_entries(manifest, prompts, lists, outputs)
            return _shapes_of_units(manifest, shard, journal, options, lists, outputs)
        fingerprint = _fingerprint(manifest, shard)
        if _still_complete(journal, out_dir, fingerprint) is not None:
            return {}
        if shard is None and journal.recall(ROWS_OF_KEY).get("") == fingerprint:
            every = _shapes_of_entries(manifest, prompts, lists, outputs)
            left = _shapes_left(every, journal, options)
            if left is not None:
                return left
        return _shapes_of_units(manifest, shard, journal, options, lists, outputs)
    finally:
        if journal is not None:
            journal.close()


def _shapes_of_entries(
    manifest: Manifest,
    prompts: list[Prompts],
    lists: Mapping[str, frozenset[str]],
    outputs: Mapping[str, int],
) -> Shapes:
    """Every unit's shape without making the units: all of an entry's units of one
    size share a shape (the prompt and seed are taken not to change the cost), so one
    unit of each size stands for the entry's prompts times its count."""
    shapes: Shapes = {}
    for entry, seen in zip(manifest.entries, prompts, strict=True):
        one_entry = dataclasses.replace(manifest, entries=(entry,))
        counted: set[str] = set()
        for unit in itertools.islice(iter_units(one_entry), len(entry.sizes) * entry.count):
            body = request_for(unit, None, lists=lists.get(unit.model, ()))
            key = _shape_key(unit, body)
            if key in counted:
                continue
            counted.add(key)
            units = seen.count * entry.count * max(1, len(entry.images))
            _count(shapes, unit, body, units, outputs)
    return shapes


def _shapes_left(shapes: Shapes, journal: Journal, options: RunOptions) -> Shapes | None:
    """Every unit's shapes less those of the units a run would not submit, counted by
    shape in the journal (whose units are all the manifest's); None if a unit done has
    no shape recorded (an earlier version's), or one the manifest does not make (a
    shape with a quality rule is always counted unit by unit: what a unit has left to
    regenerate is its own)."""
    if any("\n" in key for key in shapes):
        return None
    left = dict(shapes)
    for shape, row, count in journal.shapes():
        action = resume_action(
            row, retry_failed=options.retry_failed, resubmit_abandoned=options.resubmit_abandoned
        )
        if action in (Resume.SUBMIT, Resume.RECONCILE):
            continue  # to do: counted among the manifest's
        if shape is None or shape not in left or left[shape].units < count:
            return None
        left[shape] = dataclasses.replace(left[shape], units=left[shape].units - count)
    return {key: value for key, value in left.items() if value.units > 0}


def _shapes_of_units(
    manifest: Manifest,
    shard: Shard | None,
    journal: Journal | None,
    options: RunOptions,
    lists: Mapping[str, frozenset[str]],
    outputs: Mapping[str, int],
) -> Shapes:
    shapes: Shapes = {}
    units = units_of(manifest, shard)
    while chunk := list(itertools.islice(units, UNITS_CHUNK)):
        rows = journal.states_of([unit.id for unit in chunk]) if journal else {}
        for unit in chunk:
            row = rows.get(unit.id)
            action = resume_action(
                row,
                retry_failed=options.retry_failed,
                resubmit_abandoned=options.resubmit_abandoned,
            )
            to_submit = action in (Resume.SUBMIT, Resume.RECONCILE)
            # A job paid for and watched again (a budget stop can leave one made but
            # not gated): its images are still to be gated, and may be made again.
            to_gate = action is Resume.REATTACH and unit.quality is not None
            if not (to_submit or to_gate):
                continue  # done, or its job is already paid for
            body = request_for(unit, None, lists=lists.get(unit.model, ()))
            regenerated = row.quality_attempt if row is not None else 0
            _count(shapes, unit, body, int(to_submit), outputs, regenerated, paid=int(to_gate))
    return shapes


def _size_label(body: dict[str, Any]) -> str:
    if "aspectRatio" in body:
        return str(body["aspectRatio"])
    if "width" in body:
        return f"{body.get('width')}x{body.get('height')}"
    return "default"
