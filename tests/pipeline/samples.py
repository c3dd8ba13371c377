"""Sample files with identifying metadata in every place a camera or an editor puts it.

Built in memory by hand (segments, chunks, boxes) or with Pillow/pillow-heif, never
fetched and never committed. Every identifying text is a marker from :data:`MARKERS`, so a
test can grep the cleaned bytes for all of them at once.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageCms, PngImagePlugin

# Unique strings planted in every metadata location; none may survive stripping.
MARKERS = {
    "make": "LeakMakeCo",
    "model": "LeakModel-X1",
    "serial": "LEAKSERIAL0042",
    "lens_serial": "LEAKLENSSN77",
    "artist": "LeakArtist Jane Patient",
    "software": "LeakSoft 9",
    "user_comment": "LEAKUSERCOMMENT",
    "xmp_creator": "LeakXmpCreator",
    "xmp_city": "LeakXmpCity",
    "ext_xmp": "LeakExtendedXmp",
    "iptc_byline": "LeakIptcByline",
    "iptc_city": "LeakIptcCity",
    "comment": "LeakJpegComment DOB 1970-01-01",
    "jumbf": "LeakC2paAuthor",
    "vendor": "LeakVendorBlob",
    "trailer": "LeakTrailerSecret",
    "png_text": "LeakPngText",
    "png_ztxt": "LeakPngZtxt",
    "png_private": "LeakPngPrivateChunk",
    "mpf_second": "LeakMpfSecondImage",
    "thumb_jfxx": "LeakJfxxThumb",
}
# Markers that are compressed on purpose inside the original (zTXt): grep cannot see them
# in either file, exiftool can.
MARKER_BYTES = [v.encode() for k, v in MARKERS.items() if k != "png_ztxt"]

CAPTURED = "2019:07:14 09:30:05"
CAPTURED_DIGITIZED = "2019:07:14 09:30:06"
MODIFIED = "2020:01:02 03:04:05"

ASCII, SHORT, LONG, RATIONAL, UNDEFINED = 2, 3, 4, 5, 7


@functools.cache
def srgb_icc() -> bytes:
    # Cached: littleCMS stamps each new profile with the current time.
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def picture(width: int = 320, height: int = 240, *, seed: int = 7, mode: str = "RGB") -> Image.Image:
    """A gradient with noise and a few shapes: compresses like a photo, not like a flat fill."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                     (x + y) * 255 // max(1, width + height - 2)], axis=-1).astype(np.int16)
    base[height // 4:height // 2, width // 4:width // 2] = (200, 40, 40)
    noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy).convert(mode)


def small_jpeg(text: str, *, size: tuple[int, int] = (32, 24)) -> bytes:
    """A tiny JPEG with a marker in a COM segment (so its presence is greppable)."""
    out = io.BytesIO()
    picture(*size, seed=3).save(out, "JPEG", quality=70, comment=text.encode())
    return out.getvalue()


# ---------------------------------------------------------------- TIFF / EXIF builder

def _value(kind: int, value: Any) -> tuple[int, bytes]:
    if kind == ASCII:
        raw = value.encode() + b"\x00"
        return len(raw), raw
    if kind == SHORT:
        values = value if isinstance(value, (list, tuple)) else [value]
        return len(values), b"".join(struct.pack(">H", v) for v in values)
    if kind == LONG:
        values = value if isinstance(value, (list, tuple)) else [value]
        return len(values), b"".join(struct.pack(">I", v) for v in values)
    if kind == RATIONAL:
        return len(value), b"".join(struct.pack(">II", n, d) for n, d in value)
    return len(value), bytes(value)


class _Ifd:
    def __init__(self, entries: dict[int, tuple[int, Any]]) -> None:
        self.entries = dict(entries)
        self.offset = 0

    def size(self) -> int:
        extra = 0
        for kind, value in self.entries.values():
            raw = _value(kind, value)[1]
            if len(raw) > 4:
                extra += len(raw) + (len(raw) & 1)
        return 2 + 12 * len(self.entries) + 4 + extra

    def write(self, next_ifd: int) -> bytes:
        head, data = [struct.pack(">H", len(self.entries))], []
        data_at = self.offset + 2 + 12 * len(self.entries) + 4
        for tag in sorted(self.entries):
            kind, value = self.entries[tag]
            count, raw = _value(kind, value)
            if len(raw) <= 4:
                head.append(struct.pack(">HHI", tag, kind, count) + raw.ljust(4, b"\x00"))
            else:
                head.append(struct.pack(">HHII", tag, kind, count, data_at))
                padded = raw + b"\x00" * (len(raw) & 1)
                data.append(padded)
                data_at += len(padded)
        return b"".join(head) + struct.pack(">I", next_ifd) + b"".join(data)


