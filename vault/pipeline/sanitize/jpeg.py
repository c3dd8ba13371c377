"""JPEG: keep the frame, tables and entropy-coded scans verbatim; drop every other segment.

Kept: SOI, SOF0/1/2, DHT, DQT, DRI, SOS with its scan data (RSTn and 0xFF00 stuffing are
part of it; progressive files have many scans), APP0 JFIF rewritten without its
thumbnail, every APP2 ICC_PROFILE chunk, APP14 Adobe (its transform flag changes how the
decoder converts colours), EOI. Everything else goes: APP1 Exif/XMP/extended XMP, APP2
MPF/FlashPix, APP11 JUMBF/C2PA, APP13 IPTC/Photoshop, COM, APP0 JFXX, APP3-15, and any
bytes after EOI (MPF second images, Samsung trailers, an appended ZIP of a polyglot).
A minimal APP1 Exif holding only Orientation is written when the original was rotated.
"""

from __future__ import annotations

import re
import struct
from dataclasses import replace

from vault.errors import UnsupportedMedia
from vault.pipeline.sanitize.base import Sanitized, Sanitizer, corrupt
from vault.pipeline.sanitize.orientation import resolve_orientation
from vault.pipeline.sniff import JPEG
from vault.pipeline.tiff import orientation_exif, strip_exif_prefix

# The first byte pair that ends entropy-coded data: 0xFF followed by anything but a
# stuffed zero, a restart marker or another fill byte.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")

_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_DHT, _DQT, _DRI = 0xC4, 0xDB, 0xDD
_APP0, _APP1, _APP2, _APP14, _COM = 0xE0, 0xE1, 0xE2, 0xEE, 0xFE
# Baseline, extended sequential and progressive Huffman: what libjpeg(-turbo) in Pillow
# decodes everywhere. Lossless, hierarchical and arithmetic-coded frames are refused.
_SOF_SUPPORTED = frozenset({0xC0, 0xC1, 0xC2})
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_TABLES = frozenset({_DHT, _DQT, _DRI})

_JFIF = b"JFIF\x00"
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_ICC = b"ICC_PROFILE\x00"
_ADOBE = b"Adobe"
# Encoders write a handful of progressive scans (libjpeg: 10, mozjpeg: up to ~20); tens of
# thousands are a known CPU-exhaustion trick, since every scan revisits every block.
MAX_SCANS = 256


