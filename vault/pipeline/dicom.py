"""A stored photo as a DICOM VL Photographic Image (Part 10 bytes), in a decoder worker.

Runs where Pillow and NumPy live (pydicom imports both): the server sends the stripped
original and the attributes it unsealed (patient id and name, dates, UIDs), and gets back
the file to send. Nothing here touches a file or the network.

- A baseline JPEG (SOF0, 8 bits, grey or YCbCr/RGB, upright) is encapsulated as it is:
  JPEG Baseline transfer syntax, one fragment holding the stored bytes unchanged.
- Everything else — progressive or CMYK JPEG, a JPEG turned by its EXIF orientation,
  PNG, WebP, HEIC — is decoded once, turned upright and brought to what the vault
  displays (:func:`vault.pipeline.thumbnails.display_mode`: 8-bit RGB or grey; CMYK
  through its ICC profile, alpha over white, 16-bit grey by its high byte, since the VL
  Photographic Image allows 8 bits only), and sent uncompressed (Explicit VR Little
  Endian), which every PACS accepts and no codec has to be trusted for.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from PIL import Image
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from vault.errors import CorruptMedia, UnsupportedMedia
from vault.pipeline.sniff import JPEG, SNIFF_BYTES, WEBP, sniff
from vault.pipeline.thumbnails import DECODE_ERRORS, TRANSPOSE, display_mode, open_image

VL_PHOTOGRAPHIC_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
MODALITY = "XC"  # external-camera photography
_SOF0 = 0xC0
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_LO = 64  # characters of a DICOM LO (long string) value, and of each PN component group


@dataclass(frozen=True, slots=True)
class Instance:
    data: bytes
    transfer_syntax: str
    encapsulated: bool
    rows: int
    columns: int


def jpeg_frame(data: bytes) -> tuple[int, int] | None:
    """(SOF marker, sample precision) of a JPEG's frame header, or None."""
    pos, end = 2, len(data)
    while pos + 4 <= end and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF:
            return marker, data[pos + 4] if pos + 4 < end else 0
        if marker == 0xDA or length < 2:
            return None
        pos += 2 + length
    return None


def build_instance(data: bytes, attributes: dict[str, Any], *, max_pixels: int) -> Instance:
    """The Part 10 file of one photo; ``attributes`` as made by :mod:`vault.dicom.service`."""
    mime = sniff(data[:SNIFF_BYTES])
    if mime is None:
        raise UnsupportedMedia(details={"detected": mime})
    image = open_image(data, mime=mime, max_pixels=max_pixels)
    try:
        orientation = image.getexif().get(0x0112, 1)
        frame = jpeg_frame(data) if mime == JPEG else None
        ds = _dataset(attributes, lossy=_lossy(mime, data))
        if (frame == (_SOF0, 8) and orientation in (1, None) and image.mode in ("RGB", "L")
                and len(image.layer if hasattr(image, "layer") else ()) in (1, 3)):
            transfer_syntax, encapsulated = JPEGBaseline8Bit, True
            _pixels_module(ds, image.width, image.height, _jpeg_photometric(image))
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.PixelData = encapsulate([data])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
            rows, columns = image.height, image.width
        else:
            transfer_syntax, encapsulated = ExplicitVRLittleEndian, False
            image.load()
            working, _ = display_mode(image, None)
            method = TRANSPOSE.get(orientation if isinstance(orientation, int) else 1)
            if method is not None:
                working = working.transpose(method)
            _pixels_module(ds, working.width, working.height, "MONOCHROME2" if working.mode == "L" else "RGB")
            ds.ImageType = ["DERIVED", "PRIMARY"]
            ds.PixelData = working.tobytes()
            ds["PixelData"].VR = "OB"
            rows, columns = working.height, working.width
    except DECODE_ERRORS:
        raise CorruptMedia("the image cannot be decoded") from None
    ds.file_meta = _file_meta(attributes["sop_instance_uid"], transfer_syntax)
    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=True)
    return Instance(data=out.getvalue(), transfer_syntax=str(transfer_syntax), encapsulated=encapsulated,
                    rows=rows, columns=columns)