def build_tiff(ifd0: dict[int, tuple[int, Any]], *, exif: dict | None = None, gps: dict | None = None,
               thumbnail: bytes | None = None) -> bytes:
    """Big-endian TIFF with IFD0, optional Exif and GPS sub-IFDs and an IFD1 JPEG thumbnail."""
    main = _Ifd(ifd0)
    subs: list[tuple[int, _Ifd]] = []
    if exif is not None:
        subs.append((0x8769, _Ifd(exif)))
    if gps is not None:
        subs.append((0x8825, _Ifd(gps)))
    for tag, _ in subs:
        main.entries[tag] = (LONG, 0)
    ifd1 = _Ifd({0x0103: (SHORT, 6), 0x0201: (LONG, 0), 0x0202: (LONG, len(thumbnail))}) if thumbnail else None
    order = [main] + [ifd for _, ifd in subs] + ([ifd1] if ifd1 else [])
    pos = 8
    for ifd in order:
        ifd.offset = pos
        pos += ifd.size()
    for tag, ifd in subs:
        main.entries[tag] = (LONG, ifd.offset)
    if ifd1 is not None:
        ifd1.entries[0x0201] = (LONG, pos)
    out = [b"MM\x00*", struct.pack(">I", 8)]
    for ifd in order:
        out.append(ifd.write(ifd1.offset if (ifd is main and ifd1) else 0))
    out.append(thumbnail or b"")
    return b"".join(out)


def full_exif(*, orientation: int = 1, thumbnail: bool = True) -> bytes:
    """EXIF with device, serials, dates, owner, a Canon maker note, GPS and an IFD1 thumbnail."""
    makernote = _Ifd({0x000C: (LONG, 4200042), 0x0010: (LONG, 0x80000281)})
    makernote.offset = 0
    makernote_blob = makernote.write(0)
    ifd0 = {
        0x010F: (ASCII, "Canon"),
        0x0110: (ASCII, "Canon " + MARKERS["model"]),
        0x0112: (SHORT, orientation),
        0x0131: (ASCII, MARKERS["software"]),
        0x0132: (ASCII, MODIFIED),
        0x013B: (ASCII, MARKERS["artist"]),
        0x8298: (ASCII, "(c) " + MARKERS["artist"]),
    }
    exif = {
        0x9003: (ASCII, CAPTURED),
        0x9004: (ASCII, CAPTURED_DIGITIZED),
        0x9011: (ASCII, "+02:00"),
        0x9291: (ASCII, "123"),
        0x927C: (UNDEFINED, makernote_blob),
        0x9286: (UNDEFINED, b"ASCII\x00\x00\x00" + MARKERS["user_comment"].encode()),
        0xA430: (ASCII, MARKERS["artist"]),
        0xA431: (ASCII, MARKERS["serial"]),
        0xA433: (ASCII, MARKERS["make"]),
        0xA434: (ASCII, "EF 100mm f/2.8L Macro"),
        0xA435: (ASCII, MARKERS["lens_serial"]),
    }
    gps = {
        0x0000: (UNDEFINED, b"\x02\x03\x00\x00"),
        0x0001: (ASCII, "N"),
        0x0002: (RATIONAL, [(53, 1), (47, 1), (1234, 100)]),
        0x0003: (ASCII, "W"),
        0x0004: (RATIONAL, [(1, 1), (32, 1), (5678, 100)]),
        0x001D: (ASCII, "2019:07:14"),
    }
    thumb = small_jpeg("exif thumbnail " + MARKERS["vendor"], size=(40, 30)) if thumbnail else None
    return build_tiff(ifd0, exif=exif, gps=gps, thumbnail=thumb)


def xmp_packet(*, orientation: int | None = None, extended_guid: str = "") -> bytes:
    rotation = f' tiff:Orientation="{orientation}"' if orientation else ""
    if extended_guid:
        rotation += f' xmlns:xmpNote="http://ns.adobe.com/xmp/note/" xmpNote:HasExtendedXMP="{extended_guid}"'
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/"'
        f' photoshop:City="{MARKERS["xmp_city"]}" xmp:CreateDate="2019-07-14T09:30:05"'
        f' tiff:Make="{MARKERS["make"]}" exif:GPSLatitude="53,47.2N"{rotation}>'
        f'<dc:creator><rdf:Seq><rdf:li>{MARKERS["xmp_creator"]}</rdf:li></rdf:Seq></dc:creator>'
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


