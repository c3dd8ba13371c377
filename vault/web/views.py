"""The staff web app's HTTP layer: its routes, its middleware and its ``setup(app)``.

Login (``/``), the second factor (``/login/code``), enrolment (``/enrol/{token}``) and the
static files are public routes; everything under ``/app/`` is in the permission table with
its roles, so a session meets the same decision path as a bearer token (vault/web/session.py).
"""

from __future__ import annotations

import hmac
import secrets
from importlib import resources

import aiohttp_jinja2
import jinja2
from aiohttp import web

from vault import errors
from vault.appkeys import RUNTIME, SETTINGS
from vault.consent.releases import RECALLED
from vault.http.context import REQUEST_ID, actor_of
from vault.staff.service import LockedOut
from vault.web import console, gallery, practice, tenant_pages
from vault.web.common import CSP, NO_STORE, SERVICES, WebServices, form, render, see_other, services
from vault.web.session import (
    CURRENT, LOGIN_CSRF_COOKIE, PENDING_COOKIE, SESSION_COOKIE, STAFF, CsrfRefused, origin_ok, clear_cookie,
    set_cookie,
)

PAGE_PREFIXES = ("/app", "/login", "/enrol", "/static")
STATIC = {"app.css": "text/css", "app.js": "text/javascript", "redaction.js": "text/javascript",
          "capture.js": "text/javascript", "compare.js": "text/javascript"}


def setup(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("vault.web", "templates"), autoescape=True,
                         undefined=jinja2.StrictUndefined)
    r = app.router
    r.add_get("/", login_page)
    r.add_post("/", login)
    r.add_get("/login/code", code_page)
    r.add_post("/login/code", code)
    r.add_get("/enrol/{token}", enrol_page)
    r.add_post("/enrol/{token}", enrol)
    r.add_get("/static/{name}", static)
    r.add_get("/app/", home)
    r.add_post("/app/logout", logout)
    console.routes(r)
    tenant_pages.routes(r)
    gallery.routes(r)
    practice.routes(r)
    app.on_startup.append(_bind)


async def _bind(app: web.Application) -> None:
    rt = app[RUNTIME]
    app[STAFF] = rt.staff
    app[SERVICES] = WebServices(staff=rt.staff, patients=rt.patients, media=rt.media, consents=rt.consents,
                                releases=rt.releases, lifecycle=rt.lifecycle, audit=rt.audit_reads,
                                webhooks=rt.webhooks, redactions=rt.redactions, composites=rt.composites,
                                treatments=rt.treatments)


def is_page_path(path: str) -> bool:
    """The web app's paths (HTML pages, their forms, static files), which the OpenAPI
    document of the API leaves out."""
    return path == "/" or path.startswith(PAGE_PREFIXES)


def _is_page(request: web.Request) -> bool:
    return is_page_path(request.path)


@web.middleware
async def pages(request: web.Request, handler):
    """For the web app's paths: a refusal becomes a page (401 goes to the login), and every
    answer gets the strict CSP and ``no-store``."""
    if not _is_page(request):
        return await handler(request)
    try:
        response = await handler(request)
    except errors.Unauthorized:
        response = see_other("/")
        if request.cookies.get(SESSION_COOKIE):
            clear_cookie(response, SESSION_COOKIE)
    except errors.VaultError as exc:
        if exc.status >= 500:
            raise
        problems = [f"{e.get('field', '')}: {e.get('problem', '')}".strip(": ")
                    for e in exc.details.get("errors", []) if isinstance(e, dict)]
        response = render(request, "error.html", {"status": exc.status, "message": exc.message, "problems": problems},
                          status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = render(request, "error.html", {"status": exc.status, "message": exc.reason, "problems": []},
                          status=exc.status)
    response.headers["Content-Security-Policy"] = CSP
    if not request.path.startswith("/static"):
        response.headers.update(NO_STORE)
    response.headers.setdefault("X-Frame-Options", "DENY")
    # Pages carry only ids in their URLs; same-origin keeps the Origin header on our own
    # form posts (no-referrer would make it "null") and sends nothing to other sites.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files("vault.web").joinpath("static", name).read_bytes()
    return web.Response(body=body, content_type=STATIC[name], headers={"Cache-Control": "public, max-age=300"})


# -- login --------------------------------------------------------------------------------------
def _login_csrf(request: web.Request) -> str:
    """Login CSRF: a random value in a __Host- cookie and in the form (double submit), plus
    the Origin check, so no other site can log a browser in to an account of its choosing."""
    return request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)


def _with_login_cookie(response: web.StreamResponse, token: str) -> web.StreamResponse:
    set_cookie(response, LOGIN_CSRF_COOKIE, token, max_age=3600)
    return response


