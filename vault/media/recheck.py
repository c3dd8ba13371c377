"""The server's re-check of what a decoder worker returns: a compromised worker could lie.

Only pure-Python container walks run here (the same sanitizers the worker ran), never a
pixel decoder: a stripped file must be a fixed point of its sanitizer (so it holds only
the allow-listed segments, chunks or boxes), thumbnails must be bare JPEGs of the
allowed sizes, a redacted rendition a bare JPEG of exactly the frame it was made for,
face boxes must lie inside the frame, and every field has its type and bounds. Anything else fails that item with :class:`~vault.errors.DecoderFailed`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vault.errors import DecoderFailed, VaultError
from vault.pipeline.face_boxes import INCOMPLETE, SEARCHED
from vault.pipeline.results import MAX_PIECES, THUMBNAIL_SIZES, Faces, ProcessedPhoto, SearchResult
from vault.pipeline.sanitize import SANITIZERS, Sanitized
from vault.pipeline.sniff import JPEG, MP4, QUICKTIME, SNIFF_BYTES, sniff

if TYPE_CHECKING:
    from vault.pipeline.video import VideoInfo, VideoProbe

# The photo result types are plain data (vault.pipeline.results); the video ones are
# imported where they are built, not at start: vault.pipeline.video pulls in PyAV, which
# the server process itself never runs (the decoder workers do): its memory stays small
# (issue 15 item 4).

MAX_CAPTURE_JSON = 64 * 1024
MAX_THUMBNAIL_BYTES = 4 << 20
_STRIP_GROWTH = 64 * 1024  # a rewritten JFIF/orientation header may grow a file a little


def _refuse(what: str) -> DecoderFailed:
    return DecoderFailed(details={"check": what})


def _int(value: Any, what: str, lo: int = 0, hi: int = 1 << 62) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _refuse(what)
    return value


def _number(value: Any, what: str, lo: float = 0.0, hi: float = 1e9) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or not lo <= value <= hi:
        raise _refuse(what)
    return float(value)


def _str(value: Any, what: str, hi: int = 64) -> str:
    if not isinstance(value, str) or len(value) > hi:
        raise _refuse(what)
    return value


def check_stripped(data: bytes, mime: Any, *, max_pixels: int) -> int:
    """``data`` holds only what the allow-list keeps; returns its pixel count."""
    return _fixed_point(data, mime, max_pixels=max_pixels).pixels


def _fixed_point(data: bytes, mime: Any, *, max_pixels: int) -> Sanitized:
    sanitizer = SANITIZERS.get(mime) if isinstance(mime, str) else None
    if sanitizer is None or sniff(data[:SNIFF_BYTES]) != mime:
        raise _refuse("stripped.type")
    try:
        again = sanitizer.unchanged(data)  # sanitize(data) == data, without a copy to compare
    except VaultError:
        raise _refuse("stripped.container") from None
    if again is None or again.mime != mime:
        raise _refuse("stripped.container")
    if again.pixels > max_pixels:
        raise _refuse("stripped.pixels")
    return again


def redacted_bound(width: int, height: int) -> int:
    """Most bytes a redacted JPEG of ``width`` x ``height`` may take (more than any
    quality-90 encoding of 3 bytes a pixel, plus the ICC profile)."""
    return width * height * 4 + (1 << 20)


def check_redacted(parts: list[bytes], *, width: int, height: int) -> bytes:
    """A face-redacted rendition (:mod:`vault.pipeline.redact`): one bare JPEG of exactly
    ``width`` x ``height`` as displayed, holding only what the JPEG allow-list keeps
    (JFIF without thumbnail, ICC profile, Adobe transform, tables, frame, scans), no Exif
    at all (orientation 1: the pixels are already upright), nothing after its end."""
    if len(parts) != 1 or not parts[0] or len(parts[0]) > redacted_bound(width, height):
        raise _refuse("redacted.size")
    found = _fixed_point(parts[0], JPEG, max_pixels=width * height)
    if (found.width, found.height) != (width, height):
        raise _refuse("redacted.dimensions")
    if found.orientation != 1 or found.original_exif is not None:
        raise _refuse("redacted.metadata")
    return parts[0]


def jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) of a stored bare JPEG (a thumbnail) from its frame header: a
    container walk, no pixel decoded."""
    try:
        found = SANITIZERS[JPEG].sanitize(data)
    except VaultError:
        raise _refuse("stored.container") from None
    return found.width, found.height


