"""Frames out of a video: the poster (thumbnails) and the face scan of sampled frames.

Only keyframes are decoded: after a seek, one keyframe packet goes into the decoder,
which is then drained, so no frame that depends on others is ever decoded. Frames are
scaled by swscale straight to the size needed (never converted to full-size RGB), then
turned the way the display matrix says.
"""

from __future__ import annotations

import bisect
import logging
from typing import TYPE_CHECKING, BinaryIO, cast

import numpy as np
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from vault.errors import CorruptMedia
from vault.pipeline.faces import DETECTION_SIZE, FaceDetector, Faces, NoDetector, detect_faces
from vault.pipeline.thumbnails import THUMBNAIL_SIZES, Decoded, make_thumbnails
from vault.pipeline.video_input import (
    MAX_DURATION_S,
    MAX_VIDEO_PIXELS,
    Limits,
    Source,
    display_size,
    ffmpeg_errors,
    open_video,
)
from vault.pipeline.video_matrix import Orientation, orientation, unpack

if TYPE_CHECKING:
    from av.buffer import Buffer

log = logging.getLogger(__name__)

POSTER_AFTER_S = 1.0
"""Phones often start on a dark or blurred frame; the first keyframe after this is better."""
# How many packets to read after a seek while looking for a keyframe of the stream.
_SEEK_SLACK = 64


def poster_and_faces(reader: BinaryIO, *, detector: FaceDetector, every_s: float = 2.0,
                     max_frames: int = 60, max_pixels: int = MAX_VIDEO_PIXELS,
                     max_duration_s: float = MAX_DURATION_S) -> tuple[dict[int, bytes], Faces]:
    """Poster thumbnails ``{256: jpeg, 1024: jpeg}`` and the faces found in sampled frames.

    The poster is the first keyframe at or after :data:`POSTER_AFTER_S` (else the first).
    Faces are searched in the poster and in the keyframe at or before every ``every_s``
    seconds (spread evenly when that would exceed ``max_frames``). The result is the frame
    with the most faces (``count``, ``boxes`` in displayed-frame coordinates); with
    :class:`NoDetector`, or if the detector fails, a face is assumed.
    """
    if every_s <= 0 or max_frames < 1:
        raise ValueError("every_s must be > 0 and max_frames >= 1")
    with open_video(reader, Limits(max_pixels=max_pixels, max_duration_s=max_duration_s)) as source:
        video = source.video
        keyframes = _keyframes(video)
        start = keyframes[0]
        time_base = video.time_base
        if time_base is None:
            raise CorruptMedia("the video stream has no time base")
        after = start + round(POSTER_AFTER_S / time_base)
        poster_at = keyframes[min(bisect.bisect_left(keyframes, after), len(keyframes) - 1)]
        frame = _decode_at(source, poster_at) or _decode_at(source, start)
        if frame is None:
            raise CorruptMedia("no frame of the video can be decoded")
        turn = frame_orientation(frame)
        size = display_size(video, turn.rotation)
        poster = _picture(frame, turn, size, max(THUMBNAIL_SIZES))
        thumbnails = make_thumbnails(Decoded(image=poster, size=size, orientation=1, icc=None))
        best = detect_faces(poster, full_size=size, detector=detector)
        if isinstance(detector, NoDetector) or best.assumed:
            return thumbnails, best
        for at in _samples(keyframes, source.duration_s / float(time_base), every_s / float(time_base),
                           max_frames):
            if at == poster_at:
                continue
            try:
                frame = _decode_at(source, at)
            except CorruptMedia:
                frame = None
            if frame is None:  # a damaged frame mid-video; the remux copies it as it is
                log.warning("a sampled video frame could not be decoded; skipped")
                continue
            found = detect_faces(_picture(frame, turn, size, DETECTION_SIZE), full_size=size, detector=detector)
            if found.assumed:
                return thumbnails, found
            if found.count > best.count:
                best = found
        return thumbnails, best


def first_orientation(source: Source) -> Orientation:
    """Decode the first keyframe (proving the track decodes) and read its display matrix."""
    frame = _decode_at(source, _keyframes(source.video)[0])
    if frame is None:
        raise CorruptMedia("the first frame of the video cannot be decoded")
    return frame_orientation(frame)


def frame_orientation(frame: VideoFrame) -> Orientation:
    # PyAV's stub lists only MOTION_VECTORS among the side data; a display matrix is a buffer.
    side = cast("Buffer | None", frame.side_data.get("DISPLAYMATRIX"))
    return orientation(unpack(bytes(side), big_endian=False) if side is not None else None)


def _keyframes(video: VideoStream) -> list[int]:
    stamps = sorted({entry.timestamp for entry in video.index_entries
                     if entry.is_keyframe and not entry.is_discard})
    if not stamps:
        raise CorruptMedia("the video has no keyframe")
    return stamps


def _samples(keyframes: list[int], duration: float, every: float, max_frames: int) -> list[int]:
    """Keyframe timestamps at or before each sample time (time-base units), deduplicated."""
    count = min(max_frames, int(duration // every) + 1)
    step = max(every, duration / max_frames)
    chosen: list[int] = []
    for i in range(count):
        target = keyframes[0] + i * step
        at = keyframes[max(0, bisect.bisect_right(keyframes, target) - 1)]
        if not chosen or at != chosen[-1]:
            chosen.append(at)
    return chosen


def _decode_at(source: Source, timestamp: int) -> VideoFrame | None:
    """Seek to the keyframe at ``timestamp`` and decode that one packet alone."""
    container, video = source.container, source.video
    with ffmpeg_errors("decoded"):
        container.seek(timestamp, stream=video, backward=True)
        for scanned, packet in enumerate(container.demux(video)):
            if packet.dts is None or scanned > _SEEK_SLACK:
                return None
            if not packet.is_keyframe:
                continue
            frames = video.decode(packet) + video.decode(None)
            return frames[0] if frames else None
    return None


def _picture(frame: VideoFrame, turn: Orientation, size: tuple[int, int], longest: int) -> Image.Image:
    """The frame as displayed (aspect and orientation applied), at most ``longest`` px."""
    width, height = size
    ratio = min(1.0, longest / max(width, height))
    shown = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    stored = (shown[1], shown[0]) if turn.rotation in (90, 270) else shown
    rgb = frame.reformat(width=stored[0], height=stored[1], format="rgb24", interpolation="AREA")
    image = Image.fromarray(np.ascontiguousarray(rgb.to_ndarray()))
    return image.transpose(turn.transpose) if turn.transpose is not None else image
