"""Thumbnails: right size, oriented, ICC kept, and as clean as the stripped original."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.pipeline import samples
from tests.pipeline.leaks import identifying_tags, planted_markers
from vault.pipeline import NoDetector, process_photo
from vault.pipeline.thumbnails import decode, encode_jpeg

MAX_PIXELS = 50_000_000

CASES = {
    "jpeg-orient6": (lambda: samples.jpeg_with_everything(orientation=6), True),
    "jpeg-orient3-progressive": (lambda: samples.jpeg_with_everything(orientation=3, progressive=True), True),
    "jpeg-cmyk": (lambda: samples.jpeg_with_everything(mode="CMYK", orientation=8), False),
    "jpeg-grey": (lambda: samples.jpeg_with_everything(mode="L", orientation=5, trailer=""), False),
    "png-orient6": (lambda: samples.png_with_everything(orientation=6), True),
    "png-palette": (lambda: samples.png_with_everything(mode="P"), False),
    "png-16bit": (lambda: samples.png_with_everything(mode="I;16"), False),
    "png-rgba": (lambda: samples.png_with_everything(mode="RGBA", orientation=7), True),
    "webp-orient6": (lambda: samples.webp_with_everything(orientation=6), True),
    "webp-alpha": (lambda: samples.webp_with_everything(lossless=True, alpha=True), True),
    "heic-orient6": (lambda: samples.heic_with_everything(orientation=6), False),
}


@pytest.fixture(scope="module")
def processed():
    built = {}
    for name, (build, _) in CASES.items():
        original = build()
        built[name] = (original, process_photo(original, max_pixels=MAX_PIXELS, detector=NoDetector()))
    return built


def _reference(original: bytes) -> Image.Image:
    """The original as a viewer shows it: oriented, alpha over white, 8-bit RGB."""
    formats = ["JPEG"] if original.startswith(b"\xff\xd8") else None
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(original), formats=formats))
    if image.mode.startswith("I"):
        image = Image.fromarray((np.asarray(image).astype(np.int64) >> 8).astype(np.uint8))
    if "A" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        image = white
    return image.convert("RGB")


@pytest.mark.parametrize("name", CASES)
def test_thumbnails_sized_and_oriented(name, processed):
    original, photo = processed[name]
    reference = _reference(original)
    assert (photo.width, photo.height) == reference.size
    assert sorted(photo.thumbnails) == [256, 1024]
    for size, data in photo.thumbnails.items():
        thumb = Image.open(io.BytesIO(data))
        assert thumb.format == "JPEG"
        assert max(thumb.size) == min(size, max(reference.size))
        # Same picture, same way up: compare with the oriented original scaled alike.
        expected = np.asarray(reference.resize(thumb.size, Image.Resampling.LANCZOS), dtype=np.int16)
        got = np.asarray(thumb.convert("RGB"), dtype=np.int16)
        wrong_way = np.asarray(reference.rotate(180).resize(thumb.size, Image.Resampling.LANCZOS), dtype=np.int16)
        assert np.abs(got - expected).mean() < np.abs(got - wrong_way).mean() / 3


@pytest.mark.parametrize("name", CASES)
def test_thumbnails_pass_the_leak_test(name, processed, exiftool):
    original, photo = processed[name]
    icc = Image.open(io.BytesIO(original)).info.get("icc_profile")
    for data in photo.thumbnails.values():
        assert identifying_tags(exiftool.tags(data)) == []
        assert planted_markers(data) == []
        assert b"\xff\xfe" not in data.split(b"\xff\xda", 1)[0]  # no COM segment before the scan
        assert b"Exif\x00\x00" not in data
        if CASES[name][1]:
            assert Image.open(io.BytesIO(data)).info.get("icc_profile") == icc


def test_encoder_drops_the_source_comment():
    """Pillow 13 copies ``info["comment"]`` into saved JPEGs unless told otherwise."""
    image = samples.picture(64, 48)
    image.info["comment"] = b"Patient: Jane Doe"
    image.info["exif"] = b"Exif\x00\x00MM\x00*"
    data = encode_jpeg(image, icc=None)
    assert b"Jane" not in data and b"Exif" not in data
    assert "comment" not in Image.open(io.BytesIO(data)).info


def test_icc_profile_of_another_colour_space_is_not_attached():
    grey = samples.picture(64, 48, mode="L")
    data = encode_jpeg(grey, icc=samples.srgb_icc())
    assert "icc_profile" not in Image.open(io.BytesIO(data)).info


def test_large_jpeg_is_decoded_dct_scaled():
    big = io.BytesIO()
    samples.picture(3000, 2000).save(big, "JPEG", quality=85)
    decoded = decode(big.getvalue(), mime="image/jpeg", max_pixels=MAX_PIXELS)
    assert decoded.size == (3000, 2000)
    assert decoded.image.size == (1024, 683)
    full = np.asarray(Image.open(big).resize((1024, 683), Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.abs(np.asarray(decoded.image, dtype=np.int16) - full).mean() < 3
