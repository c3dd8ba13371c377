"""The real type comes from magic bytes, whatever the client claims."""

from __future__ import annotations

import io
import struct

import pytest

from tests.pipeline import samples
from vault.pipeline import SNIFF_BYTES, sniff


def _ftyp(major: bytes, *compatible: bytes) -> bytes:
    body = major + b"\x00\x00\x00\x00" + b"".join(compatible)
    return struct.pack(">I", len(body) + 8) + b"ftyp" + body + b"\x00\x00\x00\x08free"


def _pillow(fmt: str) -> bytes:
    out = io.BytesIO()
    samples.picture(16, 16).save(out, fmt)
    return out.getvalue()


CASES = {
    "jpeg": (lambda: _pillow("JPEG"), "image/jpeg"),
    "png": (lambda: _pillow("PNG"), "image/png"),
    "webp": (lambda: _pillow("WEBP"), "image/webp"),
    "gif": (lambda: _pillow("GIF"), "image/gif"),
    "tiff": (lambda: _pillow("TIFF"), "image/tiff"),
    "heic-major": (lambda: _ftyp(b"heic", b"mif1", b"heic"), "image/heic"),
    "heic-in-compatible": (lambda: _ftyp(b"mif1", b"mif1", b"miaf", b"heic"), "image/heic"),
    "heif-plain": (lambda: _ftyp(b"mif1", b"mif1", b"miaf"), "image/heif"),
    "avif": (lambda: _ftyp(b"avif", b"mif1", b"avif"), "image/avif"),
    "heif-sequence": (lambda: _ftyp(b"msf1", b"msf1", b"hevc"), "image/heif-sequence"),
    "mp4": (lambda: _ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "video/mp4"),
    "quicktime": (lambda: _ftyp(b"qt  ", b"qt  "), "video/quicktime"),
    "real-heic": (lambda: samples.heic_with_everything(), "image/heic"),
    "pdf": (lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", None),
    "zip": (lambda: b"PK\x03\x04" + bytes(40), None),
    "html": (lambda: b"<!doctype html><img src=x onerror=alert(1)>", None),
    "empty": (lambda: b"", None),
    "riff-not-webp": (lambda: b"RIFF\x24\x00\x00\x00WAVEfmt ", None),
    "unknown-ftyp": (lambda: _ftyp(b"abcd", b"efgh"), None),
    "ftyp-bad-size": (lambda: b"\x00\x00\x00\x07ftypheic", None),
}


@pytest.mark.parametrize("name", CASES)
def test_sniff(name):
    build, expected = CASES[name]
    assert sniff(build()[:SNIFF_BYTES]) == expected


def test_a_jpeg_named_png_is_a_jpeg():
    # The type never depends on anything but the bytes: there is no name or header to pass.
    data = _pillow("JPEG")
    assert sniff(data[:SNIFF_BYTES]) == "image/jpeg"
    assert sniff(data[:3]) == "image/jpeg"
