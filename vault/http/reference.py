"""The rendered API reference at ``/docs`` (Redoc, vendored: no CDN) and one page listing
every error ``type`` at ``/docs/errors``.

Redoc 2.5.4's standalone bundle (MIT, vault/http/static/REDOC-LICENSE; the licences of what
it bundles in REDOC-BUNDLED-LICENSES.txt), from the npm registry (`npm pack redoc@2.5.4`,
bundles/redoc.standalone.js, sha256 dcaf7661…f89500b). Not 3.x: Redoc 3.0.1 sends
telemetry to otel.cloud.redocly.com. The page has no inline script (reference.js starts
Redoc) and a strict CSP: Redoc's styled-components get the per-response nonce (its
``nonce`` option, read from ``<meta property="csp-nonce">``), so style elements need no
``'unsafe-inline'`` (style attributes do: ``style-src-attr``); its search index runs in a
``blob:`` worker. The one thing it asks
of another site, its footer's logo from cdn.redoc.ly, is refused by ``img-src``.
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
# style-src-attr: React sets a few style attributes from markup (inline attributes carry no
# selectors, so nothing can be read out of the page with them); style elements need the nonce.
# The two hashes: the style element the bundle adds as it loads, before Redoc.init can hand it
# the nonce (its scrollbar CSS, then empty); they change with the bundle (Chromium names them).
_BUNDLE_STYLES = "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc=' 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; "
        "style-src-elem 'self' 'nonce-{nonce}' " + _BUNDLE_STYLES + "; "
        "style-src-attr 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
        "connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Clinical photo vault API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta property="csp-nonce" content="{nonce}">
</head><body>
<div id="reference"></div>
<script src="/docs/{redoc}"></script>
<script src="/docs/reference.js"></script>
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


@routes.get("/docs/reference.js", summary="The script that starts Redoc on /docs", response_media="text/javascript")
async def reference_script(request: web.Request) -> web.Response:
    body = resources.files("vault.http").joinpath("static", "reference.js").read_bytes()
    return web.Response(body=body, content_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


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
