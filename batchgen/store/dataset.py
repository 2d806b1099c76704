"""``metadata.jsonl``: the run as a Hugging Face ``imagefolder`` dataset.

``datasets.load_dataset("imagefolder", data_dir=OUT)`` reads it as it is: one row per
image, its ``file_name`` relative to the metadata file, next to the columns that say how
the image was made. Like ``results.jsonl`` it is a view of the journal, brought up to
date (atomically) when a run ends (:mod:`.views`). For a sharded run it is written once,
at the output root, and covers every shard: ``imagefolder`` would read a second metadata
file below it as a second description of the same images.

The columns keep one type per column whatever the manifest holds, because the loader
infers one schema for the whole file: ``params`` (whose values differ in type from one
entry to the next) is a JSON string, and a prompt file's extra columns, added as they
are, are renamed ``extra_<name>`` when they would hide one of batchgen's own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .files import write_lines_atomically

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
    "job_id",
    "cost",
    "source",
)


def image_rows(result: dict[str, Any], prefix: str = "") -> Iterator[dict[str, Any]]:
    """The metadata rows of one results line: one per image of a successful unit.
    ``prefix`` is the path from the metadata file to the results' directory."""
    if result.get("status") != "success":
        return
    extras = result.get("metadata") or {}
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
            "job_id": result.get("job_id"),
            "cost": result.get("cost"),
            "source": result.get("source"),
        }
        for name, value in extras.items():
            row[f"extra_{name}" if name in OWN_COLUMNS else name] = value
        yield row


def write_metadata(root: Path, parts: Iterable[tuple[str, Iterable[str]]]) -> Path:
    """Replace ``root/metadata.jsonl`` with the rows of these results lines, given as
    (path prefix from ``root``, lines) for each directory of results."""
    rows = (
        json.dumps(row, ensure_ascii=False)
        for prefix, lines in parts
        for line in lines
        for row in image_rows(json.loads(line), prefix)
    )
    return write_lines_atomically(root / METADATA_NAME, rows)
