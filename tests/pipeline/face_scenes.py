"""Generated photos with faces at known places, for the full-resolution face search tests
and its benchmark (bench/bench_faces.py).

Faces come from real photos available offline: scikit-image's ``astronaut`` (colour) and
``camera`` (greyscale). Each source carries a hand-checked face box (forehead to chin,
ear to ear), and a head crop around it; a scene pastes the crop scaled so that the face
box is ``height`` px high, optionally turned by 90/180/270 degrees or darkened, onto a
textured background (coloured blobs, gradients and fine noise), and records where the
face box landed. Everything is built in memory from a fixed seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import cv2
import numpy as np
import skimage.data
from PIL import Image


@dataclass(frozen=True)
class Source:
    rgb: np.ndarray
    face: tuple[int, int, int, int]  # the face box in ``rgb``
    head: tuple[int, int, int, int]  # the crop pasted into scenes (contains ``face``)


def _grey_rgb(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.stack([image] * 3, axis=-1))


def sources() -> dict[str, Source]:
    astronaut = np.ascontiguousarray(skimage.data.astronaut())
    camera = _grey_rgb(skimage.data.camera())
    return {
        "astronaut": Source(astronaut, face=(180, 66, 88, 108), head=(120, 20, 210, 220)),
        "camera": Source(camera, face=(197, 115, 58, 78), head=(160, 70, 135, 150)),
    }


@dataclass
class Scene:
    """``rgb`` is the photo as displayed; ``faces`` the face boxes in it (clipped to the frame)."""

    rgb: np.ndarray
    faces: list[tuple[int, int, int, int]] = field(default_factory=list)


def background(width: int, height: int, *, seed: int) -> np.ndarray:
    """A textured, busy background: coloured blobs at a few scales plus fine noise. Built at
    half size in float and enlarged as bytes, so a 48 MP one needs ~0.5 GB at most."""
    rng = np.random.default_rng(seed)
    half = (max(1, width // 2), max(1, height // 2))
    out = np.zeros((half[1], half[0], 3), np.float32)
    for cells, weight in ((12, 0.5), (60, 0.3), (300, 0.2)):
        small = rng.uniform(30, 225, (max(2, height * cells // max(width, height)), cells, 3)).astype(np.float32)
        out += weight * cv2.resize(small, half, interpolation=cv2.INTER_CUBIC)
    blobs = cv2.resize(np.clip(out, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    del out
    noise = cv2.resize(rng.integers(0, 37, (half[1], half[0], 3), dtype=np.uint8), (width, height),
                       interpolation=cv2.INTER_NEAREST)
    return np.asarray(cv2.subtract(cv2.add(blobs, noise), np.full_like(blobs, 18)), dtype=np.uint8)


def place(scene: Scene, source: Source, *, height: int, at: tuple[int, int], rotation: int = 0,
          darken: float = 1.0) -> None:
    """Paste ``source``'s head so its face box is ``height`` px high with the face box's
    top-left corner at ``at`` (before turning); ``rotation`` x 90 degrees counter-clockwise.
    Parts falling outside the frame are cut off (the recorded box is clipped)."""
    hx, hy, hw, hh = source.head
    fx, fy, fw, fh = source.face
    scale = height / fh
    head = cv2.resize(source.rgb[hy:hy + hh, hx:hx + hw], (max(1, round(hw * scale)), max(1, round(hh * scale))),
                      interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    if darken != 1.0:
        head = np.clip(head.astype(np.float32) * darken, 0, 255).astype(np.uint8)
    face = ((fx - hx) * scale, (fy - hy) * scale, fw * scale, fh * scale)
    ph, pw = head.shape[:2]
    for _ in range(rotation % 4):  # turn the crop and its face box together (np.rot90 is CCW)
        x, y, w, h = face
        face = (y, pw - x - w, h, w)
        head = np.rot90(head)
        ph, pw = head.shape[:2]
    left, top = round(at[0] - face[0]), round(at[1] - face[1])
    H, W = scene.rgb.shape[:2]
    x0, y0, x1, y1 = max(0, left), max(0, top), min(W, left + pw), min(H, top + ph)
    scene.rgb[y0:y1, x0:x1] = head[y0 - top:y1 - top, x0 - left:x1 - left]
    bx0, by0 = max(0, round(left + face[0])), max(0, round(top + face[1]))
    bx1, by1 = min(W, round(left + face[0] + face[2])), min(H, round(top + face[1] + face[3]))
    scene.faces.append((bx0, by0, bx1 - bx0, by1 - by0))


def coverage(face: tuple[int, int, int, int], boxes: list[list[int]]) -> float:
    """The largest share of ``face``'s area that one stored box covers."""
    fx, fy, fw, fh = face
    best = 0.0
    for x, y, w, h in boxes:
        iw = max(0, min(fx + fw, x + w) - max(fx, x))
        ih = max(0, min(fy + fh, y + h) - max(fy, y))
        best = max(best, iw * ih / (fw * fh))
    return best


def jpeg(rgb: np.ndarray, *, orientation: int = 1, quality: int = 88) -> bytes:
    """A JPEG that displays as ``rgb``: for orientation 6 or 8 the pixels are stored
    turned the way a sideways camera writes them, with the EXIF tag that turns them back."""
    image = Image.fromarray(rgb)
    stored = {1: image, 6: image.transpose(Image.Transpose.ROTATE_90),
              8: image.transpose(Image.Transpose.ROTATE_270), 3: image.transpose(Image.Transpose.ROTATE_180)}[orientation]
    options = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    out = io.BytesIO()
    stored.save(out, "JPEG", quality=quality, **options)
    return out.getvalue()


MP12 = (4000, 3000)
MP48 = (8000, 6000)


def sized_scene(size: tuple[int, int], heights: tuple[int, ...], *, seed: int, source: str = "astronaut") -> Scene:
    """Faces of the given heights spread over a textured photo of ``size``."""
    width, height = size
    scene = Scene(background(width, height, seed=seed))
    src = sources()[source]
    for i, face in enumerate(heights):
        x = int(width * (0.15 + 0.7 * (i + 0.5) / len(heights)))
        y = int(height * (0.3 + 0.4 * (i % 2)))
        place(scene, src, height=face, at=(x, y))
    return scene


def face_free(size: tuple[int, int], *, seed: int) -> np.ndarray:
    return background(*size, seed=seed)
