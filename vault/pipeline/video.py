"""The video pipeline: validate, strip metadata by remuxing, poster frame and face scan.

Pure and synchronous like the photo pipeline: no HTTP, database, keys or storage. Inputs
are seekable binary readers (in production :class:`keys.blob.DecryptingReader`), the
output any forward-only writer (in production :class:`keys.blob.BlobEncryptor`): no
plaintext ever touches a disk. The caller runs these functions in a worker thread.
See ``docs/video.md``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import av
from av.container import InputContainer, OutputContainer
from av.stream import Disposition, Stream

from vault.errors import CorruptMedia, UnsupportedMedia
from vault.pipeline.sniff import MP4, QUICKTIME
from vault.pipeline.video_frames import first_orientation, poster_and_faces
from vault.pipeline.video_input import (
    MAX_DURATION_S,
    MAX_VIDEO_PIXELS,
    Limits,
    display_size,
    ffmpeg_errors,
    looks_like_video,
    open_video,
)
from vault.pipeline.video_mux import FragmentedOutput, check_init_segment

__all__ = [
    "MAX_DURATION_S", "MAX_FRAGMENT_BYTES", "MAX_VIDEO_PIXELS", "VideoInfo", "VideoProbe",
    "looks_like_video", "poster_and_faces", "probe_video", "strip_video",
]  # fmt: skip

MAX_FRAGMENT_BYTES = 8 << 20
"""The muxer holds one fragment in memory: this bounds it whatever the keyframe spacing."""

# Fragmented, with the (empty) index first: nothing is ever patched after it is written.
_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"
# Parameter sets carried out of band: Safari plays only these HEVC/Dolby Vision tags, and
# the muxer would otherwise pick hev1.
_KEEP_TAGS = frozenset({"hvc1", "dvh1"})


@dataclass(frozen=True, slots=True)
class VideoProbe:
    """What an upload is. ``width``/``height`` as displayed (rotation applied);
    ``rotation`` clockwise degrees as exiftool reports it; ``dropped`` lists the kinds of
    tracks stripping will remove (``data`` for timed metadata such as an iPhone's
    location track, ``subtitle``, ``audio:<codec>`` for audio we cannot carry)."""

    mime: str
    duration_s: float
    width: int
    height: int
    coded_width: int
    coded_height: int
    rotation: int
    mirrored: bool
    video_codec: str
    audio_codecs: tuple[str, ...]
    frame_rate: float | None
    dropped: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """The stripped copy: ``mime`` of what was written (MP4 unless a codec needs
    QuickTime), its byte ``size``, and the fragments it is made of."""

    mime: str
    size: int
    duration_s: float
    width: int
    height: int
    rotation: int
    mirrored: bool
    video_codec: str
    audio_codecs: tuple[str, ...]
    fragments: int
    max_fragment_bytes: int
    packets: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def probe_video(reader: BinaryIO, *, max_pixels: int = MAX_VIDEO_PIXELS,
                max_duration_s: float = MAX_DURATION_S) -> VideoProbe:
    """Check that ``reader`` (seekable) holds a whole, decodable MP4/QuickTime video.

    Raises ``UnsupportedMedia`` (not MP4/QuickTime, no video track, a codec we cannot
    decode), ``CorruptMedia`` (empty, truncated, damaged), ``PixelLimit`` or ``TooLarge``
    (frame or duration over the limits). Decodes one frame: the rotation comes from it.
    """
    with open_video(reader, Limits(max_pixels=max_pixels, max_duration_s=max_duration_s)) as source:
        video = source.video
        found = first_orientation(source)
        width, height = display_size(video, found.rotation)
        kept, dropped = _partition(source.container, video_format=_output_format(source.container))
        return VideoProbe(
            mime=source.mime,
            duration_s=source.duration_s,
            width=width,
            height=height,
            coded_width=video.codec_context.width,
            coded_height=video.codec_context.height,
            rotation=found.rotation,
            mirrored=found.mirrored,
            video_codec=video.codec_context.name,
            audio_codecs=tuple(s.codec_context.name for s in kept if s.type == "audio"),
            frame_rate=float(video.average_rate) if video.average_rate else None,
            dropped=tuple(dropped),
        )


def strip_video(reader: BinaryIO, writer: BinaryIO, *, max_pixels: int = MAX_VIDEO_PIXELS,
                max_duration_s: float = MAX_DURATION_S,
                max_fragment_bytes: int = MAX_FRAGMENT_BYTES) -> VideoInfo:
    """Remux ``reader`` into ``writer`` as fragmented MP4: video and audio packets copied
    unchanged, every other track and all container and track metadata dropped, the
    display matrix kept.

    ``writer`` is only ever written forward; it is neither flushed nor closed: on success
    close it (``BlobEncryptor.close()``), on an exception abort it. Raises like
    :func:`probe_video`; errors of ``reader``/``writer`` themselves propagate unchanged.
    """
    limits = Limits(max_pixels=max_pixels, max_duration_s=max_duration_s)
    with open_video(reader, limits) as source:
        container = source.container
        fmt = _output_format(container)
        kept, _ = _partition(container, video_format=fmt)
        output = FragmentedOutput(writer)
        with ffmpeg_errors("remuxed"):
            muxer = av.open(output, "w", format=fmt, options={
                "movflags": _MOVFLAGS, "frag_size": str(max_fragment_bytes),
                # bitexact: no encoder tag; write_tmcd: never invent a timecode track.
                "fflags": "+bitexact", "write_tmcd": "0",
            })
        try:
            with ffmpeg_errors("remuxed"):
                packets = _remux(container, muxer, kept)
                muxer.close()
        except BaseException:
            _close_quietly(muxer)
            raise
        found = check_init_segment(output.init_segment)
        if not output.fragments:
            raise CorruptMedia("the video has no frames")
        width, height = display_size(source.video, found.rotation)
        return VideoInfo(
            mime=MP4 if fmt == "mp4" else QUICKTIME,
            size=output.size,
            duration_s=source.duration_s,
            width=width,
            height=height,
            rotation=found.rotation,
            mirrored=found.mirrored,
            video_codec=source.video.codec_context.name,
            audio_codecs=tuple(s.codec_context.name for s in kept if s.type == "audio"),
            fragments=output.fragments,
            max_fragment_bytes=output.max_fragment,
            packets=packets,
        )


def _remux(container: InputContainer, muxer: OutputContainer, kept: list[Stream]) -> dict[str, int]:
    targets = {}
    for stream in kept:
        target = muxer.add_stream_from_template(stream)
        if stream.type == "video" and stream.codec_tag in _KEEP_TAGS:
            target.codec_context.codec_tag = stream.codec_tag
        targets[stream.index] = target
    expected = {stream.index: len(stream.index_entries) for stream in kept}
    counts: Counter[int] = Counter()
    for packet in container.demux(kept):
        if packet.dts is None:  # the demuxer's end-of-stream marker, no data
            continue
        index = packet.stream.index
        packet.stream = targets[index]
        muxer.mux(packet)
        counts[index] += 1
    # The demuxer stops quietly at the end of the bytes: a sample index promising more
    # than arrived is a truncated or damaged upload, not a shorter video.
    if any(counts[index] < expected[index] for index in expected):
        raise CorruptMedia("the video is truncated")
    return {f"{stream.type}:{stream.index}": counts[stream.index] for stream in kept}


def _output_format(container: InputContainer) -> str:
    """MP4 (browsers play it) unless the main video codec exists only in QuickTime (ProRes)."""
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    names = {s.codec_context.name for s in videos if s.codec_context is not None}
    return "mp4" if names <= _supported("mp4") else "mov"


def _partition(container: InputContainer, *, video_format: str) -> tuple[list[Stream], list[str]]:
    """Streams to copy, and a description of those dropped."""
    supported = _supported(video_format)
    kept: list[Stream] = []
    dropped: list[str] = []
    for stream in container.streams:
        name = stream.codec_context.name if stream.codec_context is not None else None
        if stream.type == "video" and not stream.disposition & Disposition.attached_pic:
            if name not in supported:
                raise UnsupportedMedia("the video codec cannot be stored", details={"codec": name})
            kept.append(stream)
        elif stream.type == "audio" and name in supported:
            kept.append(stream)
        elif stream.type == "audio":
            dropped.append(f"audio:{name or 'unknown'}")
        else:
            dropped.append("cover" if stream.type == "video" else stream.type)
    return kept, dropped


_SUPPORTED: dict[str, frozenset[str]] = {}


def _supported(fmt: str) -> frozenset[str]:
    """Codec names the muxer accepts (PyAV asks FFmpeg through an unopened container)."""
    if fmt not in _SUPPORTED:
        probe = av.open(_Discard(), "w", format=fmt)
        try:
            _SUPPORTED[fmt] = frozenset(probe.supported_codecs)
        finally:
            probe.close()
    return _SUPPORTED[fmt]


class _Discard:
    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        return len(data)


def _close_quietly(muxer: OutputContainer) -> None:
    """Release the muxer after a failure; its own error would hide the first one."""
    try:
        muxer.close()
    except Exception:  # noqa: BLE001 - the original exception is what the caller needs
        pass