# ---------------------------------------------------------------- JPEG

def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def _iptc() -> bytes:
    def dataset(record: int, number: int, text: str) -> bytes:
        raw = text.encode()
        return bytes([0x1C, record, number]) + struct.pack(">H", len(raw)) + raw

    iptc = dataset(1, 90, "\x1b%G") + dataset(2, 80, MARKERS["iptc_byline"]) + dataset(2, 90, MARKERS["iptc_city"])
    iptc += b"\x00" * (len(iptc) & 1)
    resource = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iptc)) + iptc
    return b"Photoshop 3.0\x00" + resource


def _jumbf() -> bytes:
    def box(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body) + 8) + kind + body

    description = box(b"jumd", bytes.fromhex("6332706100110010800000aa00389b71") + b"\x03" + b"c2pa\x00")
    content = box(b"json", ('{"author": "%s"}' % MARKERS["jumbf"]).encode())
    superbox = box(b"jumb", description + content)
    # JPEG XT framing: CI "JP", instance number, packet sequence number, then the box.
    return b"JP" + struct.pack(">HI", 1, 1) + superbox


def _mpf(second_offset: int, second_length: int, first_length: int) -> bytes:
    entries = struct.pack(">IIIHH", 0x20030000, first_length, 0, 0, 0)
    entries += struct.pack(">IIIHH", 0x00020002, second_length, second_offset, 0, 0)
    ifd = _Ifd({0xB000: (UNDEFINED, b"0100"), 0xB001: (LONG, 2), 0xB002: (UNDEFINED, entries)})
    ifd.offset = 8
    return b"MPF\x00" + b"MM\x00*" + struct.pack(">I", 8) + ifd.write(0)


def _extended_xmp() -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f'<dc:source>{MARKERS["ext_xmp"]}</dc:source></rdf:Description></rdf:RDF></x:xmpmeta>'
    ).encode()


def jpeg_with_everything(*, orientation: int = 1, progressive: bool = False, restart: bool = False,
                         mode: str = "RGB", size: tuple[int, int] = (320, 240), trailer: str = "mpf") -> bytes:
    """A JPEG carrying metadata in every segment type and a trailer after EOI.

    ``trailer``: "mpf" (an MPF second image, as phones write), "zip" (a JPEG/ZIP polyglot),
    "samsung" (vendor trailer) or "" for none.
    """
    options: dict[str, Any] = {"quality": 90, "progressive": progressive}
    if mode in ("RGB", "L"):
        options["icc_profile"] = srgb_icc() if mode == "RGB" else None
    if restart:
        options["restart_marker_blocks"] = 4
    plain = io.BytesIO()
    picture(*size, mode=mode).save(plain, "JPEG", **options)
    body = plain.getvalue()[2:]  # without SOI
    if body[:2] == b"\xff\xe0":  # replace Pillow's JFIF with one that carries a thumbnail
        length = struct.unpack(">H", body[2:4])[0]
        body = body[2 + length:]
    jfif = b"JFIF\x00\x01\x02\x00\x00\x48\x00\x48\x02\x02" + bytes(range(12))
    jfxx = b"JFXX\x00\x10" + small_jpeg(MARKERS["thumb_jfxx"])
    extension = _extended_xmp()
    guid = hashlib.md5(extension).hexdigest().upper()  # the spec's GUID is the MD5 of the packet
    extended = (b"http://ns.adobe.com/xmp/extension/\x00" + guid.encode()
                + struct.pack(">II", len(extension), 0) + extension)
    segments = [
        _segment(0xE0, jfif),
        _segment(0xE0, jfxx),
        _segment(0xE1, b"Exif\x00\x00" + full_exif(orientation=orientation)),
        _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp_packet(extended_guid=guid)),
        _segment(0xE1, extended),
        None,  # MPF (phones' multi-picture index), once the layout is known
        _segment(0xEB, _jumbf()),
        _segment(0xED, _iptc()),
        _segment(0xE3, b"META\x00" + MARKERS["vendor"].encode()),
        _segment(0xEF, b"Vendor15\x00" + MARKERS["vendor"].encode()),
        _segment(0xFE, MARKERS["comment"].encode()),
    ]
    second = small_jpeg(MARKERS["mpf_second"], size=(48, 36)) if trailer == "mpf" else b""
    mpf_at = 2 + sum(len(s) for s in segments[:5]) + 4  # the MPF TIFF header, after "MPF\0"
    mpf_size = len(_segment(0xE2, _mpf(0, 0, 0)))
    first_length = 2 + sum(len(s) for s in segments if s) + mpf_size + len(body)
    segments[5] = _segment(0xE2, _mpf(first_length - (mpf_at + 4), len(second), first_length))
    if trailer != "mpf":
        segments[5] = _segment(0xE2, b"FPXR\x00" + MARKERS["vendor"].encode())  # FlashPix, also APP2
    data = b"\xff\xd8" + b"".join(segments) + body  # type: ignore[arg-type]
    if trailer == "mpf":
        data += second
    elif trailer == "zip":
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("notes.txt", MARKERS["trailer"])
        data += archive.getvalue()
    elif trailer == "samsung":
        data += b"SEFH" + MARKERS["trailer"].encode() + b"SEFT"
    return data


