"""Conditional GETs (RFC 9110 §13.1.2): ``If-None-Match`` on audited reads.

Services decide whether a tag matches, after every check a 200 would pass and with the
read audited; these helpers only parse the header and shape the answers.
"""

from __future__ import annotations

from aiohttp import web

#: a client may keep the bytes, but must revalidate before every use
REVALIDATE = "private, no-cache"


def if_none_match(request: web.Request) -> tuple[str, ...] | None:
    """The entity tags of ``If-None-Match`` (weak or strong alike), ``"*"`` for any."""
    tags = request.if_none_match
    return None if tags is None else tuple(tag.value for tag in tags)


def private(response: web.StreamResponse, etag: str) -> None:
    response.headers["Cache-Control"] = REVALIDATE
    response.headers["ETag"] = etag
    response.headers["X-Content-Type-Options"] = "nosniff"


def not_modified(etag: str) -> web.Response:
    response = web.Response(status=304)
    private(response, etag)
    return response
