"""``OUT/gallery/index.html``: a page to review a run by looking at it.

One static file that opens from ``file://`` with no server and no network: its script
and style are inline, and so is the data (a browser will not let a ``file://`` page
read a file beside it).  Beside it, ``thumbs/``: a WebP thumbnail of each image (about
256 px, made with Pillow once per image and reused by the next call; without Pillow
the page shows the images themselves).  The page holds a bounded number of elements
whatever the run's size: the grid and the compare view are paged.

Everything is read from the journal (every shard's, from an output root): its results
lines, and the money from its ledger; nothing is asked of the API.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

from ..ledger import Spend
from .files import create_new, open_regular, real_directory, write_bytes_atomically
from .journal import Journal

GALLERY_DIR = "gallery"
THUMBS_DIR = "thumbs"
THUMB_SIDE = 256
# Thumbnails made at once: Pillow decodes and encodes outside the GIL.
THUMB_WORKERS = max(2, os.cpu_count() or 2)


@dataclass(frozen=True, slots=True)
class Gallery:
    page: Path
    units: int
    images: int
    thumbnails_made: int

    def to_json(self) -> dict[str, Any]:
        return {
            "page": str(self.page),
            "units": self.units,
            "images": self.images,
            "thumbnails_made": self.thumbnails_made,
        }


def write_gallery(root: Path, journals: Iterable[tuple[Path, Journal]]) -> Gallery:
    """Write ``root/gallery/index.html`` from the journal of each output directory in
    ``journals`` ((directory, journal): one, or every shard's)."""
    gallery = root / GALLERY_DIR
    thumbs = gallery / THUMBS_DIR
    real_directory(root, PurePath(GALLERY_DIR, THUMBS_DIR))  # the output's own, no link
    units: list[dict[str, Any]] = []
    wanted: list[tuple[Path, Path]] = []
    spend = Spend()
    for place, journal in journals:
        spend += journal.spend()
        for line in journal.results():
            result = json.loads(line)
            unit = _unit(result, place, root, thumbs, wanted)
            if unit is not None:
                units.append(unit)
    made = _thumbnails(wanted)
    if made < 0:  # no Pillow: the page shows the images themselves
        for unit in units:
            for image in unit["images"]:
                image["thumb"] = image["file"]
        made = 0
    page = gallery / "index.html"
    write_bytes_atomically(page, _page(units, root.resolve().name, spend).encode("utf-8"))
    return Gallery(page, len(units), sum(len(u["images"]) for u in units), made)


def _unit(
    result: dict[str, Any],
    place: Path,
    root: Path,
    thumbs: Path,
    wanted: list[tuple[Path, Path]],
) -> dict[str, Any] | None:
    status = result.get("status")
    if status not in ("success", "failure", "abandoned"):
        return None
    images = []
    sizes = result.get("sizes") or []
    for index, relative in enumerate(result.get("files") or []):
        source = place / relative
        thumb = thumbs / f"{result['id']}_{index}.webp"
        wanted.append((source, thumb))
        size = sizes[index] if index < len(sizes) and sizes[index] else None
        images.append(
            {
                "file": os.path.relpath(source, root / GALLERY_DIR),
                "thumb": f"{THUMBS_DIR}/{thumb.name}",
                "size": f"{size[0]}x{size[1]}" if size else "",
            }
        )
    width, height = result.get("width"), result.get("height")
    asked = result.get("aspect_ratio") or (f"{width}x{height}" if width and height else "")
    return {
        "id": result["id"],
        "status": status,
        "prompt": result.get("prompt") or "",
        "model": result.get("model") or "",
        "size": asked,
        "seed": result.get("seed"),
        "entry": result.get("entry") or "",
        "repeat": result.get("repeat"),
        "cost": result.get("cost"),
        "error": result.get("error"),
        "permanent": bool(result.get("permanent")),
        # The quality gate's verdict on the images kept ("" with no gate).
        "verdict": result.get("quality_verdict") or "",
        "score": result.get("quality_score"),
        "reasons": list(result.get("quality_reasons") or []),
        "attempt": result.get("quality_attempt"),
        "images": images,
        "fields": result,
    }


def _thumbnails(wanted: list[tuple[Path, Path]]) -> int:
    """Make each thumbnail not made yet (or older than its image); how many, or -1
    when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        return -1

    def make(pair: tuple[Path, Path]) -> int:
        source, thumb = pair
        try:
            if thumb.stat().st_mtime_ns >= source.stat().st_mtime_ns:
                return 0
        except FileNotFoundError:
            pass
        try:
            with open_regular(source) as file, Image.open(file) as image:
                image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decoded small
                image.thumbnail((THUMB_SIDE, THUMB_SIDE))
                part = thumb.with_name(f".{thumb.name}.{os.getpid()}.tmp")
                part.unlink(missing_ok=True)
                with create_new(part) as handle:
                    image.save(handle, "WEBP", quality=80)
                os.replace(part, thumb)
        except (OSError, ValueError):
            return 0  # an image gone or unreadable: its card shows the file, or nothing
        return 1

    with ThreadPoolExecutor(THUMB_WORKERS) as pool:
        return sum(pool.map(make, wanted, chunksize=64))


def _page(units: list[dict[str, Any]], name: str, spend: Spend) -> str:
    template = resources.files("batchgen.ui").joinpath("gallery.html").read_text("utf-8")
    done = sum(1 for u in units if u["status"] == "success")
    models = Counter(u["model"] for u in units)
    summary = {
        "name": name,
        "units": len(units),
        "done": done,
        "failed": sum(1 for u in units if u["status"] == "failure"),
        "abandoned": sum(1 for u in units if u["status"] == "abandoned"),
        "images": sum(len(u["images"]) for u in units),
        # From the ledger, as every figure about money is (batchgen.ledger).
        "spent": spend.in_all,
        "spent_words": f"{spend.in_all:g} CU spent{spend.caveats()}",
        "models": dict(models.most_common()),
        "verdicts": dict(Counter(u["verdict"] for u in units if u["verdict"])),
    }
    # Inline JSON: "</" would end the script element early.
    data = json.dumps({"summary": summary, "units": units}, ensure_ascii=False)
    data = data.replace("</", "<\\/")
    return template.replace("__TITLE__", html.escape(name)).replace("__DATA__", data)
