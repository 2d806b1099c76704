"""``metadata.jsonl``: the run as a Hugging Face ``imagefolder`` dataset.

``datasets.load_dataset("imagefolder", data_dir=OUT)`` reads it as it is: one row per
image, its ``file_name`` relative to the metadata file, next to the columns that say how
the image was made. Like ``results.jsonl`` it is a view of the journal, brought up to
date (atomically) when a run ends (:mod:`.views`). For a sharded run it is written once,
at the output root, and covers every shard: ``imagefolder`` would read a second metadata
file below it as a second description of the same images.

The columns keep one type per column whatever the manifest holds, because the loader
infers one schema for the whole file (a column of numbers that meets a string fails the
whole load): ``params`` (whose values differ in type from one entry to the next) is a
JSON string; a prompt file's extra columns are added as they are, but a column whose
values are of more than one kind (numbers and strings, say) is written as strings, and
lists and mappings as JSON strings; and an extra column is renamed ``extra_<name>`` when
it would hide one of batchgen's own or a name the loaders give a meaning to (``image``
would replace the pictures, ``label`` their class).  Each is said once, as a warning.
A run with no image yet writes no metadata file (the loader refuses an empty one).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .files import write_lines_atomically

log = logging.getLogger(__name__)

METADATA_NAME = "metadata.jsonl"
OWN_COLUMNS = (
    "file_name",
    "unit_id",
    "image_index",
    "prompt",
    "model",
    "width",
    "height",
    "params",
    "seed",
    "entry",
    "repeat",
    "job_id",
    "cost",
    "source",
    "quality_verdict",
    "quality_score",
    "quality_reasons",
    "quality_attempt",
)
# Names the loaders give a meaning to: ``imagefolder`` makes ``image`` the picture and
# ``label`` its class; WebDataset readers key samples by ``__key__`` and ``__url__``.
RESERVED_COLUMNS = frozenset({"image", "label", "__key__", "__url__", "__local_path__"})
# What a column's values are, for the one type the loader will infer.
Kinds = dict[str, str]
MIXED = "mixed"


def column_name(name: str) -> str:
    """An extra column's name in the metadata: its own, unless that is taken (or the
    loader would take it for paths of images: ``*_file_name``)."""
    if name.endswith(IMAGE_PATH_SUFFIXES):
        return f"{name}_text"
    return f"extra_{name}" if name in OWN_COLUMNS or name in RESERVED_COLUMNS else name


# What makes the imagefolder loader read a column as paths of images.
IMAGE_PATH_SUFFIXES = ("file_name", "file_names")


def input_columns(result: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The images a unit was made from, as columns the loader reads as images: the
    ``image`` input as ``input_image``, any other by its name (a list where there are
    several), each a path to its copy in ``inputs/``; beside each, where the image came
    from (``_source``: its path or URL as the manifest gave it) and the asset it was
    uploaded as (``_asset_id``), the dataset's provenance."""
    columns: dict[str, Any] = {}
    for name, items in (result.get("inputs") or {}).items():
        base = "input_image" if name == "image" else column_name(name)
        kept = [item for item in items if item.get("file")]
        files = [f"{prefix}{item['file']}" for item in kept]
        sources = [item.get("path") for item in kept]
        assets = [item.get("asset_id") or None for item in kept]
        if len(files) == 1:
            columns[f"{base}_file_name"] = files[0]
            columns[f"{base}_source"] = sources[0]
            columns[f"{base}_asset_id"] = assets[0]
        elif files:
            columns[f"{base}_file_names"] = files
            columns[f"{base}_sources"] = sources
            columns[f"{base}_asset_ids"] = assets
    return columns


def kind_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "json"


