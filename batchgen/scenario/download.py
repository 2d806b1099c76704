"""Assets from the CDN into files: fetched with no credentials, verified, put in place.

A signed CDN URL is another origin: :class:`AssetDownloader` has its own session, which
sends no ``Authorization`` header and reads no ``~/.netrc``.  What arrives is judged by
:class:`ImageCheck` (pure): its first bytes must be an image's, it may not pass the
length announced or the asset's size, and when it ends it must end as a whole image does
(a PNG's ``IEND`` chunk, a JPEG's end-of-image marker, a WebP's RIFF length, a GIF's
trailer).  A short or cut answer is a failed download, tried again with a fresh URL,
never a success.  Files appear under their final name only once complete
(:class:`~batchgen.store.files.PartFile`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import anyio
from yarl import URL

from ..config import MAX_ASSET_BYTES
from ..errors import DownloadError
from ..store.faults import storage_error
from ..store.files import PartFile
from .transport import USER_AGENT, Proxies, open_session, proxy_options

DOWNLOAD_CHUNK = 256 * 1024
# Bytes gathered before a trip to a worker thread to write them: most images fit, so
# a download costs one trip (write and rename) instead of one per chunk.
WRITE_BUFFER = 4 * 1024 * 1024
# A file this small is written and put in place on the event loop: a trip to a worker
# thread (waking it, waiting for it) costs more than its write.
INLINE_BYTES = 64 * 1024
# A CDN connection that sends nothing for this long is given up (and tried again):
# a stalled transfer must not hold a download worker for the whole download timeout.
READ_TIMEOUT = 30.0
# Redirects a CDN may send a download through (each judged by redirect_refused).
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# Nor may a trickle (a byte now and then, never quite silent): past its first seconds,
# a download slower than this on average is given up, and tried again.
MIN_RATE = 16 * 1024  # bytes a second
MIN_RATE_AFTER = 20.0  # seconds
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
# Bytes an image's first bytes must reach before they are judged (WebP's is 12 long):
# a CDN's first piece may be a handful of bytes.
SIGNATURE_BYTES = 12
# Bytes of an image's start kept to read its width and height from (a JPEG's frame
# header comes after its EXIF and colour profile, within this in practice).
HEADER_BYTES = 64 * 1024
TAIL_BYTES = 32
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass(frozen=True, slots=True)
class Downloaded:
    path: Path
    size: int
    sha256: str
    # The image's width and height, read from its header, when it could be.
    dimensions: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Fetched:
    """An image fetched into memory, verified (for an output in object storage)."""

    data: bytes
    sha256: str
    dimensions: tuple[int, int] | None = None


class Fetcher(Protocol):
    """What the engine needs of a downloader (the tests' fake is one too)."""

    async def fetch(
        self,
        url: str,
        destination: Path,
        expected_size: int | None = None,
        *,
        fallback: Path | None = None,
        unit_id: str | None = None,
    ) -> Downloaded: ...


class MemoryFetcher(Protocol):
    """A downloader that can also hand an image over in memory, checked."""

    async def fetch_bytes(self, url: str, expected_size: int | None = None) -> Fetched: ...


def looks_like_an_image(head: bytes) -> bool:
    """Whether a file starts like a PNG, JPEG, GIF or WebP: an HTML error page served
    with status 200 must not become an image file."""
    if head.startswith(IMAGE_SIGNATURES):
        return True
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def ends_whole(head: bytes, tail: bytes, size: int) -> bool:
    """Whether an image that starts with ``head`` and ends with ``tail`` (its last
    bytes) is complete by its own format's rule."""
    if head.startswith(b"\x89PNG"):
        return tail.endswith(PNG_END)
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" in tail.rstrip(b"\x00\r\n ")[-2:]
    if head[:4] == b"RIFF":
        return len(head) >= 8 and int.from_bytes(head[4:8], "little") + 8 == size
    if head.startswith(b"GIF"):
        return tail.endswith(b"\x3b")
    return False


class PngWalk:
    """A PNG's chunks walked as its bytes arrive (pure): each chunk's length and CRC,
    so that cut image data followed by a valid end chunk is not taken for a whole
    image.  Whole: the bytes end exactly where an ``IEND`` chunk does, after image data,
    every CRC right."""

    def __init__(self) -> None:
        self._skip = len(IMAGE_SIGNATURES[0])  # the signature, judged elsewhere
        self._header = b""
        self._data_left = 0
        self._crc_bytes = b""
        self._in_chunk = False
        self._crc = 0
        self._last = b""
        self._image_data = False
        self.problem: str | None = None

    def feed(self, data: bytes) -> None:
        at = 0
        while at < len(data) and self.problem is None:
            if self._skip:
                taken = min(self._skip, len(data) - at)
                self._skip -= taken
                at += taken
            elif not self._in_chunk:
                taken = min(8 - len(self._header), len(data) - at)
                self._header += data[at : at + taken]
                at += taken
                if len(self._header) == 8:
                    self._begin(self._header)
            elif self._data_left:
                taken = min(self._data_left, len(data) - at)
                self._crc = zlib.crc32(data[at : at + taken], self._crc)
                self._data_left -= taken
                at += taken
            else:
                taken = min(4 - len(self._crc_bytes), len(data) - at)
                self._crc_bytes += data[at : at + taken]
                at += taken
                if len(self._crc_bytes) == 4:
                    self._end()

    def _begin(self, header: bytes) -> None:
        if self._last == b"IEND":
            self.problem = "bytes after its end chunk"
            return
        self._data_left = int.from_bytes(header[:4], "big")
        kind = header[4:8]
        self._crc = zlib.crc32(kind)
        self._last = kind
        self._image_data |= kind == b"IDAT"
        self._in_chunk, self._header = True, b""

    def _end(self) -> None:
        if int.from_bytes(self._crc_bytes, "big") != self._crc:
            self.problem = f"a damaged {self._last.decode('latin-1')} chunk (its CRC)"
        self._in_chunk, self._crc_bytes = False, b""

    def whole(self) -> bool:
        return (
            self.problem is None
            and self._last == b"IEND"
            and not self._in_chunk
            and not self._header
            and self._image_data
        )


class ImageCheck:
    """Judges an image as its bytes arrive (pure): feed each piece, then :meth:`finish`.
    Raises :class:`DownloadError` as soon as something is wrong."""

    def __init__(self, host: str | None, limit: int) -> None:
        self.host = host
        self.limit = limit
        self.received = 0
        self.head = bytearray()
        self.tail = b""
        self.digest = hashlib.sha256()
        self._judged = False
        self._png: PngWalk | None = None

    def feed(self, piece: bytes) -> None:
        self.received += len(piece)
        if self.received > self.limit:
            raise DownloadError(f"asset from {self.host} is longer than announced")
        if len(self.head) < HEADER_BYTES:
            self.head += piece[: HEADER_BYTES - len(self.head)]
        if self._png is not None:
            self._png.feed(piece)
        elif not self._judged and len(self.head) >= SIGNATURE_BYTES:
            # Judged once enough has arrived, however small the first piece (the bytes
            # before this piece, fewer than the signature's, are all in the head).
            walk = self._judge()
            if walk is not None:
                walk.feed(bytes(self.head[: self.received - len(piece)]))
                walk.feed(piece)
        self.tail = (self.tail + piece[-TAIL_BYTES:])[-TAIL_BYTES:]
        self.digest.update(piece)

    def finish(self, *wanted: int | None) -> str:
        """Check the whole (against each length in ``wanted`` that is known); its sha256."""
        for length in wanted:
            if length is not None and self.received != length:
                raise DownloadError(
                    f"asset from {self.host} was cut short: {self.received} of {length} bytes"
                )
        if self.received == 0:
            raise DownloadError(f"asset from {self.host} is empty")
        if not self._judged:
            self._judge()
        if not ends_whole(bytes(self.head), self.tail, self.received):
            raise DownloadError(f"asset from {self.host} is not a whole image (cut short)")
        if self._png is not None and not self._png.whole():
            why = self._png.problem or "its chunks end short"
            raise DownloadError(f"asset from {self.host} is not a whole PNG: {why}")
        return self.digest.hexdigest()

    def dimensions(self) -> tuple[int, int] | None:
        return image_dimensions(bytes(self.head))

    def _judge(self) -> PngWalk | None:
        """Whether it starts as an image does; a PNG's chunks are walked from here on."""
        if not looks_like_an_image(bytes(self.head[:SIGNATURE_BYTES])):
            raise DownloadError(f"what {self.host} sent is not an image")
        self._judged = True
        if self.head.startswith(IMAGE_SIGNATURES[0]):
            self._png = PngWalk()
        return self._png


@dataclass(frozen=True, slots=True)
class RateFloor:
    """The slowest a download may go (pure): ``min_rate`` bytes a second on average,
    judged once ``after`` seconds have passed since it began."""

    min_rate: float = MIN_RATE
    after: float = MIN_RATE_AFTER

    def too_slow(self, received: int, elapsed: float) -> bool:
        return elapsed > self.after and received < self.min_rate * elapsed


class AssetDownloader:
    """Fetches signed URLs with a session that has no credentials, into files that
    appear under their final name only once complete and verified."""

    def __init__(
        self, session: aiohttp.ClientSession, timeout: float, floor: RateFloor | None = None
    ) -> None:
        self._floor = floor or RateFloor()
        self._session = session
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=READ_TIMEOUT, sock_read=min(timeout, READ_TIMEOUT)
        )
        self._proxies = Proxies()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, seconds: float, floor: RateFloor | None = None
    ) -> AsyncIterator[AssetDownloader]:
        async with await open_session(headers={"User-Agent": USER_AGENT}) as session:
            yield cls(session, seconds, floor)

    async def fetch(
        self,
        url: str,
        destination: Path,
        expected_size: int | None = None,
        *,
        fallback: Path | None = None,
        unit_id: str | None = None,
    ) -> Downloaded:
        """Download ``url`` to ``destination`` (see :meth:`PartFile.finish` for
        ``fallback``)."""
        part = PartFile(destination)
        pending = bytearray()
        where = URL(url)
        try:
            async with self._answer(where, expected_size) as (response, check, announced):
                async for chunk in self._chunks(response, check, where):
                    pending += chunk
                    if len(pending) >= WRITE_BUFFER:
                        await anyio.to_thread.run_sync(part.write, bytes(pending))
                        pending.clear()
            sha256 = check.finish(announced, expected_size)
            if check.received <= INLINE_BYTES:
                placed = part.finish(bytes(pending), destination, fallback, sha256)
            else:
                placed = await anyio.to_thread.run_sync(
                    part.finish, bytes(pending), destination, fallback, sha256
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DownloadError(f"download from {where.host} failed: {type(exc).__name__}") from exc
        except OSError as exc:  # writing the file, not the network: a local fault
            raise storage_error(exc, destination) from exc
        finally:
            part.discard()  # quick, and done even when cancelled
        return Downloaded(placed, check.received, sha256, check.dimensions())

    async def fetch_bytes(self, url: str, expected_size: int | None = None) -> Fetched:
        """Download ``url`` into memory, judged as :meth:`fetch` judges a file."""
        where = URL(url)
        pieces: list[bytes] = []
        try:
            async with self._answer(where, expected_size) as (response, check, announced):
                async for chunk in self._chunks(response, check, where):
                    pieces.append(chunk)
            sha256 = check.finish(announced, expected_size)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DownloadError(f"download from {where.host} failed: {type(exc).__name__}") from exc
        return Fetched(b"".join(pieces), sha256, check.dimensions())

    async def _chunks(
        self, response: aiohttp.ClientResponse, check: ImageCheck, where: URL
    ) -> AsyncIterator[bytes]:
        """The body's pieces, each judged by ``check``, as long as they come fast enough."""
        began = time.monotonic()
        async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
            check.feed(chunk)
            elapsed = time.monotonic() - began
            if self._floor.too_slow(check.received, elapsed):
                raise DownloadError(
                    f"download from {where.host} too slow: {check.received} bytes in "
                    f"{elapsed:.0f}s (under {self._floor.min_rate / 1024:g} KiB/s)"
                )
            yield chunk

    @asynccontextmanager
    async def _answer(
        self, where: URL, expected_size: int | None
    ) -> AsyncIterator[tuple[aiohttp.ClientResponse, ImageCheck, int | None]]:
        """The CDN's answer, once it said 200, with the check its body must pass and the
        length it announced (None when it is encoded).  Redirects are followed here, each
        judged (:func:`redirect_refused`)."""
        url = where
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._session.get(
                url,
                timeout=self._timeout,
                allow_redirects=False,
                **proxy_options(self._proxies.for_url(url)),
            )
            location = response.headers.get("Location")
            if response.status not in REDIRECTS or location is None:
                break
            response.release()
            target = url.join(URL(location))
            refused = await redirect_refused(where, target)
            if refused:
                raise DownloadError(f"asset host {url.host}: {refused}", transient=False)
            url = target
        else:
            raise DownloadError(f"asset host {where.host}: more than {MAX_REDIRECTS} redirects")
        try:
            if response.status != 200:
                # 403 from a CDN usually means the signature expired: a fresh URL helps.
                transient = response.status in (403, 408, 429) or response.status >= 500
                raise DownloadError(
                    f"asset host {url.host} answered HTTP {response.status}",
                    transient=transient,
                )
            # An encoded body's length is not the image's (aiohttp decodes it).
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            announced = None if encoded else response.content_length
            limit = min(x for x in (announced, expected_size, MAX_ASSET_BYTES) if x is not None)
            yield response, ImageCheck(url.host, limit), announced
        finally:
            response.release()


async def redirect_refused(origin: URL, target: URL) -> str | None:
    """Why a CDN's redirect from ``origin`` to ``target`` is not followed, or None.  A
    signed URL may send on to another host (a storage bucket); never from there to a
    loopback, link-local or private address that is not the CDN's own origin (a server
    on this machine or this network, reached on the CDN's say-so)."""
    if target.scheme not in ("http", "https") or not target.host:
        return f"a redirect to {target.scheme or 'no'}:// refused"
    if (target.scheme, target.host, target.port) == (origin.scheme, origin.host, origin.port):
        return None
    try:
        found = await anyio.getaddrinfo(target.host, target.port or 443)
        addresses = {ipaddress.ip_address(entry[4][0]) for entry in found}
    except (OSError, ValueError):
        return None  # not resolvable here: the request that follows fails on its own
    for address in addresses:
        if address.is_loopback or address.is_link_local or address.is_private:
            return f"a redirect to {target.host} ({address}), a local address, refused"
        if address.is_reserved or address.is_multicast or address.is_unspecified:
            return f"a redirect to {target.host} ({address}), not a public address, refused"
    return None


def image_dimensions(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the start of a PNG, GIF, WebP or JPEG file; None if the
    bytes given do not say."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_dimensions(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(head)
    return None


def _webp_dimensions(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if len(head) < (25 if chunk == b"VP8L" else 30):
        return None
    if chunk == b"VP8 ":
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        return width, int.from_bytes(head[28:30], "little") & 0x3FFF
    if chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        return width, int.from_bytes(head[27:30], "little") + 1
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # padding
            offset += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            offset += 2
            continue
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        # Start-of-frame markers: C0-CF but DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if offset + 9 > len(data):
                return None
            height = int.from_bytes(data[offset + 5 : offset + 7], "big")
            width = int.from_bytes(data[offset + 7 : offset + 9], "big")
            return width, height
        offset += 2 + length
    return None
