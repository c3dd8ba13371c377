"""What the decoder workers answer, as plain data: the server re-checks these
(:mod:`vault.media.recheck`) and stores them, so this module imports nothing heavy —
no NumPy, Pillow, OpenCV or pillow-heif — and the server process, which never decodes a
pixel, stays free of them after its first photo too (issue 15, start-up memory).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

THUMBNAIL_SIZES = (256, 1024)
"""Longest side of each JPEG thumbnail made of a photo (and of a video's poster)."""

Piece = bytes | tuple[int, int]
"""One piece of a stripped file's layout: a byte range ``(start, end)`` of the upload
copied verbatim, or new bytes (see :class:`vault.pipeline.sanitize.Sanitized`)."""
MAX_PIECES = 1024
"""Most pieces a worker sends as a layout; a file made of more crosses the pipe whole."""


def layout_wire(photo: ProcessedPhoto) -> tuple[list[list[Any]], bytes]:
    """The worker's side: the stripped file as ``["in", start, end]`` (a range of the
    upload the server holds) and ``["new", n]`` (the next ``n`` bytes of the returned
    part) entries, and that part. Without a usable layout, the whole file is "new"."""
    return stripped_wire(photo.stripped, photo.layout)


def stripped_wire(stripped: bytes, layout: tuple[Piece, ...] | None) -> tuple[list[list[Any]], bytes]:
    """:func:`layout_wire` of a stripped file and its layout (a sanitizer's output)."""
    if layout is None or len(layout) > MAX_PIECES:
        return [["new", len(stripped)]], stripped
    entries: list[list[Any]] = []
    new: list[bytes] = []
    for piece in layout:
        if isinstance(piece, bytes):
            entries.append(["new", len(piece)])
            new.append(piece)
        else:
            entries.append(["in", piece[0], piece[1]])
    return entries, b"".join(new)


@dataclass(frozen=True, slots=True)
class Faces:
    """``assumed`` means no detector ran: treat the photo as identifiable (``detected``) but
    with no boxes to redact, so release needs a person's review."""

    detected: bool
    count: int
    boxes: list[list[int]] = field(default_factory=list)
    detector: str = ""
    assumed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"detected": self.detected, "count": self.count, "boxes": [list(b) for b in self.boxes],
                "detector": self.detector, "assumed": self.assumed}


@dataclass(frozen=True, slots=True)
class ProcessedPhoto:
    """``stripped`` is the file to store (same format as the upload, pixels untouched).

    ``width``/``height`` are as displayed (orientation applied), the frame face boxes refer
    to; ``orientation`` is the EXIF value (1..8) the stripped file still carries.
    ``capture`` is personal data: encrypt it under the patient key. ``layout`` (in the
    worker, for a JPEG) is how ``stripped`` is made of the upload's bytes, so that ranges
    cross the pipe instead of the file.
    """

    mime: str
    stripped: bytes = field(repr=False)
    width: int
    height: int
    orientation: int
    capture: dict[str, Any] = field(repr=False)
    thumbnails: dict[int, bytes] = field(repr=False)
    faces: Faces
    layout: tuple[Piece, ...] | None = field(default=None, repr=False)


@dataclass
class SearchResult:
    """Boxes (after the margin) in displayed original pixels, whether the whole photo was
    searched, the detector set's version, and what each pass cost (for the benchmark)."""

    boxes: list[list[int]]
    state: str
    detector: str
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"boxes": self.boxes, "state": self.state, "detector": self.detector, "stats": self.stats}
