"""Just enough TIFF/EXIF to read a few capture tags and to write an Orientation-only EXIF.

A hand-written reader rather than Pillow's ``Image.Exif``: it reads only the tags asked
for, never follows more than the two IFDs we need, bounds every offset, and never emits
warnings (Pillow warns on odd EXIF, which pytest and careful logs treat as errors).
"""

from __future__ import annotations

import re
import struct
from typing import Any

ORIENTATION = 0x0112
EXIF_IFD = 0x8769

_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_MAX_ENTRIES = 1024
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(?:="|>)([0-9])')


def strip_exif_prefix(blob: bytes) -> bytes:
    """EXIF blocks come with or without the ``Exif\\0\\0`` prefix (JPEG APP1 has it)."""
    return blob[6:] if blob.startswith(b"Exif\x00\x00") else blob


def read_ifds(tiff: bytes, *, ifd0: frozenset[int], exif: frozenset[int] = frozenset()) -> dict[int, Any]:
    """Values of the wanted tags from IFD0 and the Exif sub-IFD; damaged parts are skipped.

    Capture metadata is a convenience: a broken EXIF block must not reject the photo (the
    block is dropped from the file anyway), so this never raises on bad input.
    """
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return {}
    order = "<" if tiff[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", tiff, 4)
    found = _read_ifd(tiff, order, offset, ifd0 | {EXIF_IFD})
    pointer = found.pop(EXIF_IFD, None)
    if exif and isinstance(pointer, int) and pointer != offset:
        found.update(_read_ifd(tiff, order, pointer, exif))
    return {tag: value for tag, value in found.items() if tag in ifd0 or tag in exif}


def _read_ifd(tiff: bytes, order: str, offset: int, wanted: frozenset[int] | set[int]) -> dict[int, Any]:
    if offset < 8 or offset + 2 > len(tiff):
        return {}
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    count = min(count, _MAX_ENTRIES, (len(tiff) - offset - 2) // 12)
    values: dict[int, Any] = {}
    for index in range(count):
        tag, kind, n, raw = struct.unpack_from(order + "HHI4s", tiff, offset + 2 + 12 * index)
        if tag not in wanted or kind not in _TYPE_SIZES or n == 0:
            continue
        size = _TYPE_SIZES[kind] * n
        if size <= 4:
            data = raw[:size]
        else:
            (where,) = struct.unpack(order + "I", raw)
            if where + size > len(tiff):
                continue
            data = tiff[where:where + size]
        value = _decode(order, kind, n, data)
        if value is not None:
            values[tag] = value
    return values


def _decode(order: str, kind: int, n: int, data: bytes) -> Any:
    if kind == 2:
        text = data.split(b"\x00", 1)[0].strip()
        return text.decode("utf-8", "replace") if text else None
    if kind in (3, 4):
        return struct.unpack_from(order + ("H" if kind == 3 else "I"), data)[0]
    if kind == 5:
        numerator, denominator = struct.unpack_from(order + "II", data)
        return numerator / denominator if denominator else None
    return None


def orientation_of(tiff: bytes) -> int | None:
    value = read_ifds(tiff, ifd0=frozenset({ORIENTATION})).get(ORIENTATION)
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def xmp_orientation(packet: bytes) -> int | None:
    """Orientation from an XMP packet, read the way Pillow's ``exif_transpose`` reads it."""
    match = _XMP_ORIENTATION.search(packet)
    if match is None:
        return None
    value = int(match[1])
    return value if 1 <= value <= 8 else None


def orientation_exif(orientation: int) -> bytes:
    """A complete big-endian TIFF block whose only tag is Orientation (26 bytes)."""
    if not 1 <= orientation <= 8:
        raise ValueError("orientation must be 1..8")
    return b"MM\x00*" + struct.pack(">IHHHIHHI", 8, 1, ORIENTATION, 3, 1, orientation, 0, 0)


_XMP_HEAD = b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/"/>'
_XMP_TAIL = b'<?xpacket end="w"?>'


def empty_xmp(length: int) -> bytes:
    """A valid XMP packet of exactly ``length`` bytes that says nothing.

    Readers that expect XMP where an item was find a well-formed, empty one. The filler
    is whitespace inside the packet, which is how XMP pads packets for in-place edits.
    """
    room = length - len(_XMP_HEAD) - len(_XMP_TAIL)
    if room < 0:
        return b" " * length
    return _XMP_HEAD + b" " * room + _XMP_TAIL
