"""A before/after composite: two photos side by side at the same height (the same scale
for two photos of one framing), each labelled, each with its rectangles filled opaque, in
one fresh JPEG with no metadata. Runs in a decoder worker (Pillow is imported there
only); :func:`layout` is plain arithmetic, so the server checks the worker's output
against the geometry it expects without decoding anything."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

MAX_HEIGHT = 2048  # the composite's photo height at most (a post, not an archive copy)
COMPOSITE_QUALITY = 92
LABELS = ("Before", "After")


@dataclass(frozen=True)
class Layout:
    height: int  # both photos' height in the composite
    band: int  # the label band above them
    gap: int  # white between them
    widths: tuple[int, int]

    @property
    def size(self) -> tuple[int, int]:
        return self.widths[0] + self.gap + self.widths[1], self.band + self.height

    def left(self, index: int) -> int:
        return 0 if index == 0 else self.widths[0] + self.gap


def layout(first: tuple[int, int], second: tuple[int, int], *, max_height: int = MAX_HEIGHT) -> Layout:
    """Where each photo (displayed ``(width, height)``) goes: both scaled (never enlarged)
    to the smaller of their heights, at most ``max_height``."""
    if min(*first, *second) < 1:
        raise ValueError("a photo has no pixels")
    height = min(first[1], second[1], max_height)
    widths = tuple(max(1, round(w * height / h)) for w, h in (first, second))
    return Layout(height=height, band=max(20, height // 12), gap=max(4, height // 100), widths=(widths[0], widths[1]))


def compose(photos: Sequence[bytes], rects: Sequence[Sequence[Sequence[int]]], *, max_pixels: int,
            labels: Sequence[str] = LABELS) -> tuple[bytes, Layout]:
    """The composite JPEG of two photos (stored bytes, turned upright here), each one's
    ``rects`` ([x, y, w, h] in its own displayed pixels) filled before scaling, so no
    resampling can bring back what a rectangle hides."""
    from PIL import Image, ImageDraw, ImageFont

    from vault.pipeline.redact import fill_exact, upright

    if len(photos) != 2 or len(rects) != 2 or len(labels) != 2:
        raise ValueError("a composite is two photos")
    images = []
    for data, boxes in zip(photos, rects, strict=True):
        image, _ = upright(data, max_pixels=max_pixels)
        image = image.convert("RGB")  # one mode for the canvas; the sRGB default (no ICC carried)
        fill_exact(image, boxes)
        images.append(image)
    plan = layout(images[0].size, images[1].size)
    canvas = Image.new("RGB", plan.size, (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(12, plan.band * 2 // 3))
    for index, image in enumerate(images):
        scaled = image.resize((plan.widths[index], plan.height), Image.Resampling.LANCZOS, reducing_gap=3.0)
        canvas.paste(scaled, (plan.left(index), plan.band))
        draw.text((plan.left(index) + plan.band // 3, plan.band // 6), labels[index][:20], fill=(0, 0, 0), font=font)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=COMPOSITE_QUALITY, comment=b"", exif=b"")
    return out.getvalue(), plan
