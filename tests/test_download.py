"""Assets into files: judged as the bytes arrive, whole by their own format's rule, and
never put over a file they were not given."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from batchgen.errors import DownloadError
from batchgen.scenario.download import (
    AssetDownloader,
    ImageCheck,
    image_dimensions,
    looks_like_an_image,
)
from batchgen.sim.png import make_png

PNG = make_png(40, 24, "a test image")


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + frame + b"\xff\xda\x00\x02" + b"\x00" * 20 + b"\xff\xd9"


def webp(width: int, height: int) -> bytes:
    chunk = (
        b"VP8L"
        + struct.pack("<I", 5)
        + b"\x2f"
        + struct.pack("<I", (width - 1) | ((height - 1) << 14))
    )
    chunk += b"\x00"  # pad to an even size
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


@pytest.mark.parametrize(
    ("head", "image"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", True),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", True),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", True),
        (b"GIF89a\x01\x00", True),
        (b"<html><body>Access denied</body></html>", False),
        (b'{"reason": "expired"}', False),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", False),
    ],
)
def test_only_image_bytes_pass_for_an_image(head: bytes, image: bool) -> None:
    assert looks_like_an_image(head) is image


@pytest.mark.parametrize(
    ("content", "size"),
    [(PNG, (40, 24)), (jpeg(320, 200), (320, 200)), (webp(99, 7), (99, 7)), (gif(5, 6), (5, 6))],
    ids=["png", "jpeg", "webp", "gif"],
)
def test_a_whole_image_passes_in_any_pieces_and_its_size_is_read(
    content: bytes, size: tuple[int, int]
) -> None:
    for piece in (1, 3, 4096):
        check = ImageCheck("cdn", 10_000)
        for start in range(0, len(content), piece):
            check.feed(content[start : start + piece])
        assert check.finish(len(content)) == hashlib.sha256(content).hexdigest()
        assert check.dimensions() == size == image_dimensions(content)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (PNG[: len(PNG) - 12], "not a whole image"),  # no IEND: half a PNG is not a PNG
        (PNG[:-1], "not a whole image"),
        (jpeg(8, 8)[:-2], "not a whole image"),  # no end-of-image marker
        (webp(8, 8)[:-2], "not a whole image"),  # shorter than its RIFF length says
        (gif(8, 8)[:-1], "not a whole image"),
        (b"<html>Service unavailable</html>", "not an image"),
        (b"", "empty"),
    ],
)
def test_a_cut_or_foreign_file_is_never_an_image(content: bytes, message: str) -> None:
    check = ImageCheck("cdn", 10_000)
    with pytest.raises(DownloadError, match=message):
        for start in range(0, len(content), 5):
            check.feed(content[start : start + 5])
        check.finish()


def test_an_image_longer_than_announced_is_refused_as_it_arrives() -> None:
    check = ImageCheck("cdn", 10)
    with pytest.raises(DownloadError, match="longer than announced"):
        check.feed(PNG)


def test_a_length_that_disagrees_with_what_arrived_is_a_cut_download() -> None:
    check = ImageCheck("cdn", 10_000)
    check.feed(PNG)
    with pytest.raises(DownloadError, match=f"cut short: {len(PNG)} of {len(PNG) + 5} bytes"):
        check.finish(None, len(PNG) + 5)


@pytest.fixture
async def cdn() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(content: bytes, **headers: str) -> str:
        async def serve(request: web.Request) -> web.Response:
            return web.Response(body=content, content_type="image/png", headers=headers)

        app = web.Application()
        app.router.add_get("/asset.png", serve)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}/asset.png?Signature=abc"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.anyio
@pytest.mark.parametrize("hard_links", [True, False], ids=["links", "no-links"])
@pytest.mark.parametrize(
    ("already_there", "with_fallback", "lands_in", "destination_holds"),
    [
        # Nothing there: the name is taken.
        (None, True, "destination", PNG),
        # Someone else's bytes: they are kept and the image goes to the fallback name.
        (b"the user's own file", True, "fallback", b"the user's own file"),
        # These very bytes (a run killed before it noted them): adopted as they are.
        (PNG, True, "destination", PNG),
        # No fallback: the unit's own earlier file, replaced.
        (b"a damaged earlier download", False, "destination", PNG),
    ],
)
async def test_a_download_never_replaces_a_file_it_was_not_given(
    cdn: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hard_links: bool,
    already_there: bytes | None,
    with_fallback: bool,
    lands_in: str,
    destination_holds: bytes,
) -> None:
    if not hard_links:  # as on file systems without them (FAT, some network mounts)

        def refuse(*_: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr("batchgen.store.files.os.link", refuse)
    url = await cdn(PNG)
    destination = tmp_path / "images" / "cats" / "0001.png"
    fallback = destination.with_name("0001~unit-0.png")
    # The folder is made (checked to be the output's own) by whoever chose the name.
    destination.parent.mkdir(parents=True)
    if already_there is not None:
        destination.write_bytes(already_there)
    async with AssetDownloader.open(10) as fetcher:
        downloaded = await fetcher.fetch(
            url, destination, len(PNG), fallback=fallback if with_fallback else None
        )
    expected = destination if lands_in == "destination" else fallback
    assert downloaded.path == expected and downloaded.dimensions == (40, 24)
    assert downloaded.sha256 == hashlib.sha256(PNG).hexdigest()
    for path, content in {expected: PNG, destination: destination_holds}.items():
        assert path.read_bytes() == content
    assert fallback.exists() == (lands_in == "fallback")
    assert not list(tmp_path.rglob("*.part"))  # noqa: ASYNC240 - the test's own look


@pytest.mark.anyio
async def test_a_png_cut_short_with_a_short_content_length_is_a_failed_download(
    cdn: Callable[..., Any], tmp_path: Path
) -> None:
    # The CDN announces the short length and the asset record gives none: only the
    # image's own structure can tell it is half a PNG.
    url = await cdn(PNG[: len(PNG) // 2])
    async with AssetDownloader.open(10) as fetcher:
        with pytest.raises(DownloadError, match="not a whole image"):
            await fetcher.fetch(url, tmp_path / "a.png")
    assert not list(tmp_path.iterdir())  # noqa: ASYNC240 - the test's own look


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("content", "announced", "error"),
    [
        (PNG, None, None),
        (PNG[: len(PNG) // 2], None, "not a whole image"),
        (PNG, len(PNG) + 5, "cut short"),
        (b"<html>the CDN's error page</html>", None, "is not an image"),
    ],
)
async def test_an_image_fetched_into_memory_is_judged_as_a_file_is(
    cdn: Callable[..., Any], content: bytes, announced: int | None, error: str | None
) -> None:
    """The bucket's path: nothing on disk, the same verdicts."""
    url = await cdn(content)
    async with AssetDownloader.open(10) as fetcher:
        if error is not None:
            with pytest.raises(DownloadError, match=error):
                await fetcher.fetch_bytes(url, announced)
            return
        fetched = await fetcher.fetch_bytes(url, announced)
    assert fetched.data == PNG and fetched.dimensions == (40, 24)
    assert fetched.sha256 == hashlib.sha256(PNG).hexdigest()


def test_a_crc_is_not_needed_to_find_the_end() -> None:
    # IEND with any CRC would be a different chunk: the check uses the exact bytes.
    wrong = PNG[:-4] + struct.pack(">I", zlib.crc32(b"x"))
    check = ImageCheck("cdn", 10_000)
    check.feed(wrong)
    with pytest.raises(DownloadError):
        check.finish()
