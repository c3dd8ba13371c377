"""Metadata stripping, one sanitizer per format, chosen from an explicit registry.

A format without an entry here is refused: adding one means adding a sanitizer and its
rows in the table-driven tests, never a pass-through.
"""

from __future__ import annotations

from vault.errors import UnsupportedMedia
from vault.pipeline.sniff import HEIC, HEIF, JPEG, PNG, WEBP
from vault.pipeline.sanitize.base import Sanitized, Sanitizer
from vault.pipeline.sanitize.heic import HeicSanitizer
from vault.pipeline.sanitize.jpeg import JpegSanitizer
from vault.pipeline.sanitize.png import PngSanitizer
from vault.pipeline.sanitize.webp import WebpSanitizer

_HEIC = HeicSanitizer()
SANITIZERS: dict[str, Sanitizer] = {
    JPEG: JpegSanitizer(),
    PNG: PngSanitizer(),
    WEBP: WebpSanitizer(),
    HEIC: _HEIC,
    HEIF: _HEIC,
}


def sanitizer_for(mime: str | None) -> Sanitizer:
    try:
        return SANITIZERS[mime]  # type: ignore[index]
    except KeyError:
        raise UnsupportedMedia(details={"detected": mime}) from None


def strip_metadata(mime: str, data: bytes) -> Sanitized:
    """Strip ``data`` of type ``mime`` (as sniffed) with its registered sanitizer."""
    return sanitizer_for(mime).sanitize(data)


__all__ = ["SANITIZERS", "Sanitized", "Sanitizer", "sanitizer_for", "strip_metadata"]