def image_rows(
    result: dict[str, Any], prefix: str = "", as_text: Iterable[str] = ()
) -> Iterator[dict[str, Any]]:
    """The metadata rows of one results line: one per image of a successful unit.
    ``prefix`` is the path from the metadata file to the results' directory;
    ``as_text`` the extra columns (by their metadata names) written as strings."""
    if result.get("status") != "success":
        return
    text = set(as_text)
    extras: dict[str, Any] = {}
    for name, value in (result.get("metadata") or {}).items():
        column = column_name(name)
        if isinstance(value, list | dict):
            value = json.dumps(value, ensure_ascii=False, sort_keys=True)
        elif column in text and value is not None and not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False)
        extras[column] = value
    inputs = input_columns(result, prefix)
    sizes = result.get("sizes") or []
    for index, relative in enumerate(result.get("files") or []):
        # Each image's own size when the results line has it (older ones do not).
        own = sizes[index] if index < len(sizes) and sizes[index] else None
        width, height = own or (result.get("width"), result.get("height"))
        row: dict[str, Any] = {
            "file_name": f"{prefix}{relative}",
            "unit_id": result["id"],
            "image_index": index,
            "prompt": result.get("prompt"),
            "model": result.get("model"),
            "width": width,
            "height": height,
            "params": json.dumps(result.get("params") or {}, sort_keys=True),
            "seed": result.get("seed"),
            "entry": result.get("entry"),
            "repeat": result.get("repeat"),
            "job_id": result.get("job_id"),
            "cost": result.get("cost"),
            "source": result.get("source"),
        }
        if "quality_verdict" in result:
            row["quality_verdict"] = result["quality_verdict"]
            row["quality_score"] = result.get("quality_score")
            row["quality_reasons"] = json.dumps(result.get("quality_reasons") or [])
            row["quality_attempt"] = result.get("quality_attempt")
        row.update(extras)
        row.update(inputs)
        yield row


def extra_kinds(results: Iterable[dict[str, Any]], known: Kinds | None = None) -> Kinds:
    """Each extra column's kind over these results lines (``mixed`` when its values are
    of more than one), added to ``known``."""
    kinds: Kinds = dict(known or {})
    for result in results:
        if result.get("status") != "success" or not result.get("files"):
            continue
        for name, value in (result.get("metadata") or {}).items():
            kind = kind_of(value)
            if kind is None:
                continue
            column = column_name(name)
            before = kinds.setdefault(column, kind)
            if before not in (kind, MIXED):
                kinds[column] = MIXED
    return kinds


def mixed(kinds: Kinds) -> set[str]:
    return {column for column, kind in kinds.items() if kind == MIXED}


Parts = Callable[[], Iterable[tuple[str, Iterable[str]]]]


def write_metadata(
    root: Path, parts: Parts, first_time: Callable[[str], bool] | None = None
) -> Kinds:
    """Replace ``root/metadata.jsonl`` with the rows of these results lines, given as
    (path prefix from ``root``, lines) for each directory of results (``parts`` is
    called once a pass: the lines are read twice, first for the columns' kinds).  With
    no image at all, no file is left.  Returns the columns' kinds.  ``first_time`` says
    whether a remark about the columns is new to the output: a warning the first time,
    a line of the log after (a nightly run is not a nightly mail)."""
    kinds = extra_kinds(json.loads(line) for _, lines in parts() for line in lines)
    _say(kinds, first_time or (lambda remark: True))
    as_text = mixed(kinds)
    rows = (
        json.dumps(row, ensure_ascii=False)
        for prefix, lines in parts()
        for line in lines
        for row in image_rows(json.loads(line), prefix, as_text)
    )
    first = next(rows, None)
    path = root / METADATA_NAME
    if first is None:
        if path.exists():
            path.unlink()
        log.info("%s: no image yet, so no metadata file (the loader refuses an empty one)", root)
        return kinds
    write_lines_atomically(path, _chain(first, rows))
    return kinds


def _chain(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest


def _say(kinds: Kinds, first_time: Callable[[str], bool]) -> None:
    remarks = [
        f"metadata.jsonl: the column {column.removeprefix('extra_')!r} is written as "
        f"{column!r}: the dataset loaders give {column.removeprefix('extra_')!r} a meaning "
        "of their own"
        for column in sorted(kinds)
        if column.startswith("extra_") and column.removeprefix("extra_") in RESERVED_COLUMNS
    ]
    remarks += [
        f"metadata.jsonl: the column {column!r} holds values of more than one kind (numbers "
        "and strings, say); it is written as strings, so that the loader reads it"
        for column in sorted(mixed(kinds))
    ]
    for remark in remarks:
        log.log(logging.WARNING if first_time(remark) else logging.INFO, "%s", remark)
