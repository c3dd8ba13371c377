"""Table-driven: for every format and variant, metadata present before, gone after, pixels
and orientation unchanged."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageOps, ImageSequence

from tests.pipeline import samples
from tests.pipeline.leaks import identifying_tags, planted_markers
from vault.errors import CorruptMedia, UnsupportedMedia
from vault.pipeline import SANITIZERS, sniff, strip_metadata

_EXIF_PLACES = {"GPS:GPSLatitude", "IFD0:Make", "IFD0:Model", "IFD0:Artist", "ExifIFD:SerialNumber",
                "ExifIFD:LensSerialNumber", "ExifIFD:DateTimeOriginal", "ExifIFD:UserComment", "Canon:SerialNumber",
                "XMP-dc:Creator", "XMP-photoshop:City"}
_JPEG_PLACES = _EXIF_PLACES | {"IPTC:By-line", "IPTC:City", "File:Comment", "IFD1:ThumbnailImage",
                               "JFIF:ThumbnailTIFF", "JFXX:ThumbnailImage", "JUMBF:JUMDLabel", "XMP-dc:Source"}
_PNG_PLACES = (_EXIF_PLACES - {"ExifIFD:UserComment"}) | {"PNG:Author", "PNG:Comment", "PNG:ModifyDate"}
_WEBP_PLACES = _EXIF_PLACES | {"IFD1:ThumbnailImage"}

# name -> (builder, metadata exiftool must find in the original, expected orientation)
CASES: dict[str, tuple[Callable[[], bytes], set[str], int]] = {
    "jpeg-mpf-trailer": (lambda: samples.jpeg_with_everything(orientation=6),
                         _JPEG_PLACES | {"MPImage2:MPImage2", "MPF0:NumberOfImages"}, 6),
    "jpeg-progressive-restart-zip": (
        lambda: samples.jpeg_with_everything(orientation=3, progressive=True, restart=True, trailer="zip"),
        _JPEG_PLACES, 3),
    "jpeg-cmyk-adobe-samsung": (lambda: samples.jpeg_with_everything(mode="CMYK", orientation=8, trailer="samsung"),
                                _JPEG_PLACES, 8),
    "jpeg-grey": (lambda: samples.jpeg_with_everything(mode="L", orientation=2, trailer=""), _JPEG_PLACES, 2),
    "png-rgb-icc": (lambda: samples.png_with_everything(orientation=6), _PNG_PLACES, 6),
    "png-palette-trns": (lambda: samples.png_with_everything(mode="P", orientation=5), _PNG_PLACES, 5),
    "png-16bit-grey": (lambda: samples.png_with_everything(mode="I;16"), _PNG_PLACES, 1),
    "apng-rgba": (lambda: samples.png_with_everything(mode="RGBA", animated=True, orientation=7), _PNG_PLACES, 7),
    "webp-lossy": (lambda: samples.webp_with_everything(orientation=6), _WEBP_PLACES, 6),
    "webp-lossless-alpha": (lambda: samples.webp_with_everything(lossless=True, alpha=True, orientation=4),
                            _WEBP_PLACES, 4),
    "webp-animated": (lambda: samples.webp_with_everything(animated=True, alpha=True), _WEBP_PLACES, 1),
    "heic": (lambda: samples.heic_with_everything(orientation=6), _WEBP_PLACES, 6),
    "heic-grid": (lambda: samples.heic_with_everything(orientation=8, grid=True), _WEBP_PLACES, 8),
}


@pytest.fixture(scope="module")
def files() -> dict[str, tuple[bytes, bytes, int]]:
    """name -> (original, stripped, expected orientation), built once per module."""
    built = {}
    for name, (build, _, orientation) in CASES.items():
        original = build()
        mime = sniff(original[:64])
        built[name] = (original, strip_metadata(mime, original).data, orientation)
    return built


def _frames(data: bytes, *, transpose: bool = False) -> list[np.ndarray]:
    # A JPEG with an MPF index opens as MPO; the picture we store is its first image.
    formats = ["JPEG"] if data.startswith(b"\xff\xd8") else None
    image = Image.open(io.BytesIO(data), formats=formats)
    frames = []
    for index, frame in enumerate(ImageSequence.Iterator(image)):
        if index and formats:
            break  # a JPEG's MPF "frames" are images appended after EOI, not part of this one
        shown = ImageOps.exif_transpose(frame) if transpose else frame
        frames.append(np.asarray(shown.convert(frame.mode)))
    return frames


@pytest.mark.parametrize("name", CASES)
def test_metadata_present_before_and_gone_after(name, files, exiftool):
    original, stripped, _ = files[name]
    before = exiftool.tags(original)
    assert CASES[name][1] <= set(before), sorted(CASES[name][1] - set(before))
    assert planted_markers(original), "the sample should carry its markers"
    after = exiftool.tags(stripped)
    assert identifying_tags(after) == []
    assert planted_markers(stripped) == []


@pytest.mark.parametrize("name", CASES)
def test_pixels_identical(name, files):
    original, stripped, _ = files[name]
    before, after = _frames(original), _frames(stripped)
    assert len(before) == len(after) >= 1
    for a, b in zip(before, after, strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a, b)


@pytest.mark.parametrize("name", CASES)
def test_orientation_kept(name, files):
    original, stripped, orientation = files[name]
    before = _frames(original, transpose=True)[0]
    after = _frames(stripped, transpose=True)[0]
    assert np.array_equal(before, after)
    if not name.startswith("heic"):
        # HEIC displays through its irot/imir boxes (kept); pillow-heif resets EXIF to 1.
        assert Image.open(io.BytesIO(stripped)).getexif().get(0x0112, 1) == orientation
    assert strip_metadata(sniff(original[:64]), original).orientation == orientation


@pytest.mark.parametrize("name", CASES)
def test_sanitizing_twice_changes_nothing(name, files):
    _, stripped, _ = files[name]
    assert strip_metadata(sniff(stripped[:64]), stripped).data == stripped


@pytest.mark.parametrize("name", CASES)
def test_a_layout_rebuilds_the_stripped_file_from_the_original(name, files):
    """What a decoder worker sends instead of a stripped JPEG: ranges of the upload, in
    order, and the few new bytes; other formats come back whole (no layout)."""
    original, stripped, _ = files[name]
    layout = strip_metadata(sniff(original[:64]), original).layout
    if not name.startswith("jpeg"):
        assert layout is None
        return
    assert layout is not None
    rebuilt = b"".join(piece if isinstance(piece, bytes) else original[piece[0]:piece[1]] for piece in layout)
    assert rebuilt == stripped
    ranges = [piece for piece in layout if not isinstance(piece, bytes)]
    assert ranges and all(a[1] < b[0] for a, b in zip(ranges, ranges[1:]))  # ascending, merged where adjacent
    assert sum(len(piece) for piece in layout if isinstance(piece, bytes)) < 200  # headers only


@pytest.mark.parametrize("name", CASES)
def test_matches_exiftool_oracle(name, files, exiftool):
    """exiftool ``-all=`` is lossless too: both results decode to the same pixels, and ours
    keeps nothing exiftool's keeps out, except Orientation (ours keeps it on purpose)."""
    original, stripped, _ = files[name]
    oracle = exiftool.strip(original)
    for ours, theirs in zip(_frames(stripped), _frames(oracle), strict=True):
        assert np.array_equal(ours, theirs)
    extra = set(exiftool.tags(stripped)) - set(exiftool.tags(oracle))
    structural = {"IFD0:Orientation", "File:ExifByteOrder"}
    # exiftool -all= also drops what rendering needs (ICC, JFIF, Adobe); we keep those.
    kept_on_purpose = {k for k in extra if k.split(":")[0].startswith(("ICC", "JFIF", "Adobe"))
                       or k in ("PNG:ProfileName", "RIFF:WebP_Flags")}
    assert extra - structural - kept_on_purpose == set()


