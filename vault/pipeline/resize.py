"""Fast, alias-free downscaling for renditions.

Pillow's LANCZOS on this build costs ~50 ms for 2000x1500 -> 1024x768, as much as the
whole DCT-scaled decode. Instead: an integer box reduction (``Image.reduce``: exact
averaging, no aliasing) for the part of the ratio that is >= 2, then OpenCV's bilinear
for the remaining factor below 2, where bilinear no longer skips source pixels. Together
~5 ms for the same resize, within a few grey levels of LANCZOS.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def fit(image: Image.Image, longest: int) -> Image.Image:
    """Shrink so the longest side is at most ``longest`` (never enlarge). Modes RGB or L."""
    if max(image.size) <= longest:
        return image
    ratio = max(image.size) / longest
    target = (max(1, round(image.width / ratio)), max(1, round(image.height / ratio)))
    factor = int(ratio)
    if factor >= 2:
        image = image.reduce(factor)
    if image.size == target:
        return image
    import cv2  # here, not at import: only the decoder workers resize (server start-up memory)

    pixels = cv2.resize(np.asarray(image), target, interpolation=cv2.INTER_LINEAR)
    return Image.fromarray(pixels)
