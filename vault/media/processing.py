"""The media pipeline as the server runs it: every decoder in a worker process
(:mod:`vault.media.decoders`), every result re-checked (:mod:`vault.media.recheck`),
encryption and storage here in the server.

A video never crosses to a worker whole: the worker asks for byte ranges, which are read
and decrypted here segment by segment; its fragmented-MP4 output comes back in chunks
that are encrypted here straight into the blob store. Plaintext crosses only the pipe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keys.blobio import HEADER_SIZE, Header, SegmentCipher, ciphertext_span, open_span
from vault.config import Settings
from vault.errors import DecoderFailed
from vault.media import recheck
from vault.media.decoders import DecoderPool, PoolLimits
from vault.instruments import timed_stage
from vault.pipeline.composite import LABELS, layout
from vault.pipeline.video_mux import FragmentedOutput, MuxerSurprise, check_init_segment
from vault.sealed import SealedBlobs, SealedRef

from vault.pipeline.results import Faces, ProcessedPhoto
from vault.pipeline.results import SearchResult as FaceSearchResult

if TYPE_CHECKING:  # its module imports PyAV: the decoder workers' business
    from vault.pipeline.video import VideoInfo, VideoProbe

SEARCH_SHARE = 0.75  # of the item's time bound, for the face search (the rest: decode, reply)
OUTPUT_DEPTH = 4  # remuxed chunks in flight between the worker and the blob store
_TOP_LEVEL = frozenset({b"ftyp", b"moov", b"moof", b"mdat", b"mfra"})


class PhotoPipeline:
    """Photos and videos through the decoder pool. ``start()`` before any key exists."""

    def __init__(self, pool: DecoderPool, *, max_pixels: int) -> None:
        self.pool = pool
        self.max_pixels = max_pixels
        self._searches: asyncio.Semaphore | None = None  # made on first use, in the running loop

    @classmethod
    def from_settings(cls, settings: Settings) -> PhotoPipeline:
        limits = PoolLimits(
            workers=settings.decoder_workers, item_seconds=settings.decoder_item_seconds,
            video_seconds=settings.decoder_video_seconds, memory_bytes=settings.decoder_memory_bytes,
            recycle_after=settings.decoder_recycle_after, queue_seconds=settings.decoder_queue_seconds,
            max_queue=settings.decoder_workers * 32,
            # The face searches' own workers, as many as searches ran at once before they had
            # them (one fewer than the upload workers): niced, so uploads go first.
            background_workers=max(1, settings.decoder_workers - 1),
        )
        model = str(settings.face_model) if settings.face_model else None
        return cls(DecoderPool(limits, face_model=model), max_pixels=settings.max_pixels)

    def start(self) -> None:
        self.pool.start()

    async def close(self) -> None:
        await self.pool.close()

    def detector_name(self) -> str:
        return self.pool.detector

    @timed_stage("photo.decode")
    async def process(self, data: bytes, *,
                      on_original: Callable[[recheck.StrippedOriginal], None] | None = None) -> ProcessedPhoto:
        """The photo's renditions, faces and capture metadata, from a worker, re-checked.
        The worker sends the stripped original first, before it decodes: it is re-checked
        at once and handed to ``on_original``, so the caller can store it meanwhile."""
        original: list[recheck.StrippedOriginal] = []

        def progress(frame: dict[str, Any], parts: list[bytes]) -> None:
            if original or len(parts) != 1:
                raise DecoderFailed(details={"check": "stripped.frames"})
            original.append(recheck.check_original(frame.get("stripped"), parts[0], upload=data,
                                                   max_pixels=self.max_pixels))
            if on_original is not None:
                on_original(original[0])

        result, parts = await self.pool.run("photo", {"max_pixels": self.max_pixels}, data, progress=progress,
                                            max_result=len(data) + (64 << 20))
        if not original:
            raise DecoderFailed(details={"check": "stripped.missing"})
        return recheck.check_processed(result, parts, original[0])

    @timed_stage("photo.render_redaction")
    async def render_redaction(self, data: bytes, rects: list[list[int]], *, width: int,
                               height: int) -> tuple[bytes, bytes]:
        """The full-resolution redacted JPEG of the stored photo ``data`` (every rectangle
        filled exactly, :func:`vault.pipeline.redact.render_redaction`) and the 256 px
        thumbnail made from it, both in a worker; accepted only as bare JPEGs, the first of
        exactly ``width`` x ``height`` (the displayed frame the rectangles refer to)."""
        if width < 1 or height < 1:
            raise DecoderFailed(details={"check": "redacted.dimensions"})
        header = {"rects": [[int(v) for v in box] for box in rects], "thumbnails": [256], "max_pixels": self.max_pixels}
        result, parts = await self.pool.run("render_redaction", header, data,
                                            max_result=recheck.redacted_bound(width, height) + recheck.MAX_THUMBNAIL_BYTES)
        full = recheck.check_redacted(parts[:1], width=width, height=height)
        thumbs = recheck.check_thumbnails(result.get("thumbnails"), parts[1:])
        if set(thumbs) != {256}:
            raise DecoderFailed(details={"check": "redacted.thumbnails"})
        return full, thumbs[256]

    @timed_stage("photo.composite")
    async def composite(self, photos: list[bytes], rects: list[list[list[int]]], *, sizes: list[tuple[int, int]],
                        labels: tuple[str, str] = LABELS) -> bytes:
        """A before/after composite of two stored photos (:func:`vault.pipeline.composite.compose`),
        made in a worker: each photo's ``rects`` filled, both at the same height, one fresh
        JPEG. Accepted only as a bare JPEG of exactly the size :func:`layout` gives for the
        photos' displayed ``sizes``."""
        width, height = layout(sizes[0], sizes[1]).size
        header = {"rects": [[[int(v) for v in box] for box in side] for side in rects], "labels": list(labels),
                  "max_pixels": self.max_pixels}
        _, parts = await self.pool.run("composite", header, *photos, max_result=recheck.redacted_bound(width, height))
        return recheck.check_redacted(parts, width=width, height=height)

    @timed_stage("photo.faces")
    async def search_faces(self, data: bytes, *, width: int, height: int) -> FaceSearchResult:
        """The full-resolution face search of a stored photo (``data``: its stripped
        original), in a worker (:func:`vault.pipeline.faces_search.search_photo`). The worker
        stops searching at 3/4 of the item's time bound and answers ``incomplete``; boxes
        come back after the margin, in the displayed frame of ``width`` x ``height``."""
        limits = self.pool.limits
        header = {"max_pixels": self.max_pixels, "memory_bytes": limits.memory_bytes // 2,
                  "seconds": limits.item_seconds * SEARCH_SHARE}
        if limits.background_workers:  # their own (niced) workers: the lane bounds them
            result, _ = await self.pool.run("faces", header, data, max_result=1 << 20, background=True)
            return recheck.check_search(result, width, height)
        if self._searches is None:
            self._searches = asyncio.Semaphore(max(1, limits.workers - 1))
        # A search costs ~80 plain decodes: never let searches take every worker, so an
        # upload always finds one within its queue bound (no 503 from a burst of jobs).
        async with self._searches:
            result, _ = await self.pool.run("faces", header, data, max_result=1 << 20)
        return recheck.check_search(result, width, height)

    @timed_stage("photo.dicom")
    async def dicom(self, data: bytes, attributes: dict[str, Any], *, width: int, height: int) -> DicomInstance:
        """The stored photo ``data`` as a DICOM VL Photographic Image (Part 10 bytes), built
        in a worker (:func:`vault.pipeline.dicom.build_instance`; pydicom imports NumPy and
        Pillow, so it never runs here). Accepted only as a DICOM file of exactly ``width`` x
        ``height`` (as displayed) in one of the two transfer syntaxes we make, a baseline
        JPEG carrying the stored bytes unchanged."""
        bound = len(data) + 3 * width * height + (1 << 20)
        result, parts = await self.pool.run("dicom", {"max_pixels": self.max_pixels, "attributes": attributes}, data,
                                            max_result=bound)
        if len(parts) != 1 or len(parts[0]) > bound or parts[0][128:132] != b"DICM":
            raise DecoderFailed(details={"check": "dicom.file"})
        instance = DicomInstance(data=parts[0], transfer_syntax=str(result.get("transfer_syntax")),
                                 encapsulated=result.get("encapsulated") is True)
        if (result.get("columns"), result.get("rows")) != (width, height):
            raise DecoderFailed(details={"check": "dicom.dimensions"})
        expected = DICOM_JPEG_BASELINE if instance.encapsulated else DICOM_EXPLICIT_LITTLE
        if instance.transfer_syntax != expected or (instance.encapsulated and data not in instance.data):
            raise DecoderFailed(details={"check": "dicom.pixels"})
        return instance

    # -- video --------------------------------------------------------------------------
    @timed_stage("video.probe")
    async def probe_video(self, sealed: SealedBlobs, ref: SealedRef) -> VideoProbe:
        reader = await SealedRanges.open(sealed, ref)
        result, _ = await self.pool.run("probe", {"size": ref.plain_size, "max_pixels": self.max_pixels},
                                        read=reader.read, max_result=1 << 20)
        return recheck.check_probe(result, max_pixels=self.max_pixels)

    @timed_stage("video.strip")
    async def strip_video(self, sealed: SealedBlobs, src: SealedRef, tenant_id: str, patient_id: str) -> tuple[SealedRef, VideoInfo]:
        """Remux in a worker; its output is checked box by box as it streams into a new blob."""
        reader = await SealedRanges.open(sealed, src)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=OUTPUT_DEPTH)
        checked = _CheckedOutput()

        async def write(chunk: bytes) -> None:
            try:
                checked.write(chunk)
            except MuxerSurprise:
                raise DecoderFailed(details={"check": "output.boxes"}) from None
            await queue.put(chunk)

        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await queue.get()) is not None:
                yield chunk
            check_output(checked)  # before the blob counts as written

        store = asyncio.create_task(sealed.put_stream(tenant_id, patient_id, chunks()))
        try:
            result, _ = await self.pool.run("strip", {"size": src.plain_size, "max_pixels": self.max_pixels},
                                            read=reader.read, write=write, max_result=8 << 20,
                                            seconds=self.pool.limits.video_seconds)
            await queue.put(None)
            ref = await store
        except BaseException:
            store.cancel()
            await asyncio.gather(store, return_exceptions=True)
            raise
        info = recheck.check_info(result, max_pixels=self.max_pixels, streamed=checked.size, fragments=checked.fragments)
        return ref, info

    @timed_stage("video.poster")
    async def poster_and_faces(self, sealed: SealedBlobs, ref: SealedRef, *, width: int, height: int) -> tuple[dict[int, bytes], Faces]:
        reader = await SealedRanges.open(sealed, ref)
        result, parts = await self.pool.run("poster", {"size": ref.plain_size, "max_pixels": self.max_pixels},
                                            read=reader.read, max_result=16 << 20)
        return (recheck.check_thumbnails(result.get("thumbnails"), parts),
                recheck.check_faces(result.get("faces"), width, height))


