"""Serving stored content: inline renditions (``/v1`` media content and playback, FHIR
Binary) with Range, HEAD and If-None-Match, and one-time attachment downloads (release
renditions, subject-access exports)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from vault.http.conditional import not_modified, private
from vault.http.ranges import parse_range
from vault.media.files import extension


async def serve_content(request: web.Request, content: Any, *, name: str,
                        stream: Callable[[Any, int, int], Awaitable[AsyncIterator[bytes]]]) -> web.StreamResponse:
    """Stream a rendition (:class:`vault.media.service.Content`), or the byte range asked
    for, decrypting only the segments it touches: ``stream(content, start, end)``. 304 when
    the client's tag matched (decided, and audited, by the service; before Range, RFC 9110
    §13.2.2). ``private, no-cache`` with the ETag: a client may keep the bytes but must ask
    again, so every use is authorised and audited. ``name`` is the file name's stem (an id)."""
    if content.not_modified:
        return not_modified(content.etag)
    size = content.ref.plain_size
    wanted = parse_range(request.headers.get("Range"), size)
    start, end = wanted or (0, size)
    response = web.StreamResponse(status=206 if wanted else 200)
    response.content_type = content.mime
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Disposition"] = f'inline; filename="{name}.{extension(content.mime)}"'
    if wanted:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    private(response, content.etag)
    # Unwrap the key before the status line goes out: a key destroyed meanwhile is a
    # clean 410, not a dropped connection.
    pieces = await stream(content, start, end) if request.method != "HEAD" and end > start else None
    return await write_pieces(request, response, pieces)


async def write_pieces(request: web.Request, response: web.StreamResponse,
                       pieces: AsyncIterator[bytes] | None) -> web.StreamResponse:
    """Send ``response``'s status line and headers, then ``pieces`` (None: a HEAD, or no
    bytes to send), then its end. Open the stream before calling: what fails there (a key
    destroyed meanwhile) is then a clean error answer, not a dropped connection."""
    await response.prepare(request)
    if pieces is not None:
        async for piece in pieces:
            await response.write(piece)
    await response.write_eof()
    return response


async def send_once(request: web.Request, service, download, *, content_type: str) -> web.StreamResponse:
    """Stream ``download`` as an attachment; ``service`` offers ``stream(download)`` and
    ``finish_download(download)`` (which spends the one download, or releases it)."""
    try:
        response = web.StreamResponse()
        response.content_type = content_type
        response.content_length = download.ref.plain_size
        response.headers["Cache-Control"] = "private, no-store"
        response.headers["Content-Disposition"] = f'attachment; filename="{download.filename}"'
        return await write_pieces(request, response, await service.stream(download) if request.method != "HEAD" else None)
    finally:
        await service.finish_download(download)
