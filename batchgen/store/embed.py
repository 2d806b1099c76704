"""Images that carry their own story: the prompt and settings written into the file.

Once an image leaves its folder, the tools that show it read its story from the file:
a PNG text chunk named ``parameters`` in the form AUTOMATIC1111 set (read by Civitai and
most viewers), and XMP, where the IPTC standard marks AI-made images with
``Iptc4xmpExt:DigitalSourceType`` = ``trainedAlgorithmicMedia``.  Here the chunks are
inserted, never the image re-encoded: the pixels are the ones served, bit for bit.

- PNG: ``iTXt`` chunks ``parameters`` and ``XML:com.adobe.xmp`` after ``IHDR``.
- JPEG: an ``APP1`` XMP segment after ``SOI`` (and after a JFIF ``APP0``).
- WebP: an ``XMP `` chunk, with the ``VP8X`` header that announces it (made from the
  bitstream's own size when the file is a simple one).
"""

from __future__ import annotations

import json
import struct
import zlib
from html import escape
from typing import Any

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
XMP_JPEG_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"


def parameters_text(row: dict[str, Any]) -> str:
    """The A1111 ``parameters`` text: the prompt, a negative prompt line when there is
    one, then the settings as ``Name: value`` pairs."""
    params = _params(row)
    lines = [str(row.get("prompt") or "")]
    negative = params.get("negativePrompt")
    if negative:
        lines.append(f"Negative prompt: {negative}")
    settings = []
    if params.get("numInferenceSteps") is not None:
        settings.append(f"Steps: {params['numInferenceSteps']}")
    if params.get("guidance") is not None:
        settings.append(f"CFG scale: {params['guidance']}")
    if row.get("seed") is not None:
        settings.append(f"Seed: {row['seed']}")
    if row.get("width") and row.get("height"):
        settings.append(f"Size: {row['width']}x{row['height']}")
    settings.append(f"Model: {row.get('model') or ''}")
    if row.get("job_id"):
        settings.append(f"Job: {row['job_id']}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def xmp_packet(row: dict[str, Any]) -> bytes:
    prompt = escape(str(row.get("prompt") or ""))
    fields = "".join(
        f"<batchgen:{name}>{escape(str(row[key]))}</batchgen:{name}>"
        for name, key in (("model", "model"), ("seed", "seed"), ("jobId", "job_id"))
        if row.get(key) is not None
    )
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about=""'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"'
        ' xmlns:batchgen="urn:batchgen:ns:1.0">'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{prompt}</rdf:li>'
        "</rdf:Alt></dc:description>"
        f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>"
        f"{fields}"
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
        '<?xpacket end="w"?>'
    )
    return text.encode("utf-8")


def embed(content: bytes, row: dict[str, Any]) -> bytes:
    """``content`` (a PNG, JPEG or WebP) with its story written in; any other format is
    returned as it is."""
    if content.startswith(PNG_SIGNATURE):
        return _png(content, row)
    if content.startswith(b"\xff\xd8"):
        return _jpeg(content, xmp_packet(row))
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return _webp(content, xmp_packet(row))
    return content


def _png(content: bytes, row: dict[str, Any]) -> bytes:
    # Right after IHDR, before the image data: some readers stop at the first IDAT.
    if content[12:16] != b"IHDR":
        return content
    (length,) = struct.unpack(">I", content[8:12])
    at = 8 + 12 + length
    chunks = _itxt("parameters", parameters_text(row).encode("utf-8"))
    chunks += _itxt("XML:com.adobe.xmp", xmp_packet(row))
    return content[:at] + chunks + content[at:]


def _itxt(keyword: str, text: bytes) -> bytes:
    # keyword, no compression, no language tag, no translated keyword, the text.
    data = keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text
    kind = b"iTXt"
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _jpeg(content: bytes, xmp: bytes) -> bytes:
    payload = XMP_JPEG_HEADER + xmp
    if len(payload) + 2 > 0xFFFF:
        return content
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    at = 2
    if content[2:4] == b"\xff\xe0":  # after the JFIF header, where readers expect it
        at = 4 + struct.unpack(">H", content[4:6])[0]
    return content[:at] + segment + content[at:]


def _webp(content: bytes, xmp: bytes) -> bytes:
    chunks = _riff_chunks(content)
    if not chunks:
        return content
    kinds = [kind for kind, _ in chunks]
    if "VP8X" not in kinds:
        size = _webp_size(chunks)
        if size is None:
            return content
        width, height = size
        header = bytes([0, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
        header += (height - 1).to_bytes(3, "little")
        chunks.insert(0, ("VP8X", header))
    kind, header = chunks[0]
    flags = header[0] | 0x04  # the XMP flag
    chunks[0] = (kind, bytes([flags]) + header[1:])
    chunks = [(k, d) for k, d in chunks if k != "XMP "] + [("XMP ", xmp)]
    body = b"WEBP" + b"".join(
        k.encode("ascii") + struct.pack("<I", len(d)) + d + (b"\x00" if len(d) % 2 else b"")
        for k, d in chunks
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _riff_chunks(content: bytes) -> list[tuple[str, bytes]]:
    chunks = []
    at = 12
    while at + 8 <= len(content):
        kind = content[at : at + 4].decode("ascii", "replace")
        (size,) = struct.unpack("<I", content[at + 4 : at + 8])
        chunks.append((kind, content[at + 8 : at + 8 + size]))
        at += 8 + size + (size % 2)
    return chunks


def _webp_size(chunks: list[tuple[str, bytes]]) -> tuple[int, int] | None:
    for kind, data in chunks:
        if kind == "VP8 " and len(data) >= 10:
            width, height = struct.unpack("<HH", data[6:10])
            return width & 0x3FFF, height & 0x3FFF
        if kind == "VP8L" and len(data) >= 5:
            bits = int.from_bytes(data[1:5], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _params(row: dict[str, Any]) -> dict[str, Any]:
    params = row.get("params")
    if isinstance(params, str):  # metadata.jsonl keeps them as a JSON string
        try:
            params = json.loads(params)
        except ValueError:
            params = {}
    return params if isinstance(params, dict) else {}