DICOM_JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
DICOM_EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


@dataclass(frozen=True)
class DicomInstance:
    data: bytes = field(repr=False)
    transfer_syntax: str
    encapsulated: bool


class _CheckedOutput(FragmentedOutput):
    """Counts what the worker streams and refuses any top-level box but the fragments'."""

    def __init__(self) -> None:
        super().__init__(_Nowhere())

    def _box(self, kind: bytes, size: int) -> None:
        if kind not in _TOP_LEVEL:
            raise MuxerSurprise("unexpected top-level box")
        super()._box(kind, size)


class _Nowhere:
    def write(self, data: Any) -> int:
        return len(data)


def check_output(output: FragmentedOutput) -> None:
    try:
        check_init_segment(output.init_segment)
    except (MuxerSurprise, ValueError) as exc:
        raise DecoderFailed(details={"check": "output.header"}) from exc
    if not output.fragments:
        raise DecoderFailed(details={"check": "output.fragments"})


class SealedRanges:
    """Plaintext byte ranges of a sealed blob for a worker: only the segments a range
    touches are read and decrypted; the header is parsed once."""

    def __init__(self, sealed: SealedBlobs, ref: SealedRef, key: bytes) -> None:
        self._sealed, self._ref, self._key = sealed, ref, key
        self._cipher: SegmentCipher | None = None

    @classmethod
    async def open(cls, sealed: SealedBlobs, ref: SealedRef) -> SealedRanges:
        return cls(sealed, ref, await sealed._key(ref))

    async def read(self, start: int, end: int) -> bytes:
        size = self._ref.plain_size
        if not 0 <= start <= end <= size or end - start > (1 << 20):
            raise DecoderFailed(details={"check": "read.range"})
        if start == end:
            return b""
        store = self._sealed.store
        if self._cipher is None:
            header = Header.parse(memoryview(await store.read(self._ref.id, end=HEADER_SIZE)).cast("B"), self._ref.binding)
            self._cipher = SegmentCipher(self._key, self._ref.binding, header)
        cstart, cend = ciphertext_span(start, end, size, segment_size=self._cipher.segment_size)
        span = await store.read(self._ref.id, start=cstart, end=cend)
        return b"".join(open_span(self._cipher, memoryview(span).cast("B"), start, end, size))