def check_thumbnails(sizes: Any, blobs: list[bytes]) -> dict[int, bytes]:
    if not isinstance(sizes, list) or len(sizes) != len(blobs) or len(set(sizes)) != len(sizes):
        raise _refuse("thumbnails")
    out = {}
    for size, blob in zip(sizes, blobs, strict=True):
        if size not in THUMBNAIL_SIZES or len(blob) > MAX_THUMBNAIL_BYTES:
            raise _refuse("thumbnails")
        check_stripped(blob, JPEG, max_pixels=size * size)
        out[size] = blob
    return out


def check_faces(value: Any, width: int, height: int) -> Faces:
    if not isinstance(value, dict):
        raise _refuse("faces")
    boxes = value.get("boxes")
    if not isinstance(boxes, list) or len(boxes) > 1000:
        raise _refuse("faces.boxes")
    checked = []
    for box in boxes:
        if not isinstance(box, list) or len(box) != 4:
            raise _refuse("faces.boxes")
        x, y = _int(box[0], "faces.boxes", 0, width - 1), _int(box[1], "faces.boxes", 0, height - 1)
        w, h = _int(box[2], "faces.boxes", 1, width - x), _int(box[3], "faces.boxes", 1, height - y)
        checked.append([x, y, w, h])
    assumed, detected = value.get("assumed"), value.get("detected")
    if not isinstance(assumed, bool) or not isinstance(detected, bool):
        raise _refuse("faces")
    count = _int(value.get("count"), "faces.count", 0, 1000)
    if assumed and not (detected and count == 0 and not checked):
        raise _refuse("faces.assumed")
    if not assumed and (count != len(checked) or detected != bool(checked)):
        raise _refuse("faces.count")
    return Faces(detected=detected, count=count, boxes=checked, detector=_str(value.get("detector", ""), "faces.detector"),
                 assumed=assumed)


def check_search(value: Any, width: int, height: int) -> SearchResult:
    """The full-resolution face search's answer: a known state, boxes inside the frame."""
    if not isinstance(value, dict) or value.get("state") not in (SEARCHED, INCOMPLETE):
        raise _refuse("search")
    faces = check_faces({"boxes": value.get("boxes"), "detected": bool(value.get("boxes")), "assumed": False,
                         "count": len(value.get("boxes") or [])}, width, height)
    stats = value.get("stats")
    if not isinstance(stats, dict) or len(json.dumps(stats, default=str)) > 16_384:
        raise _refuse("search.stats")
    return SearchResult(boxes=faces.boxes, state=value["state"], detector=_str(value.get("detector"), "search.detector"),
                        stats=stats)


def rebuild_stripped(layout: Any, new: bytes, upload: bytes) -> bytes:
    """The stripped file a worker describes (:func:`vault.pipeline.results.layout_wire`):
    ranges of ``upload`` and the bytes of ``new``, in order, every one used once. Only
    assembled here: :func:`check_photo` then checks it as it would any stripped file."""
    if not isinstance(layout, list) or not 1 <= len(layout) <= MAX_PIECES:
        raise _refuse("stripped.layout")
    limit = len(upload) + _STRIP_GROWTH
    source, fresh = memoryview(upload), memoryview(new)
    pieces: list[memoryview] = []
    used = total = 0
    for entry in layout:
        if isinstance(entry, list) and len(entry) == 3 and entry[0] == "in":
            start = _int(entry[1], "stripped.layout", 0, len(upload))
            piece = source[start:_int(entry[2], "stripped.layout", start, len(upload))]
        elif isinstance(entry, list) and len(entry) == 2 and entry[0] == "new":
            n = _int(entry[1], "stripped.layout", 0, len(new) - used)
            piece, used = fresh[used:used + n], used + n
        else:
            raise _refuse("stripped.layout")
        total += len(piece)
        if total > limit:
            raise _refuse("stripped.size")
        pieces.append(piece)
    if used != len(new):
        raise _refuse("stripped.layout")
    return b"".join(pieces)


@dataclass(frozen=True)
class StrippedOriginal:
    """A photo's stripped file as the worker described it, rebuilt and checked: what is stored."""

    mime: str
    data: bytes = field(repr=False)
    pixels: int