def test_icc_profile_kept(files):
    for name in ("jpeg-mpf-trailer", "png-rgb-icc", "webp-lossy"):
        original, stripped, _ = files[name]
        icc = Image.open(io.BytesIO(original)).info.get("icc_profile")
        assert icc and Image.open(io.BytesIO(stripped)).info.get("icc_profile") == icc


def test_heic_thumbnail_neutralised(files):
    import pillow_heif

    original, stripped, _ = files["heic"]
    thumbnail = pillow_heif.open_heif(io.BytesIO(original))[0].get_thumbnail(0)
    thumbnail.load()  # decodes in the original
    with pytest.raises((EOFError, OSError, RuntimeError, ValueError)):
        pillow_heif.open_heif(io.BytesIO(stripped))[0].get_thumbnail(0).load()


def test_jpeg_trailers_are_dropped(files):
    for name in ("jpeg-mpf-trailer", "jpeg-progressive-restart-zip", "jpeg-cmyk-adobe-samsung"):
        _, stripped, _ = files[name]
        assert stripped.endswith(b"\xff\xd9")
        assert stripped.count(b"\xff\xd8") == 1  # no second image, no embedded thumbnail JPEG
        assert b"PK\x03\x04" not in stripped


def test_trailers_after_riff_and_iend_are_dropped():
    for mime, original in (("image/webp", samples.webp_with_everything(trailer=True)),
                           ("image/png", samples.png_with_everything())):
        assert samples.MARKERS["trailer"].encode() in original
        stripped = strip_metadata(mime, original).data
        assert planted_markers(stripped) == []
        assert stripped.endswith(b"IEND\xaeB`\x82") or len(stripped) == 8 + int.from_bytes(stripped[4:8], "little")


def test_minimal_exif_only_when_rotated(files):
    _, stripped, _ = files["png-16bit-grey"]
    assert b"eXIf" not in stripped
    _, stripped, _ = files["jpeg-grey"]
    assert stripped.count(b"Exif\x00\x00") == 1


