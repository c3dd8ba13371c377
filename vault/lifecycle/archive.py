"""The subject-access ZIP, written as a stream: every file straight from its sealed blob
into ``stream-zip`` and from there into the encrypting writer. Nothing touches disk.

Photos and videos are stored (no compression: they are compressed already) with their
size and CRC-32 in the local header, so the archive needs no data descriptors and
opens everywhere. The CRC is not stored anywhere, so each file is read twice: once to
compute CRC-32 and SHA-256 (the manifest lists the digest), once to write it. AES-GCM
decryption runs at several GB/s; a second read costs far less than buffering a video.

Layout::

    media/<media id>.<ext>   the stripped originals, byte-identical to /content
    thumbnails/<media id>.jpg   each ready media's 256 px thumbnail (for index.html)
    consents/<consent id>.<ext> the signed consent forms (evidence), as recorded
    manifest.csv             one row per media (also those without a file yet)
    manifest.json            patient, treatments, media, consents, releases, audit
    index.html               the same in plain words for the patient (vault/lifecycle/patient_page.py)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vault.media.files import extension
from vault.sealed import SealedBlobs, SealedRef

FILE_MODE = 0o600
CSV_COLUMNS = ("media_id", "file", "kind", "status", "phase", "mime", "treatment_id", "width", "height", "size_bytes",
               "sha256", "created_at", "faces_detected", "faces_count", "face_review", "capture")


@dataclass
class MediaFile:
    """One media of the export: its metadata view, and its original when it has one."""

    view: dict[str, Any]
    ref: SealedRef | None
    modified: datetime
    sha256: str | None = None
    path: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ref is not None:
            self.path = f"media/{self.view['id']}.{extension(self.view['mime'])}"


@dataclass
class ExtraFile:
    """Another file of the export (a thumbnail, a consent form), straight from its blob."""

    path: str
    ref: SealedRef
    modified: datetime
    sha256: str | None = None


async def _digests(sealed: SealedBlobs, ref: SealedRef) -> tuple[int, str]:
    crc, sha = 0, hashlib.sha256()
    async for piece in await sealed.stream(ref):
        crc = zlib.crc32(piece, crc)
        sha.update(piece)
    return crc, sha.hexdigest()


def manifest_csv(files: list[MediaFile]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for f in files:
        v = f.view
        writer.writerow([
            v["id"], f.path or "", v["kind"], v["status"], v["phase"], v["mime"], v["treatment_id"] or "",
            v["width"] if v["width"] is not None else "", v["height"] if v["height"] is not None else "",
            f.ref.plain_size if f.ref else "", f.sha256 or "", v["created_at"], v["faces"]["detected"],
            v["faces"]["count"], v["faces"]["review"] or "", json.dumps(v["capture"], sort_keys=True) if v["capture"] else "",
        ])
    return out.getvalue().encode()


async def zip_stream(
    sealed: SealedBlobs,
    files: list[MediaFile],
    *,
    manifest: Callable[[list[MediaFile]], dict[str, Any]],
    generated_at: datetime,
    on_file: Callable[[], Awaitable[None]],
    extras: tuple[ExtraFile, ...] = (),
    index: Callable[[dict[str, Any]], bytes] | None = None,
) -> AsyncIterator[bytes]:
    """The ZIP's bytes. ``manifest`` builds the JSON document once every file's digest
    is known; ``on_file`` is awaited after each file is written (progress). stream_zip
    (and the PyCryptodome it loads, ~3 MiB) is imported at the first export, not at start."""
    from stream_zip import NO_COMPRESSION_64, ZIP_64, async_stream_zip

    async def data(ref: SealedRef) -> AsyncIterator[bytes]:
        async for piece in await sealed.stream(ref):
            yield piece
        await on_file()

    async def members():
        for f in files:
            if f.ref is None:
                continue
            crc, f.sha256 = await _digests(sealed, f.ref)
            yield f.path, f.modified, FILE_MODE, NO_COMPRESSION_64(f.ref.plain_size, crc), data(f.ref)
        for extra in extras:
            crc, extra.sha256 = await _digests(sealed, extra.ref)
            yield extra.path, extra.modified, FILE_MODE, NO_COMPRESSION_64(extra.ref.plain_size, crc), data(extra.ref)
        yield "manifest.csv", generated_at, FILE_MODE, ZIP_64, _once(manifest_csv(files))
        document = manifest(files)
        body = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
        yield "manifest.json", generated_at, FILE_MODE, ZIP_64, _once(body)
        if index is not None:
            yield "index.html", generated_at, FILE_MODE, ZIP_64, _once(index(document))

    async for chunk in async_stream_zip(members()):
        yield chunk


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
