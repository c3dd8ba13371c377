"""The face search's answers as the server handles them: states, the detector set's
version, the margin, and box arithmetic (merge, grow) — pure Python, apart from
:mod:`vault.pipeline.faces_search`, which imports OpenCV and NumPy for the decoder workers
only (the server process never loads them: issue 15, start-up memory)."""

from __future__ import annotations

import math

SEARCH_VERSION = 2  # 2: turned passes from the first scale (no skin-blob shortcut)
SEARCHED, INCOMPLETE = "searched", "incomplete"
MARGIN = 0.25
"""Each stored box is the detection grown by this fraction of its width/height per side."""

Box = tuple[float, float, float, float]


def merge(boxes: list[Box], *, overlap: float = 0.3) -> list[Box]:
    """Union of boxes that overlap (intersection over the smaller box >= ``overlap``),
    repeated until no two overlap: one box per face, covering what every pass found."""
    merged: list[Box] = [(b[0], b[1], b[2], b[3]) for b in boxes if b[2] > 0 and b[3] > 0]
    changed = True
    while changed:
        changed = False
        out: list[Box] = []
        for box in merged:
            for i, other in enumerate(out):
                if _overlap(box, other) >= overlap:
                    out[i] = _union(box, other)
                    changed = True
                    break
            else:
                out.append(box)
        merged = out
    return merged


def _overlap(a: Box, b: Box) -> float:
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min(a[2] * a[3], b[2] * b[3])


def _union(a: Box, b: Box) -> Box:
    x, y = min(a[0], b[0]), min(a[1], b[1])
    return x, y, max(a[0] + a[2], b[0] + b[2]) - x, max(a[1] + a[3], b[1] + b[3]) - y


def grow(box: Box, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` of its size on every side, whole pixels, clipped."""
    x, y, w, h = box
    left, top = max(0, math.floor(x - margin * w)), max(0, math.floor(y - margin * h))
    right, bottom = min(width, math.ceil(x + w + margin * w)), min(height, math.ceil(y + h + margin * h))
    return left, top, max(0, right - left), max(0, bottom - top)
