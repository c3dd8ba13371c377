"""A bounded reader for ISO base media file format boxes (HEIF now, MP4 later).

Every read is checked against the enclosing box, so a lying size field raises
``CorruptMedia`` instead of reading a neighbour's bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from vault.errors import CorruptMedia


def corrupt(what: str) -> CorruptMedia:
    return CorruptMedia(f"cannot parse the file: {what}")


@dataclass(frozen=True, slots=True)
class Box:
    type: bytes
    start: int
    header: int
    end: int

    @property
    def body(self) -> int:
        """Offset of the first byte after the header."""
        return self.start + self.header

    @property
    def fixed(self) -> int:
        """Length of the size/type/largesize fields: what must survive renaming the box."""
        return 16 if self.header in (16, 32) else 8


def boxes(data: bytes, start: int, end: int) -> Iterator[Box]:
    pos = start
    while pos < end:
        if pos + 8 > end:
            raise corrupt("truncated box header")
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                raise corrupt("truncated box header")
            (size,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif size == 0:
            size = end - pos
        if kind == b"uuid":
            header += 16
        if size < header or pos + size > end:
            raise corrupt("box runs past its container")
        yield Box(kind, pos, header, pos + size)
        pos += size


class Cursor:
    """Sequential big-endian reads confined to ``[pos, end)``."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise corrupt("field runs past its box")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, n: int) -> int:
        """An unsigned field of ``n`` bytes (0 reads as 0, as ISO BMFF size fields allow)."""
        return int.from_bytes(self.take(n), "big") if n else 0

    def full_box(self) -> tuple[int, int]:
        """Version and flags of a FullBox."""
        return self.uint(1), self.uint(3)

    def cstring(self) -> bytes:
        stop = self.data.find(b"\x00", self.pos, self.end)
        if stop < 0:
            raise corrupt("unterminated string")
        text = self.data[self.pos:stop]
        self.pos = stop + 1
        return text

    @property
    def left(self) -> int:
        return self.end - self.pos
