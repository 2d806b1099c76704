"""Real, small PNG files of any size, made with zlib alone."""

from __future__ import annotations

import hashlib
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png(width: int, height: int, seed: str) -> bytes:
    """An RGB image with a colour band pattern derived from ``seed``: each seed gives
    different bytes, and identical rows keep the file small at any size."""
    colours = hashlib.sha256(seed.encode()).digest()
    band = max(width // 8, 1)
    row = bytearray(b"\x00")  # filter type 0 for the row
    for x in range(width):
        offset = (x // band % 8) * 3
        row += colours[offset : offset + 3]
    raw = bytes(row) * height
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )
