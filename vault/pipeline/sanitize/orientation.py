"""Which orientation the original displays with, decided the way Pillow decides it."""

from __future__ import annotations

from vault.pipeline.tiff import ORIENTATION, read_ifds, xmp_orientation


def resolve_orientation(*, exif: bytes | None, xmp: bytes | None) -> int:
    """EXIF Orientation when the tag is present (an invalid value displays as 1), else the
    XMP ``tiff:Orientation`` fallback Pillow's ``exif_transpose`` honours, else 1.

    Matching Pillow matters: the stripped copy must display exactly as the original did in
    the software clinics use, and the stripped copy has no XMP left to fall back on.
    """
    if exif is not None:
        value = read_ifds(exif, ifd0=frozenset({ORIENTATION})).get(ORIENTATION)
        if value is not None:
            return value if isinstance(value, int) and 1 <= value <= 8 else 1
    if xmp:
        return xmp_orientation(xmp) or 1
    return 1
