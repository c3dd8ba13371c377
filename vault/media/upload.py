"""Reading an upload body, streamed, from a raw body or a multipart part named
``file`` — read with ``request.multipart()``: aiohttp's ``request.post()`` would
spool the file into a temp file, i.e. plaintext patient data on disk.

The first bytes are buffered for sniffing; then a photo is gathered in memory (the
pipeline works in memory; capped by ``VAULT_MAX_PHOTO_BYTES`` and by the node's
``VAULT_UPLOAD_MEMORY_BYTES`` budget) while a video is passed on chunk by chunk to the
encrypting writer (capped by ``VAULT_MAX_VIDEO_BYTES``). A ``Content-Length`` over the
cap is refused before the body is read; every read has the body deadline of
:mod:`vault.http.bodies`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from vault.errors import BadRequest, CorruptMedia, TooLarge, UnsupportedMedia
from vault.http.bodies import TimedBody, within
from vault.http.limits import MemoryLease

CHUNK = 256 * 1024
PHOTO_TYPES = {"image/jpeg", "image/png", "image/webp", "image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}
VIDEO_TYPES = {"video/mp4", "video/quicktime"}
#: what a read of the stripped original (or an identifiable release) may answer: its own type
CONTENT_TYPES = tuple(sorted(PHOTO_TYPES | VIDEO_TYPES))
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


#: room for boundaries and part headers around a multipart file part
MULTIPART_SLACK = 64 * 1024
#: non-file form fields are read and dropped; more than this of them is not an upload
MAX_SKIPPED_BYTES = 64 * 1024


class UploadStream:
    """The body of one upload: peek at its head, then take it whole or as chunks.

    ``read`` is a :class:`~vault.http.bodies.TimedBody` read, so a stalled client fails
    with 408 wherever it stops. ``most`` is the largest the body can be by its
    ``Content-Length`` (None when it is chunked), to refuse with 413 before reading it.
    """

    def __init__(self, declared: str, read: Callable[[int], Awaitable[bytes]], *, most: int | None = None) -> None:
        self.declared = declared
        self._read = read
        self._head = b""
        self.size = 0
        self.most = most

    def check_length(self, limit: int) -> None:
        """413 when the declared length alone proves the body is over ``limit``."""
        if self.most is not None and self.most > limit:
            raise TooLarge(details={"limit": limit})

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

    async def read_all(self, *, limit: int, lease: MemoryLease) -> bytes:
        """The whole body in memory, each byte taken from ``lease`` before it is buffered
        (Busy, 503, when the node's photo memory budget is spent)."""
        if self.most is not None:
            lease.ensure(min(self.most, limit))  # fail before reading when the budget cannot hold it
        parts: list[bytes] = []
        async for chunk in self.chunks(limit=limit):
            lease.ensure(self.size)
            parts.append(chunk)
        return b"".join(parts)


def _declared_limit(declared: str, *, photo_limit: int, video_limit: int) -> int:
    if declared in PHOTO_TYPES:
        return photo_limit
    if declared in VIDEO_TYPES:
        return video_limit
    return max(photo_limit, video_limit)


async def open_upload(request: web.Request, *, photo_limit: int, video_limit: int, body_timeout: float) -> UploadStream:
    """The upload's stream; a declared type's cap is applied to ``Content-Length`` here,
    the sniffed kind's by the caller (:meth:`UploadStream.check_length`) before reading on."""
    length = request.content_length
    if length is not None and length > max(photo_limit, video_limit):
        raise TooLarge(details={"limit": max(photo_limit, video_limit)})
    if not request.content_type.startswith("multipart/"):
        check_declared(request.content_type, accepted=PHOTO_TYPES | VIDEO_TYPES)
        stream = UploadStream(request.content_type, TimedBody(request.content.read, body_timeout).read, most=length)
        stream.check_length(_declared_limit(stream.declared, photo_limit=photo_limit, video_limit=video_limit))
        return stream
    # aiohttp's multipart reader raises ValueError, AssertionError, KeyError and its
    # parser's HttpProcessingError (e.g. InvalidHeader for "--B\r\n--B--") on a
    # malformed body: every one is the client's fault.
    try:
        reader = await request.multipart()
        skipped = 0
        while (part := await within(body_timeout, reader.next())) is not None:
            if getattr(part, "name", None) != "file":
                skipped += await _drop(part, TimedBody(part.read_chunk, body_timeout), MAX_SKIPPED_BYTES - skipped)
                continue
            declared = (part.headers.get("Content-Type") or "application/octet-stream").split(";")[0].strip().lower()
            check_declared(declared, accepted=PHOTO_TYPES | VIDEO_TYPES)
            most = None if length is None else max(0, length - MULTIPART_SLACK)
            stream = UploadStream(declared, TimedBody(part.read_chunk, body_timeout).read, most=most)
            stream.check_length(_declared_limit(declared, photo_limit=photo_limit, video_limit=video_limit))
            return stream
    except (ValueError, AssertionError, KeyError, HttpProcessingError):
        raise BadRequest("malformed multipart body") from None
    raise BadRequest("the multipart body has no part named 'file'")


async def _drop(part, body: TimedBody, room: int) -> int:
    """Read a part that is not the file and forget it; never stored."""
    dropped = 0
    while chunk := await body.read(CHUNK):
        dropped += len(chunk)
        if dropped > room:
            raise BadRequest("the multipart body has too much besides the file")
    return dropped
