"""PNG (and APNG): keep critical chunks and the ancillaries that change rendering.

Kept, in their original order: IHDR, PLTE, IDAT, IEND, tRNS, gAMA, cHRM, sRGB, iCCP, sBIT,
pHYs, bKGD, cICP, mDCV, cLLI and the APNG chunks acTL/fcTL/fdAT. Dropped: tEXt, zTXt,
iTXt (XMP lives there), eXIf, tIME and every chunk we do not know, private ones included.
Every chunk's CRC is verified; bytes after IEND are dropped.
"""

from __future__ import annotations

import struct
import zlib

from vault.pipeline.sanitize.base import Sanitized, Sanitizer, corrupt
from vault.pipeline.sanitize.orientation import resolve_orientation
from vault.pipeline.sniff import PNG
from vault.pipeline.tiff import orientation_exif, strip_exif_prefix

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_KEEP = frozenset(
    {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP",
     b"sBIT", b"pHYs", b"bKGD", b"cICP", b"mDCV", b"cLLI", b"acTL", b"fcTL", b"fdAT"}
)
_XMP_KEY = b"XML:com.adobe.xmp"
# ImageMagick stores EXIF as hex text under this keyword, and Pillow honours it.
_RAW_EXIF_KEY = b"Raw profile type exif"
# Metadata text is only read for orientation; a bounded inflate keeps a zip bomb harmless.
_MAX_TEXT = 1 << 20


class PngSanitizer(Sanitizer):
    mimetypes = frozenset({PNG})

    def sanitize(self, data: bytes) -> Sanitized:
        if not data.startswith(_SIGNATURE):
            raise corrupt("no PNG signature")
        view = memoryview(data)
        kept: list[memoryview] = []
        exif: bytes | None = None
        xmp: bytes | None = None
        size: tuple[int, int] | None = None
        has_idat = False
        pos, end = len(_SIGNATURE), len(data)
        while True:
            if pos + 12 > end:
                raise corrupt("truncated chunk")
            length, kind = struct.unpack_from(">I4s", data, pos)
            if length > 0x7FFFFFFF or pos + 12 + length > end:
                raise corrupt("chunk runs past the end")
            if not kind.isalpha():
                raise corrupt("bad chunk type")
            body = view[pos + 8:pos + 8 + length]
            (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
            if zlib.crc32(body, zlib.crc32(kind)) != crc:
                raise corrupt("chunk checksum mismatch")
            chunk = view[pos:pos + 12 + length]
            pos += 12 + length

            if size is None:
                if kind != b"IHDR":
                    raise corrupt("IHDR is not the first chunk")
                size = _header_size(body)
            elif kind == b"IHDR":
                raise corrupt("second IHDR")
            if kind == b"IDAT":
                has_idat = True
            if kind in _KEEP:
                kept.append(chunk)
            elif kind == b"eXIf":
                exif = exif if exif is not None else strip_exif_prefix(bytes(body))
            elif kind in (b"tEXt", b"zTXt", b"iTXt"):
                keyword, text = _text(kind, body)
                if keyword == _XMP_KEY:
                    xmp = text
                elif keyword == _RAW_EXIF_KEY and exif is None and text is not None:
                    exif = _raw_profile_exif(text)
            if kind == b"IEND":
                break
        if size is None or not has_idat:
            raise corrupt("no image data")

        orientation = resolve_orientation(exif=exif, xmp=xmp)
        parts: list[bytes | memoryview] = [_SIGNATURE, kept[0]]
        if orientation != 1:
            # Right after IHDR: eXIf must precede IDAT, and this also keeps it ahead of an
            # APNG's fcTL/IDAT pair.
            parts.append(_chunk(b"eXIf", orientation_exif(orientation)))
        parts.extend(kept[1:])
        width, height = size
        return Sanitized(mime=PNG, data=b"".join(parts), width=width, height=height,
                         orientation=orientation, original_exif=exif)


def _header_size(body: memoryview) -> tuple[int, int]:
    if len(body) != 13:
        raise corrupt("bad IHDR")
    width, height = struct.unpack_from(">II", body)
    if width == 0 or height == 0 or width > 0x7FFFFFFF or height > 0x7FFFFFFF:
        raise corrupt("bad image size")
    return width, height


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def _text(kind: bytes, body: memoryview) -> tuple[bytes, bytes | None]:
    """Keyword and (decompressed, bounded) text of a text chunk; text is None if unreadable."""
    raw = bytes(body)
    keyword, sep, rest = raw.partition(b"\x00")
    if not sep:
        return keyword, None
    if kind == b"tEXt":
        return keyword, rest
    if kind == b"zTXt":
        return keyword, _inflate(rest[1:]) if rest[:1] == b"\x00" else None
    # iTXt: compression flag, method, language tag\0, translated keyword\0, text.
    if len(rest) < 2:
        return keyword, None
    flag, method, rest = rest[0], rest[1], rest[2:]
    parts = rest.split(b"\x00", 2)
    if len(parts) != 3:
        return keyword, None
    text = parts[2]
    if flag:
        return keyword, _inflate(text) if method == 0 else None
    return keyword, text


def _inflate(data: bytes) -> bytes | None:
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(data, _MAX_TEXT)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else text


def _raw_profile_exif(text: bytes) -> bytes | None:
    # "\nexif\n    1234\n<hex lines>": Pillow skips three lines and reads the rest as hex.
    try:
        blob = bytes.fromhex("".join(text.decode("ascii").split("\n")[3:]))
    except (UnicodeDecodeError, ValueError):
        return None
    return strip_exif_prefix(blob)