def check_original(value: Any, new: bytes, *, upload: bytes, max_pixels: int) -> StrippedOriginal:
    """The stripped file a worker describes (``{"mime", "layout"}`` and the new bytes),
    rebuilt from ``upload`` (what the worker was sent) and checked to be a fixed point of
    its sanitizer. A worker sends it before it decodes (:func:`check_photo`'s first part)."""
    if not isinstance(value, dict):
        raise _refuse("stripped.layout")
    stripped = rebuild_stripped(value.get("layout"), new, upload)
    mime = _str(value.get("mime"), "stripped.type")  # check_stripped refuses a non-string alike
    return StrippedOriginal(mime=mime, data=stripped, pixels=check_stripped(stripped, mime, max_pixels=max_pixels))


def check_processed(result: dict[str, Any], thumbnails: list[bytes], original: StrippedOriginal) -> ProcessedPhoto:
    """The rest of a photo's results (dimensions, capture, thumbnails, faces), against its
    checked stripped original."""
    width, height = _int(result.get("width"), "width", 1), _int(result.get("height"), "height", 1)
    if width * height != original.pixels:
        raise _refuse("size")
    capture = result.get("capture")
    if not isinstance(capture, dict) or len(json.dumps(capture, default=str)) > MAX_CAPTURE_JSON:
        raise _refuse("capture")
    return ProcessedPhoto(
        mime=original.mime, stripped=original.data, width=width, height=height,
        orientation=_int(result.get("orientation"), "orientation", 1, 8),
        capture=capture, thumbnails=check_thumbnails(result.get("thumbnails"), thumbnails),
        faces=check_faces(result.get("faces"), width, height),
    )


def check_photo(result: dict[str, Any], parts: list[bytes], *, upload: bytes, max_pixels: int) -> ProcessedPhoto:
    """A photo's results in one: ``result`` with the stripped file's ``mime`` and
    ``layout``, ``parts`` its new bytes then the thumbnails."""
    if not parts:
        raise _refuse("stripped.size")
    return check_processed(result, parts[1:], check_original(result, parts[0], upload=upload, max_pixels=max_pixels))


def _video_common(result: dict[str, Any], *, max_pixels: int) -> dict[str, Any]:
    if result.get("mime") not in (MP4, QUICKTIME):
        raise _refuse("mime")
    width, height = _int(result.get("width"), "width", 1), _int(result.get("height"), "height", 1)
    if width * height > max_pixels:
        raise _refuse("pixels")
    codecs = result.get("audio_codecs")
    if not isinstance(codecs, list) or len(codecs) > 16:
        raise _refuse("audio_codecs")
    return {
        "mime": result["mime"], "width": width, "height": height,
        "duration_s": _number(result.get("duration_s"), "duration_s"),
        "rotation": _int(result.get("rotation"), "rotation", 0, 359),
        "mirrored": bool(result.get("mirrored")),
        "video_codec": _str(result.get("video_codec"), "video_codec"),
        "audio_codecs": tuple(_str(c, "audio_codecs") for c in codecs),
    }


def check_probe(result: dict[str, Any], *, max_pixels: int) -> VideoProbe:
    from vault.pipeline.video import VideoProbe

    common = _video_common(result, max_pixels=max_pixels)
    dropped = result.get("dropped")
    if not isinstance(dropped, list) or len(dropped) > 64:
        raise _refuse("dropped")
    rate = result.get("frame_rate")
    return VideoProbe(
        **common,
        coded_width=_int(result.get("coded_width"), "coded_width", 1, 1 << 16),
        coded_height=_int(result.get("coded_height"), "coded_height", 1, 1 << 16),
        frame_rate=None if rate is None else _number(rate, "frame_rate", 0, 1e6),
        dropped=tuple(_str(d, "dropped") for d in dropped),
    )


def check_info(result: dict[str, Any], *, max_pixels: int, streamed: int, fragments: int) -> VideoInfo:
    from vault.pipeline.video import VideoInfo

    """``streamed``/``fragments``: what the server itself counted in the output."""
    common = _video_common(result, max_pixels=max_pixels)
    if result.get("size") != streamed or result.get("fragments") != fragments:
        raise _refuse("size")
    packets = result.get("packets")
    if not isinstance(packets, dict) or len(packets) > 64:
        raise _refuse("packets")
    return VideoInfo(
        **common, size=streamed, fragments=fragments,
        max_fragment_bytes=_int(result.get("max_fragment_bytes"), "max_fragment_bytes"),
        packets={_str(k, "packets"): _int(v, "packets") for k, v in packets.items()},
    )