def _lossy(mime: str, data: bytes) -> bool:
    """Whether the source was lossy-compressed at any point (PS3.3 C.7.6.1.1.5)."""
    if mime == JPEG:
        return True
    if mime == WEBP:
        return _webp_bitstream(data) != b"VP8L"  # VP8L is WebP's lossless coding, "VP8 " its lossy one
    return mime != "image/png"


def _webp_bitstream(data: bytes) -> bytes | None:
    """The fourcc of a WebP's first image chunk (after VP8X, ICCP, EXIF, ... chunks)."""
    pos = 12
    while pos + 8 <= len(data):
        fourcc, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if fourcc in (b"VP8 ", b"VP8L", b"ANMF"):
            return fourcc
        pos += 8 + size + (size & 1)
    return None


def _jpeg_photometric(image: Image.Image) -> str:
    if image.mode == "L":
        return "MONOCHROME2"
    if image.info.get("adobe_transform") == 0:  # an Adobe JPEG without colour transform: RGB samples
        return "RGB"
    luma, *chroma = image.layer  # type: ignore[attr-defined]  # (id, h, v, q) per component
    subsampled = any(c[1] < luma[1] or c[2] < luma[2] for c in chroma)
    return "YBR_FULL_422" if subsampled else "YBR_FULL"


def _pixels_module(ds: Dataset, width: int, height: int, photometric: str) -> None:
    grey = photometric == "MONOCHROME2"
    ds.SamplesPerPixel = 1 if grey else 3
    ds.PhotometricInterpretation = photometric
    if not grey:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0


def _text(value: Any, *, limit: int = _LO) -> str:
    """A DICOM string value: no backslash (the value delimiter) or control characters."""
    text = "".join(" " if c == "\\" or not c.isprintable() else c for c in str(value or ""))
    return text.strip()[:limit]


def person_name(display_name: str | None) -> str:
    """The record has one display name: it goes whole into the family-name component
    (``^`` and ``=`` separate components and groups, so they become spaces)."""
    return _text((display_name or "").replace("^", " ").replace("=", " "))


def _dataset(a: dict[str, Any], *, lossy: bool) -> Dataset:
    now = datetime.now(UTC)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: names keep their accents
    ds.SOPClassUID = VL_PHOTOGRAPHIC_IMAGE
    ds.SOPInstanceUID = a["sop_instance_uid"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    # Patient
    ds.PatientName = person_name(a.get("patient_name"))
    ds.PatientID = a["patient_id"]
    ds.PatientBirthDate = a.get("birth_date") or ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = a["study_uid"]
    ds.StudyDate = a.get("study_date") or ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    if a.get("study_description"):
        ds.StudyDescription = _text(a["study_description"])
    # General Series, Equipment
    ds.Modality = MODALITY
    ds.SeriesInstanceUID = a["series_uid"]
    ds.SeriesNumber = int(a.get("series_number") or 1)
    if a.get("series_description"):
        ds.SeriesDescription = _text(a["series_description"])
    ds.Manufacturer = ""
    # General Image, Acquisition Context, VL Image
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    if a.get("content_date"):
        ds.ContentDate = a["content_date"]
        ds.ContentTime = a.get("content_time") or ""
    ds.AcquisitionContextSequence = []
    ds.LossyImageCompression = "01" if lossy else "00"
    return ds


def _file_meta(sop_instance_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(VL_PHOTOGRAPHIC_IMAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def warm_up() -> None:
    """Build one tiny instance before the sandbox closes the file system: pydicom loads
    parts of itself (dictionaries, writers, codecs) on first use."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 64, 32)).save(buffer, "PNG")
    attributes = {"sop_instance_uid": "2.25.1", "study_uid": "2.25.2", "series_uid": "2.25.3",
                  "patient_id": "warm-up", "patient_name": "Warm Up"}
    build_instance(buffer.getvalue(), attributes, max_pixels=64)
