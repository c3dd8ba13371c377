"""Reading an upload body, streamed, from a raw body or a multipart part named
``file`` — read with ``request.multipart()``: aiohttp's ``request.post()`` would
spool the file into a temp file, i.e. plaintext patient data on disk.

The first bytes are buffered for sniffing; then a photo is gathered in memory (the
pipeline works in memory; capped by ``VAULT_MAX_PHOTO_BYTES``) while a video is
passed on chunk by chunk to the encrypting writer (capped by ``VAULT_MAX_VIDEO_BYTES``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from vault.errors import BadRequest, CorruptMedia, TooLarge, UnsupportedMedia

CHUNK = 256 * 1024
PHOTO_TYPES = {"image/jpeg", "image/png", "image/webp", "image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}
VIDEO_TYPES = {"video/mp4", "video/quicktime"}
#: a client that does not know the type may say so; the bytes decide either way
UNDECLARED = {"application/octet-stream"}
SAME_TYPE = {"image/heif": "image/heic", "image/heic-sequence": "image/heic", "image/heif-sequence": "image/heic"}


def check_declared(declared: str, *, accepted: set[str]) -> None:
    if declared not in accepted and declared not in UNDECLARED:
        raise UnsupportedMedia("this Content-Type is not accepted", details={"accepted": sorted(accepted)})


def check_matches(declared: str, sniffed: str) -> None:
    """A declared media type must be what the bytes are (a polyglot or a mislabelled file is refused)."""
    if declared in UNDECLARED:
        return
    if SAME_TYPE.get(declared, declared) != SAME_TYPE.get(sniffed, sniffed):
        raise UnsupportedMedia("the Content-Type does not match the content", details={"detected": sniffed})


class UploadStream:
    """The body of one upload: peek at its head, then take it whole or as chunks."""

    def __init__(self, declared: str, read: Callable[[int], Awaitable[bytes]]) -> None:
        self.declared = declared
        self._read = read
        self._head = b""
        self.size = 0

    async def head(self, n: int) -> bytes:
        while len(self._head) < n:
            chunk = await self._read(CHUNK)
            if not chunk:
                break
            self._head += chunk
        if not self._head:
            raise CorruptMedia("the body is empty")
        return self._head[:n]

    async def chunks(self, *, limit: int) -> AsyncIterator[bytes]:
        """Every byte of the body (head included), failing once ``limit`` is passed."""
        pending, self._head = self._head, b""
        while True:
            chunk = pending or await self._read(CHUNK)
            pending = b""
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > limit:
                raise TooLarge(details={"limit": limit})
            yield chunk

    async def read_all(self, *, limit: int) -> bytes:
        buffer = bytearray()
        async for chunk in self.chunks(limit=limit):
            buffer += chunk
        return bytes(buffer)


async def open_upload(request: web.Request, *, limit: int) -> UploadStream:
    """``limit`` is the largest any upload may be (the video cap); the caller applies
    the cap of the sniffed kind while reading."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(details={"limit": limit})
    if not request.content_type.startswith("multipart/"):
        check_declared(request.content_type, accepted=PHOTO_TYPES | VIDEO_TYPES)
        return UploadStream(request.content_type, request.content.read)
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if getattr(part, "name", None) != "file":
                await part.release()  # drained, never stored
                continue
            declared = (part.headers.get("Content-Type") or "application/octet-stream").split(";")[0].strip().lower()
            check_declared(declared, accepted=PHOTO_TYPES | VIDEO_TYPES)
            return UploadStream(declared, part.read_chunk)
    except (ValueError, AssertionError, KeyError):
        raise BadRequest("malformed multipart body") from None
    raise BadRequest("the multipart body has no part named 'file'")
