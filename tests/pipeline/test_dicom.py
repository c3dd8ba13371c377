"""The worker side of the DICOM export (vault/pipeline/dicom.py) on sources the Orthanc
round trips leave out: alpha, 16-bit grey, palette, names with DICOM separators."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.pipeline.samples import png_with_everything
from vault.pipeline.dicom import build_instance, jpeg_frame, person_name

ATTRIBUTES = {"sop_instance_uid": "2.25.10", "study_uid": "2.25.11", "series_uid": "2.25.12",
              "patient_id": "H123", "patient_name": "Ann Example"}


def _build(data: bytes, **attributes) -> pydicom.Dataset:
    instance = build_instance(data, {**ATTRIBUTES, **attributes}, max_pixels=10**8)
    return pydicom.dcmread(io.BytesIO(instance.data))


def test_alpha_is_shown_over_white_as_the_vault_displays_it():
    data = png_with_everything(mode="RGBA")
    ds = _build(data)
    rgba = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(np.float64)
    alpha = rgba[..., 3:] / 255
    expected = np.rint(rgba[..., :3] * alpha + 255 * (1 - alpha))
    assert ds.PhotometricInterpretation == "RGB" and ds.LossyImageCompression == "00"
    assert np.abs(ds.pixel_array.astype(np.int16) - expected).max() <= 1  # Pillow's integer compositing


def test_sixteen_bit_grey_keeps_its_high_byte():
    data = png_with_everything(mode="I;16")
    ds = _build(data)
    wide = np.asarray(Image.open(io.BytesIO(data))).astype(np.int64)
    assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 8
    assert np.array_equal(ds.pixel_array, (wide >> 8).astype(np.uint8))


def test_palette_becomes_rgb():
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).quantize(8).save(out, "PNG")
    ds = _build(out.getvalue())
    assert ds.PhotometricInterpretation == "RGB"
    assert np.array_equal(ds.pixel_array, np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB")))


@pytest.mark.parametrize(("given", "expected"), [
    ("Ann Example", "Ann Example"), ("Doe^John", "Doe John"), ("A=B\\C", "A B C"), ("x" * 80, "x" * 64), (None, ""),
])
def test_names_never_break_the_person_name_syntax(given, expected):
    assert person_name(given) == expected


def test_the_frame_header_is_found_past_app_segments():
    out = io.BytesIO()
    Image.new("RGB", (16, 16)).save(out, "JPEG", progressive=True, icc_profile=b"\0" * 200)
    assert jpeg_frame(out.getvalue()) == (0xC2, 8)
    out = io.BytesIO()
    Image.new("L", (16, 16)).save(out, "JPEG")
    assert jpeg_frame(out.getvalue()) == (0xC0, 8)
    assert jpeg_frame(b"\xff\xd8\xff\xda\x00\x02") is None
