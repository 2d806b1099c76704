"""``OUT/gallery/index.html``: a page to review a run by looking at it.

One static file that opens from ``file://`` with no server and no network: its script
and style are inline, and so is the data (a browser will not let a ``file://`` page
read a file beside it).  Beside it, ``thumbs/``: a WebP thumbnail of each image (about
256 px, made with Pillow; without Pillow the page shows the images themselves).  A
thumbnail is named by its image's sha256, so the names already there say which are
made: the next call makes only the new ones (one listing, no per-file check) and
removes those of images gone.  The page holds a bounded number of elements whatever
the run's size: the grid and the compare view are paged.

Everything is read from the journal (every shard's, from an output root): its results
lines, and the money from its ledger; nothing is asked of the API.  Where the images
are read from and the page written to is a :class:`GalleryFiles` (a folder, or a
bucket: its page links the images by the same relative paths, so it is read where the
bucket is served, or from a copy of it).
"""

from __future__ import annotations

import html
import io
import json
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from ..ledger import Spend
from .journal import Journal

GALLERY_DIR = "gallery"
THUMBS_DIR = "thumbs"
PAGE_NAME = f"{GALLERY_DIR}/index.html"
THUMBS = f"{GALLERY_DIR}/{THUMBS_DIR}"
THUMB_SIDE = 256
THUMB_SUFFIX = ".webp"
# Thumbnails made at once: Pillow decodes and encodes outside the GIL (and a bucket's
# reads and writes wait on the network).
THUMB_WORKERS = max(2, os.cpu_count() or 2)


class GalleryFiles(Protocol):
    """Where a gallery reads its images and writes its page and thumbnails; every
    path is relative to the output's root.  Called from several threads at once."""

    def open_image(self, relative: str) -> AbstractContextManager[BinaryIO]:
        """The image for reading; ``OSError`` if it is gone or not a plain file."""

    def thumbnails(self) -> set[str]:
        """The names of the thumbnails there (in ``gallery/thumbs/``)."""

    def write(self, relative: str, data: bytes) -> None:
        """A file written whole (replacing one there)."""

    def remove(self, relative: str) -> None:
        """A file removed (nothing if it is gone)."""

    def where(self, relative: str) -> str:
        """The file as messages show it: a path, or the bucket's URL."""

    def local(self, relative: str) -> Path | None:
        """The file on this machine's disk (None: in a bucket)."""


@dataclass(frozen=True, slots=True)
class Gallery:
    # Where the page is: a local path, or an object's URL in a bucket.
    page: str
    units: int
    images: int
    thumbnails_made: int
    # The page as a local file a browser opens (None: in a bucket).
    file: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "page": self.page,
            "units": self.units,
            "images": self.images,
            "thumbnails_made": self.thumbnails_made,
        }


def write_gallery(
    journals: Iterable[tuple[str, Journal]], files: GalleryFiles, name: str
) -> Gallery:
    """Write ``gallery/index.html`` (through ``files``) from the journal of each output
    directory in ``journals`` ((its path from the root, "" or ``shard-…/``; its
    journal): one, or every shard's); ``name`` titles the page."""
    units: list[dict[str, Any]] = []
    wanted: dict[str, str] = {}
    spend = Spend()
    for prefix, journal in journals:
        spend += journal.spend()
        for line in journal.results():
            unit = _unit(json.loads(line), prefix, wanted)
            if unit is not None:
                units.append(unit)
    made = _thumbnails(wanted, files)
    if made < 0:  # no Pillow: the page shows the images themselves
        for unit in units:
            for image in unit["images"]:
                image["thumb"] = image["file"]
        made = 0
    files.write(PAGE_NAME, _page(units, name, spend).encode("utf-8"))
    return Gallery(files.where(PAGE_NAME), len(units), len(wanted), made, files.local(PAGE_NAME))


def _unit(result: dict[str, Any], prefix: str, wanted: dict[str, str]) -> dict[str, Any] | None:
    status = result.get("status")
    if status not in ("success", "failure", "abandoned"):
        return None
    images = []
    sizes = result.get("sizes") or []
    digests = result.get("sha256") or []
    for index, relative in enumerate(result.get("files") or []):
        source = f"{prefix}{relative}"
        digest = digests[index] if index < len(digests) else ""
        # Named by the bytes it shows: a regenerated image has a thumbnail of its own.
        thumb = f"{result['id']}_{index}_{digest[:16]}{THUMB_SUFFIX}"
        wanted[thumb] = source
        size = sizes[index] if index < len(sizes) and sizes[index] else None
        images.append(
            {
                # From the page in gallery/: one level up is the output's root.
                "file": f"../{source}",
                "thumb": f"{THUMBS_DIR}/{thumb}",
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


def thumbnail_work(wanted: dict[str, str], present: set[str]) -> tuple[list[str], list[str]]:
    """(thumbnails to make, thumbnails to remove): those wanted and not there, and
    those there that no image wants any more."""
    make = [name for name in wanted if name not in present]
    stale = sorted(name for name in present if name.endswith(THUMB_SUFFIX) and name not in wanted)
    return make, stale


def _thumbnails(wanted: dict[str, str], files: GalleryFiles) -> int:
    """Make each thumbnail not made yet, remove those of images gone; how many made,
    or -1 when Pillow is not installed."""
    try:
        from PIL import Image
    except ImportError:
        return -1
    make, stale = thumbnail_work(wanted, files.thumbnails())

    def made(name: str) -> int:
        try:
            with files.open_image(wanted[name]) as source, Image.open(source) as image:
                image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))  # JPEG: decoded small
                image.thumbnail((THUMB_SIDE, THUMB_SIDE))
                encoded = io.BytesIO()
                image.save(encoded, "WEBP", quality=80)
        except (OSError, ValueError):
            return 0  # an image gone or unreadable: its card shows the file, or nothing
        files.write(f"{THUMBS}/{name}", encoded.getvalue())
        return 1

    with ThreadPoolExecutor(THUMB_WORKERS) as pool:
        count = sum(pool.map(made, make, chunksize=64))
        for _ in pool.map(files.remove, [f"{THUMBS}/{name}" for name in stale], chunksize=64):
            pass
    return count


def folder_path(relative: str) -> PurePosixPath:
    """A path the gallery names, checked to stay below the root."""
    path = PurePosixPath(relative)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{relative}: not a path below the output")
    return path


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