def _check_login_csrf(request: web.Request, data: dict[str, str]) -> None:
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    given = data.get("csrf_token", "")
    if not origin_ok(request, request.app[SETTINGS].public_url) or not cookie or not hmac.compare_digest(cookie.encode(), given.encode()):
        raise CsrfRefused()


async def login_page(request: web.Request) -> web.StreamResponse:
    if request.cookies.get(SESSION_COOKIE):
        try:
            await request.app[STAFF].resolve(request.cookies[SESSION_COOKIE])
        except errors.Unauthorized:
            pass
        else:
            return see_other("/app/")
    token = _login_csrf(request)
    return _with_login_cookie(render(request, "login.html", {"login_csrf": token, "error": None}), token)


async def login(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _check_login_csrf(request, data)
    token = _login_csrf(request)
    try:
        pending = await request.app[STAFF].login(data.get("clinic", ""), data.get("email", ""), data.get("password", ""),
                                                 request_id=request[REQUEST_ID])
    except (errors.Unauthorized, LockedOut) as exc:
        status = 429 if isinstance(exc, LockedOut) else 401
        return _with_login_cookie(render(request, "login.html", {"login_csrf": token, "error": exc.message},
                                         status=status), token)
    response = see_other("/login/code")
    set_cookie(response, PENDING_COOKIE, pending, max_age=300)
    clear_cookie(response, SESSION_COOKIE)
    return response


async def code_page(request: web.Request) -> web.StreamResponse:
    pending = request.cookies.get(PENDING_COOKIE, "")
    csrf = await request.app[STAFF].pending(pending) if pending else None
    if csrf is None:
        return see_other("/")
    return render(request, "code.html", {"pending_csrf": csrf, "error": None})


async def code(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    pending = request.cookies.get(PENDING_COOKIE, "")
    if not pending:
        return see_other("/")
    csrf = await request.app[STAFF].pending(pending)
    if not origin_ok(request, request.app[SETTINGS].public_url) or not hmac.compare_digest(csrf.encode(), data.get("csrf_token", "").encode()):
        raise CsrfRefused()
    try:
        session_id = await request.app[STAFF].second_factor(pending, data.get("code", ""), request_id=request[REQUEST_ID])
    except LockedOut as exc:
        response = render(request, "login.html", {"login_csrf": _login_csrf(request), "error": exc.message}, status=429)
        clear_cookie(response, PENDING_COOKIE)
        return response
    except errors.Unauthorized as exc:
        try:
            csrf = await request.app[STAFF].pending(pending)
        except errors.Unauthorized:
            return see_other("/")
        return render(request, "code.html", {"pending_csrf": csrf, "error": exc.message}, status=401)
    response = see_other("/app/")
    clear_cookie(response, PENDING_COOKIE)
    set_cookie(response, SESSION_COOKIE, session_id)
    return response


# -- enrolment ----------------------------------------------------------------------------------
async def enrol_page(request: web.Request) -> web.StreamResponse:
    """Only a form: opening the link (as mail scanners do) consumes nothing."""
    enrolment = await request.app[STAFF].enrolment(request.match_info["token"])
    token = _login_csrf(request)
    response = render(request, "enrol.html", {"enrolment": enrolment, "login_csrf": token, "error": None})
    return _with_login_cookie(response, token)


async def enrol(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    _check_login_csrf(request, data)
    staff = request.app[STAFF]
    link = request.match_info["token"]
    if data.get("password", "") != data.get("password2", ""):
        error = "the two passwords differ"
    else:
        try:
            await staff.enrol(link, password=data.get("password", ""), code=data.get("code", ""),
                              request_id=request[REQUEST_ID])
            return render(request, "enrolled.html")
        except errors.ValidationFailed as exc:
            error = exc.message
    token = _login_csrf(request)
    return render(request, "enrol.html", {"enrolment": await staff.enrolment(link), "login_csrf": token,
                                          "error": error}, status=422)


# -- the app --------------------------------------------------------------------------------------
async def home(request: web.Request) -> web.StreamResponse:
    recalls = None
    if actor_of(request).role == "dpo":  # the DPO console lists the recalls still open
        recalls = (await services(request).releases.page(actor_of(request), media_id=None, patient_id=None, cursor=None,
                                                         limit=20, state=RECALLED)).items
    return render(request, "home.html", {"recalls": recalls})


async def logout(request: web.Request) -> web.StreamResponse:
    data = await form(request)
    await services(request).staff.logout(request.cookies.get(SESSION_COOKIE, ""), everywhere=data.get("everywhere") == "1",
                                         request_id=request[REQUEST_ID])
    response = see_other("/")
    clear_cookie(response, SESSION_COOKIE)
    return response


__all__ = ["CURRENT", "pages", "setup"]
