"""What a signed consent form may be: PDF, JPEG or PNG by its first bytes (never by what
the sender claims), at most 8 MiB. Shared by the API (base64 in JSON) and the staff app
(a multipart upload)."""

from __future__ import annotations

MAX_EVIDENCE_BYTES = 8 * 1024 * 1024
EVIDENCE_TYPES = {b"%PDF-": "application/pdf", b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


def sniff(data: bytes) -> str | None:
    """The media type the bytes are, or None if they are none of the accepted ones."""
    return next((mime for magic, mime in EVIDENCE_TYPES.items() if data.startswith(magic)), None)
