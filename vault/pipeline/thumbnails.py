"""Decoding under limits, and the JPEG thumbnails made from one decode.

One decode serves every rendition: a JPEG is decoded DCT-scaled (Pillow ``draft``) to the
smallest power-of-two reduction that still covers the largest thumbnail, which skips most
of the inverse DCT and colour work of a full decode. That image is reduced to 1024 px,
oriented, and reused for the 256 px thumbnail and the 640 px face search.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms

from vault.errors import CorruptMedia, PixelLimit, UnsupportedMedia
from vault.pipeline.resize import fit
from vault.pipeline.results import THUMBNAIL_SIZES
from vault.pipeline.sniff import HEIC, HEIF, JPEG, PNG, WEBP

THUMBNAIL_QUALITY = 85

# The only Pillow decoders a file may reach: the one its sniffed type names.
_FORMATS = {JPEG: ("JPEG",), PNG: ("PNG",), WEBP: ("WEBP",), HEIC: ("HEIF",), HEIF: ("HEIF",)}
# What Pillow and pillow-heif raise on damaged input.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, RuntimeError, IndexError, KeyError,
                 struct.error, zlib.error, ImageCms.PyCMSError)
_ICC_SPACES = {"RGB": b"RGB ", "L": b"GRAY"}


def _register_heif() -> None:
    from pillow_heif import register_heif_opener

    # Embedded HEIC thumbnails are neutralised by the sanitizer; never let draft pick one.
    register_heif_opener(thumbnails=False)


_register_heif()


@dataclass(frozen=True, slots=True)
class Decoded:
    """``image`` is oriented, 8-bit RGB or L, no larger than ``max(THUMBNAIL_SIZES)`` on its
    longest side; ``size`` is the full oriented size; ``icc`` fits ``image``'s mode."""

    image: Image.Image
    size: tuple[int, int]
    orientation: int
    icc: bytes | None


def allow_pixels(max_pixels: int) -> None:
    """Make sure Pillow's own bomb check never fires below our cap.

    Callers check the header's pixel count against ``max_pixels`` before Pillow sees the
    bytes, so Pillow's check (a warning, an error at twice the limit) is only ever a second
    net; it must not turn an allowed image into a warning. The process-wide limit is only
    ever raised, to the largest cap asked for.
    """
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and max_pixels > limit:
        Image.MAX_IMAGE_PIXELS = max_pixels


def open_image(data: bytes, *, mime: str, max_pixels: int) -> Image.Image:
    """Open (headers only) with the decoder allow-list; refuse a pixel count over the cap."""
    formats = _FORMATS.get(mime)
    if formats is None:
        raise UnsupportedMedia(details={"detected": mime})
    allow_pixels(max_pixels)
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        raise PixelLimit(details={"max_pixels": max_pixels}) from None
    except DECODE_ERRORS:
        raise CorruptMedia("the image cannot be decoded") from None
    if image.width * image.height > max_pixels:
        raise PixelLimit(details={"pixels": image.width * image.height, "max_pixels": max_pixels})
    return image


def decode(data: bytes, *, mime: str, max_pixels: int, longest: int = max(THUMBNAIL_SIZES)) -> Decoded:
    """Decode once, scaled where the format allows, into the working image for renditions."""
    image = open_image(data, mime=mime, max_pixels=max_pixels)
    try:
        orientation = image.getexif().get(0x0112, 1)
        orientation = orientation if orientation in range(1, 9) else 1
        width, height = image.size
        if image.format == "JPEG":
            ratio = longest / max(width, height)
            if ratio < 1:
                image.draft(None, (max(1, round(width * ratio)), max(1, round(height * ratio))))
        icc = image.info.get("icc_profile") or None
        image.load()
        working, icc = display_mode(image, icc)
    except Image.DecompressionBombError:
        raise PixelLimit(details={"max_pixels": max_pixels}) from None
    except DECODE_ERRORS:
        raise CorruptMedia("the image cannot be decoded") from None
    working = fit(working, longest)
    method = TRANSPOSE.get(orientation)
    if method is not None:
        working = working.transpose(method)
    size = (height, width) if orientation >= 5 else (width, height)
    return Decoded(image=working, size=size, orientation=orientation, icc=icc)


def make_thumbnails(decoded: Decoded) -> dict[int, bytes]:
    """JPEG thumbnails keyed by longest side; each from the previous, largest first."""
    thumbnails: dict[int, bytes] = {}
    current = decoded.image
    for size in sorted(THUMBNAIL_SIZES, reverse=True):
        current = fit(current, size)
        thumbnails[size] = encode_jpeg(current, icc=decoded.icc)
    return dict(sorted(thumbnails.items()))


def encode_jpeg(image: Image.Image, *, icc: bytes | None, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A JPEG carrying nothing but pixels and (when it fits the mode) the ICC profile."""
    clean = image.copy()
    clean.info = {}  # nothing from the source may ride along (Pillow copies the comment)
    out = io.BytesIO()
    save_icc = icc if icc and icc[16:20] == _ICC_SPACES.get(clean.mode) else None
    clean.save(out, format="JPEG", quality=quality, comment=b"", exif=b"", icc_profile=save_icc)
    return out.getvalue()


TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def display_mode(image: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """8-bit RGB or L, alpha composited over white; ICC kept only where it still applies."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image, icc
    if mode == "CMYK":
        if icc and icc[16:20] == b"CMYK":
            srgb = ImageCms.createProfile("sRGB")
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
            assert converted is not None  # None only when converting in place
            return converted, None
        return image.convert("RGB"), None
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG): keep the high byte, as any 8-bit viewer would show it.
        wide = np.asarray(image).astype(np.int64)
        return Image.fromarray(np.clip(wide >> 8, 0, 255).astype(np.uint8)), icc
    if mode == "P" and "transparency" not in image.info:
        return image.convert("RGB"), icc
    if mode in ("1",):
        return image.convert("L"), icc
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        gray = mode in ("LA", "La") or (mode == "L")
        rgba = image.convert("LA" if gray else "RGBA")
        background = Image.new(rgba.mode, rgba.size, (255, 255) if gray else (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("L" if gray else "RGB"), icc
    return image.convert("RGB"), icc
