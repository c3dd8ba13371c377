"""The sanitizer contract: one class per format, bytes in, cleaned bytes out.

A sanitizer keeps an allow-list of what rendering needs and copies it verbatim (no
re-encoding, so the pixels stay bit-identical); everything else goes. It validates as it
parses and raises :class:`vault.errors.CorruptMedia` for anything it cannot fully walk:
a file we cannot clean is refused, never passed through half-cleaned.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from vault.errors import CorruptMedia


@dataclass(frozen=True, slots=True)
class Sanitized:
    """The result of stripping one file.

    ``width``/``height`` are the stored pixel dimensions read from the header (before any
    orientation is applied), available before a single pixel is decoded so the caller can
    enforce its pixel cap. ``orientation`` is the EXIF orientation (1..8) the original
    carried and the stripped copy still carries.

    ``original_exif`` is the original's TIFF-structured EXIF block (or ``None``), returned
    only so capture metadata can be read from it: it holds GPS, serial numbers and names,
    and must never be stored, logged or returned to a client.

    ``layout`` (where the format allows it: JPEG) says how ``data`` is made, in order: byte
    ranges ``(start, end)`` of the input copied verbatim, and new bytes. A decoder worker
    sends it instead of the stripped file; the server rebuilds the file from the upload it
    already holds and re-checks it like any other. ``None``: only ``data`` says.
    """

    mime: str
    data: bytes
    width: int
    height: int
    orientation: int = 1
    original_exif: bytes | None = field(default=None, repr=False)
    layout: tuple[bytes | tuple[int, int], ...] | None = field(default=None, repr=False)

    @property
    def pixels(self) -> int:
        return self.width * self.height


class Sanitizer(abc.ABC):
    """One format's metadata stripper."""

    mimetypes: frozenset[str] = frozenset()

    @abc.abstractmethod
    def sanitize(self, data: bytes) -> Sanitized:
        """Return the file without identifying metadata, or raise ``CorruptMedia``."""

    def unchanged(self, data: bytes) -> Sanitized | None:
        """:meth:`sanitize` of ``data`` when its output is ``data`` itself (a fixed point),
        else None; raises as :meth:`sanitize` does. A format with a layout compares it in
        place instead of building the copy."""
        again = self.sanitize(data)
        return again if again.data == data else None


def corrupt(what: str) -> CorruptMedia:
    # Messages name the structural fault only: never bytes or text from the file.
    return CorruptMedia(f"cannot parse the file: {what}")
