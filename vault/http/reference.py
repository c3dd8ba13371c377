"""The rendered API reference at ``/docs`` (Redoc, vendored: no CDN) and one page listing
every error ``type`` at ``/docs/errors``.

Redoc 3.0.1's standalone bundle (MIT, vault/http/static/REDOC-LICENSE), from the npm
registry (`npm pack redoc@3.0.1`, bundles/redoc.standalone.js, sha256 8c70c2de…d7543).
It renders the ``<redoc spec-url>`` element itself, so the page has no inline script; its
styled-components read the per-response nonce from ``<meta property="csp-nonce">``, so
styles need no ``'unsafe-inline'``; its search index runs in a ``blob:`` worker.
"""

from __future__ import annotations

import html
import secrets
from importlib import resources

from aiohttp import web
from vault.http.problems import TYPE_PREFIX, error_codes
from vault.http.routing import Endpoints

routes = Endpoints("system")
REDOC = "redoc.standalone.js"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; img-src 'self' data:; font-src 'self' data:; "
        "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Clinical photo vault API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta property="csp-nonce" content="{nonce}">
</head><body>
<redoc spec-url="/v1/openapi.json" hide-download-button="false"></redoc>
<script src="/docs/{redoc}"></script>
</body></html>
"""


def _headers(csp: str) -> dict[str, str]:
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


@routes.get("/docs", summary="The API reference, rendered from /v1/openapi.json (Redoc, served by the vault)", response_media="text/html")
async def reference(request: web.Request) -> web.Response:
    nonce = secrets.token_urlsafe(16)
    return web.Response(text=_PAGE.format(nonce=nonce, redoc=REDOC), content_type="text/html",
                        headers=_headers(_CSP.format(nonce=nonce)))


@routes.get("/docs/redoc.standalone.js", summary="Redoc's standalone bundle (MIT), vendored", response_media="text/javascript")
async def redoc_bundle(request: web.Request) -> web.Response:
    body = resources.files("vault.http").joinpath("static", REDOC).read_bytes()
    return web.Response(body=body, content_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


@routes.get("/docs/errors", summary="Every problem `type` of this API: its code, status and meaning", response_media="text/html")
async def error_types(request: web.Request) -> web.Response:
    rows = "\n".join(
        f'<tr id="{html.escape(code)}"><td><code>{html.escape(TYPE_PREFIX + code)}</code></td><td>{status}</td>'
        f"<td>{html.escape(meaning)}</td></tr>"
        for code, (status, meaning) in error_codes().items()
    )
    page = ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>API error types</title></head><body>"
            "<h1>API error types</h1><p>Errors are RFC 9457 problem details (<code>application/problem+json</code>); "
            "<code>error</code> is the code below, <code>type</code> its URI.</p>"
            f"<table><thead><tr><th>type</th><th>status</th><th>meaning</th></tr></thead><tbody>\n{rows}\n</tbody></table>"
            "</body></html>")
    return web.Response(text=page, content_type="text/html", headers=_headers("default-src 'none'; frame-ancestors 'none'"))
