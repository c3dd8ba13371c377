"""The photo media pipeline: bytes in, results out.

Knows nothing of HTTP, the database, keys or storage. See ``docs/media.md``.

The names below are imported on first use (PEP 562): importing one light submodule
(``vault.pipeline.sniff``, ``.wire``, ``.video_mux``) must not pull in NumPy, OpenCV,
Pillow plugins or PyAV, which only the decoder workers need — the server process's
start-up memory depends on it (issue 15).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Light, and a submodule's own name: bound here so the package attribute is the function.
from vault.pipeline.sniff import SNIFF_BYTES, sniff

if TYPE_CHECKING:
    from vault.pipeline.capture import extract_capture
    from vault.pipeline.faces import (
        Box,
        FaceDetector,
        NoDetector,
        SlimefaceDetector,
        YuNetOnnxDetector,
        detect_faces,
        load_detector,
    )
    from vault.pipeline.photo import process_photo
    from vault.pipeline.results import THUMBNAIL_SIZES, Faces, ProcessedPhoto
    from vault.pipeline.sanitize import SANITIZERS, Sanitized, Sanitizer, strip_metadata

_HOMES = {
    "extract_capture": "capture",
    "Faces": "results",
    **dict.fromkeys(("Box", "FaceDetector", "NoDetector", "SlimefaceDetector", "YuNetOnnxDetector",
                     "detect_faces", "load_detector"), "faces"),
    "ProcessedPhoto": "results", "process_photo": "photo",
    **dict.fromkeys(("SANITIZERS", "Sanitized", "Sanitizer", "strip_metadata"), "sanitize"),
    "THUMBNAIL_SIZES": "results",
}

__all__ = sorted([*_HOMES, "SNIFF_BYTES", "sniff"])


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
