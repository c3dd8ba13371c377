"""Sample videos generated with PyAV, carrying identifying metadata where phones put it.

Built in memory, never fetched or committed. Every identifying text is a marker from
:data:`MARKERS` (greppable in the bytes), the capture date is :data:`CREATED`, the place is
:data:`LOCATION` (the Eiffel Tower, in ISO 6709 as QuickTime stores it).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
import skimage.data
from PIL import Image

CREATED = "2019-07-14T09:30:05.000000Z"
LOCATION = "+48.8584+002.2945+035.000/"
MARKERS = {
    "make": "LeakMakeCo",
    "model": "LeakModel-X1",
    "title": "LeakTitle",
    "software": "LeakSoftware 17.1",
    "handler": "LeakHandler",
    "subtitle": "LeakSubtitle",
}
MARKER_BYTES = [value.encode() for value in MARKERS.values()] + [b"+48.8584", b"+002.2945"]

Frames = Callable[[int, int, int], np.ndarray]
"""``(index, width, height) -> (height, width, 3) uint8 RGB``."""


def marked_frame(index: int, width: int, height: int) -> np.ndarray:
    """Grey, a moving bar (so frames differ), and a red block in the stored top-left
    corner: where it lands on the poster shows how the frame was turned."""
    image = np.full((height, width, 3), 128, np.uint8)
    x = (index * 7) % max(1, width - 16)
    image[:, x:x + 16] = (40, 200, 40)
    image[: height // 4, : width // 4] = (230, 20, 20)
    return image


def noisy(index: int, width: int, height: int) -> np.ndarray:
    """Sensor-like noise: compresses badly, so a few frames make megabytes."""
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def still(name: str, size: tuple[int, int] = (384, 384)) -> Frames:
    """Every frame is a scikit-image sample picture (``astronaut`` has a face, ``rocket`` none)."""
    picture = np.asarray(Image.fromarray(_rgb(name)).resize(size, Image.Resampling.BILINEAR))
    return lambda index, width, height: picture


def switch(first: Frames, then: Frames, *, at: int) -> Frames:
    return lambda index, width, height: (first if index < at else then)(index, width, height)


def _rgb(name: str) -> np.ndarray:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def make_video(
    *,
    width: int = 320,
    height: int = 240,
    fps: int = 25,
    seconds: float = 2.0,
    gop: int = 25,
    codec: str = "libx264",
    fmt: str = "mov",
    frames: Frames = marked_frame,
    audio: bool = True,
    rotation: float = 0,
    hflip: bool = False,
    metadata: str | None = "udta",
    timecode: bool = True,
    subtitle: bool = True,
    faststart: bool = False,
    aspect: Fraction | None = None,
) -> bytes:
    """A small video. ``rotation`` is PyAV's (counter-clockwise degrees); ``metadata``:
    ``"udta"`` (classic QuickTime ©-atoms: make, model, ©xyz location, dates),
    ``"keys"`` (iPhone-style ``com.apple.quicktime.*`` keys, plus a ``loci`` atom) or None.
    ``timecode`` adds a tmcd data track (MOV only); ``subtitle`` a text track whose
    samples carry the location, like drone and dashcam files. ``faststart`` puts the index
    (``moov``) before the samples, as phones do; ``aspect`` is the pixel aspect ratio."""
    flags = [name for name, on in (("use_metadata_tags", metadata == "keys"), ("faststart", faststart)) if on]
    options = {"movflags": "+".join(flags)} if flags else {}
    settings = dict(width=width, height=height, fps=fps, seconds=seconds, gop=gop, codec=codec, frames=frames,
                    audio=audio, rotation=rotation, hflip=hflip, metadata=metadata,
                    timecode=timecode and fmt == "mov", subtitle=subtitle, aspect=aspect)
    if faststart:
        # The muxer rereads its output to move the index forward: it needs a real file.
        # (Generated test pictures, not patient data.)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "sample." + fmt)
            _write(path, fmt=fmt, options=options, **settings)
            with open(path, "rb") as file:
                return file.read()
    out = io.BytesIO()
    _write(out, fmt=fmt, options=options, **settings)
    return out.getvalue()


def _write(target: str | io.BytesIO, *, fmt: str, options: dict[str, str], width: int, height: int, fps: int,
           seconds: float, gop: int, codec: str, frames: Frames, audio: bool, rotation: float, hflip: bool,
           metadata: str | None, timecode: bool, subtitle: bool, aspect: Fraction | None) -> None:
    container = av.open(target, "w", format=fmt, options=options)
    if metadata:
        container.metadata.update(_container_metadata(metadata))
    video = container.add_stream(codec, rate=fps)
    video.width, video.height = width, height
    video.pix_fmt = "yuv422p10le" if codec == "prores_ks" else "yuv420p"
    video.options = {"g": str(gop), **({"x265-params": "log-level=none"} if codec == "libx265" else {})}
    if codec == "libx265":
        video.codec_context.codec_tag = "hvc1"  # what iPhones write
    if metadata:
        video.metadata.update({"creation_time": CREATED, "handler_name": MARKERS["handler"]})
    if timecode:
        video.metadata["timecode"] = "09:30:05:00"
    if aspect is not None:
        video.sample_aspect_ratio = aspect  # non-square pixels (anamorphic)
    if rotation or hflip:
        video.set_display_rotation(rotation, hflip=hflip)
    sound = container.add_stream("aac", rate=48000) if audio else None
    if sound is not None and metadata:
        sound.metadata.update({"creation_time": CREATED, "handler_name": MARKERS["handler"]})
    text = container.add_mux_stream("mov_text") if subtitle else None
    count = max(1, round(seconds * fps))
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(frames(index, width, height), format="rgb24")
        frame.pts = index
        container.mux(video.encode(frame))
        if text is not None and index % fps == 0:
            container.mux(_subtitle(text, index // fps))
    container.mux(video.encode(None))
    if sound is not None:
        _sine(container, sound, seconds)
    container.close()


def _container_metadata(style: str) -> dict[str, str]:
    if style == "keys":
        return {
            "com.apple.quicktime.location.ISO6709": LOCATION,
            "com.apple.quicktime.make": MARKERS["make"],
            "com.apple.quicktime.model": MARKERS["model"],
            "com.apple.quicktime.software": MARKERS["software"],
            "com.apple.quicktime.creationdate": "2019-07-14T11:30:05+0200",
            "location": LOCATION,
            "creation_time": CREATED,
        }
    return {"creation_time": CREATED, "make": MARKERS["make"], "model": MARKERS["model"],
            "location": LOCATION, "title": MARKERS["title"], "encoder": MARKERS["software"]}


def _subtitle(stream: av.stream.Stream, second: int) -> av.Packet:
    body = f"{MARKERS['subtitle']} {LOCATION}".encode()
    packet = av.Packet(len(body).to_bytes(2, "big") + body)
    packet.stream = stream
    packet.time_base = Fraction(1, 1000)
    packet.pts = packet.dts = second * 1000
    packet.duration = 1000
    return packet


def _sine(container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float) -> None:
    rate, block = 48000, 1024
    for start in range(0, int(seconds * rate), block):
        t = np.arange(start, start + block) / rate
        samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def packets(data: bytes) -> dict[str, list[tuple[bytes, bool]]]:
    """Payload and keyframe flag of every video and audio packet, per stream kind, in order."""
    found: dict[str, list[tuple[bytes, bool]]] = {"video": [], "audio": []}
    with av.open(io.BytesIO(data)) as container:
        streams = [s for s in container.streams if s.type in found]
        for packet in container.demux(streams):
            if packet.dts is not None:
                found[packet.stream.type].append((bytes(packet), packet.is_keyframe))
    return found


def decoded_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))
