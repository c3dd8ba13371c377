"""Opening an untrusted video with PyAV: sniffing, limits, and FFmpeg errors as ours.

Every function of the video pipeline opens its input through :func:`open_video`, so the
same checks guard the probe at upload, the remux and the frame scan of the finishing job.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import BinaryIO

import av
import av.error
from av.container import InputContainer
from av.stream import Disposition, Stream
from av.video.stream import VideoStream

from vault.errors import CorruptMedia, PixelLimit, TooLarge, UnsupportedMedia
from vault.pipeline.sniff import MP4, QUICKTIME, SNIFF_BYTES, sniff

VIDEO_TYPES = (MP4, QUICKTIME)

MAX_VIDEO_PIXELS = 7680 * 4320
"""8K UHD, the largest frame any phone records today."""
MAX_VIDEO_SIDE = 8192
MAX_DURATION_S = 4 * 3600.0
"""A treatment video is minutes long; hours are an error or an attack on the job queue."""
MAX_STREAMS = 32
"""An iPhone file has about six (video, audio, three or four metadata tracks)."""

# Pre-QuickTime-6 movies have no ftyp: they start straight with one of these atoms.
_BARE_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
# The ISO BMFF/QuickTime demuxer only, with external data references off: a hostile file
# must not make FFmpeg probe other formats or open other files.
_DEMUXER = "mov"
_DEMUXER_OPTIONS = {"enable_drefs": "0", "use_absolute_path": "0"}
# A fragmented file has two per fragment; a plain one three or four.
_MAX_TOP_LEVEL_BOXES = 1_000_000


def looks_like_video(head: bytes) -> str | None:
    """``video/mp4`` or ``video/quicktime`` when the first bytes prove it, else ``None``.

    For a streamed upload: hand it the first :data:`SNIFF_BYTES` bytes. Only the magic is
    judged; :func:`vault.pipeline.video.probe_video` decides whether the whole is a video.
    """
    found = sniff(head)
    if found in VIDEO_TYPES:
        return found
    if found is None and len(head) >= 8 and head[4:8] in _BARE_QUICKTIME_ATOMS:
        size = int.from_bytes(head[:4], "big")
        if size in (0, 1) or size >= 8:
            return QUICKTIME
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    max_pixels: int = MAX_VIDEO_PIXELS
    max_side: int = MAX_VIDEO_SIDE
    max_duration_s: float = MAX_DURATION_S
    max_streams: int = MAX_STREAMS


@dataclass(frozen=True, slots=True)
class Source:
    """An opened, checked input. ``video`` is the main picture track."""

    mime: str
    container: InputContainer
    video: VideoStream
    duration_s: float
    size: int


@contextmanager
def ffmpeg_errors(what: str) -> Iterator[None]:
    """FFmpeg's failures on our input become ``CorruptMedia``.

    Exceptions raised by the reader or writer themselves (a storage outage, an
    ``IntegrityError`` from a tampered blob) are re-raised by PyAV unchanged and pass
    through: they are not the file's fault.
    """
    try:
        yield
    except av.error.FFmpegError:
        # ENOMEM (av.error.MemoryError) included: FFmpeg reports it when a crafted file
        # declares a table or frame larger than its allocation limit. A host really out
        # of memory fails elsewhere (MemoryError, or the OOM killer), not as this.
        raise CorruptMedia(f"the video cannot be {what}") from None


@contextmanager
def open_video(reader: BinaryIO, limits: Limits) -> Iterator[Source]:
    """Sniff, open with the ISO BMFF demuxer only, and check limits and integrity."""
    if not reader.seekable():
        raise ValueError("the video reader must be seekable")
    size = reader.seek(0, io.SEEK_END)
    reader.seek(0)
    head = _read_exactly(reader, SNIFF_BYTES)
    if not head:
        raise CorruptMedia("the body is empty")
    mime = looks_like_video(head)
    if mime is None:
        raise UnsupportedMedia(details={"detected": sniff(head)})
    _check_boxes(reader, size)
    reader.seek(0)
    with ffmpeg_errors("read"):
        container = av.open(reader, "r", format=_DEMUXER, options=dict(_DEMUXER_OPTIONS),
                            metadata_errors="ignore")
    try:
        with ffmpeg_errors("read"):
            video = _check(container, size, limits)
            duration = _duration(container, video)
        if duration > limits.max_duration_s:
            raise TooLarge("the video is longer than allowed",
                           details={"duration_s": math.ceil(duration), "max_duration_s": limits.max_duration_s})
        yield Source(mime=mime, container=container, video=video, duration_s=duration, size=size)
    finally:
        container.close()


def _read_exactly(reader: BinaryIO, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = reader.read(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _check_boxes(reader: BinaryIO, size: int) -> None:
    """Walk the top-level boxes: one that runs past the end means the upload was cut.

    FFmpeg reads a cut index (``moov`` last) as far as it goes and stops quietly at a cut
    ``mdat``. A non-box tail (some phone apps append their own trailer) ends the walk.
    """
    pos = 0
    for _ in range(_MAX_TOP_LEVEL_BOXES):
        if pos >= size:
            return
        reader.seek(pos)
        header = _read_exactly(reader, 16)
        if len(header) < 8 or not all(32 <= c < 127 for c in header[4:8]):
            return
        length = int.from_bytes(header[:4], "big")
        if length == 1 and len(header) == 16:
            length = int.from_bytes(header[8:16], "big")
        elif length == 0:  # "to the end of the file"
            return
        if length < 8 or pos + length > size:
            raise CorruptMedia("the video is truncated")
        pos += length
    raise CorruptMedia("the video has too many top-level boxes")


def _check(container: InputContainer, size: int, limits: Limits) -> VideoStream:
    streams = list(container.streams)
    if not streams:
        raise CorruptMedia("the video has no readable tracks")
    if len(streams) > limits.max_streams:
        raise UnsupportedMedia("the video has too many tracks", details={"tracks": len(streams)})
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        raise UnsupportedMedia("the file has no video track")
    video = max(videos, key=lambda s: (bool(s.disposition & Disposition.default), _pixels(s)))
    context = video.codec_context
    if context is None or context.codec is None or not context.name or context.name == "none":
        raise UnsupportedMedia("the video codec is not supported")
    width, height = context.width, context.height
    if width <= 0 or height <= 0:
        raise CorruptMedia("the video has no frame size")
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise PixelLimit(details={"pixels": width * height, "max_pixels": limits.max_pixels})
    if not len(video.index_entries):
        raise CorruptMedia("the video track has no frames")
    for stream in streams:
        if stream.type in ("video", "audio") and _runs_past(stream, size):
            raise CorruptMedia("the video is truncated")
    return video


def _pixels(stream: VideoStream) -> int:
    context = stream.codec_context
    return context.width * context.height if context is not None else 0


def _runs_past(stream: Stream, size: int) -> bool:
    """True when the sample index points past the end of the file: an upload cut short
    (the header with the index came first, the samples did not all arrive)."""
    return any(entry.pos >= 0 and entry.pos + entry.size > size for entry in stream.index_entries)


def _duration(container: InputContainer, video: VideoStream) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    if video.duration and video.time_base:
        return float(video.duration * video.time_base)
    raise CorruptMedia("the video has no duration")


def display_size(video: VideoStream, rotation: int) -> tuple[int, int]:
    """Width and height as shown: non-square pixels stretched, then the rotation applied."""
    width, height = video.codec_context.width, video.codec_context.height
    aspect = video.sample_aspect_ratio
    if aspect and aspect != 1 and Fraction(1, 16) < aspect < 16:
        width = max(1, round(width * aspect))
    return (height, width) if rotation in (90, 270) else (width, height)
