"""The display matrix: how a player turns stored video frames to show them.

QuickTime and MP4 keep it in each track header (``tkhd``); FFmpeg hands the same nine
numbers to decoded frames as ``DISPLAYMATRIX`` side data. Both read through
:func:`orientation`, so the rotation reported for the input, the one verified in the
stripped output and the one applied to the poster frame cannot disagree.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Pillow is imported where a transpose is built (the server never needs it at start)
    from PIL import Image

IDENTITY = (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


@dataclass(frozen=True, slots=True)
class Orientation:
    """``rotation``: clockwise degrees a player turns the stored frame (0/90/180/270), the
    convention of exiftool's ``Rotation``; ``mirrored``: the matrix also flips it."""

    rotation: int = 0
    mirrored: bool = False
    transpose: Image.Transpose | None = None


def orientation(matrix: tuple[int, ...] | list[int] | None) -> Orientation:
    """Read a display matrix (FFmpeg's layout: ``a b u c d v x y w``, 16.16 fixed point).

    The mapping to image operations is FFmpeg's own autorotation (fftools): rotations by
    right angles, with the flips a mirrored matrix adds. Other angles (no camera writes
    them) are reported as the nearest right angle and not applied to frames.
    """
    if matrix is None or len(matrix) != 9:
        return Orientation()
    m = matrix
    scale_x, scale_y = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if not scale_x or not scale_y:
        return Orientation()
    # av_display_rotation_get(): counter-clockwise degrees; players turn the other way.
    ccw = -math.degrees(math.atan2(m[1] / scale_y, m[0] / scale_x))
    theta = -ccw % 360
    mirrored = m[0] * m[4] - m[1] * m[3] < 0
    for right in (0, 90, 180, 270, 360):
        if abs(theta - right) < 1.0:
            rotation = right % 360
            return Orientation(rotation, mirrored, _transpose(rotation, m))
    return Orientation(round(theta / 90) % 4 * 90, mirrored, None)


def _transpose(rotation: int, m: tuple[int, ...] | list[int]) -> Image.Transpose | None:
    from PIL import Image

    T = Image.Transpose  # noqa: N806
    if rotation == 90:
        return T.TRANSPOSE if m[3] > 0 else T.ROTATE_270  # transpose=cclock_flip : clock
    if rotation == 270:
        return T.TRANSVERSE if m[3] < 0 else T.ROTATE_90  # transpose=clock_flip : cclock
    if rotation == 180:
        if m[0] < 0 and m[4] < 0:
            return T.ROTATE_180
        if m[0] < 0:
            return T.FLIP_LEFT_RIGHT
        return T.FLIP_TOP_BOTTOM if m[4] < 0 else None
    return T.FLIP_TOP_BOTTOM if m[4] < 0 else None


def unpack(raw: bytes, *, big_endian: bool) -> tuple[int, ...] | None:
    """Nine int32 from frame side data (native byte order) or a ``tkhd`` box (big-endian)."""
    if len(raw) != 36:
        return None
    return struct.unpack(">9i" if big_endian else "=9i", raw)
