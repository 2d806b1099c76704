"""Entries expanded lazily into work units, each with its stable id.

A work unit is one generation job.  Its id is a digest of the request it makes
(model, prompt, size, params) and of its repeat index, so the same manifest always
yields the same ids and a changed prompt or param yields a new unit.  The repeat index
counts identical requests in manifest order: ``count: 3`` gives repeats 0, 1, 2, and a
prompt that appears again later (in another entry or a prompts file) continues the
count instead of colliding.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..config import DEFAULT_MAX_UNITS
from ..errors import ManifestError
from .prompts import iter_entry_prompts
from .types import Entry, ImageInput, InputImage, Manifest, Size, Unit

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
        if entry.images or entry.inputs:
            for unit in _units_with_images(manifest, entry, occurrences, index):
                index += 1
                yield unit
            continue
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
                made = _repeats(entry, head + tail, occurrences, index, derive_seed)
                for unit in made(prompt, size, metadata, source, ()):
                    index += 1
                    yield unit


def _units_with_images(
    manifest: Manifest, entry: Entry, occurrences: dict[bytes, int], index: int
) -> Iterator[Unit]:
    """An entry's units when it sends images: for each file of ``images:`` (or once,
    without), each prompt, size and repeat.  The images are in the id by their sha256."""
    fixed = [
        (given.name, tuple(_local(manifest, ref) for ref in given.files), given.many)
        for given in entry.inputs
        if given.column is None
    ]
    by_column = [given for given in entry.inputs if given.column is not None]
    derive_seed = entry.params.get("seed") == PER_UNIT_SEED
    for image in entry.images or (None,):
        inputs = list(fixed)
        if image is not None:
            inputs.insert(0, (entry.image_input, (_local(manifest, image),), False))
        for prompt, metadata, source in iter_entry_prompts(manifest, entry):
            unit_inputs = inputs + [
                (given.name, (_column_image(manifest, given, metadata, source),), False)
                for given in by_column
            ]
            shown = {
                name: [i.sha256 for i in images] if many else images[0].sha256
                for name, images, many in unit_inputs
            }
            for size in entry.sizes:
                request = canonical_request(entry.model, prompt, size, entry.params, shown)
                made = _repeats(entry, request, occurrences, index, derive_seed)
                for unit in made(prompt, size, metadata, source, tuple(unit_inputs)):
                    index += 1
                    yield unit


def _repeats(
    entry: Entry, request: str, occurrences: dict[bytes, int], index: int, derive_seed: bool
) -> Callable[..., Iterator[Unit]]:
    """The units of one canonical request: its repeats, numbered on from any identical
    request met earlier in the manifest (see the module docstring)."""
    key = hashlib.sha256(request.encode()).digest()[:12]
    first_repeat = occurrences.get(key, 0)
    occurrences[key] = first_repeat + entry.count

    def units(
        prompt: str,
        size: Size,
        metadata: Mapping[str, Any],
        source: str,
        inputs: tuple[tuple[str, tuple[InputImage, ...], bool], ...],
    ) -> Iterator[Unit]:
        for offset, repeat in enumerate(range(first_repeat, first_repeat + entry.count)):
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
                index=index + offset,
                aspect_ratio=size.ratio,
                inputs=inputs,
                quality=entry.quality,
            )

    return units


def _local(manifest: Manifest, ref: Path | str) -> InputImage:
    """The image a reference names, once a URL has been fetched (see
    :func:`batchgen.scenario.remote.fetch_remote_images`)."""
    if isinstance(ref, str):
        raise ManifestError(str(manifest.path), None, "images", f"{ref} was not fetched")
    image = hashed(ref)
    source = manifest.image_sources.get(str(ref))
    return dataclasses.replace(image, source=source) if source else image


def _column_image(
    manifest: Manifest, given: ImageInput, metadata: Mapping[str, Any], source: str
) -> InputImage:
    path, _, line = source.rpartition(":")
    value = metadata.get(given.column or "")
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(path, int(line), str(given.column), "no image file named here")
    file = manifest.path.parent / value.strip()
    if not file.is_file():
        raise ManifestError(path, int(line), str(given.column), f"file not found: {value}")
    return hashed(file)


# What each image file hashed to, by (path, size, modification time): a file is read
# once however many units send it.
_HASHES: dict[tuple[str, int, int], InputImage] = {}


def hashed(path: Path) -> InputImage:
    """The file as a unit sends it: path, sha256 and size."""
    status = path.stat()
    key = (str(path), status.st_size, status.st_mtime_ns)
    found = _HASHES.get(key)
    if found is None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        found = _HASHES[key] = InputImage(path, digest.hexdigest(), status.st_size)
    return found


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
            planned += prompts * entry.units_per_prompt
            if planned > max_units:
                raise self._too_many(entry)

    def add(self, entry: Entry) -> None:
        """Count one prompt of ``entry`` (its sizes times its count in units)."""
        self.total += entry.units_per_prompt
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


def canonical_request(
    model: str,
    prompt: str,
    size: Size,
    params: Mapping[str, Any],
    images: Mapping[str, Any] | None = None,
) -> str:
    """The definition of what a unit id digests: ``[model, prompt, width, height,
    params]``, where an aspect ratio stands in the width's place with a null height, and
    no size is two nulls; a unit that sends images adds ``{input: sha256 or [sha256,
    ...]}``.  :func:`iter_units` builds the same string piecewise, and a test holds the
    two equal."""
    first = size.ratio if size.ratio is not None else size.width
    request: list[Any] = [model, prompt, first, size.height, params]
    if images:
        request.append(images)
    return _canonical_json(request)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
