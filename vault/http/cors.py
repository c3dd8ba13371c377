"""CORS for bearer-token API calls from the origins an operator lists (``VAULT_CORS_ORIGINS``).

A small middleware and a response hook rather than ``aiohttp-cors``: that library
configures CORS per route (an ``OPTIONS`` route added to every resource, which the
permission table and the OpenAPI document would then have to know) and decides per
origin, not per request; here the rule depends on the request — CORS headers only on
``/v1/`` and ``/fhir/`` responses to requests that carry ``Authorization: Bearer`` and
no cookie — so the staff web app's cookie sessions (``/app/``) stay same-origin.

- Nothing is allowed by default. ``Access-Control-Allow-Credentials`` is never sent, so
  a browser never exposes a response to a request it sent with cookies.
- Preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from a listed origin is
  answered 204 before authentication with the methods, request headers and a max age;
  from any other origin, 403 without CORS headers.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from vault import errors

PREFIXES = ("/v1/", "/fhir/")
METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
ALLOW_HEADERS = ("authorization", "content-type", "idempotency-key", "range", "if-none-match")
EXPOSE_HEADERS = "ETag, Content-Range, Content-Disposition, Location, X-Request-ID"
MAX_AGE = "600"


class CorsRefused(errors.Forbidden):
    code, default_message = "cors_refused", "this origin, method or header is not allowed here"


def _api(request: web.Request) -> bool:
    return request.path.startswith(PREFIXES)


def setup(app: web.Application, origins: tuple[str, ...]) -> list[Middleware]:
    """The preflight middleware (for the caller to place before authentication); the
    response hook is added here. With no origin listed there is neither: every request
    would pass through a middleware that does nothing."""
    allowed = frozenset(origins)

    @web.middleware
    async def preflight(request: web.Request, handler):
        if not (request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
                and "Origin" in request.headers and _api(request)):
            return await handler(request)
        origin = request.headers["Origin"]
        method = request.headers["Access-Control-Request-Method"].strip().upper()
        asked = {h.strip().lower() for h in request.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()}
        if origin not in allowed or method not in METHODS.split(", ") or not asked <= set(ALLOW_HEADERS):
            raise CorsRefused()
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": METHODS,
            "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        })

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if not _api(request) or request.method == "OPTIONS":
            return
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if (origin in allowed and "Cookie" not in request.headers
                and request.headers.get("Authorization", "").partition(" ")[0].lower() == "bearer"):
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    if not allowed:
        return []
    app.on_response_prepare.append(on_prepare)
    return [preflight]
