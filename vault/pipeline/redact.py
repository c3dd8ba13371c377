"""Face redaction for de-identified release: opaque rectangles, never blur (blur can be undone).

The one renderer is :func:`render_redaction`, run once per approved digest (vault/redaction);
nothing is redacted per request."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

from PIL import Image, ImageDraw

from vault.errors import CorruptMedia
from vault.pipeline.renderer import RENDERER_VERSION  # noqa: F401 (the version of what this module renders)
from vault.pipeline.resize import fit
from vault.pipeline.sniff import SNIFF_BYTES, sniff
from vault.pipeline.thumbnails import DECODE_ERRORS, TRANSPOSE, display_mode, encode_jpeg, open_image

_DEFAULT_MAX_PIXELS = 100_000_000


def upright(image_bytes: bytes, *, max_pixels: int = _DEFAULT_MAX_PIXELS) -> tuple[Image.Image, bytes | None]:
    """The image decoded at full resolution in 8-bit RGB or L, turned upright (EXIF
    orientation), and its ICC profile where it still applies."""
    mime = sniff(image_bytes[:SNIFF_BYTES])
    if mime is None:
        raise CorruptMedia("the image cannot be decoded")
    image = open_image(image_bytes, mime=mime, max_pixels=max_pixels)
    try:
        orientation = image.getexif().get(0x0112, 1)
        icc = image.info.get("icc_profile") or None
        image.load()
        image, icc = display_mode(image, icc)
    except DECODE_ERRORS:
        raise CorruptMedia("the image cannot be decoded") from None
    method = TRANSPOSE.get(orientation)
    if method is not None:
        image = image.transpose(method)
    return image, icc


RENDER_QUALITY = 92


def fill_exact(image: Image.Image, rects: Iterable[Sequence[int]]) -> None:
    """Fill every rectangle ``[x, y, w, h]`` opaque black, in place: columns ``x .. x+w-1``,
    rows ``y .. y+h-1`` (clipped to the image)."""
    draw = ImageDraw.Draw(image)
    fill = 0 if image.mode == "L" else (0, 0, 0)
    for x, y, w, h in rects:
        left, top = max(0, int(x)), max(0, int(y))
        right, bottom = min(image.width, int(x) + int(w)), min(image.height, int(y) + int(h))
        if right > left and bottom > top:
            draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)


def render_redaction(image_bytes: bytes, rects: Iterable[Sequence[int]], *, thumbnail_sizes: Sequence[int] = (),
                     max_pixels: int = _DEFAULT_MAX_PIXELS) -> tuple[bytes, dict[int, bytes]]:
    """The rendition a de-identified release carries, and thumbnails made from it.

    The image is decoded at full resolution and turned upright (EXIF orientation), every
    rectangle ``[x, y, w, h]`` (displayed pixels, already grown by any margin) is filled
    opaque black exactly — columns ``x .. x+w-1``, rows ``y .. y+h-1`` — and the result is
    encoded afresh as a JPEG with no metadata but the ICC profile. Thumbnails are reduced
    from the redacted pixels, so they can never show what the full rendition hides.
    """
    image, icc = upright(image_bytes, max_pixels=max_pixels)
    # The decoded image is ours alone: fill and encode it in place (no 36 MB copies).
    fill_exact(image, rects)
    image.info = {}  # nothing of the source rides along (Pillow would copy a comment)
    out = io.BytesIO()
    save_icc = icc if icc and icc[16:20] == {"RGB": b"RGB ", "L": b"GRAY"}.get(image.mode) else None
    image.save(out, format="JPEG", quality=RENDER_QUALITY, comment=b"", exif=b"", icc_profile=save_icc)
    full = out.getvalue()
    thumbnails: dict[int, bytes] = {}
    current = image
    for size in sorted(thumbnail_sizes, reverse=True):
        current = fit(current, size)
        thumbnails[size] = encode_jpeg(current, icc=icc)
    return full, thumbnails
