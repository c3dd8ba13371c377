"""WebP (RIFF): keep the image chunks, drop EXIF, XMP and unknown chunks, fix the headers.

Kept: VP8X (its EXIF/XMP flags rewritten), ICCP, ANIM, ANMF (its own sub-chunks filtered
the same way), ALPH, VP8, VP8L. The RIFF size is recomputed; bytes after the RIFF end
are dropped.
"""

from __future__ import annotations

import struct

from vault.pipeline.sanitize.base import Sanitized, Sanitizer, corrupt
from vault.pipeline.sanitize.orientation import resolve_orientation
from vault.pipeline.sniff import WEBP
from vault.pipeline.tiff import orientation_exif, strip_exif_prefix

_KEEP = frozenset({b"VP8X", b"ICCP", b"ANIM", b"ANMF", b"ALPH", b"VP8 ", b"VP8L"})
_FRAME_KEEP = frozenset({b"ALPH", b"VP8 ", b"VP8L"})
_FLAG_XMP, _FLAG_EXIF = 0x04, 0x08


class WebpSanitizer(Sanitizer):
    mimetypes = frozenset({WEBP})

    def sanitize(self, data: bytes) -> Sanitized:
        if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
            raise corrupt("no RIFF/WEBP header")
        (riff_size,) = struct.unpack_from("<I", data, 4)
        if riff_size < 4 or riff_size + 8 > len(data):
            raise corrupt("RIFF size runs past the end")
        # Anything past the RIFF's declared end is a trailer, dropped with the slice.
        chunks = list(_chunks(memoryview(data)[12:8 + riff_size]))
        if not chunks:
            raise corrupt("no chunks")

        exif: bytes | None = None
        xmp: bytes | None = None
        kept: list[tuple[bytes, bytes | memoryview]] = []
        for kind, body in chunks:
            if kind == b"EXIF":
                exif = exif if exif is not None else strip_exif_prefix(bytes(body))
            elif kind == b"XMP ":
                xmp = bytes(body)
            elif kind == b"ANMF":
                kept.append((kind, _clean_frame(body)))
            elif kind in _KEEP:
                kept.append((kind, body))

        first_kind, first = kept[0] if kept else (b"", b"")
        if first_kind == b"VP8X":
            width, height = _canvas_size(first)
        elif first_kind in (b"VP8 ", b"VP8L") and len(kept) == 1:
            width, height = _bitstream_size(first_kind, first)
        else:
            raise corrupt("unexpected chunk layout")
        if not any(kind in (b"VP8 ", b"VP8L", b"ANMF") for kind, _ in kept):
            raise corrupt("no image data")

        orientation = resolve_orientation(exif=exif, xmp=xmp)
        if first_kind == b"VP8X":
            flags = first[0] & ~(_FLAG_XMP | _FLAG_EXIF)
            if orientation != 1:
                flags |= _FLAG_EXIF
                kept.append((b"EXIF", orientation_exif(orientation)))
            kept[0] = (b"VP8X", bytes([flags]) + bytes(first[1:]))
        body = b"".join(_chunk(kind, payload) for kind, payload in kept)
        cleaned = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body
        return Sanitized(mime=WEBP, data=cleaned, width=width, height=height,
                         orientation=orientation, original_exif=exif)


def _chunks(view: memoryview):
    pos, end = 0, len(view)
    while pos < end:
        if pos + 8 > end:
            raise corrupt("truncated chunk header")
        kind = bytes(view[pos:pos + 4])
        (size,) = struct.unpack_from("<I", view, pos + 4)
        if pos + 8 + size > end:
            raise corrupt("chunk runs past the end")
        yield kind, view[pos + 8:pos + 8 + size]
        pos += 8 + size + (size & 1)


def _chunk(kind: bytes, payload: bytes | memoryview) -> bytes:
    pad = b"\x00" if len(payload) & 1 else b""
    return kind + struct.pack("<I", len(payload)) + bytes(payload) + pad


def _clean_frame(body: memoryview) -> bytes:
    # An animation frame: 16 bytes of position/size/duration/flags, then its own chunks.
    if len(body) < 16:
        raise corrupt("short animation frame")
    frames = [_chunk(kind, payload) for kind, payload in _chunks(body[16:]) if kind in _FRAME_KEEP]
    if not frames:
        raise corrupt("animation frame without image data")
    return bytes(body[:16]) + b"".join(frames)


def _canvas_size(body: bytes | memoryview) -> tuple[int, int]:
    if len(body) != 10:
        raise corrupt("bad VP8X header")
    width = 1 + int.from_bytes(bytes(body[4:7]), "little")
    height = 1 + int.from_bytes(bytes(body[7:10]), "little")
    return width, height


def _bitstream_size(kind: bytes, body: bytes | memoryview) -> tuple[int, int]:
    if kind == b"VP8 ":
        if len(body) < 10 or bytes(body[3:6]) != b"\x9d\x01\x2a":
            raise corrupt("bad VP8 frame header")
        width, height = struct.unpack_from("<HH", body, 6)
        width, height = width & 0x3FFF, height & 0x3FFF
    else:
        if len(body) < 5 or body[0] != 0x2F:
            raise corrupt("bad VP8L header")
        (bits,) = struct.unpack_from("<I", body, 1)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if width == 0 or height == 0:
        raise corrupt("bad image size")
    return width, height