class JpegSanitizer(Sanitizer):
    mimetypes = frozenset({JPEG})

    def sanitize(self, data: bytes) -> Sanitized:
        found = self._walk(data)
        view = memoryview(data)
        cleaned = b"".join(piece if isinstance(piece, bytes) else view[piece[0]:piece[1]] for piece in found.layout or ())
        return replace(found, data=cleaned)

    def unchanged(self, data: bytes) -> Sanitized | None:
        """What :meth:`sanitize` returns when its output is ``data`` itself, else None:
        the layout is compared with ``data`` in place, no cleaned copy is made (the
        server's re-check of a 5 MB stripped file, :mod:`vault.media.recheck`)."""
        found = self._walk(data)
        view, pos = memoryview(data), 0
        for piece in found.layout or ():
            if isinstance(piece, bytes):
                if view[pos:pos + len(piece)] != piece:
                    return None
                pos += len(piece)
            else:
                start, end = piece
                # A kept range at its own offset is equal to itself: nothing to compare.
                if start != pos and view[pos:pos + end - start] != view[start:end]:
                    return None
                pos += end - start
        return replace(found, data=data) if pos == len(data) else None

    def _walk(self, data: bytes) -> Sanitized:
        """The sanitized result with its layout, ``data`` left empty (the callers fill it)."""
        if not data.startswith(b"\xff\xd8"):
            raise corrupt("no JPEG start marker")
        view = memoryview(data)
        kept: list[tuple[int, int]] = []  # byte ranges of ``data`` copied verbatim, in order
        jfif: bytes | None = None
        exif: bytes | None = None
        xmp: bytes | None = None
        size: tuple[int, int] | None = None
        scans = 0
        pos, end = 2, len(data)
        while True:
            if pos >= end or data[pos] != 0xFF:
                raise corrupt("truncated or misplaced marker")
            while pos < end and data[pos] == 0xFF:
                pos += 1
            if pos >= end:
                raise corrupt("truncated marker")
            marker = data[pos]
            start, pos = pos - 1, pos + 1
            if marker == _EOI:
                break
            if marker == _SOI or marker == 0x00 or 0xD0 <= marker <= 0xD7 or marker == 0x01:
                raise corrupt("marker out of place")
            if pos + 2 > end:
                raise corrupt("truncated segment")
            length = (data[pos] << 8) | data[pos + 1]
            if length < 2 or pos + length > end:
                raise corrupt("segment runs past the end")
            body = view[pos + 2:pos + length]
            pos += length
            segment = (start, pos)

            if marker == _APP0:
                if jfif is None and body[:5] == _JFIF:
                    jfif = _jfif_without_thumbnail(body)
            elif marker == _APP1:
                if body[:6] == b"Exif\x00\x00":
                    # Pillow reads the first Exif block; so do we, for the same orientation.
                    exif = exif if exif is not None else strip_exif_prefix(bytes(body))
                elif body[:len(_XMP)] == _XMP:
                    xmp = bytes(body[len(_XMP):])
            elif marker == _APP2:
                if body[:len(_ICC)] == _ICC:
                    kept.append(segment)
            elif marker == _APP14:
                if body[:len(_ADOBE)] == _ADOBE:
                    kept.append(segment)
            elif 0xE3 <= marker <= 0xEF or marker == _COM:
                pass
            elif marker in _TABLES:
                kept.append(segment)
            elif marker in _SOF_SUPPORTED:
                if size is not None:
                    raise corrupt("more than one frame header")
                size = _frame_size(body)
                kept.append(segment)
            elif marker in _SOF_OTHER:
                raise UnsupportedMedia("this JPEG coding process (lossless, hierarchical or arithmetic) is not supported")
            elif marker == _SOS:
                if size is None:
                    raise corrupt("scan before frame header")
                _check_scan_header(body)
                scans += 1
                if scans > MAX_SCANS:
                    raise corrupt("too many scans")
                found = _SCAN_END.search(data, pos)
                if found is None:
                    raise corrupt("truncated scan data")
                scan_end = found.start()
                kept.append((segment[0], scan_end))  # the scan header and its entropy-coded data
                pos = scan_end
            else:
                raise corrupt("unexpected marker")
        if size is None or scans == 0:
            raise corrupt("no image data")

        orientation = resolve_orientation(exif=exif, xmp=xmp)
        head: list[bytes] = [b"\xff\xd8"]
        if jfif is not None:
            head.append(jfif)
        if orientation != 1:
            head.append(_app1_exif(orientation_exif(orientation)))
        # Everything after EOI is dropped here, by not copying it.
        layout: tuple[bytes | tuple[int, int], ...] = (b"".join(head), *_merged(kept), b"\xff\xd9")
        width, height = size
        return Sanitized(mime=JPEG, data=b"", width=width, height=height,
                         orientation=orientation, original_exif=exif, layout=layout)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Adjacent ranges joined: tables, frame and scans usually follow each other."""
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def _jfif_without_thumbnail(body: memoryview) -> bytes:
    # JFIF\0, version (2), units (1), densities (2+2), thumbnail width and height (1+1).
    if len(body) < 14:
        raise corrupt("short JFIF header")
    fields = bytes(body[:12]) + b"\x00\x00"
    return b"\xff\xe0" + struct.pack(">H", len(fields) + 2) + fields


def _app1_exif(tiff: bytes) -> bytes:
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _frame_size(body: memoryview) -> tuple[int, int]:
    if len(body) < 6:
        raise corrupt("short frame header")
    _precision, height, width, components = struct.unpack(">BHHB", body[:6])
    if len(body) != 6 + 3 * components or not 1 <= components <= 4:
        raise corrupt("bad frame header")
    if width == 0 or height == 0:
        # Height 0 defers to a DNL marker, which we do not accept.
        raise corrupt("frame without dimensions")
    return width, height


def _check_scan_header(body: memoryview) -> None:
    if len(body) < 1 or len(body) != 1 + 2 * body[0] + 3 or not 1 <= body[0] <= 4:
        raise corrupt("bad scan header")