# ---------------------------------------------------------------- PNG

def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_with_everything(*, orientation: int = 1, mode: str = "RGB", animated: bool = False) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", MARKERS["png_text"])
    info.add_text("Comment", MARKERS["png_ztxt"], zip=True)
    info.add_itxt("XML:com.adobe.xmp", xmp_packet().decode(), lang="", tkey="")
    info.add(b"tIME", struct.pack(">HBBBBB", 2019, 7, 14, 9, 30, 5))
    image = picture(mode="RGB")
    if mode == "P":
        image = image.quantize(64)
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    elif mode == "I;16":
        image = Image.fromarray((np.asarray(picture().convert("L"), dtype=np.uint16) * 257))
    out = io.BytesIO()
    options: dict[str, Any] = {"pnginfo": info, "exif": full_exif(orientation=orientation, thumbnail=False)}
    if mode in ("RGB", "RGBA"):
        options["icc_profile"] = srgb_icc()
    if mode == "P":
        options["transparency"] = 3
    if animated:
        options.update(save_all=True, append_images=[picture(seed=9)], duration=100, loop=0)
    image.save(out, "PNG", **options)
    data = out.getvalue()
    # A private chunk before IEND and a trailer after it.
    iend = data.rindex(b"IEND") - 4
    return data[:iend] + _png_chunk(b"prVt", MARKERS["png_private"].encode()) + data[iend:] + MARKERS["trailer"].encode()


# ---------------------------------------------------------------- WebP

def webp_with_everything(*, orientation: int = 1, lossless: bool = False, alpha: bool = False,
                         animated: bool = False, trailer: bool = False) -> bytes:
    image = picture()
    if alpha:
        image = image.convert("RGBA")
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    options: dict[str, Any] = {"lossless": lossless, "quality": 90, "icc_profile": srgb_icc(),
                               "exif": full_exif(orientation=orientation),
                               "xmp": xmp_packet()}
    if animated:
        options.update(save_all=True, append_images=[picture(seed=9)], duration=100, loop=0)
    out = io.BytesIO()
    image.save(out, "WEBP", **options)
    data = out.getvalue()
    # An unknown chunk inside the RIFF, and a trailer after it.
    extra = b"LEAK" + struct.pack("<I", len(MARKERS["vendor"])) + MARKERS["vendor"].encode()
    extra += b"\x00" * (len(extra) & 1)
    riff = data[:4] + struct.pack("<I", len(data) - 8 + len(extra)) + data[8:] + extra
    # exiftool refuses to rewrite a RIFF with a trailer, so the oracle cases go without.
    return riff + (MARKERS["trailer"].encode() if trailer else b"")


# ---------------------------------------------------------------- HEIC

def heic_with_everything(*, orientation: int = 1, grid: bool = False, size: tuple[int, int] = (256, 192)) -> bytes:
    import pillow_heif

    pillow_heif.register_heif_opener()
    options: dict[str, Any] = {"quality": 80, "exif": full_exif(orientation=orientation), "xmp": xmp_packet(),
                               "thumbnails": [64]}
    if grid:
        options["tile_size"] = 128
    out = io.BytesIO()
    picture(*size).save(out, "HEIF", **options)
    return out.getvalue()


def astronaut_sideways() -> bytes:
    """A real face photo (scikit-image's astronaut) stored rotated with Orientation=6,
    a maker, a comment and an ICC profile."""
    import skimage.data

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = MARKERS["make"]
    out = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).transpose(Image.Transpose.ROTATE_90).save(
        out, "JPEG", quality=92, exif=exif.tobytes(), comment=MARKERS["comment"].encode(), icc_profile=srgb_icc())
    return out.getvalue()