def test_xmp_only_orientation_is_honoured():
    """Pillow falls back to XMP tiff:Orientation when EXIF has none; the copy must agree."""
    plain = io.BytesIO()
    samples.picture().save(plain, "JPEG", xmp=samples.xmp_packet(orientation=6))
    original = plain.getvalue()
    stripped = strip_metadata("image/jpeg", original)
    assert stripped.orientation == 6
    before = ImageOps.exif_transpose(Image.open(io.BytesIO(original)))
    after = ImageOps.exif_transpose(Image.open(io.BytesIO(stripped.data)))
    assert np.array_equal(np.asarray(before), np.asarray(after))


def test_registry_is_explicit():
    assert set(SANITIZERS) == {"image/jpeg", "image/png", "image/webp", "image/heic", "image/heif"}
    for mime, sanitizer in SANITIZERS.items():
        assert mime in sanitizer.mimetypes


def _heic_with_hidden_places() -> bytes:
    """HEIC plus: orphan bytes inside mdat that no item lists, an unknown top-level box,
    and a property renamed to ``udes`` (HEIF's user description: names, tags)."""
    data = bytearray(samples.heic_with_everything())
    mdat = data.rindex(b"mdat") - 4  # pillow-heif writes ftyp, meta, mdat (last)
    orphan = samples.MARKERS["vendor"].encode()
    size = int.from_bytes(data[mdat:mdat + 4], "big")
    data[mdat:mdat + 4] = (size + len(orphan)).to_bytes(4, "big")
    data += orphan
    secret = samples.MARKERS["trailer"].encode()
    data += (8 + 16 + len(secret)).to_bytes(4, "big") + b"uuid" + bytes(16) + secret
    pixi = data.index(b"pixi")
    data[pixi:pixi + 4] = b"udes"
    return bytes(data)


def test_heic_hidden_places_are_neutralised():
    original = _heic_with_hidden_places()
    stripped = strip_metadata("image/heic", original).data
    assert len(stripped) == len(original)  # in place: every offset still valid
    assert planted_markers(stripped) == []
    assert b"udes" not in stripped and b"uuid" not in stripped
    assert np.array_equal(_frames(original)[0], _frames(stripped)[0])


def _many_scans(data: bytes, copies: int) -> bytes:
    sos = data.rindex(b"\xff\xda")
    scan = data[sos:-2]
    return data[:sos] + scan * copies + b"\xff\xd9"


def test_jpeg_with_thousands_of_scans_is_refused():
    data = samples.jpeg_with_everything(trailer="")
    with pytest.raises(CorruptMedia):
        strip_metadata("image/jpeg", _many_scans(data, 300))


def test_jpeg_lossless_coding_is_unsupported():
    data = bytearray(samples.jpeg_with_everything(trailer=""))
    data[data.rindex(b"\xff\xc0") + 1] = 0xC3
    with pytest.raises(UnsupportedMedia):
        strip_metadata("image/jpeg", bytes(data))


# -------------------------------------------------------------- refusals

def _truncate(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _bad_png_crc(data: bytes) -> bytes:
    at = data.index(b"IDAT") + 10
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _bad_jpeg_length(data: bytes) -> bytes:
    at = data.rindex(b"\xff\xdb")  # the frame's DQT (the EXIF thumbnail has its own)
    return data[:at + 2] + b"\xff\xff" + data[at + 4:]


def _scan_before_frame(data: bytes) -> bytes:
    sof, sos = data.rindex(b"\xff\xc0"), data.rindex(b"\xff\xda")
    return data[:sof] + data[sos:]


REFUSED = {
    "jpeg-truncated": (lambda: _truncate(samples.jpeg_with_everything(trailer="")), "image/jpeg"),
    "jpeg-bad-length": (lambda: _bad_jpeg_length(samples.jpeg_with_everything(trailer="")), "image/jpeg"),
    "jpeg-scan-before-frame": (lambda: _scan_before_frame(samples.jpeg_with_everything(trailer="")), "image/jpeg"),
    "jpeg-no-eoi": (lambda: samples.jpeg_with_everything(trailer="")[:-2], "image/jpeg"),
    "png-truncated": (lambda: _truncate(samples.png_with_everything()), "image/png"),
    "png-bad-crc": (lambda: _bad_png_crc(samples.png_with_everything()), "image/png"),
    "webp-truncated": (lambda: _truncate(samples.webp_with_everything()), "image/webp"),
    "heic-truncated": (lambda: _truncate(samples.heic_with_everything()), "image/heic"),
    "jpeg-magic-only": (lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
    "png-magic-only": (lambda: b"\x89PNG\r\n\x1a\n", "image/png"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_damaged_files_are_refused(name):
    build, mime = REFUSED[name]
    with pytest.raises(CorruptMedia):
        strip_metadata(mime, build())
