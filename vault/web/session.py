"""The web session on the HTTP side: the cookie, the CSRF token and the Origin check.

:class:`SessionAuth` is handed to :func:`vault.http.middleware.authorize_middleware`: a
request with the session cookie (and no ``Authorization`` header) becomes the same
:class:`~vault.actor.Principal` a bearer token would, and then meets the same permission
table, tenant checks and consent gate. Every cookie-authenticated state change — any
method but GET/HEAD, and the one-time downloads, which consume something — must come from
our own origin (``Origin``, else ``Sec-Fetch-Site: same-origin``) and carry the session's
CSRF token (header ``X-CSRF-Token``, or the form field ``csrf_token`` of a URL-encoded form,
or the *first* part of a multipart form: a file upload is read as a stream, so the token
is checked before any file byte is read, and the handler goes on with the same reader).
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, MultipartReader, web

from vault import errors
from vault.actor import Principal
from vault.staff.service import CurrentSession, StaffService

SESSION_COOKIE = "__Host-vault-session"
PENDING_COOKIE = "__Host-vault-pending"
LOGIN_CSRF_COOKIE = "__Host-vault-login"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: GET routes that consume what they serve: a cross-site page must not be able to spend them
CONSUMING_GETS = frozenset({"/v1/exports/{export_id}/download", "/v1/releases/{release_id}/download"})
#: what erases, called with the session cookie: only with a TOTP code given within
#: FRESH_AUTH (the app's erasure and sweep forms ask for one; a script calling the API
#: with the cookie gets 403 reauthentication_required once the login's code is older)
FRESH_ROUTES = frozenset({("POST", "/v1/patients/{patient_id}/erasure"), ("POST", "/v1/retention/sweep"),
                          ("DELETE", "/v1/media/{media_id}")})

STAFF = web.AppKey("staff", StaffService)
CURRENT = web.RequestKey("staff_session", CurrentSession)
#: a multipart form whose first part (the CSRF token) the check has read
MULTIPART = web.RequestKey("staff_multipart", MultipartReader)


class CsrfRefused(errors.Forbidden):
    code = "csrf_refused"
    default_message = "this form is stale or did not come from this site; reload the page and try again"


def set_cookie(response: web.StreamResponse, name: str, value: str, *, max_age: int | None = None) -> None:
    """``__Host-`` cookies: Secure, Path=/, no Domain. Browsers accept Secure cookies from
    http://localhost (a secure context), so development on plain HTTP there works; any other
    plain-HTTP origin gets no cookie (run behind TLS)."""
    response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Strict", max_age=max_age)


def clear_cookie(response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path="/", secure=True, httponly=True, samesite="Strict")


def origin_ok(request: web.Request, public_url: str | None) -> bool:
    """Our own origin only. Browsers send ``Origin`` on every POST (``null`` under some
    referrer policies); then ``Sec-Fetch-Site``, which no page can forge, must say
    ``same-origin``. A request with neither (no browser) is refused too."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return request.headers.get("Sec-Fetch-Site") == "same-origin"
    allowed = {request.host}
    if public_url:
        allowed.add(urlsplit(public_url).netloc)
    return urlsplit(origin).netloc in allowed


async def check_csrf(request: web.Request, expected: str, public_url: str | None) -> None:
    if not origin_ok(request, public_url):
        raise CsrfRefused()
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.content_type == "application/x-www-form-urlencoded":
        given = str((await request.post()).get(CSRF_FIELD, ""))  # read once, cached by aiohttp
    elif given is None and request.content_type == "multipart/form-data":
        given = await _multipart_csrf(request)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise CsrfRefused()


async def _multipart_csrf(request: web.Request) -> str:
    try:
        reader = await request.multipart()
        part = await reader.next()
        if not isinstance(part, BodyPartReader) or part.name != CSRF_FIELD:
            return ""
        value = b""
        while chunk := await part.read_chunk(256):
            value += chunk
            if len(value) > 256:  # longer than any token of ours
                return ""
    except (ValueError, AssertionError):  # a broken multipart body; aiohttp asserts on some
        return ""
    request[MULTIPART] = reader
    return value.decode("ascii", "replace")


def _template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else ""


def needs_csrf(request: web.Request) -> bool:
    return request.method not in SAFE_METHODS or _template(request) in CONSUMING_GETS


class SessionAuth:
    def __init__(self, app: web.Application, public_url: str | None) -> None:
        self.app = app
        self.public_url = public_url

    async def __call__(self, request: web.Request) -> Principal | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        current = await self.app[STAFF].resolve(session_id)
        if needs_csrf(request):
            await check_csrf(request, current.csrf, self.public_url)
        if (request.method, _template(request)) in FRESH_ROUTES:
            self.app[STAFF].require_fresh(current)
        request[CURRENT] = current
        return current.principal
