"""Tell a file's real type from its first bytes.

The upload's ``Content-Type`` and any file name are claims made by the client; only the
magic bytes decide which sanitizer sees the body.
"""

from __future__ import annotations

# Enough for the longest ftyp box seen in camera files (an iPhone HEIC lists a handful of
# compatible brands; ISO BMFF writers rarely exceed 32).
SNIFF_BYTES = 256

JPEG = "image/jpeg"
PNG = "image/png"
WEBP = "image/webp"
HEIC = "image/heic"
HEIF = "image/heif"
MP4 = "video/mp4"
QUICKTIME = "video/quicktime"
# Recognised so that callers can name what they refused; no sanitizer handles them.
AVIF = "image/avif"
HEIF_SEQUENCE = "image/heif-sequence"
GIF = "image/gif"
TIFF = "image/tiff"

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis"})
_HEIF_SEQUENCE_BRANDS = frozenset({b"msf1", b"hevc", b"hevx", b"hevm", b"hevs"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_MP4_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso3", b"iso4", b"iso5", b"iso6", b"iso7", b"iso8", b"iso9",
     b"mp41", b"mp42", b"avc1", b"M4V ", b"M4VH", b"M4VP", b"dash", b"MSNV", b"f4v "}
)


def sniff(head: bytes) -> str | None:
    """Return the media type proven by the magic bytes of ``head``, or ``None``.

    ``head`` should be the first :data:`SNIFF_BYTES` bytes (fewer is fine for the short
    signatures; an ftyp box cut short is judged on the brands that are present).
    """
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return TIFF
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _sniff_ftyp(head)
    return None


def _sniff_ftyp(head: bytes) -> str | None:
    size = int.from_bytes(head[:4], "big")
    if size < 16 or size % 4:
        return None
    major = head[8:12]
    # The minor version (4 bytes) sits between the major brand and the compatible list.
    compatible = [head[i:i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    if major == b"qt  ":
        return QUICKTIME
    return _classify({major, *compatible})


def _classify(brands: set[bytes]) -> str | None:
    # Order matters: a HEIC lists "mif1" and "heic"; an AVIF lists "mif1" and "avif";
    # an iPhone HEIC may be "mif1" major with "heic" only among the compatible brands.
    if any(b in _HEIC_BRANDS for b in brands):
        return HEIC
    if any(b in _AVIF_BRANDS for b in brands):
        return AVIF
    if any(b in _HEIF_SEQUENCE_BRANDS for b in brands):
        return HEIF_SEQUENCE
    if b"mif1" in brands:
        return HEIF
    if any(b in _MP4_BRANDS for b in brands):
        return MP4
    return None
