"""The file name extension a stored media type is offered under: an inline rendition, a
release's download, an entry of a subject-access export (consent forms included)."""

from __future__ import annotations

from vault.pipeline.sniff import HEIC, JPEG, MP4, PNG, WEBP

PDF = "application/pdf"  # a consent form's evidence
EXTENSIONS = {JPEG: "jpg", PNG: "png", WEBP: "webp", HEIC: "heic", MP4: "mp4", PDF: "pdf"}


def extension(mime: str | None) -> str:
    """``jpg`` for ``image/jpeg``; ``bin`` for a type without one of its own."""
    return EXTENSIONS.get(mime or "", "bin")
