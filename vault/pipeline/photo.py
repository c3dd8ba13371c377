"""The photo pipeline: bytes in, everything the vault stores about a photo out.

Pure and synchronous (CPU-bound): no HTTP, database, keys or storage. The caller runs it
in a process or thread pool, then encrypts and stores each rendition.
"""

from __future__ import annotations

from collections.abc import Callable

from vault.errors import CorruptMedia, PixelLimit, UnsupportedMedia
from vault.pipeline.capture import extract_capture
from vault.pipeline.faces import FaceDetector, detect_faces
from vault.pipeline.results import ProcessedPhoto
from vault.pipeline.sanitize import SANITIZERS, Sanitized
from vault.pipeline.sniff import SNIFF_BYTES, sniff
from vault.pipeline.thumbnails import decode, make_thumbnails


def process_photo(data: bytes, *, max_pixels: int, detector: FaceDetector,
                  on_stripped: Callable[[Sanitized], None] | None = None) -> ProcessedPhoto:
    """Sniff, strip, read capture metadata, decode once, make thumbnails, flag faces.

    ``on_stripped`` gets the stripped file as soon as it is made and its pixel count is
    within the cap, before any pixel is decoded (a worker sends it on at once, so the
    server can store it while the decode runs).

    Raises ``UnsupportedMedia`` (not a photo type we handle), ``CorruptMedia`` (empty,
    truncated, damaged or not what it seems) and ``PixelLimit`` (more than ``max_pixels``,
    checked from the header before any pixel is decoded).
    """
    if not data:
        raise CorruptMedia("the body is empty")
    mime = sniff(data[:SNIFF_BYTES])
    sanitizer = SANITIZERS.get(mime) if mime else None
    if sanitizer is None:
        raise UnsupportedMedia(details={"detected": mime})
    sanitized = sanitizer.sanitize(data)
    if sanitized.pixels > max_pixels:
        raise PixelLimit(details={"pixels": sanitized.pixels, "max_pixels": max_pixels})
    if on_stripped is not None:
        on_stripped(sanitized)

    # Decode the stripped bytes: the renditions come from exactly what is stored.
    decoded = decode(sanitized.data, mime=sanitized.mime, max_pixels=max_pixels)
    width, height = decoded.size
    capture = extract_capture(sanitized.original_exif, orientation=sanitized.orientation,
                              width=width, height=height)
    return ProcessedPhoto(
        mime=sanitized.mime,
        stripped=sanitized.data,
        width=width,
        height=height,
        orientation=sanitized.orientation,
        capture=capture,
        thumbnails=make_thumbnails(decoded),
        faces=detect_faces(decoded.image, full_size=decoded.size, detector=detector),
        layout=sanitized.layout,
    )
