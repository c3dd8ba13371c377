"""Capture metadata a clinician can use, read from the original EXIF before it is stripped.

What is kept: when the photo was taken, with which camera and lens, its original
orientation and its size (as displayed). What is never kept, here or anywhere: GPS,
serial numbers, owner/artist names, maker notes, software, comments. The result goes into
the media record encrypted under the patient key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from vault.pipeline.tiff import read_ifds

_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x9003, 0x9004
_OFFSET_TIME_ORIGINAL, _SUBSEC_TIME_ORIGINAL = 0x9011, 0x9291
_LENS_MODEL = 0xA434
_IFD0 = frozenset({_MAKE, _MODEL, _DATETIME})
_EXIF = frozenset({_DATETIME_ORIGINAL, _DATETIME_DIGITIZED, _OFFSET_TIME_ORIGINAL, _SUBSEC_TIME_ORIGINAL,
                   _LENS_MODEL})
_MAX_TEXT = 64


def extract_capture(exif: bytes | None, *, orientation: int, width: int, height: int) -> dict[str, Any]:
    """A JSON-ready dict with every key always present (``None`` when unknown).

    ``width``/``height`` are the displayed dimensions (orientation applied).
    """
    tags = read_ifds(exif, ifd0=_IFD0, exif=_EXIF) if exif else {}
    return {
        "captured_at": _timestamp(tags),
        "camera_make": _text(tags.get(_MAKE)),
        "camera_model": _text(tags.get(_MODEL)),
        "lens_model": _text(tags.get(_LENS_MODEL)),
        "orientation": orientation,
        "width": width,
        "height": height,
    }


def _text(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable()).strip()
    return cleaned[:_MAX_TEXT] or None


def _timestamp(tags: dict[int, Any]) -> str | None:
    """ISO 8601 local capture time, with fraction and UTC offset when the camera wrote them."""
    for tag in (_DATETIME_ORIGINAL, _DATETIME_DIGITIZED, _DATETIME):
        raw = tags.get(tag)
        if not isinstance(raw, str):
            continue
        try:
            moment = datetime.strptime(raw.strip(), "%Y:%m:%d %H:%M:%S")
        except ValueError:
            continue  # "0000:00:00 00:00:00" and friends: unknown, try the next tag
        text = moment.isoformat()
        if tag == _DATETIME_ORIGINAL:
            subsec = tags.get(_SUBSEC_TIME_ORIGINAL)
            if isinstance(subsec, str) and subsec.strip().isdigit():
                text += "." + subsec.strip()[:6]
            offset = tags.get(_OFFSET_TIME_ORIGINAL)
            if isinstance(offset, str) and _is_offset(offset.strip()):
                text += offset.strip()
        return text
    return None


def _is_offset(value: str) -> bool:
    return (len(value) == 6 and value[0] in "+-" and value[3] == ":"
            and value[1:3].isdigit() and value[4:6].isdigit())
