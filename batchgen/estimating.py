"""What the units still to do would cost: the API's dry run (HTTP 269, nothing
created), once per model/size/params shape, and the shapes a partial journal leaves."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import (
    Mapping,
)
from pathlib import Path
from typing import Any, TypeVar, Unpack

from .backend import Backend, open_backend
from .engine import cost_shape
from .engine.submit import request_for
from .errors import PermanentApiError
from .keywords import RunKeywords
from .manifest import Manifest, iter_units
from .manifest.shard import Shard
from .options import RunOptions, from_keywords
from .plan import UNITS_CHUNK, checked_manifest, output_directory, saved_specs, units_of
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


Shapes = dict[str, tuple[str, dict[str, Any], int]]


async def aestimate(manifest: str | Path, **options: Unpack[RunKeywords]) -> Estimate:
    opts = from_keywords(options)
    loaded = load(manifest, opts.filename)
    shard = _shard(opts.shard, opts.shards)
    out_dir = output_directory(loaded, opts, shard)
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
    shapes = await backend.offload(_shapes_to_do, manifest, shard, out_dir, options, prompts, lists)
    total = 0.0
    rows: list[Shape] = []
    for model, body, count in shapes.values():
        try:
            cost = await with_retries(
                Request.OTHER_READ,
                lambda model=model, body=body: backend.client.estimate(model, body),  # type: ignore[misc]
                backend.settings.retry,
            )
        except PermanentApiError as exc:  # this body refused (moderation): unpriced
            log.info("%s: no price for a shape of it: %s", model, exc)
            cost = None
        total += (cost or 0.0) * count
        rows.append(Shape(model, _size_label(body), count, cost))
    unpriced = sum(row.units for row in rows if row.cost_each is None)
    return Estimate(sum(row.units for row in rows), total, rows, unpriced)


def _shapes_to_do(
    manifest: Manifest,
    shard: Shard | None,
    out_dir: Path,
    options: RunOptions,
    prompts: list[Prompts],
    lists: Mapping[str, frozenset[str]] | None = None,
) -> Shapes:
    """(model, first body, units) per cost shape, of the units still to do.  With no
    journal yet every unit is to do, and the shapes are counted entry by entry from
    the pass over the prompts already made; a finished batch has none; else the
    journal is asked about a chunk of units at a time, as a run does."""
    journal = Journal(out_dir) if (out_dir / JOURNAL_NAME).is_file() else None
    try:
        if journal is None or journal.is_empty():
            if shard is None:
                return _shapes_of_entries(manifest, prompts, lists)
            return _shapes_of_units(manifest, shard, journal, options, lists)
        fingerprint = _fingerprint(manifest, shard)
        if _still_complete(journal, out_dir, fingerprint) is not None:
            return {}
        if shard is None and journal.recall(ROWS_OF_KEY).get("") == fingerprint:
            left = _shapes_left(_shapes_of_entries(manifest, prompts, lists), journal, options)
            if left is not None:
                return left
        return _shapes_of_units(manifest, shard, journal, options, lists)
    finally:
        if journal is not None:
            journal.close()


def _shapes_of_entries(
    manifest: Manifest,
    prompts: list[Prompts],
    lists: Mapping[str, frozenset[str]] | None = None,
) -> Shapes:
    """Every unit's shape without making the units: all of an entry's units of one
    size share a shape (the prompt and seed are taken not to change the cost), so one
    unit of each size stands for the entry's prompts times its count."""
    shapes: Shapes = {}
    for entry, seen in zip(manifest.entries, prompts, strict=True):
        one_entry = dataclasses.replace(manifest, entries=(entry,))
        counted: set[str] = set()
        for unit in itertools.islice(iter_units(one_entry), len(entry.sizes) * entry.count):
            body = request_for(unit, None, lists=(lists or {}).get(unit.model, ()))
            key = cost_shape(unit.model, body)
            if key in counted:
                continue
            counted.add(key)
            model, first_body, count = shapes.get(key, (unit.model, body, 0))
            shapes[key] = (
                model,
                first_body,
                count + seen.count * entry.count * max(1, len(entry.images)),
            )
    return shapes


def _shapes_left(shapes: Shapes, journal: Journal, options: RunOptions) -> Shapes | None:
    """Every unit's shapes less those of the units a run would not submit, counted by
    shape in the journal (whose units are all the manifest's); None if a unit done has
    no shape recorded (an earlier version's), or one the manifest does not make."""
    left = dict(shapes)
    for shape, row, count in journal.shapes():
        action = resume_action(
            row, retry_failed=options.retry_failed, resubmit_abandoned=options.resubmit_abandoned
        )
        if action in (Resume.SUBMIT, Resume.RECONCILE):
            continue  # to do: counted among the manifest's
        if shape is None or shape not in left or left[shape][2] < count:
            return None
        model, body, units = left[shape]
        left[shape] = (model, body, units - count)
    return {key: value for key, value in left.items() if value[2] > 0}


def _shapes_of_units(
    manifest: Manifest,
    shard: Shard | None,
    journal: Journal | None,
    options: RunOptions,
    lists: Mapping[str, frozenset[str]] | None = None,
) -> Shapes:
    shapes: Shapes = {}
    units = units_of(manifest, shard)
    while chunk := list(itertools.islice(units, UNITS_CHUNK)):
        rows = journal.get_many([unit.id for unit in chunk]) if journal else {}
        for unit in chunk:
            action = resume_action(
                rows.get(unit.id),
                retry_failed=options.retry_failed,
                resubmit_abandoned=options.resubmit_abandoned,
            )
            if action not in (Resume.SUBMIT, Resume.RECONCILE):
                continue  # done, or its job is already paid for
            body = request_for(unit, None, lists=(lists or {}).get(unit.model, ()))
            key = cost_shape(unit.model, body)
            model, first_body, count = shapes.get(key, (unit.model, body, 0))
            shapes[key] = (model, first_body, count + 1)
    return shapes


def _size_label(body: dict[str, Any]) -> str:
    if "aspectRatio" in body:
        return str(body["aspectRatio"])
    if "width" in body:
        return f"{body.get('width')}x{body.get('height')}"
    return "default"
