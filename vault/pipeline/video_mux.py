"""The remuxer's output side: a forward-only writer that watches the boxes go by, and a
check of the header it wrote.

The muxer writes a fragmented MP4: ``ftyp`` and an empty ``moov`` (the init segment),
then ``moof`` + ``mdat`` pairs, then an ``mfra`` index. The writer counts fragments as they
pass and keeps the init segment, so the header that was actually written can be verified:
zero dates, no user data, the display matrix read back.
"""

from __future__ import annotations

from typing import Protocol

from vault.errors import VaultError
from vault.pipeline.isobmff import Box, Cursor, boxes
from vault.pipeline.video_matrix import Orientation, orientation, unpack

MAX_INIT_SEGMENT = 16 << 20
"""An empty ``moov`` is a few KiB; a larger one means the muxer did something unexpected."""


class MuxerSurprise(VaultError):
    """The muxer wrote something other than what stripping relies on (our bug, a 500)."""


class Target(Protocol):
    """Where the bytes go: a binary file, a blob encryptor, or nothing at all."""

    def write(self, data: memoryview, /) -> int | None: ...


class FragmentedOutput:
    """What PyAV writes into: passes every byte on to ``target`` and never seeks.

    No ``seek``/``tell`` attributes at all, so PyAV opens it as a stream and the muxer
    cannot go back to patch an index, whatever ``target`` would allow.
    """

    def __init__(self, target: Target) -> None:
        self._target = target
        self.size = 0
        self.fragments = 0
        self.max_fragment = 0
        self._fragment = 0
        self._left = 0
        self._head = bytearray()
        self._init = bytearray()
        self._in_init = True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    @property
    def init_segment(self) -> bytes:
        return bytes(self._init)

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            written = self._target.write(view[done:])
            # Raw files may write short; None (a would-block) is not something a blob
            # writer does, and PyAV itself reads a non-int return as "all of it".
            done += len(view) - done if written is None else written
        self._scan(view)
        self.size += len(view)
        return len(view)

    def _scan(self, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                if self._in_init:
                    self._keep(view[pos:pos + step])
                self._left -= step
                pos += step
                continue
            need = 8 if len(self._head) < 8 else 16
            take = min(need - len(self._head), end - pos)
            self._head += view[pos:pos + take]
            pos += take
            if len(self._head) < 8:
                continue
            size = int.from_bytes(self._head[:4], "big")
            if size == 1:
                if len(self._head) < 16:
                    continue
                size = int.from_bytes(self._head[8:16], "big")
            header = bytes(self._head)
            self._head.clear()
            if size < len(header):
                raise MuxerSurprise("the muxer wrote a box without a size")
            self._box(header[4:8], size)
            if self._in_init:
                self._keep(header)
            self._left = size - len(header)

    def _box(self, kind: bytes, size: int) -> None:
        if kind == b"moof":
            self._in_init = False
            self.fragments += 1
            self._fragment = size
        elif kind == b"mdat":
            if self._in_init:
                raise MuxerSurprise("the muxer wrote media before the first fragment header")
            self._fragment += size
            self.max_fragment = max(self.max_fragment, self._fragment)

    def _keep(self, piece: bytes | memoryview) -> None:
        if len(self._init) + len(piece) > MAX_INIT_SEGMENT:
            raise MuxerSurprise("the muxer wrote an unexpectedly large header")
        self._init += piece


def check_init_segment(init: bytes) -> Orientation:
    """Verify the written header carries no dates and no user data; return the display
    orientation of its first video track (what players will apply)."""
    found = Orientation()
    seen_video = False
    moov = _child(init, 0, len(init), b"moov")
    if moov is None:
        raise MuxerSurprise("the muxer wrote no movie header")
    for box in boxes(init, moov.body, moov.end):
        if box.type == b"mvhd":
            _zero_dates(init, box)
        elif box.type in (b"udta", b"meta"):
            _empty_user_data(init, box)
        elif box.type == b"trak":
            matrix, handler = _track(init, box)
            if handler == b"vide" and not seen_video:
                seen_video = True
                found = orientation(matrix)
    return found


def _track(data: bytes, trak: Box) -> tuple[tuple[int, ...] | None, bytes]:
    matrix: tuple[int, ...] | None = None
    handler = b""
    for box in boxes(data, trak.body, trak.end):
        if box.type == b"tkhd":
            version = _zero_dates(data, box)
            # After the dates: track id, reserved, duration, 8 reserved, layer, group,
            # volume, 2 reserved, then the matrix.
            at = box.body + 4 + (16 if version == 1 else 8) + 4 + 4 + (8 if version == 1 else 4) + 16
            matrix = unpack(Cursor(data, at, box.end).take(36), big_endian=True)
        elif box.type == b"mdia":
            for part in boxes(data, box.body, box.end):
                if part.type == b"mdhd":
                    _zero_dates(data, part)
                elif part.type == b"hdlr":
                    cursor = Cursor(data, part.body, part.end)
                    cursor.take(8)  # version, flags, pre_defined
                    handler = cursor.take(4)
        elif box.type in (b"udta", b"meta"):
            _empty_user_data(data, box)
    return matrix, handler


def _zero_dates(data: bytes, box: Box) -> int:
    cursor = Cursor(data, box.body, box.end)
    version, _ = cursor.full_box()
    width = 8 if version == 1 else 4
    if cursor.uint(width) or cursor.uint(width):
        raise MuxerSurprise("the remuxed video still carries a date")
    return version


def _empty_user_data(data: bytes, box: Box) -> None:
    """``udta`` may hold only the ``meta`` FFmpeg always writes in MP4 mode: a handler and
    an empty item list. Anything else is a tag that survived."""
    if box.type == b"udta":
        for child in boxes(data, box.body, box.end):
            if child.type != b"meta":
                raise MuxerSurprise("the remuxed video still carries user data")
            _empty_user_data(data, child)
        return
    for child in boxes(data, box.body + 4, box.end):  # meta is a FullBox
        if child.type == b"hdlr":
            continue
        if child.type != b"ilst" or child.end > child.body:
            raise MuxerSurprise("the remuxed video still carries metadata items")


def _child(data: bytes, start: int, end: int, kind: bytes) -> Box | None:
    return next((box for box in boxes(data, start, end) if box.type == kind), None)
