"""Redaction (render_redaction): opaque fill over every rectangle exactly, oriented, no metadata,
thumbnails from the redacted pixels."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.pipeline import samples
from tests.pipeline.leaks import identifying_tags, planted_markers
from vault.pipeline import YuNetOnnxDetector, process_photo
from vault.pipeline.redact import render_redaction
from vault.redaction.state import clip

MAX_PIXELS = 50_000_000


def test_redacted_faces_are_opaque_and_undetectable(yunet_model, exiftool):
    detector = YuNetOnnxDetector(yunet_model)
    original = samples.astronaut_sideways()
    photo = process_photo(original, max_pixels=MAX_PIXELS, detector=detector)
    assert photo.faces.count == 1
    rects = clip(photo.faces.boxes, photo.width, photo.height, margin=0.25)
    redacted, thumbs = render_redaction(photo.stripped, rects, thumbnail_sizes=[256])

    image = Image.open(io.BytesIO(redacted))
    assert image.format == "JPEG" and image.size == (photo.width, photo.height)  # oriented
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    x, y, w, h = photo.faces.boxes[0]
    margin_x, margin_y = int(w * 0.25), int(h * 0.25)
    # The face and its margin are black (JPEG ringing only at the very edge).
    inner = pixels[y - margin_y + 4:y + h + margin_y - 4, x - margin_x + 4:x + w + margin_x - 4]
    assert inner.max() <= 12
    # Outside the box, the picture is unchanged apart from re-encoding.
    unredacted = np.asarray(Image.open(io.BytesIO(photo.thumbnails[1024])).convert("RGB"), dtype=np.int16)
    assert np.abs(pixels[:, :x - margin_x - 8] - unredacted[:, :x - margin_x - 8]).mean() < 6

    assert detector.detect(np.asarray(image.convert("RGB"))) == []
    assert identifying_tags(exiftool.tags(redacted)) == []
    assert planted_markers(redacted) == []
    assert image.info.get("icc_profile") == Image.open(io.BytesIO(original)).info["icc_profile"]
    small = np.asarray(Image.open(io.BytesIO(thumbs[256])).convert("RGB"), dtype=np.int16)
    s = small.shape[1] / photo.width
    assert small[int((y + h / 2) * s) - 2:int((y + h / 2) * s) + 2, int((x + w / 2) * s) - 2:int((x + w / 2) * s) + 2].max() <= 12


def test_boxes_are_clipped_to_the_image():
    data = io.BytesIO()
    samples.picture(100, 80).save(data, "PNG")
    redacted = Image.open(io.BytesIO(render_redaction(data.getvalue(), [[-20, -20, 50, 50], [90, 70, 40, 40]])[0]))
    pixels = np.asarray(redacted.convert("RGB"), dtype=np.int16)
    assert pixels[:26, :26].max() <= 12 and pixels[-5:, -5:].max() <= 12  # filled exactly: 0..29 and 90..99
    assert pixels[40, 50].max() > 30


def test_no_boxes_means_a_clean_reencode():
    data = io.BytesIO()
    samples.picture(100, 80).save(data, "PNG")
    redacted = Image.open(io.BytesIO(render_redaction(data.getvalue(), [])[0]))
    assert redacted.size == (100, 80) and np.asarray(redacted).max() > 30
