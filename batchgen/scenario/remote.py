"""Images given by URL (``images: https://...``, ``inputs: {style: https://...}``),
fetched once before anything is sent.

Each is downloaded with the same downloader as the generated images (no credentials
sent, the body checked to be an image, whole), into a cache shared by every run:
``$XDG_CACHE_HOME/batchgen/inputs`` (``~/.cache``), named by the URL's hash, and reused
while it is there.  The manifest then names the local copy; the unit's id covers the
image's content, and its results record the URL it came from.  A URL that cannot be
fetched is a one-line error at its place in the manifest, before anything is sent.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from ..config import RetrySettings, cache_root
from ..errors import ApiError, DownloadError, ManifestError
from ..manifest.types import Entry, Manifest
from ..retry import Request, with_retries
from .download import Fetcher

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def cache_directory() -> Path:
    return cache_root() / "inputs"


def remote_urls(manifest: Manifest) -> list[tuple[str, int, str]]:
    """(URL, line, field) of every image the manifest gives by URL, once each."""
    found: dict[str, tuple[str, int, str]] = {}
    for entry in manifest.entries:
        where = f"jobs[{entry.index}].images"
        for ref in entry.images:
            if isinstance(ref, str):
                found.setdefault(ref, (ref, entry.images_line, where))
        for given in entry.inputs:
            for ref in given.files:
                if isinstance(ref, str):
                    found.setdefault(ref, (ref, given.line, given.field))
    return list(found.values())


async def fetch_remote_images(
    manifest: Manifest, fetcher: Fetcher, retry: RetrySettings, cache: Path | None = None
) -> Manifest:
    """The manifest with each URL replaced by its fetched copy."""
    urls = remote_urls(manifest)
    if not urls:
        return manifest
    cache = cache or cache_directory()
    cache.mkdir(parents=True, exist_ok=True)
    local: dict[str, Path] = {}
    for url, line, where in urls:
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
        copy = cache / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}"
        copy = copy.with_suffix(suffix if suffix in IMAGE_SUFFIXES else ".img")
        if not copy.is_file():
            try:
                await with_retries(
                    Request.DOWNLOAD, functools.partial(fetcher.fetch, url, copy), retry
                )
            except (DownloadError, ApiError) as exc:
                raise ManifestError(str(manifest.path), line, where, f"{url}: {exc}") from exc
        local[url] = copy
    entries = tuple(_with_local(entry, local) for entry in manifest.entries)
    sources = {str(path): url for url, path in local.items()}
    return dataclasses.replace(
        manifest, entries=entries, image_sources={**manifest.image_sources, **sources}
    )


def _with_local(entry: Entry, local: dict[str, Path]) -> Entry:
    images = tuple(local.get(ref, ref) if isinstance(ref, str) else ref for ref in entry.images)
    inputs = tuple(
        dataclasses.replace(
            given,
            files=tuple(local.get(r, r) if isinstance(r, str) else r for r in given.files),
        )
        for given in entry.inputs
    )
    return dataclasses.replace(entry, images=images, inputs=inputs)
