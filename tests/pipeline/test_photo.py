"""process_photo end to end, and every kind of bad input it must refuse cleanly."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.pipeline import samples
from vault.errors import CorruptMedia, MediaRejected, PixelLimit, UnsupportedMedia
from vault.pipeline import Faces, NoDetector, process_photo, strip_metadata

MAX_PIXELS = 50_000_000


def test_processed_photo_fields():
    original = samples.jpeg_with_everything(orientation=6)
    photo = process_photo(original, max_pixels=MAX_PIXELS, detector=NoDetector())
    assert photo.mime == "image/jpeg"
    assert photo.stripped == strip_metadata("image/jpeg", original).data
    assert (photo.width, photo.height, photo.orientation) == (240, 320, 6)
    assert photo.capture["captured_at"] == "2019-07-14T09:30:05.123+02:00"
    assert (photo.capture["width"], photo.capture["height"]) == (240, 320)
    assert photo.faces == Faces(detected=True, count=0, boxes=[], detector="none", assumed=True)
    # Nothing identifying in the repr a careless log line might print.
    assert not any(marker.decode() in repr(photo) for marker in samples.MARKER_BYTES)


@pytest.mark.parametrize("mime, build", [
    ("image/png", lambda: samples.png_with_everything(orientation=6)),
    ("image/webp", lambda: samples.webp_with_everything(orientation=6)),
    ("image/heic", lambda: samples.heic_with_everything(orientation=6)),
])
def test_every_photo_format(mime, build):
    photo = process_photo(build(), max_pixels=MAX_PIXELS, detector=NoDetector())
    assert photo.mime == mime
    size = (192, 256) if mime == "image/heic" else (240, 320)
    assert (photo.width, photo.height) == size
    assert Image.open(io.BytesIO(photo.thumbnails[256])).size == (size[0] * 256 // size[1], 256)


def test_polyglot_jpeg_zip_is_cleaned_not_stored_as_is():
    """Decision: bytes after EOI are never kept; the JPEG part is a valid photo, so it is
    accepted without the ZIP (refusing would also refuse phones' MPF and vendor trailers)."""
    original = samples.jpeg_with_everything(trailer="zip")
    assert zipfile.is_zipfile(io.BytesIO(original))
    photo = process_photo(original, max_pixels=MAX_PIXELS, detector=NoDetector())
    assert not zipfile.is_zipfile(io.BytesIO(photo.stripped))
    assert b"PK\x03\x04" not in photo.stripped and photo.stripped.endswith(b"\xff\xd9")


def _png_header(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` whose IDAT is one tiny (wrong) deflate stream."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _zero_png_bomb(width: int, height: int) -> bytes:
    """A real decompression bomb: a 1-bit all-black PNG, tiny compressed, huge decoded."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(samples.jpeg_with_everything(trailer=""))
    sof = data.rindex(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_claiming(width: int, height: int) -> bytes:
    data = bytearray(samples.webp_with_everything())
    at = data.index(b"VP8X") + 8
    data[at + 4:at + 10] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(data)


def _heic_claiming(width: int, height: int) -> bytes:
    data = bytearray(samples.heic_with_everything())
    at = data.index(b"ispe") + 8  # the primary's ispe comes first in ipco
    data[at:at + 8] = struct.pack(">II", width, height)
    return bytes(data)


BOMBS = {
    "jpeg-header": lambda: _jpeg_claiming(60000, 60000),
    "png-header": lambda: _png_header(100000, 100000),
    "png-real-bomb": lambda: _zero_png_bomb(12000, 12000),
    "webp-canvas": lambda: _webp_claiming(16000, 16000),
    "heic-ispe": lambda: _heic_claiming(30000, 30000),
}


@pytest.mark.parametrize("name", BOMBS)
def test_pixel_bombs_refused_before_decoding(name):
    with pytest.raises(PixelLimit) as caught:
        process_photo(BOMBS[name](), max_pixels=MAX_PIXELS, detector=NoDetector())
    assert caught.value.status == 413


def test_pixel_cap_is_inclusive():
    original = samples.jpeg_with_everything(trailer="")
    assert process_photo(original, max_pixels=320 * 240, detector=NoDetector()).width == 320
    with pytest.raises(PixelLimit):
        process_photo(original, max_pixels=320 * 240 - 1, detector=NoDetector())


def test_caps_above_pillows_default_do_not_warn(monkeypatch):
    """Pillow warns (an error under pytest) between its limit and twice it; our header check
    replaces that, so the pipeline lifts Pillow's limit up to the configured cap."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    photo = process_photo(samples.jpeg_with_everything(trailer=""), max_pixels=MAX_PIXELS, detector=NoDetector())
    assert photo.width == 320
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS


def _gif() -> bytes:
    out = io.BytesIO()
    samples.picture(16, 16).save(out, "GIF")
    return out.getvalue()


def _broken_huffman_table(data: bytes) -> bytes:
    at = data.rindex(b"\xff\xc4") + 5  # inside the last DHT: counts that overflow the table
    return data[:at] + b"\xff" * 16 + data[at + 16:]


REJECTED = {
    "empty": (lambda: b"", CorruptMedia),
    "gif": (_gif, UnsupportedMedia),
    "pdf": (lambda: b"%PDF-1.7\n" + bytes(100), UnsupportedMedia),
    "html": (lambda: b"<html><script>alert(1)</script></html>", UnsupportedMedia),
    "random": (lambda: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), UnsupportedMedia),
    "mp4-is-not-a-photo": (lambda: b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + bytes(64), UnsupportedMedia),
    "avif": (lambda: b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64), UnsupportedMedia),
    "jpeg-truncated": (lambda: samples.jpeg_with_everything(trailer="")[:20000], CorruptMedia),
    "jpeg-bad-huffman": (lambda: _broken_huffman_table(samples.jpeg_with_everything(trailer="")), CorruptMedia),
    "png-truncated": (lambda: samples.png_with_everything()[:50000], CorruptMedia),
    "png-bad-deflate": (lambda: _png_header(64, 64), CorruptMedia),
    "webp-truncated": (lambda: samples.webp_with_everything()[:5000], CorruptMedia),
    "heic-truncated": (lambda: samples.heic_with_everything()[:20000], CorruptMedia),
    "jpeg-garbage-after-magic": (lambda: b"\xff\xd8\xff" + bytes(500), CorruptMedia),
}


@pytest.mark.parametrize("name", REJECTED)
def test_bad_input_is_rejected_with_a_clear_error(name):
    build, error = REJECTED[name]
    with pytest.raises(error) as caught:
        process_photo(build(), max_pixels=MAX_PIXELS, detector=NoDetector())
    assert isinstance(caught.value, MediaRejected)
    assert 400 <= caught.value.status < 500
    assert not any(marker.decode() in caught.value.message for marker in samples.MARKER_BYTES)
