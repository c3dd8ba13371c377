"""Reading an upload body into memory with a cap, from a raw body or a multipart
part named ``file`` — streamed with ``request.multipart()``: aiohttp's
``request.post()`` would spool the file into a temp file, i.e. plaintext on disk."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from vault.errors import BadRequest, CorruptMedia, TooLarge, UnsupportedMedia

CHUNK = 256 * 1024
PHOTO_TYPES = {"image/jpeg", "image/png", "image/webp", "image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}
VIDEO_TYPES = {"video/mp4", "video/quicktime"}
#: a client that does not know the type may say so; the bytes decide either way
UNDECLARED = {"application/octet-stream"}
SAME_TYPE = {"image/heif": "image/heic", "image/heic-sequence": "image/heic", "image/heif-sequence": "image/heic"}


@dataclass(frozen=True)
class Body:
    data: bytes
    declared: str


def check_declared(declared: str, *, accepted: set[str]) -> None:
    if declared not in accepted and declared not in UNDECLARED:
        raise UnsupportedMedia("this Content-Type is not accepted", details={"accepted": sorted(accepted)})


def check_matches(declared: str, sniffed: str) -> None:
    """A declared media type must be what the bytes are (a polyglot or a mislabelled file is refused)."""
    if declared in UNDECLARED:
        return
    if SAME_TYPE.get(declared, declared) != SAME_TYPE.get(sniffed, sniffed):
        raise UnsupportedMedia("the Content-Type does not match the content", details={"detected": sniffed})


async def read_photo_body(request: web.Request, *, limit: int) -> Body:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(details={"limit": limit})
    if request.content_type.startswith("multipart/"):
        return await _read_multipart(request, limit=limit)
    check_declared(request.content_type, accepted=PHOTO_TYPES | VIDEO_TYPES)
    return Body(await _read_capped(request.content, limit), request.content_type)


async def _read_capped(stream, limit: int) -> bytes:
    buffer = bytearray()
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            break
        buffer += chunk
        if len(buffer) > limit:
            raise TooLarge(details={"limit": limit})
    if not buffer:
        raise CorruptMedia("the body is empty")
    return bytes(buffer)


async def _read_multipart(request: web.Request, *, limit: int) -> Body:
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if getattr(part, "name", None) != "file":
                await part.release()  # drained, never stored
                continue
            declared = (part.headers.get("Content-Type") or "application/octet-stream").split(";")[0].strip().lower()
            check_declared(declared, accepted=PHOTO_TYPES | VIDEO_TYPES)
            buffer = bytearray()
            while chunk := await part.read_chunk(CHUNK):
                buffer += chunk
                if len(buffer) > limit:
                    raise TooLarge(details={"limit": limit})
            if not buffer:
                raise CorruptMedia("the file part is empty")
            return Body(bytes(buffer), declared)
    except (ValueError, AssertionError, KeyError):
        raise BadRequest("malformed multipart body") from None
    raise BadRequest("the multipart body has no part named 'file'")
