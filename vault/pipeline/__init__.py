"""The photo media pipeline: bytes in, results out.

Knows nothing of HTTP, the database, keys or storage. See ``docs/media.md``.
"""

from __future__ import annotations

from vault.pipeline.capture import extract_capture
from vault.pipeline.faces import (
    Box,
    FaceDetector,
    Faces,
    NoDetector,
    SlimefaceDetector,
    YuNetOnnxDetector,
    detect_faces,
    load_detector,
)
from vault.pipeline.photo import ProcessedPhoto, process_photo
from vault.pipeline.redact import redact_faces
from vault.pipeline.sanitize import SANITIZERS, Sanitized, Sanitizer, strip_metadata
from vault.pipeline.sniff import SNIFF_BYTES, sniff
from vault.pipeline.thumbnails import THUMBNAIL_SIZES

__all__ = [
    "SANITIZERS",
    "SNIFF_BYTES",
    "THUMBNAIL_SIZES",
    "Box",
    "FaceDetector",
    "Faces",
    "NoDetector",
    "ProcessedPhoto",
    "Sanitized",
    "Sanitizer",
    "SlimefaceDetector",
    "YuNetOnnxDetector",
    "detect_faces",
    "extract_capture",
    "load_detector",
    "process_photo",
    "redact_faces",
    "sniff",
    "strip_metadata",
]
