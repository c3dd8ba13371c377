"""One-time attachment downloads (release renditions, subject-access exports)."""

from __future__ import annotations

from aiohttp import web


async def send_once(request: web.Request, service, download, *, content_type: str) -> web.StreamResponse:
    """Stream ``download`` as an attachment; ``service`` offers ``stream(download)`` and
    ``finish_download(download)`` (which spends the one download, or releases it)."""
    try:
        response = web.StreamResponse()
        response.content_type = content_type
        response.content_length = download.ref.plain_size
        response.headers["Cache-Control"] = "private, no-store"
        response.headers["Content-Disposition"] = f'attachment; filename="{download.filename}"'
        await response.prepare(request)
        if request.method != "HEAD":
            async for piece in await service.stream(download):
                await response.write(piece)
        await response.write_eof()
        return response
    finally:
        await service.finish_download(download)
