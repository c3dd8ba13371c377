"""Capture metadata is read from the original before stripping; GPS and serials never kept."""

from __future__ import annotations

import json

from tests.pipeline import samples
from vault.pipeline import extract_capture, strip_metadata
from vault.pipeline.tiff import read_ifds


def test_capture_from_a_camera_jpeg():
    original = samples.jpeg_with_everything(orientation=6)
    stripped = strip_metadata("image/jpeg", original)
    capture = extract_capture(stripped.original_exif, orientation=stripped.orientation, width=240, height=320)
    assert capture == {
        "captured_at": "2019-07-14T09:30:05.123+02:00",
        "camera_make": "Canon",
        "camera_model": "Canon " + samples.MARKERS["model"],
        "lens_model": "EF 100mm f/2.8L Macro",
        "orientation": 6,
        "width": 240,
        "height": 320,
    }


def test_capture_never_holds_gps_serials_or_names():
    for mime, original in (("image/jpeg", samples.jpeg_with_everything()),
                           ("image/png", samples.png_with_everything()),
                           ("image/webp", samples.webp_with_everything()),
                           ("image/heic", samples.heic_with_everything())):
        stripped = strip_metadata(mime, original)
        assert stripped.original_exif is not None, mime
        capture = extract_capture(stripped.original_exif, orientation=1, width=1, height=1)
        assert capture["captured_at"] == "2019-07-14T09:30:05.123+02:00", mime  # read, so the EXIF was there
        text = json.dumps(capture)
        for key in ("serial", "lens_serial", "artist", "software", "user_comment", "make"):
            assert samples.MARKERS[key] not in text
        assert not any("gps" in key.lower() for key in capture)


def test_capture_date_falls_back_and_skips_blank_dates():
    tiff = samples.build_tiff({0x0132: (samples.ASCII, "2021:02:03 04:05:06")},
                              exif={0x9003: (samples.ASCII, "0000:00:00 00:00:00")})
    capture = extract_capture(tiff, orientation=1, width=10, height=20)
    assert capture["captured_at"] == "2021-02-03T04:05:06"
    assert capture["camera_make"] is None


def test_capture_without_exif():
    assert extract_capture(None, orientation=1, width=3, height=4) == {
        "captured_at": None, "camera_make": None, "camera_model": None, "lens_model": None,
        "orientation": 1, "width": 3, "height": 4,
    }


def test_damaged_exif_is_ignored_not_fatal():
    for blob in (b"", b"MM\x00*", b"MM\x00*\xff\xff\xff\xff", b"II*\x00\x08\x00\x00\x00\xff\xff" + bytes(20),
                 b"garbage" * 10):
        assert read_ifds(blob, ifd0=frozenset({0x010F}), exif=frozenset({0x9003})) == {}
        assert extract_capture(blob, orientation=1, width=1, height=1)["captured_at"] is None
